"""The run's metrics: one JSON line per epoch, and a PNG of them per epoch."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per line to ``path``; every line is flushed at once."""

    def __init__(self, path: str | os.PathLike, truncate_after_epoch: int | None = None):
        self.path = Path(path)     # the folder is made by the first append, not here
        if truncate_after_epoch is not None and self.path.exists():
            # resuming: drop lines of epochs the checkpoint does not contain
            kept = [r for r in self.read() if r.get("epoch", -1) <= truncate_after_epoch]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Four panels per epoch, written as a PNG: accuracy (mAP, rank-1), pseudo-labels
    (clusters and outliers, from 0), the training losses (total and each term) and the
    pseudo-labels' quality against the true identities (pplr_fast.pseudo_label_quality)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..pseudo_label_quality import plot_quality

    path = Path(path)
    epochs = [r for r in records if "epoch" in r]

    def series(key: str, scale: float = 1.0):
        points = [(r["epoch"], scale * r[key]) for r in epochs
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return tuple(zip(*points)) if points else None

    fig, ((acc, labels), (losses, quality)) = plt.subplots(2, 2, figsize=(12, 8), dpi=110)
    for key, style, name in (("mAP", "o-", "mAP"), ("rank1", "s--", "rank-1")):
        if (xy := series(key, 100.0)) is not None:
            acc.plot(*xy, style, label=name)
    acc.set(title="evaluation", xlabel="epoch (-1 = before training)", ylabel="%")
    for key, style, name in (("clusters", "o-", "clusters (pseudo identities)"),
                             ("outliers", "s--", "outliers (not trained on)")):
        if (xy := series(key)) is not None:
            labels.plot(*xy, style, label=name)
    labels.set(title="pseudo-labels", xlabel="epoch", ylabel="images / clusters")
    labels.set_ylim(bottom=0)
    for key, name in (("loss", "total"), ("loss_pglr", "PGLR (global)"),
                      ("loss_global_ce", "global cross-entropy (Baseline)"),
                      ("loss_part", "part (AALS / label-smoothed CE)"), ("loss_triplet", "soft triplet"),
                      ("loss_camera", "camera (PPLR-CAM)")):
        if (xy := series(key)) is not None:
            losses.plot(*xy, "o-" if key == "loss" else ".--", label=name)
    losses.set(title="training loss (mean over the epoch)", xlabel="epoch", ylabel="loss")
    plot_quality(quality, epochs)
    quality.set_title("pseudo-labels against the true identities")
    for ax in (acc, labels, losses, quality):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (acc, labels, losses):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
