"""The end of a run: summary.json, metrics.png and the before/after line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..utils.checkpoint import load_checkpoint
from ..utils.metrics_log import MetricsLog, plot_metrics

__all__ = ["write_summary"]


def write_summary(logs: Path, metrics: MetricsLog, initial_metrics: dict | None, best_epoch: int,
                  device: torch.device, say: Callable[[str], None]) -> dict:
    """summary.json (the metrics before training and those of best.pth's epoch) and
    metrics.png in ``logs``; returns the summary. Run on the main process only."""
    summary = {"initial": initial_metrics, "best_epoch": best_epoch}
    best = logs / "best.pth"
    final = None
    if best.exists():
        state = load_checkpoint(best, map_location=device)
        final = next((r for r in metrics.read() if r.get("epoch") == state["epoch"]
                      and "mAP" in r), None)
    summary["final"] = final
    plot_metrics(metrics.read(), logs / "metrics.png")
    (logs / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if initial_metrics and final:
        say(f"mAP before training {initial_metrics['mAP']:.1%} -> after training "
            f"{final['mAP']:.1%} (best epoch {best_epoch}; rank-1 "
            f"{final['rank1']:.1%}, rank-5 {final['rank5']:.1%}, "
            f"rank-10 {final['rank10']:.1%}, mINP {final['mINP']:.1%})")
    say(f"logs, checkpoints and metrics.png in {logs}")
    return summary
