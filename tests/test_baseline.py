"""The part-based Baseline: hard-label loss, the trainer switch, the benchmark row."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pplr_fast.data import make_synthetic_dataset, read_market_layout
from pplr_fast.losses import baseline_classification_loss, pplr_classification_loss
from pplr_fast.train import build_parser, config_from_args
from pplr_fast.config import ConfigError, check_config, make_config
from pplr_fast.trainer import PPLRTrainer, TrainConfig

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def random_logits(b=12, c=9, parts=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits_g = (3 * torch.randn(b, c, generator=g)).to(dtype).requires_grad_()
    # part dimension last but not contiguous, as the network returns it
    logits_p = (3 * torch.randn(parts, b, c, generator=g)).to(dtype).permute(1, 2, 0)
    logits_p = logits_p.detach().requires_grad_()
    targets = torch.randint(0, c, (b,), generator=g)
    targets[:3] = c - 1                                        # ties in the batch, last class
    return logits_g, logits_p, targets


def test_loss_is_plain_cross_entropy_on_every_head():
    logits_g, logits_p, targets = random_logits()
    loss_g, loss_p = baseline_classification_loss(logits_g, logits_p, targets)
    expected_g = F.cross_entropy(logits_g, targets)
    expected_p = torch.stack([F.cross_entropy(logits_p[:, :, n], targets)
                              for n in range(logits_p.shape[2])]).mean()
    torch.testing.assert_close(loss_g, expected_g, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss_p, expected_p, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(loss_g + loss_p, (logits_g, logits_p))
    expected = torch.autograd.grad(expected_g + expected_p, (logits_g, logits_p))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_loss_is_pplr_loss_without_refinement():
    """beta = 1 (no PGLR mixing), no AALS, epsilon = 0 (no smoothing) is the Baseline."""
    logits_g, logits_p, targets = random_logits(seed=1)
    scores = torch.rand(targets.numel(), logits_p.shape[2], dtype=logits_g.dtype)
    got = baseline_classification_loss(logits_g, logits_p, targets)
    want = pplr_classification_loss(logits_g, logits_p, targets, scores, beta=1.0,
                                    use_aals=False, epsilon=0.0, backend="reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    refined = pplr_classification_loss(logits_g, logits_p, targets, scores, beta=0.5,
                                       use_aals=True, backend="reference")
    assert all(abs((a - b).item()) > 1e-3 for a, b in zip(got, refined))


def test_half_precision_and_one_part():
    logits_g, logits_p, targets = random_logits(parts=1, dtype=torch.bfloat16, seed=2)
    loss_g, loss_p = baseline_classification_loss(logits_g, logits_p, targets)
    assert loss_g.dtype == loss_p.dtype == torch.float32
    torch.testing.assert_close(loss_p, F.cross_entropy(logits_p[:, :, 0].float(), targets))


def test_bad_inputs_name_the_problem():
    logits_g, logits_p, targets = random_logits()
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 9\)"):
        baseline_classification_loss(logits_g, logits_p, targets + 9)
    with pytest.raises(ValueError, match="does not match"):
        baseline_classification_loss(logits_g, logits_p[:, :5], targets)
    with pytest.raises(ValueError, match="integer tensor"):
        baseline_classification_loss(logits_g, logits_p, targets.float())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return read_market_layout(make_synthetic_dataset(str(root), num_train_ids=12, num_test_ids=8),
                              name="synthetic")


def test_trainer_baseline_uses_hard_labels_only(small_dataset, tmp_path, monkeypatch):
    import pplr_fast.training.method_losses as losses_module
    calls = {"baseline": 0}
    real = losses_module.baseline_classification_loss

    def spy(*args):
        calls["baseline"] += 1
        return real(*args)

    def refinement_must_not_run(*args, **kwargs):
        raise AssertionError("the Baseline called the PPLR loss")

    monkeypatch.setattr(losses_module, "baseline_classification_loss", spy)
    monkeypatch.setattr(losses_module, "pplr_classification_loss", refinement_must_not_run)
    cfg = TrainConfig(arch="resnet18", height=64, width=32, batch_size=16, num_instances=4,
                      workers=0, epochs=2, iters=2, eval_step=2, k1=10, k2=3, k=5, eps=0.7,
                      aals_epoch=1, logs_dir=str(tmp_path / "run"), progress=False,
                      backend="reference", seed=3, method="baseline")
    PPLRTrainer(cfg, small_dataset, torch.device("cpu")).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert len(trained) == 2 and calls["baseline"] == 4           # 2 epochs x 2 iterations
    for r in trained:
        assert "loss_pglr" not in r
        assert r["loss"] == pytest.approx(r["loss_global_ce"] + r["loss_part"] + r["loss_triplet"])
        assert len(r["agreement_per_part"]) == 3                   # still measured and logged


def test_cli_method_switch(tmp_path):
    args = build_parser().parse_args(["--method", "baseline", "--logs-dir", str(tmp_path)])
    assert config_from_args(args).method == "baseline"
    assert config_from_args(build_parser().parse_args(["--logs-dir", str(tmp_path)])).method == "pplr"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--method", "mmt"])
    with pytest.raises(ConfigError, match="--method must be one of pplr, baseline; got 'mmt'"):
        check_config(make_config("synthetic", method="mmt"))


def test_train_step_benchmark_has_a_baseline_row(tmp_path):
    clustering = {"machine": {"cpu": "test CPU", "gpu": None}, "config": {"device": "cpu"},
                  "rows": [{"n": 100, "backend": "fast", "status": "ok",
                            "seconds": {"total": 2.0, "cross_agreement": 0.25}}]}
    (tmp_path / "clustering.json").write_text(json.dumps(clustering))
    environment = {**os.environ, "OMP_WAIT_POLICY": "passive"}
    environment.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "train_step.py"), "--arch", "resnet18",
         "--height", "64", "--width", "32", "--batch-size", "8", "--repeat", "1", "--warmup", "1",
         "--device", "cpu", "--backends", "reference", "--cluster-json",
         str(tmp_path / "clustering.json"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["backend"]: r for r in json.loads((tmp_path / "train_step_cpu.json").read_text())["rows"]}
    assert set(rows) == {"reference", "baseline"}
    assert rows["baseline"]["method"] == "baseline" and rows["reference"]["method"] == "pplr"
    assert rows["baseline"]["parameters"] == rows["reference"]["parameters"]
    assert rows["baseline"]["cluster_s_per_epoch"] == 1.75            # no cross-agreement step
    assert rows["reference"]["cluster_s_per_epoch"] == "not measured"
    assert rows["baseline"]["final_loss"] != rows["reference"]["final_loss"]
    markdown = (tmp_path / "train_step_cpu.md").read_text()
    assert "| pplr_fast, Baseline (hard labels, plain CE) |" in markdown
    assert "without the cross-agreement step" in markdown


def test_parts_sweep_table_and_plot(small_dataset, tmp_path):
    sys.path.insert(0, BENCHMARKS)
    try:
        import parts_sweep
    finally:
        sys.path.remove(BENCHMARKS)
    (tmp_path / "Market-1501").symlink_to(small_dataset.root)
    train_args = ["-d", "market1501", "--data-dir", str(tmp_path), "-a", "resnet18", "--height", "64",
                  "--width", "32", "--epochs", "1", "--iters", "1", "-b", "16", "--k1", "10",
                  "--k2", "3", "--k", "5", "--eps", "0.7", "--workers", "0", "--backend", "reference",
                  "--pretrained", "none"]
    with pytest.raises(SystemExit):
        parts_sweep.main(["--parts", "1", "--", *train_args, "--parts", "2"])
    out = tmp_path / "results"
    result = parts_sweep.main(["--parts", "2", "--tag", "test", "--out", str(out),
                               "--runs-dir", str(tmp_path / "runs"), "--", *train_args])
    rows = {(r["method"], r["parts"]): r for r in result["rows"]}
    assert set(rows) == {("pplr", 2), ("baseline", 2)}
    for (method, parts), row in rows.items():
        run = tmp_path / "runs" / f"{method}_parts{parts}"
        config = json.loads((run / "config.json").read_text())
        assert (config["method"], config["parts"], config["height"]) == (method, parts, 64)
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert row["mAP"] == logged[-1]["mAP"] and 0 <= row["mAP"] <= 1
    assert not result["synthetic"]
    markdown = (out / "parts_sweep_test.md").read_text()
    assert "Synthetic data" not in markdown
    for n in (2,):
        gap = 100 * (rows[("pplr", n)]["mAP"] - rows[("baseline", n)]["mAP"])
        assert f"| {n} | {100 * rows[('pplr', n)]['mAP']:.1f} | " \
               f"{100 * rows[('baseline', n)]['mAP']:.1f} | {gap:+.1f} |" in markdown
    assert json.loads((out / "parts_sweep_test.json").read_text())["parts"] == [2]
    from PIL import Image
    assert Image.open(out / "parts_sweep_test.png").size[0] > 300
    assert parts_sweep.parse_args([]).synthetic
