"""load_pretrained: torchvision files load by name; wrong or broken files give clear errors."""
import argparse

import pytest
import torch

from pplr_fast.models import (PPLRNet, PretrainedWeightsError, load_pretrained, resnet18,
                              resnet50)


def imagenet_like(model):
    """A state dict with non-default BN statistics, as in a trained checkpoint."""
    torch.manual_seed(1)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.uniform_(-0.5, 0.5)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    return state


def test_round_trip_with_prefix_and_fc(tmp_path):
    source = resnet18()
    state = imagenet_like(source)
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)

    model = PPLRNet(arch="resnet18", num_classes=3)
    report = load_pretrained(model, path)
    assert report.num_tensors == len(state) - 2
    assert report.ignored_keys == ("fc.weight", "fc.bias")
    assert "loaded 120 tensors" in str(report)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)

    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().backbone.forward_features(images),
                                   source.eval().forward_features(images))


@pytest.mark.parametrize("wrapper, prefix", [("state_dict", "backbone."), ("model", "base.")])
def test_wrapped_checkpoints(tmp_path, wrapper, prefix):
    state = imagenet_like(resnet18())
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: {prefix + k: v for k, v in state.items()}, "epoch": 3}, path)
    backbone = resnet18(num_classes=0)
    assert load_pretrained(backbone, str(path)).num_tensors == len(state) - 2
    torch.testing.assert_close(backbone.bn1.running_mean, state["bn1.running_mean"])


def test_old_checkpoint_without_batch_counters(tmp_path):
    state = {k: v for k, v in imagenet_like(resnet18()).items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert load_pretrained(resnet18(num_classes=0), path).num_tensors == len(state) - 2


def test_resnet18_file_into_resnet50_names_arch_and_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(PPLRNet(arch="resnet50"), path)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert str(path) in message
    assert "not a torchvision ResNet-50 checkpoint" in message
    assert "layer1.0.conv1.weight expected (64, 64, 1, 1), file has (64, 64, 3, 3)" in message
    assert "--arch resnet18" in message
    assert "more)" in message  # only the first 5 problems are listed


def test_resnet50_file_into_resnet18_suggests_resnet50(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="--arch resnet50"):
        load_pretrained(resnet18(), path)


def test_deeper_resnet_file_is_rejected(tmp_path):
    # A ResNet-101 holds every ResNet-50 tensor with the same shape, plus layer3.6-22.
    state = resnet50().state_dict()
    for block in range(6, 23):
        for key, value in list(state.items()):
            if key.startswith("layer3.1."):
                state[key.replace("layer3.1.", f"layer3.{block}.")] = value
    path = tmp_path / "r101.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match="unexpected") as error:
        load_pretrained(resnet50(), path)
    assert "ResNet-101" in str(error.value) and "does not build" in str(error.value)


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(PretrainedWeightsError, match="cannot read pretrained weights") as error:
        load_pretrained(resnet18(), garbage)
    assert str(garbage) in str(error.value)
    assert "weights_only" not in str(error.value), "torch's advice to unpickle code does not apply"

    pickled_object = tmp_path / "object.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, pickled_object)
    with pytest.raises(PretrainedWeightsError, match="holding only tensors"):
        load_pretrained(resnet18(), pickled_object)

    tensor_list = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], tensor_list)
    with pytest.raises(PretrainedWeightsError, match="does not hold a state dict"):
        load_pretrained(resnet18(), tensor_list)


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match="does not exist") as error:
        load_pretrained(resnet18(), missing)
    assert str(missing) in str(error.value)
    with pytest.raises(PretrainedWeightsError, match="is a directory"):
        load_pretrained(resnet18(), tmp_path)


def test_needs_a_resnet():
    with pytest.raises(TypeError, match="ResNet"):
        load_pretrained(torch.nn.Linear(2, 2), "unused.pth")
