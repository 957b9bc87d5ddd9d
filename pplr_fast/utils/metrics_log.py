"""The run's metrics: one JSON line per epoch, and a PNG of mAP and clusters per epoch
above the pseudo-labels' quality per epoch."""
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
    """mAP (left axis) and cluster count (right axis) per epoch, written as a PNG,
    with the pseudo-label quality per epoch (pplr_fast.pseudo_label_quality) below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pseudo_label_quality import plot_quality

    path = Path(path)
    epochs = [r for r in records if "epoch" in r]
    fig, (ax, quality_ax) = plt.subplots(2, 1, figsize=(7, 7), dpi=120, sharex=True)
    evaluated = [(r["epoch"], 100 * r["mAP"]) for r in epochs
                 if isinstance(r.get("mAP"), (int, float)) and not math.isnan(r["mAP"])]
    if evaluated:
        ax.plot(*zip(*evaluated), "o-", color="tab:blue", label="mAP (%)")
    ax.set_xlabel("epoch (-1 = before training)")
    ax.set_ylabel("mAP (%)", color="tab:blue")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    clusters = [(r["epoch"], r["clusters"]) for r in epochs if "clusters" in r]
    if clusters:
        twin.plot(*zip(*clusters), "s--", color="tab:orange", label="clusters")
    twin.set_ylabel("pseudo identities (clusters)", color="tab:orange")
    ax.set_title("PPLR training: mAP and cluster count per epoch")
    plot_quality(quality_ax, epochs)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
