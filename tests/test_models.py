"""ResNet backbones match torchvision's layout; PPLRNet shapes, layout and classifier resets."""
import pytest
import torch
import torch.nn.functional as F

from pplr_fast.models import RESNETS, PPLRNet, PPLROutput, resnet18, resnet50

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# (blocks per stage, convs per block, feature dim); parameter counts are torchvision's
# published ``num_params`` of ResNet{18,34,50}_Weights.
ARCHS = {
    "resnet18": ((2, 2, 2, 2), 2, 512, 11_689_512, 122),
    "resnet34": ((3, 4, 6, 3), 2, 512, 21_797_672, 218),
    "resnet50": ((3, 4, 6, 3), 3, 2048, 25_557_032, 320),
}


def torchvision_keys(layers, convs_per_block):
    """torchvision's ResNet state-dict keys, in order, written out from its module tree."""
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for stage, num_blocks in enumerate(layers, start=1):
        for block in range(num_blocks):
            prefix = f"layer{stage}.{block}."
            for conv in range(1, convs_per_block + 1):
                keys.append(f"{prefix}conv{conv}.weight")
                keys += [f"{prefix}bn{conv}.{k}" for k in BN_KEYS]
            # Bottleneck stage 1 widens 64 -> 256; BasicBlock stage 1 keeps 64 channels.
            if block == 0 and (stage > 1 or convs_per_block == 3):
                keys.append(f"{prefix}downsample.0.weight")
                keys += [f"{prefix}downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_keys_match_torchvision(arch):
    layers, convs, feature_dim, num_params, num_entries = ARCHS[arch]
    model = RESNETS[arch]()
    state_dict = model.state_dict()
    assert list(state_dict) == torchvision_keys(layers, convs)
    assert len(state_dict) == num_entries
    assert sum(p.numel() for p in model.parameters()) == num_params
    assert model.feature_dim == feature_dim
    assert model.depth == int(arch[len("resnet"):])


def test_resnet50_tensor_shapes():
    shapes = {k: tuple(v.shape) for k, v in resnet50().state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.running_mean"] == (256,)
    assert shapes["layer2.0.conv1.weight"] == (128, 256, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["bn1.num_batches_tracked"] == ()
    assert shapes["fc.weight"] == (1000, 2048)
    assert shapes["fc.bias"] == (1000,)


def test_resnet18_tensor_shapes():
    shapes = {k: tuple(v.shape) for k, v in resnet18().state_dict().items()}
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["fc.weight"] == (1000, 512)


def test_num_classes_zero_drops_fc():
    model = resnet18(num_classes=0)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 512)


def test_last_stride_sits_on_conv2_and_downsample():
    reid, imagenet = resnet50(last_stride=1), resnet50(last_stride=2)
    assert reid.layer4[0].conv2.stride == (1, 1)
    assert reid.layer4[0].downsample[0].stride == (1, 1)
    assert imagenet.layer4[0].conv2.stride == (2, 2)
    assert imagenet.layer4[0].downsample[0].stride == (2, 2)
    # torchvision v1.5: the 1x1 convs never stride.
    assert imagenet.layer2[0].conv1.stride == (1, 1) and imagenet.layer2[0].conv2.stride == (2, 2)
    with pytest.raises(ValueError, match="last_stride"):
        resnet50(last_stride=3)


@torch.no_grad()
def test_last_stride_one_map_size():
    # 384x128 -> 24x8 (stride 16); checked in full on ResNet-18, by proportion on ResNet-50.
    assert resnet18().eval().forward_features(torch.randn(1, 3, 384, 128)).shape == (1, 512, 24, 8)
    assert resnet18(last_stride=2).eval().forward_features(
        torch.randn(1, 3, 384, 128)).shape == (1, 512, 12, 4)
    assert resnet50().eval().forward_features(torch.randn(1, 3, 192, 64)).shape == (1, 2048, 12, 4)


def test_init():
    model = resnet50()
    conv = model.layer3[0].conv2.weight  # fan_out = 256 * 3 * 3
    assert conv.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.all(model.layer2[1].bn2.weight == 1) and torch.all(model.layer2[1].bn2.bias == 0)


# ---------------------------------------------------------------- PPLRNet

def small_net(num_classes=5, arch="resnet18", num_parts=3):
    torch.manual_seed(0)
    return PPLRNet(arch=arch, num_parts=num_parts, num_classes=num_classes)


def test_train_outputs_and_part_major_logits():
    model = small_net(num_classes=5).train()
    out = model(torch.randn(4, 3, 96, 32))
    assert isinstance(out, PPLROutput)
    assert out.f_g.shape == (4, 512)
    assert out.f_p.shape == (4, 512, 3)
    assert out.logits_g.shape == (4, 5)
    assert out.logits_p.shape == (4, 5, 3)
    part_major = out.logits_p.permute(2, 0, 1)
    assert part_major.is_contiguous()
    assert out.logits_p.stride() == (5, 1, 4 * 5)
    torch.testing.assert_close(out.logits_g, out.f_g @ model.global_classifier.weight.T)
    for n, head in enumerate(model.part_classifiers):
        torch.testing.assert_close(out.logits_p[:, :, n], out.f_p[:, :, n] @ head.weight.T)


def test_resnet50_output_shapes():
    model = small_net(num_classes=4, arch="resnet50").train()
    out = model(torch.randn(2, 3, 96, 32))
    assert out.f_g.shape == (2, 2048) and out.f_p.shape == (2, 2048, 3)
    assert out.logits_p.shape == (2, 4, 3)
    assert model.feature_dim == 2048


@torch.no_grad()
def test_eval_forward_and_extract_are_normalised():
    model = small_net().eval()
    images = torch.randn(3, 3, 96, 32)
    f_eval = model(images)
    f_g, f_p = model.extract(images)
    assert f_eval.shape == (3, 512) and f_p.shape == (3, 512, 3)
    torch.testing.assert_close(f_eval, f_g)
    torch.testing.assert_close(f_g.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(f_p.norm(dim=1), torch.ones(3, 3))


def test_extract_parts_are_horizontal_stripes():
    model = small_net().eval()
    for bn in (model.global_bn, *model.part_bns):  # non-trivial BN statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    images = torch.randn(2, 3, 96, 32)
    f_g, f_p = model.extract(images)
    assert not f_g.requires_grad and not f_p.requires_grad
    with torch.no_grad():
        fmap = model.backbone.forward_features(images)  # (2, 512, 6, 2): stripes of 2 rows
        stripes = fmap.reshape(2, 512, 3, 2, 2).mean(dim=(3, 4))
        for n, bn in enumerate(model.part_bns):
            torch.testing.assert_close(f_p[:, :, n], F.normalize(bn(stripes[:, :, n]), dim=1))
        torch.testing.assert_close(f_g, F.normalize(model.global_bn(fmap.mean(dim=(2, 3))), dim=1))


def test_bn_necks_init_and_frozen_bias():
    model = small_net()
    for bn in (model.global_bn, *model.part_bns):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert bn.weight.requires_grad and not bn.bias.requires_grad
    out = model.train()(torch.randn(4, 3, 64, 32))
    (out.logits_g.sum() + out.logits_p.sum() + out.f_p.sum()).backward()
    assert model.global_bn.bias.grad is None
    assert model.backbone.conv1.weight.grad is not None


def test_empty_classifier_init():
    model = small_net(num_classes=50)
    assert model.num_classes == 50
    assert model.global_classifier.bias is None
    assert model.global_classifier.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert small_net(num_classes=0).num_classes == 0


def test_parameter_groups_partition_trainable_parameters():
    model = small_net()
    classifier = {id(p) for p in model.classifier_parameters()}
    rest = {id(p) for p in model.backbone_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert classifier.isdisjoint(rest) and classifier | rest == trainable
    assert len(classifier) == 1 + model.num_parts


def test_reset_classifiers():
    model = small_net(num_classes=5)
    centroids_g, centroids_p = torch.randn(7, 512), torch.randn(7, 512, 3)
    model.reset_classifiers(centroids_g, centroids_p)
    assert model.num_classes == 7
    torch.testing.assert_close(model.global_classifier.weight, F.normalize(centroids_g, dim=1))
    for n, head in enumerate(model.part_classifiers):
        torch.testing.assert_close(head.weight, F.normalize(centroids_p[:, :, n], dim=1))
        assert head.weight.requires_grad
    assert model.train()(torch.randn(2, 3, 64, 32)).logits_p.shape == (2, 7, 3)
    assert len(list(model.classifier_parameters())) == 4


def test_reset_classifiers_keeps_dtype_and_checks_shapes():
    model = small_net().double()
    model.reset_classifiers(torch.randn(3, 512), torch.randn(3, 512, 3))
    assert model.global_classifier.weight.dtype == torch.float64
    assert model.part_classifiers[2].weight.dtype == torch.float64
    with pytest.raises(ValueError, match="centroids"):
        model.reset_classifiers(torch.randn(3, 512), torch.randn(3, 512, 2))
    with pytest.raises(ValueError, match="centroids"):
        model.reset_classifiers(torch.randn(3, 256), torch.randn(3, 256, 3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="resnet50"):
        PPLRNet(arch="resnet101")
    with pytest.raises(ValueError, match="num_parts"):
        PPLRNet(arch="resnet18", num_parts=0)


def test_parameter_count_matches_paper():
    # docs/method.md §8 reports 29.668 M parameters on Market-1501; ResNet-50 without fc, 4 BN necks
    # and 4 classifiers give exactly that at C = 750 clusters (C is our inference).
    model = PPLRNet(arch="resnet50", num_classes=750)
    assert sum(p.numel() for p in model.parameters()) == 29_668_416
