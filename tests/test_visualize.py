"""``python -m pplr_fast.visualize agreement``: grids of a tiny run's extreme agreement scores."""
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pplr_fast import visualize
from pplr_fast.data import make_synthetic_dataset, read_market_layout
from pplr_fast.trainer import PPLRTrainer, TrainConfig
from pplr_fast.utils.checkpoint import load_checkpoint

COUNT = 6


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch run on a small Market-layout folder; its best.pth."""
    data_dir = tmp_path_factory.mktemp("data")
    folder = make_synthetic_dataset(str(data_dir / "gen"), num_train_ids=12, num_test_ids=8)
    (data_dir / "Market-1501").symlink_to(folder)          # read back as -d market1501
    cfg = TrainConfig(dataset="market1501", data_dir=str(data_dir), arch="resnet18", height=64,
                      width=32, batch_size=16, num_instances=4, workers=0, epochs=1, iters=1,
                      eval_step=1, k1=10, k2=3, k=5, eps=0.7, parts=2,
                      logs_dir=str(data_dir / "run"), progress=False, backend="reference", seed=3)
    dataset = read_market_layout(folder, name="market1501")
    PPLRTrainer(cfg, dataset, torch.device("cpu")).fit()
    return data_dir / "run" / "best.pth"


def printed_grids(stdout):
    """{part: (path, lowest scores, highest scores)} from the command's output."""
    grids = {}
    for part, path, low, high in re.findall(
            r"part (\d+): (\S+)\n  lowest: ([\d. ]+)\n  highest: ([\d. ]+)\n", stdout):
        grids[int(part)] = (path, [float(s) for s in low.split()], [float(s) for s in high.split()])
    return grids


def test_grids_show_the_sorted_extremes(tiny_run, capsys):
    visualize.main(["agreement", "--checkpoint", str(tiny_run), "--count", str(COUNT),
                    "--duplicate-distance", "0", "--columns", "4", "--device", "cpu"])
    grids = printed_grids(capsys.readouterr().out)
    scores = load_checkpoint(tiny_run)["scores"].double().numpy()
    assert sorted(grids) == [0, 1]
    for part, (path, lowest, highest) in grids.items():
        ranked = np.sort(scores[:, part])
        np.testing.assert_allclose(lowest, ranked[:COUNT], atol=5e-5)
        np.testing.assert_allclose(highest, ranked[::-1][:COUNT], atol=5e-5)
        assert path == str(tiny_run.parent / f"best_agreement_part{part}.png")
        width, height = Image.open(path).size
        rows = -(-COUNT // 4)
        assert width >= 4 * (visualize.TILE_W + visualize.PAD) + visualize.PAD
        assert height == visualize.PAD + visualize.TITLE_H + 2 * (
            visualize.TITLE_H + rows * (visualize.TILE_H + visualize.LABEL_H + visualize.PAD))


def test_outline_marks_the_parts_stripe(tiny_run, tmp_path):
    """The outline's rows are where the part's pooled rows are (2 parts: top, bottom half)."""
    visualize.agreement_grids(str(tiny_run), count=1, duplicate_distance=0, columns=1,
                              out_dir=str(tmp_path))
    for part, (top, bottom) in enumerate([(0, visualize.TILE_H // 2),
                                          (visualize.TILE_H // 2, visualize.TILE_H)]):
        pixels = np.asarray(Image.open(tmp_path / f"best_agreement_part{part}.png"))
        column = pixels[:, visualize.PAD + visualize.TILE_W // 2]      # through the first tile
        y0 = visualize.PAD + 2 * visualize.TITLE_H                     # first tile's top
        outlined = np.flatnonzero((column == visualize.STRIPE_COLOUR).all(axis=1))
        first_tile = outlined[outlined < y0 + visualize.TILE_H]
        assert first_tile.min() == y0 + top and first_tile.max() == y0 + bottom - 1


def test_near_duplicates_are_left_out():
    features = np.array([[0.0, 0.0], [0.05, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [3.0, 3.0]])
    asked = []

    def lookup(indices):
        asked.append(list(indices))
        return features[indices]

    order = [0, 1, 2, 3, 4, 5]
    assert visualize.select_extremes(order, 3, 0.2, lookup) == [0, 2, 4]
    assert visualize.select_extremes(order, 3, 0.0, lookup) == [0, 1, 2]
    assert visualize.select_extremes(order, 10, 0.2, lookup, exclude={0}) == [1, 2, 4, 5]
    assert visualize.select_extremes(order, 3, 0.2, lookup) == [0, 2, 4]
    assert all(len(chunk) <= 16 for chunk in asked)


def test_default_threshold_keeps_order_and_distinctness(tiny_run, capsys):
    grids = visualize.agreement_grids(str(tiny_run), count=COUNT, columns=5)
    for grid in grids:
        assert grid.lowest_scores == sorted(grid.lowest_scores)
        assert grid.highest_scores == sorted(grid.highest_scores, reverse=True)
        assert not set(grid.lowest) & set(grid.highest)
        assert 1 <= len(grid.lowest) <= COUNT


def test_errors_name_the_fix(tiny_run, tmp_path):
    with pytest.raises(SystemExit, match="no such|does not exist"):
        visualize.main(["agreement", "--checkpoint", str(tmp_path / "missing.pth")])
    small = tmp_path / "other"
    (small / "Market-1501").parent.mkdir()
    (small / "Market-1501").symlink_to(make_synthetic_dataset(str(tmp_path / "gen"),
                                                              num_train_ids=6, num_test_ids=3))
    with pytest.raises(SystemExit, match=r"scores for \d+ training images, .* lists \d+.*--data-dir"):
        visualize.main(["agreement", "--checkpoint", str(tiny_run), "--data-dir", str(small)])


def test_titles_name_the_checkpoint_its_epoch_and_the_part_as_files_and_lines_do(tiny_run,
                                                                                 capsys):
    """Parts are numbered from 0 everywhere: the PNG's titles, its file name, the printed
    lines (and metrics.jsonl's agreement_per_part); the header names the checkpoint."""
    grids = visualize.main(["agreement", "--checkpoint", str(tiny_run), "--count", "2",
                            "--columns", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    epoch = load_checkpoint(tiny_run)["epoch"]
    assert out.startswith(f"run/best.pth, epoch {epoch}: agreement of parts 0-1 (top to bottom)\n")
    for grid in grids:
        header, lowest, highest = visualize.grid_titles(grid, 2)
        assert header == f"run/best.pth, epoch {epoch}: part {grid.part} of parts 0-1 (top to bottom)"
        assert lowest.startswith(f"part {grid.part}: ") and highest.startswith(f"part {grid.part}: ")
        assert grid.path.name == f"best_agreement_part{grid.part}.png"
        assert f"part {grid.part}: {grid.path}\n" in out
        # the PNG's header band is that text, drawn whole (the canvas is wide enough for it)
        png = Image.open(grid.path).convert("RGB")
        font = visualize._font()
        assert png.width >= math.ceil(font.getlength(header)) + 2 * visualize.PAD
        band = (0, 0, png.width, visualize.PAD + visualize.TITLE_H)
        expected = Image.new("RGB", png.size, (255, 255, 255))
        from PIL import ImageDraw
        ImageDraw.Draw(expected).text((visualize.PAD, visualize.PAD + 2), header, fill=(0, 0, 0),
                                      font=font)
        assert np.array_equal(np.asarray(png.crop(band)), np.asarray(expected.crop(band)))


def test_console_script_exits_0_and_prints_only_its_lines(tiny_run, tmp_path):
    """pplr-visualize as pip installs it: ``sys.exit(cli())`` (setup.py's entry point)."""
    script = "import sys; from pplr_fast.visualize import cli; sys.exit(cli())"
    done = subprocess.run([sys.executable, "-c", script, "agreement", "--checkpoint", str(tiny_run),
                           "--count", "2", "--device", "cpu", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "{" not in done.stderr and "PartGrid" not in done.stderr
    assert printed_grids(done.stdout).keys() == {0, 1}
