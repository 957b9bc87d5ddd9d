"""Synthetic dataset: determinism, atomic (re)generation, Market layout, learnable identity."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from pplr_fast.data import create_dataset, make_synthetic_dataset, read_market_layout, save_preview
from pplr_fast.data import synthetic

SMALL = dict(num_train_ids=5, num_test_ids=3, num_cameras=2)


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    """The full default synthetic dataset, generated once for this module."""
    data_dir = tmp_path_factory.mktemp("data")
    return create_dataset("synthetic", str(data_dir))


def _stripe_means(path):
    """Mean colour of the central columns of the three horizontal stripes."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    height, width = pixels.shape[:2]
    centre = pixels[:, width * 3 // 8: width * 5 // 8]
    stripes = [centre[i * height // 3:(i + 1) * height // 3] for i in range(3)]
    return np.concatenate([stripe.mean((0, 1)) for stripe in stripes])


def test_default_dataset_counts_and_market_names(default_dataset):
    config = synthetic.SyntheticConfig()
    dataset = default_dataset
    assert dataset.name == "synthetic"
    assert dataset.num_train_pids == config.num_train_ids
    assert dataset.num_train_cams == config.num_cameras
    assert config.num_train_ids * config.min_images_per_id <= len(dataset.train) \
        <= config.num_train_ids * config.max_images_per_id
    query_pids = {pid for _, pid, _ in dataset.query}
    gallery_pids = {pid for _, pid, _ in dataset.gallery}
    train_pids = {pid for _, pid, _ in dataset.train}
    assert len(query_pids) == config.num_test_ids and not query_pids & train_pids
    assert gallery_pids == query_pids | {0}  # distractors (pid 0) only in the gallery
    assert sum(pid == 0 for _, pid, _ in dataset.gallery) == config.num_distractors
    assert len(dataset.query) == config.num_test_ids * config.queries_per_id
    # junk (pid -1) files exist on disk but the Market parser drops them
    gallery_dir = os.path.join(dataset.root, "bounding_box_test")
    assert sum(name.startswith("-1_") for name in os.listdir(gallery_dir)) == config.num_junk
    # every query has a true match in another camera
    for _, pid, cam in dataset.query:
        assert any(p == pid and c != cam for _, p, c in dataset.gallery)
    with Image.open(dataset.train[0][0]) as image:
        assert image.size == (synthetic.IMAGE_WIDTH, synthetic.IMAGE_HEIGHT) and image.mode == "RGB"


def test_identity_is_learnable_from_stripe_colours(default_dataset):
    """Nearest neighbour on per-stripe mean colours finds the same identity far above chance,
    across cameras too; each stripe on its own carries identity evidence."""
    samples = default_dataset.train
    features = np.stack([_stripe_means(path) for path, _, _ in samples])
    pids = np.array([pid for _, pid, _ in samples])
    cams = np.array([cam for _, _, cam in samples])
    chance = 1.0 / len(set(pids.tolist()))

    def nn_accuracy(columns, cross_camera):
        x = features[:, columns]
        dist = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        if cross_camera:
            dist[cams[:, None] == cams[None]] = np.inf
        return np.mean(pids[dist.argmin(1)] == pids)

    any_camera = nn_accuracy(slice(None), cross_camera=False)
    other_camera = nn_accuracy(slice(None), cross_camera=True)
    assert any_camera > 30 * chance and other_camera > 20 * chance
    assert other_camera < any_camera  # matching across cameras is harder
    for stripe in range(3):
        assert nn_accuracy(slice(3 * stripe, 3 * stripe + 3), cross_camera=False) > 8 * chance

    # cameras matter: images of one camera share a colour cast and background
    cam_means = np.stack([features[cams == c].mean(0) for c in np.unique(cams)])
    assert np.ptp(cam_means, axis=0).max() > 0.05


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    b = make_synthetic_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    c = make_synthetic_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    names = sorted(os.listdir(os.path.join(a, "bounding_box_train")))
    assert names == sorted(os.listdir(os.path.join(b, "bounding_box_train")))
    for name in names[:5]:
        with open(os.path.join(a, "bounding_box_train", name), "rb") as fa, \
                open(os.path.join(b, "bounding_box_train", name), "rb") as fb:
            assert fa.read() == fb.read()
    first_c = sorted(os.listdir(os.path.join(c, "bounding_box_train")))[0]
    with open(os.path.join(a, "bounding_box_train", names[0]), "rb") as fa, \
            open(os.path.join(c, "bounding_box_train", first_c), "rb") as fc:
        assert fa.read() != fc.read()

def test_reuse_and_atomic_regeneration(tmp_path):
    folder = make_synthetic_dataset(str(tmp_path), **SMALL)
    assert folder == os.path.join(str(tmp_path), "synthetic")
    marker = os.path.join(folder, synthetic.MARKER_NAME)
    recorded = json.load(open(marker))
    assert recorded["generator_version"] == synthetic.GENERATOR_VERSION
    assert recorded["config"]["num_train_ids"] == SMALL["num_train_ids"]
    assert not [n for n in os.listdir(tmp_path) if n != "synthetic"]  # no temp folder left

    # a complete folder is reused as is
    sentinel = os.path.join(folder, "sentinel.txt")
    open(sentinel, "w").close()
    assert make_synthetic_dataset(str(tmp_path), **SMALL) == folder and os.path.exists(sentinel)

    # no marker (interrupted copy): regenerated
    os.remove(marker)
    make_synthetic_dataset(str(tmp_path), **SMALL)
    assert os.path.exists(marker) and not os.path.exists(sentinel)

    # another generator version: regenerated
    json.dump({**recorded, "generator_version": -1}, open(marker, "w"))
    open(sentinel, "w").close()
    make_synthetic_dataset(str(tmp_path), **SMALL)
    assert json.load(open(marker))["generator_version"] == synthetic.GENERATOR_VERSION
    assert not os.path.exists(sentinel)

    # a temp folder abandoned by a dead process is cleaned up; the dataset parses
    dead = os.path.join(str(tmp_path), f"{synthetic._TEMP_PREFIX}999999999-x")
    os.makedirs(os.path.join(dead, "bounding_box_train"))
    os.remove(marker)
    make_synthetic_dataset(str(tmp_path), **SMALL)
    assert not os.path.exists(dead)
    assert read_market_layout(folder, name="synthetic").num_train_pids == SMALL["num_train_ids"]


def test_preview_grid(tmp_path, default_dataset):
    png = save_preview(default_dataset.root, str(tmp_path / "preview.png"),
                       num_ids=3, images_per_id=4)
    with Image.open(png) as grid:
        assert grid.size == (4 * (synthetic.IMAGE_WIDTH + 2) + 2,
                             3 * (synthetic.IMAGE_HEIGHT + 2) + 2)


def test_too_many_cameras_for_market_names(tmp_path):
    with pytest.raises(ValueError, match="num_cameras"):
        make_synthetic_dataset(str(tmp_path), num_cameras=7)
