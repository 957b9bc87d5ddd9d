"""``python -m pplr_fast.visualize agreement --checkpoint RUN/best.pth``: what the
cross-agreement score sees.

For each part n (numbered from 0, the top stripe, as in metrics.jsonl's
agreement_per_part), one PNG grid: the training images with the LOWEST score
A[i, n] (top block) and with the HIGHEST (bottom block), ``--count`` of each
(default 50; at most half the training set each, so the blocks never share an
image), the score printed under each image and part n's horizontal stripe
outlined. Low scores are where the stripe's neighbours disagree with the whole
body's: occlusion, background, several people in the stripe.

The scores are the ones the checkpoint stores (the clustering stage of its
epoch); the images are that run's training set, read from the dataset and
data folder recorded in the checkpoint unless ``--dataset``/``--data-dir``
say otherwise (the listing must have as many images as there are scores).

Near-duplicates: re-ID training sets hold runs of nearly identical frames, and
those would fill a grid with one scene. Walking down the ranking, an image is
left out when the Euclidean distance of its L2-normalised global feature (the
checkpoint's network, eval mode) to an image already in the same block is
below ``--duplicate-distance`` (default 0.2, i.e. cosine similarity above
0.98: consecutive frames of one track, not the same person seen again);
0 keeps every image.

The grids are written beside the checkpoint as
``<checkpoint stem>_agreement_part<n>.png``, each titled with the checkpoint
(run folder and file name), its epoch and the part; the command prints each
path and the scores shown, in grid order.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

# Grid layout (pixels): every image is resized to TILE_W x TILE_H, its score is
# written in a LABEL_H band under it, tiles are PAD apart and from the edges;
# the PNG starts with a TITLE_H header line and each block with a TITLE_H line.
TILE_W, TILE_H = 64, 128
LABEL_H = 14
TITLE_H = 18
PAD = 4
STRIPE_COLOUR = (255, 210, 0)
DEFAULT_DUPLICATE_DISTANCE = 0.2


class VisualizeError(ValueError):
    """A checkpoint or dataset that cannot be shown; the message names the fix."""


@dataclass
class PartGrid:
    """The images shown for one part: training-set indices and their scores, in grid order."""

    part: int
    lowest: list[int]
    lowest_scores: list[float]
    highest: list[int]
    highest_scores: list[float]
    path: Path | None = None
    checkpoint: str = ""      # what the header names: "<run folder>/<file name>"
    epoch: int = -1           # the checkpoint's epoch, whose clustering gave the scores


def feature_map_rows(height: int) -> int:
    """Rows of the backbone's layer4 map for an input ``height`` (output stride 16)."""
    rows = height
    for _ in range(4):                       # conv1, max-pool, layer2, layer3 halve (rounding up)
        rows = (rows + 1) // 2
    return rows


def stripe_bounds(part: int, num_parts: int, height: int) -> tuple[float, float]:
    """Top and bottom of part ``part``'s pooling stripe as fractions of the image height.

    The part feature is an adaptive average pool of the layer4 map into
    ``num_parts`` rows; stripe n covers map rows floor(n R / N_p) to
    ceil((n+1) R / N_p) (exclusive), R = :func:`feature_map_rows`.
    """
    rows = feature_map_rows(height)
    return (math.floor(part * rows / num_parts) / rows,
            math.ceil((part + 1) * rows / num_parts) / rows)


def select_extremes(order: Sequence[int], count: int, min_distance: float,
                    features: Callable[[list[int]], np.ndarray],
                    exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """The first ``count`` indices of ``order`` that are not near-duplicates.

    An index is skipped when it is in ``exclude`` or when its feature lies
    closer than ``min_distance`` (Euclidean) to one already taken.
    ``features(indices)`` returns their (len, D) features; it is asked for
    candidates in chunks, so only the top of the ranking is ever extracted.
    """
    taken: list[int] = []
    taken_features: list[np.ndarray] = []
    chunk = max(2 * count, 16)
    for start in range(0, len(order), chunk):
        candidates = [i for i in order[start:start + chunk] if i not in exclude]
        if not candidates:
            continue
        block = features(candidates) if min_distance > 0 else None
        for position, index in enumerate(candidates):
            if len(taken) == count:
                return taken
            if block is not None and taken_features:
                distance = np.linalg.norm(np.stack(taken_features) - block[position], axis=1)
                if distance.min() < min_distance:
                    continue
            taken.append(index)
            if block is not None:
                taken_features.append(block[position])
        if len(taken) == count:
            break
    return taken


def _font():
    """Pillow's bundled font at 12 px (its 10 px default squeezes the spaces away)."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=12)
    except TypeError:                        # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def grid_titles(grid: PartGrid, num_parts: int) -> tuple[str, str, str]:
    """The header and the two block titles of a part's PNG.

    Parts are numbered from 0 (the top stripe), as in the file names, the
    printed lines and metrics.jsonl's ``agreement_per_part``.
    """
    header = (f"{grid.checkpoint}, epoch {grid.epoch}: part {grid.part} of parts "
              f"0-{num_parts - 1} (top to bottom)")
    return (header, f"part {grid.part}: {len(grid.lowest)} lowest agreement scores",
            f"part {grid.part}: {len(grid.highest)} highest agreement scores")


def grid_size(num_lowest: int, num_highest: int, columns: int,
              text_width: int = 0) -> tuple[int, int]:
    """(width, height) of a part's PNG with these many images per block; at least
    ``text_width`` (the widest title) plus the margins wide."""
    def block(n: int) -> int:
        return TITLE_H + max(1, math.ceil(n / columns)) * (TILE_H + LABEL_H + PAD)
    width = max(columns * (TILE_W + PAD) + PAD, text_width + 2 * PAD)
    return width, PAD + TITLE_H + block(num_lowest) + block(num_highest)


def render_grid(grid: PartGrid, samples: Sequence[tuple[str, int, int]], num_parts: int,
                train_height: int, columns: int, read_image: Callable):
    """The PIL image of one part's grid (layout: module constants)."""
    from PIL import Image, ImageDraw

    font = _font()
    header, lowest_title, highest_title = titles = grid_titles(grid, num_parts)
    text_width = math.ceil(max(font.getlength(title) for title in titles))
    width, height = grid_size(len(grid.lowest), len(grid.highest), columns, text_width)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top, bottom = stripe_bounds(grid.part, num_parts, train_height)
    draw.text((PAD, PAD + 2), header, fill=(0, 0, 0), font=font)
    y = PAD + TITLE_H
    blocks = ((lowest_title, grid.lowest, grid.lowest_scores),
              (highest_title, grid.highest, grid.highest_scores))
    for title, indices, scores in blocks:
        draw.text((PAD, y + 2), title, fill=(0, 0, 0), font=font)
        y += TITLE_H
        for k, (index, score) in enumerate(zip(indices, scores)):
            x0 = PAD + (k % columns) * (TILE_W + PAD)
            y0 = y + (k // columns) * (TILE_H + LABEL_H + PAD)
            tile = read_image(samples[index][0]).resize((TILE_W, TILE_H), Image.BICUBIC)
            canvas.paste(tile, (x0, y0))
            draw.rectangle((x0, y0 + round(top * TILE_H), x0 + TILE_W - 1,
                            y0 + round(bottom * TILE_H) - 1), outline=STRIPE_COLOUR, width=2)
            draw.text((x0 + 2, y0 + TILE_H + 1), f"{score:.4f}", fill=(0, 0, 0), font=font)
        y += max(1, math.ceil(len(indices) / columns)) * (TILE_H + LABEL_H + PAD)
    return canvas


def _load_model(state: dict, device: torch.device):
    from .models import PPLRNet
    cfg = state["config"]
    model = PPLRNet(cfg["arch"], num_parts=cfg["parts"])
    c, d, p = state["num_classes"], model.feature_dim, cfg["parts"]
    if c > 0:
        model.reset_classifiers(torch.ones(c, d), torch.ones(c, d, p))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def agreement_grids(checkpoint: str, *, dataset: str | None = None, data_dir: str | None = None,
                    count: int = 50, duplicate_distance: float = DEFAULT_DUPLICATE_DISTANCE,
                    columns: int = 10, device: str = "cpu", batch_size: int = 64,
                    workers: int = 0, out_dir: str | None = None) -> list[PartGrid]:
    """Write one PNG per part (see the module docstring); return what each shows."""
    from .data import DatasetError, create_dataset, read_rgb_image
    from .features import extract_features
    from .utils.checkpoint import CheckpointError, load_checkpoint

    if count < 1 or columns < 1 or duplicate_distance < 0:
        raise VisualizeError("--count and --columns must be >= 1 and --duplicate-distance >= 0")
    try:
        state = load_checkpoint(checkpoint, map_location="cpu", command="visualize")
    except CheckpointError as error:
        raise VisualizeError(str(error)) from None
    scores = state.get("scores")
    if scores is None or "config" not in state:
        raise VisualizeError(f"{checkpoint} holds no agreement scores (an interrupted.pth?); "
                             "pass a best.pth or last.pth of a training run")
    cfg = state["config"]
    name, folder = dataset or cfg["dataset"], data_dir or cfg["data_dir"]
    try:
        data = create_dataset(name, folder, check_images=("train",))
    except DatasetError as error:
        raise VisualizeError(f"{error} (the dataset comes from the checkpoint; "
                             "override it with --dataset/--data-dir)") from None
    samples = sorted(data.train)                         # the trainer's order of the scores
    scores = scores.double().numpy()
    if len(samples) != scores.shape[0]:
        raise VisualizeError(
            f"{checkpoint} has agreement scores for {scores.shape[0]} training images, but "
            f"{name} in {folder} lists {len(samples)}: pass the dataset the run trained on "
            "with --dataset and --data-dir")
    torch_device = torch.device(device)
    model = _load_model(state, torch_device)
    cache: dict[int, np.ndarray] = {}

    def features(indices: list[int]) -> np.ndarray:
        missing = [i for i in indices if i not in cache]
        if missing:
            x_g, _ = extract_features(model, [samples[i] for i in missing], height=cfg["height"],
                                      width=cfg["width"], batch_size=batch_size, workers=workers,
                                      device=torch_device, progress=False)
            cache.update(zip(missing, x_g.double().cpu().numpy()))
        return np.stack([cache[i] for i in indices])

    per_side = min(count, len(samples) // 2)
    label = f"{Path(checkpoint).resolve().parent.name}/{Path(checkpoint).name}"
    out = Path(out_dir) if out_dir else Path(checkpoint).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    grids = []
    for part in range(scores.shape[1]):
        column = scores[:, part]
        ascending = np.argsort(column, kind="stable").tolist()
        descending = np.argsort(-column, kind="stable").tolist()
        lowest = select_extremes(ascending, per_side, duplicate_distance, features)
        highest = select_extremes(descending, per_side, duplicate_distance, features,
                                  exclude=set(lowest))
        grid = PartGrid(part, lowest, [float(column[i]) for i in lowest],
                        highest, [float(column[i]) for i in highest],
                        checkpoint=label, epoch=int(state["epoch"]))
        grid.path = out / f"{Path(checkpoint).stem}_agreement_part{part}.png"
        render_grid(grid, samples, scores.shape[1], cfg["height"], columns,
                    read_rgb_image).save(grid.path)
        grids.append(grid)
    return grids


def build_parser() -> argparse.ArgumentParser:
    from .utils.cli import plain_help
    parser = argparse.ArgumentParser(prog="python -m pplr_fast.visualize",
                                     description=plain_help(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    a = commands.add_parser("agreement", help="per part, the lowest and highest scoring images")
    a.add_argument("--checkpoint", required=True, metavar="RUN/best.pth")
    a.add_argument("-d", "--dataset", help="dataset name (default: the checkpoint's)")
    a.add_argument("--data-dir", metavar="PATH", help="data folder (default: the checkpoint's)")
    a.add_argument("--count", type=int, default=50, help="images per block (50)")
    a.add_argument("--duplicate-distance", type=float, default=DEFAULT_DUPLICATE_DISTANCE,
                   help="leave out images whose normalised global feature is closer than this "
                        f"to one already shown ({DEFAULT_DUPLICATE_DISTANCE}; 0 keeps all)")
    a.add_argument("--columns", type=int, default=10, help="images per grid row (10)")
    a.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    a.add_argument("-b", "--batch-size", type=int, default=64, help="feature extraction batch")
    a.add_argument("-j", "--workers", type=int, default=0, help="data-loading processes (0)")
    a.add_argument("--out-dir", metavar="PATH", help="folder of the PNGs (default: the "
                                                      "checkpoint's)")
    return parser


def main(argv: list[str] | None = None) -> list[PartGrid]:
    args = build_parser().parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but this torch build sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    from .data import ImageReadError
    try:
        grids = agreement_grids(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
                                count=args.count, duplicate_distance=args.duplicate_distance,
                                columns=args.columns, device=device, batch_size=args.batch_size,
                                workers=args.workers, out_dir=args.out_dir)
    except (VisualizeError, ImageReadError) as error:
        raise SystemExit(f"error: {error}") from None
    if grids:
        print(f"{grids[0].checkpoint}, epoch {grids[0].epoch}: agreement of parts "
              f"0-{len(grids) - 1} (top to bottom)")
    for grid in grids:
        print(f"part {grid.part}: {grid.path}")
        print("  lowest: " + " ".join(f"{s:.4f}" for s in grid.lowest_scores))
        print("  highest: " + " ".join(f"{s:.4f}" for s in grid.highest_scores))
    return grids


def cli(argv: list[str] | None = None) -> None:
    """The ``pplr-visualize`` console script: :func:`main`, exit status 0 once the PNGs are written.

    ``main`` returns the grids (for Python callers); a console script returning them would
    print the list and exit 1.
    """
    main(argv)


if __name__ == "__main__":
    cli()
