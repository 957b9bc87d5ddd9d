"""Built-in synthetic pedestrian dataset (the default when no data is given).

Little pedestrians are drawn with numpy and written as JPEGs in the
Market-1501 layout, ``<root>/synthetic/{bounding_box_train,bounding_box_test,query}``
with Market file names, so the Market parser reads them.

What makes it a re-ID problem:

* identity lives in body parts: skin, hair style and colour (or a cap); top
  colours and pattern (solid, stripes, checks, open jacket, two-tone), sleeve
  length, a chest logo; trouser / shorts / skirt and their colour; shoes; a
  backpack or handbag; body build. The three horizontal stripes of an image
  (head and shoulders, waist, legs) therefore carry different evidence;
* each camera has its own colour cast, brightness, saturation, background
  texture, blur, noise, JPEG quality, framing (scale and shift) and preferred
  view (front / back / side; a backpack looks different from each);
* every image adds pose (stride, arm swing), framing jitter, light jitter and
  noise; some images are occluded by a block over part of the body.

Camera effects are deliberately moderate: an untrained network's nearest
neighbours mostly share the query's camera, yet colour identity survives, so
training on pseudo labels has something to learn.

The test identities differ from the training ones. Like Market-1501, the
gallery holds a few distractors (pid 0) and junk images (pid -1).

Generation is deterministic given the seed and atomic: images are written to
a temporary sibling folder, a marker file (generator version + parameters) is
written last, and the folder is moved into place with ``os.replace``. A
folder without a matching marker is regenerated.

To look at samples::

    python -c "from pplr_fast.data import make_synthetic_dataset, save_preview; \
               save_preview(make_synthetic_dataset('data'), 'preview.png')"
"""
from __future__ import annotations

import colorsys
import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

GENERATOR_VERSION = 1
MARKER_NAME = "SYNTHETIC_DATASET.json"
FOLDER_NAME = "synthetic"
IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64
_SUPERSAMPLE = 2  # drawn at 2x, then downsampled: anti-aliased edges
_TEMP_PREFIX = ".synthetic-tmp-"

# Random streams: every image, identity and camera has its own Generator,
# seeded with (seed, stream, ids...), so nothing depends on generation order.
_STREAM_CAMERA, _STREAM_PERSON, _STREAM_IMAGE, _STREAM_SPLIT = 1, 2, 3, 4


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated dataset; recorded in the marker file."""

    seed: int = 0
    num_train_ids: int = 64
    num_test_ids: int = 50
    num_cameras: int = 6  # at most 6: Market file names hold one camera digit
    min_images_per_id: int = 10
    max_images_per_id: int = 16
    queries_per_id: int = 2  # one query image in each of this many cameras
    num_distractors: int = 20
    num_junk: int = 10
    occlusion_prob: float = 0.15


# --------------------------------------------------------------- appearance


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _clothing_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.2:  # black / grey / white
        return _hsv(0.0, rng.uniform(0.0, 0.08), rng.uniform(0.08, 0.95))
    return _hsv(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.92))


_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.89, 0.70, 0.55], [0.78, 0.57, 0.42],
                        [0.60, 0.42, 0.30], [0.42, 0.28, 0.20]], dtype=np.float32)
_HAIR_COLOURS = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15],
                          [0.85, 0.72, 0.45], [0.60, 0.60, 0.60], [0.55, 0.20, 0.08]],
                         dtype=np.float32)


@dataclass(frozen=True)
class _Person:
    """Everything that identifies one pedestrian."""

    skin: np.ndarray
    hair: np.ndarray
    hair_style: str        # short | long | bald | cap
    cap: np.ndarray
    top: np.ndarray
    top_second: np.ndarray
    top_pattern: str       # solid | hstripes | vstripes | checks | jacket | twotone
    period: float          # stripe period, in person heights
    long_sleeves: bool
    logo: np.ndarray | None
    bottom: np.ndarray
    bottom_style: str      # trousers | shorts | skirt
    shoes: np.ndarray
    bag_style: str         # none | backpack | handbag
    bag: np.ndarray
    build: float           # width factor
    tallness: float        # height factor


def _make_person(rng: np.random.Generator) -> _Person:
    top = _clothing_colour(rng)
    second = _clothing_colour(rng)
    return _Person(
        skin=np.clip(_SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 0.03, 3), 0, 1),
        hair=_HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=[0.35, 0.25, 0.15, 0.1, 0.1, 0.05])],
        hair_style=str(rng.choice(["short", "long", "bald", "cap"], p=[0.45, 0.3, 0.05, 0.2])),
        cap=_clothing_colour(rng),
        top=top,
        top_second=second,
        top_pattern=str(rng.choice(["solid", "hstripes", "vstripes", "checks", "jacket", "twotone"],
                                   p=[0.3, 0.2, 0.1, 0.1, 0.15, 0.15])),
        period=float(rng.uniform(0.035, 0.06)),
        long_sleeves=bool(rng.random() < 0.6),
        logo=_clothing_colour(rng) if rng.random() < 0.3 else None,
        bottom=_clothing_colour(rng),
        bottom_style=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        shoes=_clothing_colour(rng) * np.float32(0.8),
        bag_style=str(rng.choice(["none", "backpack", "handbag"], p=[0.5, 0.3, 0.2])),
        bag=_clothing_colour(rng),
        build=float(rng.uniform(0.85, 1.15)),
        tallness=float(rng.uniform(0.92, 1.04)),
    )


@dataclass(frozen=True)
class _Camera:
    """How one camera sees the world."""

    gains: np.ndarray       # per-channel colour cast
    brightness: float
    saturation: float
    offset: np.ndarray      # additive haze
    wall: np.ndarray
    floor: np.ndarray
    horizon: float          # floor starts at this fraction of the height
    texture: str            # bricks | bars | blotches | tiles
    texture_period: float   # pixels of the 2x canvas
    light_slope: float      # left-to-right brightness ramp
    scale: float            # mean person height / image height
    shift_x: float          # mean horizontal offset, fraction of width
    view_probs: np.ndarray  # P(front), P(back), P(side)
    blur: float
    noise: float            # Gaussian noise std, in [0, 1] units
    jpeg_quality: int


def _make_camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        gains=np.exp(rng.normal(0.0, 0.03, 3)).astype(np.float32),
        brightness=float(np.exp(rng.normal(0.0, 0.05))),
        saturation=float(rng.uniform(0.85, 1.0)),
        offset=rng.uniform(-0.02, 0.03, 3).astype(np.float32),
        wall=_hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.45, 0.75)),
        floor=_hsv(rng.random(), rng.uniform(0.0, 0.1), rng.uniform(0.35, 0.6)),
        horizon=float(rng.uniform(0.55, 0.8)),
        texture=str(rng.choice(["bricks", "bars", "blotches", "tiles"])),
        texture_period=float(rng.uniform(14, 30)),
        light_slope=float(rng.uniform(-0.2, 0.2)),
        scale=float(rng.uniform(0.9, 0.97)),
        shift_x=float(rng.uniform(-0.04, 0.04)),
        view_probs=rng.dirichlet([1.5, 1.5, 1.0]),
        blur=float(rng.uniform(0.0, 0.6)),
        noise=float(rng.uniform(0.01, 0.02)),
        jpeg_quality=int(rng.integers(85, 96)),
    )


# ------------------------------------------------------------------ drawing


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of every pixel (shared, read-only)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y.flags.writeable = x.flags.writeable = False
    return y, x


class _Canvas:
    """An RGB float image with person-relative coordinates ``u`` (across) and ``v`` (down)."""

    def __init__(self, height: int, width: int):
        self.rgb = np.zeros((height, width, 3), dtype=np.float32)
        self.y, self.x = _pixel_grid(height, width)
        self.u = self.v = self.x

    def place_person(self, top: float, centre: float, height: float) -> None:
        self.v = (self.y - top) / height
        self.u = (self.x - centre) / height

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        self.rgb[mask] = colour

    def ellipse(self, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
        return ((self.u - cu) / ru) ** 2 + ((self.v - cv) / rv) ** 2 <= 1.0

    def capsule(self, a: tuple[float, float], b: tuple[float, float], radius: float) -> np.ndarray:
        """Points within ``radius`` of the segment a-b (limbs)."""
        au, av = a
        du, dv = b[0] - au, b[1] - av
        t = np.clip(((self.u - au) * du + (self.v - av) * dv) / (du * du + dv * dv), 0.0, 1.0)
        return (self.u - au - t * du) ** 2 + (self.v - av - t * dv) ** 2 <= radius * radius

    def trapezoid(self, v0: float, v1: float, half0: float, half1: float,
                  centre: float = 0.0) -> np.ndarray:
        """Rows v0..v1, half-width growing linearly from half0 to half1."""
        t = np.clip((self.v - v0) / (v1 - v0), 0.0, 1.0)
        inside_rows = (self.v >= v0) & (self.v <= v1)
        return inside_rows & (np.abs(self.u - centre) <= half0 + t * (half1 - half0))


def _smooth_noise(rng: np.random.Generator, height: int, width: int,
                  cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a small random grid upsampled bilinearly."""
    grid = rng.uniform(0, 255, cells).astype(np.uint8)
    big = Image.fromarray(grid).resize((width, height), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1.0


def _draw_background(canvas: _Canvas, cam: _Camera, rng: np.random.Generator) -> None:
    """Wall with the camera's texture above the horizon, shaded floor below."""
    height, width = canvas.rgb.shape[:2]
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    period = cam.texture_period
    phase_x, phase_y = rng.uniform(0, period, 2)
    if cam.texture == "bricks":
        brick_row = np.floor((rows + phase_y) / (period * 0.5)) % 2
        joints = ((cols + phase_x + brick_row * period * 0.5) % period) < 2.0
        lines = (((rows + phase_y) % (period * 0.5)) < 2.0) | joints
    elif cam.texture == "bars":
        lines = np.broadcast_to(((cols + phase_x) % period) < period * 0.3, (height, width))
    elif cam.texture == "tiles":
        lines = (((cols + phase_x) % period) < 2.0) | (((rows + phase_y) % period) < 2.0)
    else:  # blotches
        lines = _smooth_noise(rng, height, width, (6, 3)) > 0.3
    # Each image mixes the camera's scene colours with colours of its own.
    own_wall = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.85))
    own_floor = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.25, 0.7))
    wall_colour = 0.8 * cam.wall + 0.2 * own_wall
    floor_colour = 0.8 * cam.floor + 0.2 * own_floor
    is_floor = rows >= (cam.horizon + rng.uniform(-0.03, 0.03)) * height
    shade = np.where(is_floor, 1.0 - 0.15 * _smooth_noise(rng, height, width, (4, 2)),
                     1.0 - 0.12 * lines)
    shade *= 1.0 + cam.light_slope * (cols / width - 0.5)
    canvas.rgb[:] = np.where(is_floor[..., None], floor_colour, wall_colour) * shade[..., None]


def _torso_pattern(canvas: _Canvas, person: _Person, view: str) -> np.ndarray:
    """Where the second top colour shows."""
    u, v, period = canvas.u, canvas.v, person.period
    if person.top_pattern == "hstripes":
        return np.floor(v / period) % 2 == 1
    if person.top_pattern == "vstripes":
        return np.floor((u + 1.0) / period) % 2 == 1
    if person.top_pattern == "checks":
        return (np.floor(v / period) + np.floor((u + 1.0) / period)) % 2 == 1
    if person.top_pattern == "jacket":
        return np.abs(u) < 0.03 if view == "front" else np.zeros_like(u, dtype=bool)
    if person.top_pattern == "twotone":
        return v > 0.34
    return np.zeros_like(u, dtype=bool)


def _draw_person(canvas: _Canvas, person: _Person, view: str, rng: np.random.Generator) -> None:
    """Draw one pedestrian: head top at v=0, soles near v=0.98, body axis at u=0."""
    side = view == "side"
    width = person.build * (0.6 if side else 1.0)
    stride = rng.uniform(0.0, 0.09 if side else 0.035)
    swing = rng.uniform(-0.05, 0.05) if side else rng.uniform(0.0, 0.025)
    shoulder, waist = 0.14 * width, 0.12 * width

    # legs and shoes
    hip_u = 0.0 if side else 0.05 * person.build
    leg_r = 0.045 * person.build
    feet = [(-hip_u - stride, 0.93), (hip_u + stride, 0.93)]
    for foot in feet:
        leg = canvas.capsule((np.sign(foot[0]) * hip_u, 0.5), foot, leg_r)
        canvas.paint(leg, person.skin if person.bottom_style != "trousers" else person.bottom)
        if person.bottom_style == "shorts":
            canvas.paint(leg & (canvas.v < 0.66), person.bottom)
        toe_u = foot[0] + (0.03 if side else 0.0)
        canvas.paint(canvas.ellipse(toe_u, 0.955, 0.05, 0.025), person.shoes)
    if person.bottom_style == "skirt":
        canvas.paint(canvas.trapezoid(0.47, 0.7, waist, waist * 1.6), person.bottom)
    else:
        canvas.paint(canvas.trapezoid(0.47, 0.56, waist, waist * 1.05), person.bottom)

    # seen from the side, a backpack sticks out behind the torso
    if person.bag_style == "backpack" and side:
        canvas.paint(canvas.trapezoid(0.18, 0.42, 0.055, 0.06, centre=-0.1), person.bag)

    # torso
    torso = canvas.trapezoid(0.16, 0.5, shoulder, waist) | canvas.ellipse(0.0, 0.19, shoulder, 0.04)
    canvas.paint(torso, person.top)
    canvas.paint(torso & _torso_pattern(canvas, person, view), person.top_second)
    if person.logo is not None and view == "front":
        canvas.paint(canvas.trapezoid(0.24, 0.3, 0.03, 0.03), person.logo)
    if person.bag_style == "backpack" and view == "back":
        canvas.paint(canvas.trapezoid(0.19, 0.43, 0.075 * width, 0.08 * width), person.bag)
    if person.bag_style == "backpack" and view == "front":
        for strap in (-0.055, 0.055):
            straps = canvas.trapezoid(0.16, 0.32, 0.012, 0.012, centre=strap * width)
            canvas.paint(straps, person.bag)

    # arms: sleeves then hands
    sleeve_end = 0.44 if person.long_sleeves else 0.27
    arm_u = [0.02] if side else [-(shoulder + 0.02), shoulder + 0.02]
    for a in arm_u:
        hand_u = a + swing if side else a + np.sign(a) * swing
        arm = canvas.capsule((a, 0.19), (hand_u, 0.47), 0.026)
        canvas.paint(arm, person.skin)
        canvas.paint(arm & (canvas.v < sleeve_end), person.top)
    if person.bag_style == "handbag":
        canvas.paint(canvas.trapezoid(0.42, 0.56, 0.04, 0.05, centre=shoulder + 0.06), person.bag)

    # head, hair, cap
    head_u = 0.012 if side else 0.0
    canvas.paint(canvas.capsule((0.0, 0.12), (0.0, 0.17), 0.022), person.skin)  # neck
    head = canvas.ellipse(head_u, 0.075, 0.05, 0.066)
    canvas.paint(head, person.skin)
    if person.hair_style == "long":
        fall = canvas.trapezoid(0.06, 0.22 if view == "back" else 0.17, 0.05, 0.06,
                                centre=head_u - (0.015 if side else 0.0))
        if view == "front":
            fall &= ~canvas.ellipse(head_u, 0.085, 0.036, 0.055)  # the face shows
        hair = (head & (canvas.v < 0.05)) | fall
        canvas.paint(hair | head if view == "back" else hair, person.hair)
    elif person.hair_style in ("short", "cap"):
        canvas.paint(head & ((canvas.v < 0.045) | (view == "back")), person.hair)
    if person.hair_style == "cap":
        canvas.paint(head & (canvas.v < 0.05), person.cap)
        brim = canvas.trapezoid(0.04, 0.055, 0.06, 0.06, centre=head_u + (0.03 if side else 0.0))
        canvas.paint(brim, person.cap)


def _draw_occluder(canvas: _Canvas, rng: np.random.Generator) -> None:
    """A block over part of the body: a car/railing below or a pole/wall at a side."""
    colour = _clothing_colour(rng)
    shade = 1.0 + 0.2 * _smooth_noise(rng, *canvas.rgb.shape[:2], (3, 3))[..., None]
    if rng.random() < 0.6:
        block = canvas.v > rng.uniform(0.55, 0.78)
    else:
        edge = rng.uniform(0.02, 0.09)
        block = canvas.u > edge if rng.random() < 0.5 else canvas.u < -edge
    canvas.rgb[:] = np.where(block[..., None], colour * shade, canvas.rgb)


def _apply_camera(rgb: np.ndarray, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    light = cam.brightness * np.exp(rng.normal(0.0, 0.06))
    out = rgb * cam.gains * light + cam.offset
    grey = out.mean(axis=2, keepdims=True)
    return grey + cam.saturation * (out - grey)


def _render_image(person: _Person | None, cam: _Camera, occluded: bool,
                  rng: np.random.Generator) -> Image.Image:
    """One camera view of ``person`` (None: a background-only junk image)."""
    height, width = IMAGE_HEIGHT * _SUPERSAMPLE, IMAGE_WIDTH * _SUPERSAMPLE
    canvas = _Canvas(height, width)
    _draw_background(canvas, cam, rng)
    if person is not None:
        scale = np.clip(cam.scale + rng.normal(0, 0.03), 0.7, 1.0)
        person_height = height * person.tallness * scale
        top = (height - person_height) / 2 + rng.normal(0.0, 0.02) * height
        centre = width * (0.5 + cam.shift_x + rng.normal(0.0, 0.04))
        canvas.place_person(top, centre, person_height)
        view = str(rng.choice(["front", "back", "side"], p=cam.view_probs))
        _draw_person(canvas, person, view, rng)
        if occluded:
            _draw_occluder(canvas, rng)
    image = _to_image(canvas.rgb).resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.LANCZOS)
    if cam.blur > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(cam.blur))
    rgb = _apply_camera(np.asarray(image, dtype=np.float32) / 255.0, cam, rng)
    return _to_image(rgb + rng.normal(0.0, cam.noise, rgb.shape).astype(np.float32))


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5))


# ------------------------------------------------------------------ dataset


def _rng(config: SyntheticConfig, stream: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, *ids])


def _images_per_camera(config: SyntheticConfig, rng: np.random.Generator) -> dict[int, int]:
    """Spread one identity's images over 3..5 cameras (or all, if fewer), 2+ per camera."""
    total = int(rng.integers(config.min_images_per_id, config.max_images_per_id + 1))
    most = min(5, config.num_cameras, total // 2)
    num_cams = int(rng.integers(min(3, most), most + 1))
    cams = sorted(rng.choice(config.num_cameras, size=num_cams, replace=False).tolist())
    extra = rng.multinomial(total - 2 * num_cams, np.full(num_cams, 1.0 / num_cams))
    return {cam: 2 + int(n) for cam, n in zip(cams, extra)}


def _market_name(pid: int, cam: int, frame: int) -> str:
    pid_text = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_text}_c{cam + 1}s1_{frame:06d}_00.jpg"


class _Writer:
    """Writes images into the Market folders with unique frame numbers."""

    def __init__(self, root: str, cameras: list[_Camera]):
        self.root, self.cameras = root, cameras
        self.frames: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def write(self, folder: str, pid: int, cam: int, image: Image.Image) -> None:
        frame = self.frames.get(folder, 0)
        self.frames[folder] = frame + 1
        self.counts[folder] = self.counts.get(folder, 0) + 1
        path = os.path.join(self.root, folder, _market_name(pid, cam, frame))
        image.save(path, quality=self.cameras[cam].jpeg_quality)


def _generate(config: SyntheticConfig, out_dir: str) -> dict[str, int]:
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        os.makedirs(os.path.join(out_dir, folder))
    cameras = [_make_camera(_rng(config, _STREAM_CAMERA, c)) for c in range(config.num_cameras)]
    writer = _Writer(out_dir, cameras)

    def render(pid: int, person: _Person | None, cam: int, k: int) -> Image.Image:
        rng = _rng(config, _STREAM_IMAGE, pid + 1, cam, k)  # pid + 1: junk (-1) -> 0
        occluded = person is not None and rng.random() < config.occlusion_prob
        return _render_image(person, cameras[cam], occluded, rng)

    num_ids = config.num_train_ids + config.num_test_ids
    for pid in range(1, num_ids + 1):
        person = _make_person(_rng(config, _STREAM_PERSON, pid))
        split_rng = _rng(config, _STREAM_SPLIT, pid)
        per_cam = _images_per_camera(config, split_rng)
        is_test = pid > config.num_train_ids
        query_cams = set(split_rng.choice(sorted(per_cam), size=config.queries_per_id,
                                          replace=False).tolist()) if is_test else set()
        for cam, count in per_cam.items():
            for k in range(count):
                if not is_test:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if (k == 0 and cam in query_cams) else "bounding_box_test"
                writer.write(folder, pid, cam, render(pid, person, cam, k))

    for k in range(config.num_distractors):  # pid 0: people seen once, gallery only
        person = _make_person(_rng(config, _STREAM_PERSON, num_ids + 1 + k))
        cam = k % config.num_cameras
        writer.write("bounding_box_test", 0, cam, render(0, person, cam, k))
    for k in range(config.num_junk):  # pid -1: background only, dropped by the parser
        cam = k % config.num_cameras
        writer.write("bounding_box_test", -1, cam, render(-1, None, cam, k))
    return writer.counts


def _marker(config: SyntheticConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, "config": asdict(config)}


def _is_complete(folder: str, config: SyntheticConfig) -> bool:
    try:
        with open(os.path.join(folder, MARKER_NAME), encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return {k: recorded.get(k) for k in ("generator_version", "config")} == _marker(config)


def _remove_abandoned_temp_folders(root: str) -> None:
    """Delete temp folders left by generations whose process no longer runs."""
    for entry in os.scandir(root):
        if not (entry.is_dir() and entry.name.startswith(_TEMP_PREFIX)):
            continue
        owner = entry.name[len(_TEMP_PREFIX):].split("-", 1)[0]
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def make_synthetic_dataset(root: str, seed: int = 0, *, num_train_ids: int = 64,
                           num_test_ids: int = 50, num_cameras: int = 6) -> str:
    """Generate (once) the synthetic dataset under ``root``; return its folder.

    The folder is ``<root>/synthetic``. It is reused when its marker matches
    this generator version and these parameters, and regenerated otherwise.
    """
    if not 2 <= num_cameras <= 6:
        raise ValueError(f"num_cameras must be in 2..6 (Market file names), got {num_cameras}")
    config = SyntheticConfig(seed=seed, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                             num_cameras=num_cameras)
    root = os.path.abspath(os.path.expanduser(root))
    target = os.path.join(root, FOLDER_NAME)
    if _is_complete(target, config):
        return target
    os.makedirs(root, exist_ok=True)
    _remove_abandoned_temp_folders(root)
    temp = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=root)
    try:
        counts = _generate(config, temp)
        with open(os.path.join(temp, MARKER_NAME), "w", encoding="utf-8") as f:
            json.dump({**_marker(config), "images": counts}, f, indent=1)
        if _is_complete(target, config):  # another process finished first
            return target
        if os.path.exists(target):  # stale or incomplete: move aside, then delete
            stale = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-stale-", dir=root)
            os.replace(target, os.path.join(stale, FOLDER_NAME))
            shutil.rmtree(stale)
        try:
            os.replace(temp, target)
        except OSError:  # another process moved its copy in meanwhile
            if not _is_complete(target, config):
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def save_preview(dataset_folder: str, png_path: str, num_ids: int = 10,
                 images_per_id: int = 10, split: str = "bounding_box_train") -> str:
    """Save a grid PNG: one row per identity, its first images left to right."""
    by_pid: dict[str, list[str]] = {}
    for name in sorted(os.listdir(os.path.join(dataset_folder, split))):
        if name.endswith(".jpg"):
            by_pid.setdefault(name.split("_")[0], []).append(name)
    rows = list(by_pid.items())[:num_ids]
    gap = 2
    grid = Image.new("RGB", (images_per_id * (IMAGE_WIDTH + gap) + gap,
                             len(rows) * (IMAGE_HEIGHT + gap) + gap), "white")
    for r, (_, names) in enumerate(rows):
        for c, name in enumerate(names[:images_per_id]):
            with Image.open(os.path.join(dataset_folder, split, name)) as image:
                grid.paste(image.convert("RGB"),
                           (gap + c * (IMAGE_WIDTH + gap), gap + r * (IMAGE_HEIGHT + gap)))
    grid.save(png_path)
    return png_path
