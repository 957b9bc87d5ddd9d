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
    expected = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
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
    hits = sum(np.asarray(crop(Image.fromarray(marked)))[0, 0] == 255 for _ in range(21 * 21 * 20))
    # 21 x 21 equally likely offsets: expect 20 hits at (0, 0)
    assert 5 <= hits <= 40


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
