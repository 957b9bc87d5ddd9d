"""One source of defaults: the recipe, the dataset presets and the demo recipe, layered."""
import dataclasses
from pathlib import Path

import pytest

from pplr_fast.config import (DATASET_PRESETS, DEMO_RECIPE, RECIPE, ConfigError, TrainConfig,
                              check_config, check_data_size, make_config)
from pplr_fast.data import DATASET_NAMES
from pplr_fast.train import build_parser, config_from_args


def test_every_dataset_has_a_preset_and_the_paper_values():
    assert set(DATASET_PRESETS) == set(DATASET_NAMES)
    market, msmt = DATASET_PRESETS["market1501"], DATASET_PRESETS["msmt17"]
    assert (market.eps, market.eps_cam, msmt.eps, msmt.eps_cam, msmt.lam_cam) == (0.6, 0.4, 0.7, 0.6, 1.0)
    assert [name for name, p in DATASET_PRESETS.items() if not p.real] == ["synthetic"]


def test_layers_recipe_preset_demo_then_flags():
    market = make_config("market1501", pretrained="none")
    assert (market.arch, market.epochs, market.eps, market.height) == ("resnet50", 50, 0.6, 384)
    assert make_config("market1501", cam=True).eps == 0.4
    assert make_config("veri").num_instances == 8
    demo = make_config("synthetic")
    assert (demo.arch, demo.epochs, demo.iters) == (DEMO_RECIPE["arch"], DEMO_RECIPE["epochs"],
                                                     DEMO_RECIPE["iters"])
    assert demo.eps == DATASET_PRESETS["synthetic"].eps and demo.k1 == RECIPE["k1"]
    assert make_config("synthetic", epochs=9, eps=None).epochs == 9, "None means 'flag not given'"
    assert make_config("synthetic").label_smoothing == RECIPE["label_smoothing"] == 0.1
    with pytest.raises(TypeError, match="unknown setting"):
        make_config("synthetic", epoch=3)


def test_the_command_line_holds_no_default_of_its_own(tmp_path):
    """Flags that are not given leave the value to pplr_fast.config."""
    args = build_parser().parse_args(["--logs-dir", str(tmp_path / "x")])
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("dataset", "data_dir", "logs_dir", "device", "cam", "sync_bn"):
            continue
        if hasattr(args, field.name):
            assert getattr(args, field.name) is None, field.name
    assert config_from_args(args) == make_config(
        "synthetic", data_dir=str(Path("data").resolve()), logs_dir=str((tmp_path / "x").resolve()),
        device="cpu")


def test_checks_report_every_problem_at_once():
    cfg = make_config("synthetic", k2=40, eps=1.5, batch_size=30, num_instances=4, lr=0.0)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    text = str(err.value)
    for expected in ("--k2 40 must not exceed --k1 30", "--eps must lie in (0, 1)",
                     "multiple of --num-instances", "--lr must be > 0"):
        assert expected in text


def test_camera_settings_come_from_the_dataset_preset():
    msmt = make_config("msmt17", cam=True)
    assert (msmt.eps, msmt.lam_cam) == (0.6, 1.0)
    assert make_config("market1501", cam=True).lam_cam == 0.5
    assert make_config("msmt17", cam=True, lam_cam=0.2).lam_cam == 0.2


@pytest.mark.parametrize("name", ["height", "width", "batch_size", "num_instances", "epochs",
                                  "iters", "step_size", "eval_step", "k1", "k2", "min_samples",
                                  "k", "parts"])
def test_each_count_must_be_at_least_one(name):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be >= 1 \\(got 0\\)"):
        check_config(make_config("synthetic", **{name: 0}))


@pytest.mark.parametrize("setting,flag", [(dict(aals_epoch=-1), "--aals-epoch must be >= 0"),
                                          (dict(workers=-1), "--workers must be >= 0"),
                                          (dict(weight_decay=-1e-4), "--weight-decay must be >= 0"),
                                          (dict(lam_cam=-0.5), "--lam-cam must be >= 0"),
                                          (dict(beta=1.5), r"--beta must lie in \[0, 1\]"),
                                          (dict(k2=31), "--k2 31 must not exceed --k1 30")])
def test_just_outside_the_range_is_refused(setting, flag):
    with pytest.raises(ConfigError, match=flag):
        check_config(make_config("synthetic", **setting))


def test_the_ends_of_each_range_are_accepted():
    """Settings at the edge of what works: no classification target mixing (beta 0 or
    1), no camera loss weight, AALS from the first epoch, no workers, k2 == k1."""
    for setting in (dict(beta=0.0), dict(beta=1.0), dict(lam_cam=0.0), dict(aals_epoch=0),
                    dict(workers=0), dict(weight_decay=0.0), dict(k2=30, k1=30),
                    dict(label_smoothing=0.0)):
        check_config(make_config("synthetic", **setting))


def test_the_training_split_needs_k1_images():
    check_data_size(make_config("synthetic", k1=30), 30)
    with pytest.raises(ConfigError, match="29 images, fewer than k1=30"):
        check_data_size(make_config("synthetic", k1=30), 29)


def test_label_smoothing_has_a_flag_and_its_check_names_it(tmp_path):
    parser = build_parser()
    given = config_from_args(parser.parse_args(["--label-smoothing", "0.2",
                                                "--logs-dir", str(tmp_path / "x")]))
    assert given.label_smoothing == 0.2
    default = config_from_args(parser.parse_args(["--logs-dir", str(tmp_path / "x")]))
    assert default.label_smoothing == RECIPE["label_smoothing"]
    text = " ".join(parser.format_help().split())
    assert f"--label-smoothing LABEL_SMOOTHING label smoothing of the part cross-entropy " \
           f"before --aals-epoch (default: {RECIPE['label_smoothing']})" in text
    with pytest.raises(ConfigError, match=r"--label-smoothing must lie in \[0, 1\]; got 1.5"):
        check_config(make_config("synthetic", label_smoothing=1.5))


def test_a_batch_of_one_identity_is_refused(tmp_path):
    """-b 4 with the default 4 instances: one pseudo identity per batch, no triplet negative."""
    with pytest.raises(ConfigError, match=r"--batch-size 4 with --num-instances 4 is one identity "
                                          r"per batch.*no negative.*--batch-size 8 or more"):
        check_config(make_config("synthetic", batch_size=4))
    with pytest.raises(ConfigError, match="--batch-size 8 with --num-instances 8 is one identity"):
        check_config(make_config("veri", batch_size=8, pretrained="none"))
    for batch, instances in ((8, 4), (4, 2)):
        check_config(make_config("synthetic", batch_size=batch, num_instances=instances))
    args = build_parser().parse_args(["-b", "4", "--logs-dir", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="one identity per batch"):
        config_from_args(args)
