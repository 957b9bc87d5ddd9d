"""Dataset folder parsers on tiny generated folder trees; ImageDataset."""
import os
import warnings

import pytest
import torch
from PIL import Image

from pplr_fast.config import DATASET_PRESETS
from pplr_fast.data import (
    DATASET_NAMES,
    DatasetError,
    DatasetWarning,
    ImageDataset,
    ImageReadError,
    UnreadableImagesError,
    build_test_transform,
    canonical_dataset_name,
    check_images,
    create_dataset,
    image_problem,
    read_market_layout,
    read_rgb_image,
)


def _touch_images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 8), (120, 30, 200)).save(os.path.join(folder, name))


def _market_tree(data_dir, folder_name="Market-1501-v15.09.15"):
    root = os.path.join(data_dir, folder_name)
    _touch_images(os.path.join(root, "bounding_box_train"), [
        "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
        "0000_c1s1_000001_01.jpg",    # distractor: not a training identity
        "-1_c1s1_000002_01.jpg",      # junk
        "0002_c7s1_000451_03.jpg",    # camera out of range (Market has cameras 1..6)
        "0002c1s1_000451_03.jpg",     # malformed
    ])
    _touch_images(os.path.join(root, "query"),
                  ["0003_c1s1_000100_00.jpg", "0003_c4s2_000200_00.jpg",
                   "0000_c2s1_000150_00.jpg",   # distractor: not a query
                   "-1_c3s1_000160_00.jpg"])     # junk
    _touch_images(os.path.join(root, "bounding_box_test"), [
        "0003_c2s1_000300_00.jpg", "0000_c5s1_000400_00.jpg", "-1_c6s1_000500_00.jpg",
        "0004_c6s1_000600_00.jpg"])
    with open(os.path.join(root, "bounding_box_test", "Thumbs.db"), "w") as f:
        f.write("not an image")
    return root


def test_market_parser_junk_distractors_and_malformed_names(tmp_path):
    root = _market_tree(str(tmp_path))
    with pytest.warns(DatasetWarning) as caught:
        dataset = create_dataset("Market1501", str(tmp_path))
    messages = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1  # one warning for the train split, none for the others
    assert "train" in messages[0] and "skipped 2" in messages[0]
    assert "0002_c7s1_000451_03.jpg" in messages[0] or "0002c1s1_000451_03.jpg" in messages[0]

    train_dir = os.path.join(root, "bounding_box_train")
    assert dataset.name == "market1501" and dataset.root == root
    assert dataset.train == [
        (os.path.join(train_dir, "0002_c1s1_000451_03.jpg"), 2, 0),
        (os.path.join(train_dir, "0002_c2s1_000551_01.jpg"), 2, 1),
        (os.path.join(train_dir, "0007_c3s3_077419_03.jpg"), 7, 2),
    ]
    assert [(pid, cam) for _, pid, cam in dataset.query] == [(3, 0), (3, 3)]
    assert [(pid, cam) for _, pid, cam in dataset.gallery] == [(0, 4), (3, 1), (4, 5)]
    assert all(os.path.isabs(path) for path, _, _ in dataset.gallery)
    assert dataset.num_train_pids == 2 and dataset.num_train_cams == 3
    summary = dataset.summary()
    assert "train" in summary and "gallery" in summary and "3 |" in summary


def test_market_accepts_short_folder_name_and_the_dataset_folder_itself(tmp_path):
    root = _market_tree(str(tmp_path), "Market-1501")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        assert create_dataset("market", str(tmp_path)).root == root
        assert len(create_dataset("market", root).train) == 3


def test_duke_parser(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    _touch_images(root / "bounding_box_train", ["0005_c2_f0046985.jpg", "0005_c8_f0047000.JPG"])
    _touch_images(root / "query", ["0010_c1_f0000001.jpg"])
    _touch_images(root / "bounding_box_test", ["0010_c3_f0000002.jpg", "0011_c9_f0000003.jpg"])
    with pytest.warns(DatasetWarning, match="gallery: skipped 1"):
        dataset = create_dataset("duke", str(tmp_path))
    assert [(pid, cam) for _, pid, cam in dataset.train] == [(5, 1), (5, 7)]
    assert [(pid, cam) for _, pid, cam in dataset.gallery] == [(10, 2)]
    assert dataset.name == "dukemtmcreid"


def test_veri_parser_cameras_up_to_20(tmp_path):
    root = tmp_path / "VeRi"
    _touch_images(root / "image_train", ["0001_c001_00016450_0.jpg", "0001_c020_00016460_0.jpg",
                                         "0002_c012_00000001_1.png"])
    _touch_images(root / "image_query", ["0003_c005_00000010_0.jpg"])
    _touch_images(root / "image_test", ["0003_c006_00000020_0.jpg", "0003_c021_00000030_0.jpg"])
    with pytest.warns(DatasetWarning, match="camera 1..20"):
        dataset = create_dataset("VeRi776", str(tmp_path))
    assert [(pid, cam) for _, pid, cam in dataset.train] == [(1, 0), (1, 19), (2, 11)]
    assert [(pid, cam) for _, pid, cam in dataset.gallery] == [(3, 5)]
    assert dataset.num_train_cams == 3


def _msmt_tree(data_dir):
    root = os.path.join(data_dir, "MSMT17_V1")
    files = {
        "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                           "0001/0001_004_15_0303noon_0100_1.jpg 1"],
        "list_val.txt": ["0001/0001_005_07_0303noon_0101_0.jpg 1", "",
                         "0000/0000_000_01_0303morning_0015_0.jpg 0",  # also in list_train
                         "0001/0001_006_16_0303noon_0102_0.jpg 1"],  # camera 16: malformed
        "list_query.txt": ["0000/0000_000_03_0113morning_0001_0.jpg 0"],
        "list_gallery.txt": ["0000/0000_001_05_0113morning_0002_0.jpg 0",
                             "0002/0002_000_05_0113noon_0003_0.jpg 2"],
    }
    os.makedirs(os.path.join(root, "train"))
    os.makedirs(os.path.join(root, "test"))
    for name, lines in files.items():
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(lines) + "\n")
        images = os.path.join(root, "train" if name in ("list_train.txt", "list_val.txt") else "test")
        for line in filter(None, lines):       # the images the lists name
            folder, file = os.path.split(line.split()[0])
            _touch_images(os.path.join(images, folder), [file])
    return root


def test_msmt_lists_val_merged_into_train_cameras_zero_based(tmp_path):
    root = _msmt_tree(str(tmp_path))
    with pytest.warns(DatasetWarning, match="list_val.txt"):
        dataset = create_dataset("MSMT", str(tmp_path))
    train_dir = os.path.join(root, "train")
    assert dataset.train == [
        (os.path.join(train_dir, "0000/0000_000_01_0303morning_0015_0.jpg"), 0, 0),
        (os.path.join(train_dir, "0001/0001_004_15_0303noon_0100_1.jpg"), 1, 14),
        (os.path.join(train_dir, "0001/0001_005_07_0303noon_0101_0.jpg"), 1, 6),
    ]
    query_path = os.path.join(root, "test", "0000/0000_000_03_0113morning_0001_0.jpg")
    assert dataset.query == [(query_path, 0, 2)]
    assert [(pid, cam) for _, pid, cam in dataset.gallery] == [(0, 4), (2, 4)]
    assert dataset.num_train_pids == 2


def test_read_rgb_image_converts_grey_palette_and_alpha_images(tmp_path):
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])                        # colour 1: (200, 100, 50)
    sources = {"grey.png": Image.new("L", (3, 2), 77),
               "alpha.png": Image.new("RGBA", (3, 2), (10, 20, 30, 0)),
               "palette.png": palette}
    expected = {"grey.png": (77, 77, 77), "alpha.png": (10, 20, 30), "palette.png": (200, 100, 50)}
    for name, image in sources.items():
        image.save(tmp_path / name)
        rgb = read_rgb_image(str(tmp_path / name))
        assert rgb.mode == "RGB" and rgb.size == (3, 2), name
        assert rgb.getpixel((2, 1)) == expected[name], name


def test_missing_dataset_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as error:
        create_dataset("market1501", str(tmp_path))
    message = str(error.value)
    expected = os.path.join(str(tmp_path), "Market-1501-v15.09.15")
    assert expected in message
    assert f"{expected}/{{bounding_box_train,bounding_box_test,query}}" in message
    assert isinstance(error.value, ValueError)


def test_missing_subfolder_and_list_file(tmp_path):
    root = _market_tree(str(tmp_path))
    os.rename(os.path.join(root, "query"), os.path.join(root, "query_old"))
    with pytest.raises(DatasetError, match=r"Market-1501-v15\.09\.15/query does not exist"):
        create_dataset("market1501", str(tmp_path))

    msmt = _msmt_tree(str(tmp_path))
    os.remove(os.path.join(msmt, "list_gallery.txt"))
    with pytest.raises(DatasetError) as error:
        create_dataset("msmt17", str(tmp_path))
    assert os.path.join(msmt, "list_gallery.txt") in str(error.value)
    assert "list_val.txt" in str(error.value)  # the layout lists every expected entry


def test_empty_split_is_an_error(tmp_path):
    root = tmp_path / "VeRi"
    _touch_images(root / "image_train", ["0001_c001_00016450_0.jpg"])
    _touch_images(root / "image_query", ["not_a_veri_name.jpg"])
    _touch_images(root / "image_test", ["0003_c006_00000020_0.jpg"])
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="query split is empty"):
        create_dataset("veri", str(tmp_path))


def test_names_aliases_and_presets():
    assert canonical_dataset_name(" Market ") == "market1501"
    assert canonical_dataset_name("DukeMTMC") == "dukemtmcreid"
    assert canonical_dataset_name("veri776") == "veri"
    assert canonical_dataset_name("msmt") == "msmt17"
    with pytest.raises(ValueError, match="market1501.*msmt17"):
        canonical_dataset_name("cuhk03")
    assert set(DATASET_PRESETS) == set(DATASET_NAMES)
    market, msmt, veri = (DATASET_PRESETS[n] for n in ("market1501", "msmt17", "veri"))
    assert (market.height, market.width, market.eps, market.eps_cam, market.lam_cam) \
        == (384, 128, 0.6, 0.4, 0.5)
    assert (msmt.eps, msmt.eps_cam, msmt.lam_cam) == (0.7, 0.6, 1.0)
    assert (veri.height, veri.width, veri.num_instances, veri.eps) == (256, 256, 8, 0.7)


def test_image_dataset_items_and_corrupt_file(tmp_path):
    good = tmp_path / "0001_c1s1_000001_00.jpg"
    Image.new("RGB", (4, 8), (255, 0, 0)).save(good)
    truncated = tmp_path / "0001_c2s1_000002_00.jpg"
    truncated.write_bytes(good.read_bytes()[:40])
    not_image = tmp_path / "0001_c3s1_000003_00.jpg"
    not_image.write_text("hello")
    dataset = ImageDataset([(str(good), 1, 0), (str(truncated), 1, 1), (str(not_image), 1, 2)],
                           build_test_transform(16, 8))
    assert len(dataset) == 3
    image, pid, camid, index = dataset[0]
    assert image.shape == (3, 16, 8) and image.dtype == torch.float32
    assert (pid, camid, index) == (1, 0, 0)
    for index, path in ((1, truncated), (2, not_image)):
        with pytest.raises(ImageReadError) as error:
            dataset[index]
        assert str(path) in str(error.value) and "remove or replace" in str(error.value)
        assert isinstance(error.value, OSError)


def test_every_unreadable_image_is_reported_when_the_dataset_is_scanned(tmp_path):
    """Empty, truncated and non-image files of every split, all in one error; files whose
    ends look unusual but that decode (bytes after a JPEG's end marker, a small JPEG without
    one, a PNG without IEND) still pass."""
    root = tmp_path / "DukeMTMC-reID"
    names = {"bounding_box_train": [f"0005_c2_f00469{k:02d}.jpg" for k in range(6)],
             "query": ["0010_c1_f0000001.jpg", "0011_c1_f0000001.jpg"],
             "bounding_box_test": ["0010_c3_f0000002.jpg", "0011_c3_f0000002.jpg",
                                   "0012_c4_f0000002.png", "0013_c4_f0000003.png"]}
    for folder, files in names.items():
        _touch_images(root / folder, files)
    train, query, gallery = (root / f for f in names)
    whole = (train / names["bounding_box_train"][0]).read_bytes()
    broken = {
        train / "0005_c2_f0046901.jpg": whole[:len(whole) // 2],       # truncated copy
        train / "0005_c2_f0046902.jpg": b"",                            # empty
        train / "0005_c2_f0046904.jpg": b"<html>404 Not Found</html>",  # not an image
        query / "0011_c1_f0000001.jpg": whole[:30],                     # header cut
        gallery / "0011_c3_f0000002.jpg": whole[:len(whole) // 3],
        gallery / "0013_c4_f0000003.png": (gallery / "0013_c4_f0000003.png").read_bytes()[:40],
    }
    for path, data in broken.items():
        path.write_bytes(data)
    (train / "0005_c2_f0046903.jpg").write_bytes(whole[:-2])                  # decodes fine
    (train / "0005_c2_f0046905.jpg").write_bytes(whole + b"camera trailer")   # decodes fine
    png = gallery / "0012_c4_f0000002.png"
    png.write_bytes(png.read_bytes()[:-12])                                   # decodes fine
    with pytest.raises(UnreadableImagesError) as error:
        create_dataset("duke", str(tmp_path))
    message = str(error.value)
    assert "6 of 12 images cannot be read (train 3, query 1, gallery 2)" in message
    assert sorted(path for path, _ in error.value.files) == sorted(map(str, broken))
    shown = [str(path) for path in sorted(broken) if str(path) in message]
    assert len(shown) == 5 and "... and 1 more" in message
    assert "empty file" in message and "truncated" in message
    assert "replace them with intact copies" in message and isinstance(error.value, DatasetError)
    # evaluation reads only the query and gallery: a broken training image does not stop it
    for path in broken:
        if path.parent == train:
            path.unlink()
    with pytest.raises(UnreadableImagesError, match="3 of 6 images cannot be read"):
        create_dataset("duke", str(tmp_path), check_images=("query", "gallery"))
    assert len(create_dataset("duke", str(tmp_path), check_images=()).train) == 3


def test_image_problem_reads_a_few_bytes_of_intact_files(tmp_path, monkeypatch):
    """Intact JPEG, PNG and BMP files are judged by their first and last bytes, not decoded."""
    from pplr_fast.data import image_dataset
    paths = []
    for suffix in ("jpg", "png", "bmp"):
        paths.append(tmp_path / f"a.{suffix}")
        Image.new("RGB", (6, 10), (1, 2, 3)).save(paths[-1])

    def no_decoding(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(image_dataset, "read_rgb_image", no_decoding)
    assert [image_problem(str(p)) for p in paths] == [None, None, None]
    assert image_problem(str(tmp_path / "missing.jpg")) == "no such file"


def test_corrupt_synthetic_image_names_the_regeneration(tmp_path):
    from pplr_fast.data import make_synthetic_dataset
    folder = make_synthetic_dataset(str(tmp_path), num_train_ids=5, num_test_ids=3,
                                    num_cameras=2)
    victim = sorted((tmp_path / "synthetic" / "query").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    dataset = read_market_layout(folder, name="synthetic")
    with pytest.raises(UnreadableImagesError, match=f"(?s){victim.name}: .*delete {folder} and "
                                                    "run again: the synthetic dataset is generated"):
        check_images(dataset)
