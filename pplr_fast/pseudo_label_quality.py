"""How good an epoch's pseudo-labels are, measured against the true training identities.

The training folders of every supported dataset name each image's identity;
the method never reads it (it trains on its own clusters). The trainer passes
it here only to log, per epoch:

- ``pseudo_ari``, ``pseudo_nmi``: adjusted Rand index and normalised mutual
  information (arithmetic-mean normalisation, scikit-learn's default) between
  the cluster labels and the true identities, over the KEPT images only
  (DBSCAN's outliers, label -1, are left out of the epoch's training set and
  of these numbers; NaN when nothing is kept);
- ``pseudo_purity``: over the kept images, the fraction whose cluster's most
  common true identity is their own (``Σ_clusters max_id n(cluster, id) / kept``);
- ``kept_fraction``: kept images / all training images (so a high ARI on a
  small kept set reads as what it is);
- ``agreement_per_part``: the mean cross-agreement score of each part over
  ALL training images (the scores exist for outliers too).

Plain numpy (int64 counts, float64 sums); scikit-learn is the oracle of the
tests only.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def contingency_table(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """(A, B) int64 counts of each pair (distinct value of a, distinct value of b)."""
    _, a = np.unique(labels_a, return_inverse=True)
    _, b = np.unique(labels_b, return_inverse=True)
    a, b = a.ravel(), b.ravel()
    rows, cols = (int(a.max()) + 1, int(b.max()) + 1) if a.size else (0, 0)
    table = np.zeros((rows, cols), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def _pairs(counts: np.ndarray) -> float:
    """Σ count·(count-1)/2 in float64 (exact up to 2^53 pairs)."""
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1.0) / 2.0).sum())


def _check_pair(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    labels_true, labels_pred = np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()
    if labels_true.shape != labels_pred.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got "
                         f"{labels_true.size} and {labels_pred.size}")
    return labels_true, labels_pred


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Hubert-Arabie adjusted Rand index of two labelings of the same items.

    ``(index - expected) / (max - expected)`` with index = Σ_ij C(n_ij, 2),
    expected = Σ_i C(a_i, 2) Σ_j C(b_j, 2) / C(n, 2), max = mean of the two
    row/column sums; 1.0 when max == expected (both labelings are one cluster,
    or both all singletons, or empty), as scikit-learn does.
    """
    labels_true, labels_pred = _check_pair(labels_true, labels_pred)
    table = contingency_table(labels_true, labels_pred)
    index = _pairs(table)
    rows, cols = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    total = _pairs(np.array([labels_true.size]))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2.0
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution given by positive counts."""
    p = counts[counts > 0].astype(np.float64) / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(labels_true, labels_pred) -> float:
    """Mutual information / arithmetic mean of the two entropies (nats cancel).

    1.0 when both labelings have one cluster each (or no items), 0.0 when the
    mutual information is 0 otherwise, as scikit-learn does.
    """
    labels_true, labels_pred = _check_pair(labels_true, labels_pred)
    table = contingency_table(labels_true, labels_pred)
    if table.shape[0] == table.shape[1] <= 1:
        return 1.0
    n = float(table.sum())
    rows, cols = table.sum(axis=1).astype(np.float64), table.sum(axis=0).astype(np.float64)
    i, j = np.nonzero(table)
    joint = table[i, j].astype(np.float64)
    mutual = float((joint / n * (np.log(joint * n) - np.log(rows[i] * cols[j]))).sum())
    if mutual <= 0.0:
        return 0.0
    return mutual / ((_entropy(rows) + _entropy(cols)) / 2.0)


def cluster_purity(labels_true, labels_pred) -> float:
    """Σ over predicted clusters of the count of its most common true label, / n."""
    labels_true, labels_pred = _check_pair(labels_true, labels_pred)
    if labels_true.size == 0:
        raise ValueError("cluster_purity of an empty labeling is undefined")
    return float(contingency_table(labels_true, labels_pred).max(axis=0).sum() / labels_true.size)


def pseudo_label_quality(pseudo_labels, true_ids, scores=None) -> dict[str, Any]:
    """The per-epoch record entries described in the module docstring.

    Args:
        pseudo_labels: (N,) cluster labels, -1 for outliers (tensor or array).
        true_ids: (N,) true identities of the same images, same order.
        scores: optional (N, N_p) cross-agreement scores.
    """
    labels = np.asarray(_to_numpy(pseudo_labels)).ravel()
    truth = np.asarray(_to_numpy(true_ids)).ravel()
    if labels.shape != truth.shape:
        raise ValueError(f"{labels.size} pseudo-labels but {truth.size} true identities: "
                         "both must list the same training images")
    kept = labels >= 0
    record: dict[str, Any] = {"kept_fraction": float(kept.mean()) if labels.size else math.nan}
    if kept.any():
        record["pseudo_ari"] = adjusted_rand_index(truth[kept], labels[kept])
        record["pseudo_nmi"] = normalized_mutual_info(truth[kept], labels[kept])
        record["pseudo_purity"] = cluster_purity(truth[kept], labels[kept])
    else:
        record.update(pseudo_ari=math.nan, pseudo_nmi=math.nan, pseudo_purity=math.nan)
    if scores is not None:
        scores = np.asarray(_to_numpy(scores), dtype=np.float64)
        if scores.ndim != 2 or scores.shape[0] != labels.size:
            raise ValueError(f"scores must be (N={labels.size}, N_p), got {scores.shape}")
        record["agreement_per_part"] = [float(v) for v in scores.mean(axis=0)]
    return record


def _to_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def plot_quality(ax, records: Sequence[dict[str, Any]]) -> None:
    """Pseudo-label ARI, NMI, purity, kept fraction and per-part agreement on ``ax``."""
    epochs = [r for r in records if "kept_fraction" in r]
    styles = {"pseudo_ari": ("ARI", "o-"), "pseudo_nmi": ("NMI", "s-"),
              "pseudo_purity": ("purity", "^-"), "kept_fraction": ("kept fraction", "x--")}
    for key, (label, style) in styles.items():
        points = [(r["epoch"], r[key]) for r in epochs
                  if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if points:
            ax.plot(*zip(*points), style, label=label)
    parts = max((len(r.get("agreement_per_part", [])) for r in epochs), default=0)
    for n in range(parts):
        points = [(r["epoch"], r["agreement_per_part"][n]) for r in epochs
                  if len(r.get("agreement_per_part", [])) > n]
        ax.plot(*zip(*points), ":", marker=".", label=f"agreement part {n}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pseudo-labels vs true ids")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    if epochs:
        ax.legend(fontsize=7, ncol=3, loc="lower right")
