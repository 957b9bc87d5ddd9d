"""The training step's seams: one losses function per method, the camera proxies, and the
step that sums whatever the method returns (docs/method.md §3, §4).

The trainer's end-to-end behaviour is in test_trainer.py; these tests pin the pieces
a change of the step (sub-batches, gathered losses, mixed precision) builds on.
"""
import subprocess
import sys

import pytest
import torch

from pplr_fast.cluster.stage import ClusterStageResult
from pplr_fast.config import METHODS, TrainConfig
from pplr_fast.losses import (baseline_classification_loss, inter_camera_proxy_loss,
                              pplr_classification_loss, soft_triplet_loss)
from pplr_fast.models import PPLRNet, PPLROutput
from pplr_fast.training import (METHOD_LOSSES, CameraProxies, LossSettings, TrainingBatch,
                                TrainingLoop, pseudo_labelled_set)

CPU = torch.device("cpu")
B, C, D, PARTS = 8, 4, 6, 3


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"arch": "resnet18", "height": 64, "width": 32, "parts": PARTS,
                          "backend": "reference", "lam_cam": 0.3, "beta": 0.4,
                          "label_smoothing": 0.2, **overrides})


def random_batch(seed: int = 0) -> TrainingBatch:
    gen = torch.Generator().manual_seed(seed)
    out = PPLROutput(f_g=torch.randn(B, D, generator=gen),
                     f_p=torch.randn(B, D, PARTS, generator=gen),
                     logits_g=torch.randn(B, C, generator=gen),
                     logits_p=torch.randn(B, C, PARTS, generator=gen))
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cams = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    return TrainingBatch(out, targets, cams, torch.rand(B, PARTS, generator=gen))


def random_proxies(batch: TrainingBatch) -> CameraProxies:
    gen = torch.Generator().manual_seed(1)
    x_g, x_p = torch.randn(B, D, generator=gen), torch.randn(B, D, PARTS, generator=gen)
    return CameraProxies.from_clusters(batch.targets, batch.cams, x_g, x_p)


def test_every_method_has_its_losses():
    assert set(METHOD_LOSSES) == set(METHODS)


@pytest.mark.parametrize("use_aals", [False, True])
@pytest.mark.parametrize("with_cam", [False, True])
def test_pplr_terms_are_pglr_aals_triplet_and_camera(use_aals, with_cam):
    cfg = config(cam=with_cam)
    batch = random_batch()
    proxies = random_proxies(batch) if with_cam else None
    terms = METHOD_LOSSES["pplr"](batch, LossSettings(cfg, use_aals, proxies))
    out = batch.out
    loss_g, loss_p = pplr_classification_loss(out.logits_g, out.logits_p, batch.targets,
                                              batch.scores, beta=cfg.beta, use_aals=use_aals,
                                              epsilon=cfg.label_smoothing, backend="reference")
    expected = {"pglr": loss_g, "part": loss_p,
                "triplet": soft_triplet_loss(out.f_g, batch.targets)}
    if with_cam:
        cam_g = inter_camera_proxy_loss(out.f_g, batch.targets, batch.cams,
                                        proxies.global_features, proxies.pids, proxies.cams)
        cam_p = sum(inter_camera_proxy_loss(out.f_p[:, :, n], batch.targets, batch.cams,
                                            proxies.part_features[:, :, n], proxies.pids,
                                            proxies.cams) for n in range(PARTS)) / PARTS
        assert float(cam_g) > 0 and float(cam_p) > 0
        expected["camera"] = cfg.lam_cam * (cam_g + cam_p)
    assert list(terms) == list(expected), "the terms, in the order they are summed and logged"
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=lambda m: f"{name}: {m}")


def test_baseline_terms_use_hard_labels_and_ignore_the_scores():
    cfg = config(method="baseline")
    batch = random_batch()
    terms = METHOD_LOSSES["baseline"](batch, LossSettings(cfg, True, None))
    loss_g, loss_p = baseline_classification_loss(batch.out.logits_g, batch.out.logits_p,
                                                  batch.targets)
    assert list(terms) == ["global_ce", "part", "triplet"]
    torch.testing.assert_close(terms["global_ce"], loss_g)
    torch.testing.assert_close(terms["part"], loss_p)
    other_scores = TrainingBatch(batch.out, batch.targets, batch.cams, torch.rand(B, PARTS))
    again = METHOD_LOSSES["baseline"](other_scores, LossSettings(cfg, True, None))
    assert all(torch.equal(terms[k], again[k]) for k in terms)


def test_camera_proxies_are_normalised_means_per_cluster_and_camera():
    labels = torch.tensor([0, 0, 0, 1, 1])
    cams = torch.tensor([2, 2, 5, 2, 2])
    x_g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, -1.0]])
    x_p = torch.stack([x_g, -x_g], dim=2)                                    # (5, 2, 2)
    proxies = CameraProxies.from_clusters(labels, cams, x_g, x_p)
    assert proxies.pids.tolist() == [0, 0, 1] and proxies.cams.tolist() == [2, 5, 2]
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(proxies.global_features, expected)
    torch.testing.assert_close(proxies.part_features, torch.stack([expected, -expected], 2))


def test_pseudo_labelled_set_drops_outliers_and_keeps_each_images_row():
    samples = [(f"img{i}.jpg", 100 + i, i % 3) for i in range(6)]
    labels = torch.tensor([1, -1, 0, 1, -1, 0])
    scores = torch.arange(12.0).view(6, 2)
    x_g, x_p = torch.arange(6.0)[:, None].repeat(1, 2), torch.arange(6.0).view(6, 1, 1)
    kept = pseudo_labelled_set(samples, ClusterStageResult(labels, scores, {}, "forced"),
                               x_g, x_p, CPU)
    assert kept.samples == [("img0.jpg", 1, 0), ("img2.jpg", 0, 2), ("img3.jpg", 1, 0),
                            ("img5.jpg", 0, 2)]
    assert kept.targets.tolist() == [1, 0, 1, 0] and kept.cameras().tolist() == [0, 2, 0, 2]
    assert torch.equal(kept.scores, scores[[0, 2, 3, 5]])
    centroids_g, centroids_p = kept.centroids()
    assert centroids_g.tolist() == [[3.5, 3.5], [1.5, 1.5]]
    assert centroids_p.flatten().tolist() == [3.5, 1.5]


class NaNLosses(TrainingLoop):
    """The method's terms, one of them poisoned."""

    def compute_losses(self, batch, settings):
        terms = super().compute_losses(batch, settings)
        terms["triplet"] = terms["triplet"] * float("nan")
        return terms


def small_model() -> PPLRNet:
    torch.manual_seed(0)
    model = PPLRNet("resnet18", num_parts=PARTS)
    model.reset_classifiers(torch.randn(C, model.feature_dim),
                            torch.randn(C, model.feature_dim, PARTS))
    return model.train()


@pytest.mark.parametrize("loop_class", [TrainingLoop, NaNLosses])
def test_the_step_sums_the_hooks_terms_and_refuses_a_non_finite_one(loop_class):
    cfg = config()
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    images = torch.randn(B, 3, cfg.height, cfg.width, generator=torch.Generator().manual_seed(2))
    batch = random_batch()
    settings = LossSettings(cfg, True, None)
    loop = loop_class(cfg, CPU)
    if loop_class is NaNLosses:
        with pytest.raises(FloatingPointError, match=r"epoch 7: the loss became nan .*'triplet': "
                                                     r"nan.*lower --lr"):
            loop.forward_backward(model, optimizer, images, batch.targets, batch.cams,
                                  batch.scores, settings, epoch=7)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), \
            "a non-finite loss must not reach the weights"
        return
    terms, loss = loop.forward_backward(model, optimizer, images, batch.targets, batch.cams,
                                        batch.scores, settings, epoch=7)
    assert list(terms) == ["pglr", "part", "triplet"]
    assert loss.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))



TRAINING_MODULES = ["pplr_fast.training", "pplr_fast.training.loop",
                    "pplr_fast.training.method_losses", "pplr_fast.training.camera_proxies",
                    "pplr_fast.training.epoch_data", "pplr_fast.training.epoch_plan",
                    "pplr_fast.training.optim", "pplr_fast.training.summary",
                    "pplr_fast.utils.checkpoint"]
# Each module imported first of the package in one interpreter; prints what it pulled in
# of the trainer's modules, or why it failed.
FRESH_IMPORTS = """
import importlib, sys
found = {}
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "pplr_fast" or n.startswith("pplr_fast.")]:
        del sys.modules[name]
    try:
        importlib.import_module(module)
        found[module] = sorted(n for n in sys.modules if n in ("pplr_fast.trainer", "pplr_fast.train"))
    except Exception as err:
        found[module] = f"{type(err).__name__}: {err}"
print(found)
"""


def test_training_pieces_import_on_their_own_and_never_the_trainer():
    """The trainer drives the pieces; none of them reaches back into it (no cycle)."""
    done = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *TRAINING_MODULES],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == repr({m: [] for m in TRAINING_MODULES})
