"""Train/test transforms: shapes, normalisation, augmentation frequencies, seeding."""
import numpy as np
import pytest
import torch
from PIL import Image

from pplr_fast.data import build_test_transform, build_train_transform
from pplr_fast.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Pad,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    Resize,
)


def _gradient_image(height=40, width=20):
    """Left-right red ramp, top-bottom green ramp: flips and shifts are visible."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 90)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_test_transform_shape_dtype_and_normalisation():
    image = Image.new("RGB", (30, 70), (255, 0, 128))
    out = build_test_transform(32, 16)(image)
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32 and out.is_contiguous()
    rgb = torch.tensor([1.0, 0.0, 128 / 255])
    # the ImageNet statistics (docs/method.md §4), written out rather than imported
    expected = (rgb - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out.mean((1, 2)), expected, atol=1e-5)
    assert torch.equal(out, build_test_transform(32, 16)(image))


def test_train_transform_shape_and_seeded_determinism():
    transform = build_train_transform(32, 16)
    image = _gradient_image()
    torch.manual_seed(5)
    first = [transform(image) for _ in range(6)]
    torch.manual_seed(5)
    second = [transform(image) for _ in range(6)]
    assert all(a.shape == (3, 32, 16) and a.dtype == torch.float32 for a in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({a.sum().item() for a in first}) > 1  # it does augment


def test_flip_frequency_and_effect():
    flip = RandomHorizontalFlip(0.5)
    image = _gradient_image()
    torch.manual_seed(0)
    flipped = [np.asarray(flip(image))[0, 0, 0] == 255 for _ in range(2000)]  # red ramp reversed
    assert 0.45 < np.mean(flipped) < 0.55


@pytest.mark.parametrize("p", [0.1, 0.8])
def test_flip_and_erasing_probabilities_are_p_not_one_minus_p(p):
    flip, erase = RandomHorizontalFlip(p), RandomErasing(p=p)
    image, sentinel = _gradient_image(4, 4), torch.zeros(3, 16, 16)
    torch.manual_seed(2)
    flipped = np.mean([np.asarray(flip(image))[0, 0, 0] == 255 for _ in range(1000)])
    erased = np.mean([bool((erase(sentinel) != 0).any()) for _ in range(1000)])
    assert abs(flipped - p) < 0.05 and abs(erased - p) < 0.05, (flipped, erased)


def test_resize_is_bicubic():
    noise = np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    out = np.asarray(Resize(24, 12)(image))
    assert out.shape == (24, 12, 3)
    assert np.array_equal(out, np.asarray(image.resize((12, 24), Image.Resampling.BICUBIC)))
    for other in (Image.Resampling.BILINEAR, Image.Resampling.NEAREST, Image.Resampling.LANCZOS):
        assert not np.array_equal(out, np.asarray(image.resize((12, 24), other)))


def test_pad_is_black_and_crop_positions_are_uniform():
    image = _gradient_image(8, 4)
    padded = Pad(10)(image)
    assert padded.size == (24, 28)
    pixels = np.asarray(padded)
    assert pixels[:10].max() == 0 and pixels[:, :10].max() == 0
    assert np.array_equal(pixels[10:18, 10:14], np.asarray(image))

    marked = np.zeros((28, 24), np.uint8)
    marked[0, 0] = 255  # crop contains the corner only when taken at (0, 0)
    crop = RandomCrop(8, 4)
    torch.manual_seed(0)
    marked[27, 23] = 255  # ... and the opposite corner only at offset (20, 20)
    torch.manual_seed(0)
    crops = [np.asarray(crop(Image.fromarray(marked))) for _ in range(21 * 21 * 20)]
    # 21 x 21 equally likely offsets: expect 20 hits at each extreme offset
    assert 5 <= sum(c[0, 0] == 255 for c in crops) <= 40
    assert 5 <= sum(c[7, 3] == 255 for c in crops) <= 40


def test_random_erasing_frequency_area_and_fill():
    erase = RandomErasing(p=0.5)
    torch.manual_seed(0)
    sentinel = torch.full((3, 64, 32), -7.0)
    fill = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    fractions = []
    for _ in range(1000):
        out = erase(sentinel)
        erased = (out != -7.0).all(0)
        assert torch.equal(sentinel, torch.full((3, 64, 32), -7.0))  # input untouched
        if erased.any():
            rows, cols = erased.nonzero(as_tuple=True)
            box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # a rectangle
            assert torch.equal(out[:, erased], fill.view(3, 1).expand(3, int(erased.sum())))
            fractions.append(erased.float().mean().item())
    assert 0.44 < len(fractions) / 1000 < 0.56
    assert 0.015 < min(fractions) and max(fractions) < 0.42


def test_random_erasing_spans_its_area_and_aspect_ranges():
    # area fraction uniform in [0.02, 0.4], height / width uniform in [0.3, 1 / 0.3]
    erase = RandomErasing(p=1.0)
    torch.manual_seed(3)
    areas, aspects = [], []
    for _ in range(1500):
        erased = erase(torch.zeros(3, 100, 100))[0] != 0
        rows, cols = erased.any(1).sum().item(), erased.any(0).sum().item()
        areas.append(rows * cols / 1e4)
        aspects.append(rows / cols)
    assert 0.015 < min(areas) < 0.03 and 0.36 < max(areas) < 0.42
    assert 0.25 < min(aspects) < 0.4 and 2.6 < max(aspects) < 3.8  # (rounding to pixels)
    assert 0.15 < np.median(areas) < 0.25


def test_random_erasing_stays_strictly_inside_the_image():
    # a box as tall or as wide as the image is redrawn, never used
    erase = RandomErasing(p=1.0)
    torch.manual_seed(6)
    spans = []
    for _ in range(2000):
        erased = erase(torch.zeros(3, 10, 10))[0] != 0
        spans.append((int(erased.any(1).sum()), int(erased.any(0).sum())))
    rows, cols = zip(*spans)
    assert max(rows) == 9 and max(cols) == 9


def test_train_transform_pads_10_pixels():
    # A flat grey image: black rows/columns in the output are padding, at most 10, and
    # each extreme crop offset (probability 1/21 per axis) shows all 10.
    transform = build_train_transform(40, 20, flip_p=0.0, erasing_p=0.0)
    image = Image.new("RGB", (20, 40), (200, 200, 200))
    torch.manual_seed(4)
    black_rows, black_cols = [], []
    for _ in range(300):
        black = (transform(image)[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).abs() < 1e-6
        black_rows.append(int(black.all(1).sum()))
        black_cols.append(int(black.all(0).sum()))
    assert max(black_rows) == 10 and max(black_cols) == 10
    assert min(black_rows) == 0 and min(black_cols) == 0


def test_train_transform_pipeline_frequencies():
    """Through the whole pipeline: about half the images flipped, half erased."""
    transform = build_train_transform(40, 20)
    image = _gradient_image()
    torch.manual_seed(1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1)
    flips, erasures = 0, 0
    for _ in range(600):
        out = transform(image)
        red = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        interior = red[12:28, 6:14]  # never padding after a shift of at most 10
        flips += bool(interior[:, 0].mean() > interior[:, -1].mean())
        erasures += bool((out.view(3, -1) == mean).all(0).any())
    assert 0.42 < flips / 600 < 0.58
    assert 0.42 < erasures / 600 < 0.58


@pytest.mark.parametrize("height,width", [(384, 128), (256, 256)])
def test_preset_sizes(height, width):
    assert build_train_transform(height, width)(_gradient_image()).shape == (3, height, width)
