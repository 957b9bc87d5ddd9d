"""A symmetric sparse distance matrix: the fast Jaccard result, O(N·k) memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pplr_fast.utils.memory import ensure_fits


@dataclass
class SparseDistance:
    """N x N distances stored in CSR form; every pair not stored reads as ``fill``.

    Both (i, j) and (j, i) are stored, the diagonal too, and the columns of
    each row are sorted. When ``cutoff`` is set, only pairs with
    ``d <= cutoff`` were kept: the matrix is exact for every question about
    distances up to ``cutoff`` (e.g. DBSCAN with ``eps <= cutoff``), and
    ``to_dense`` shows dropped pairs as ``fill``.
    """

    n: int
    crow: torch.Tensor   # (n + 1,) int64 row pointers
    col: torch.Tensor    # (nnz,) int64 column indices
    val: torch.Tensor    # (nnz,) float32 distances
    fill: float = 1.0
    cutoff: float | None = None

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def device(self) -> torch.device:
        return self.val.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def rows(self) -> torch.Tensor:
        """Row index of every stored entry (the COO row vector)."""
        counts = self.crow[1:] - self.crow[:-1]
        return torch.repeat_interleave(torch.arange(self.n, device=self.crow.device), counts)

    def to(self, device: torch.device | str) -> "SparseDistance":
        return SparseDistance(self.n, self.crow.to(device), self.col.to(device),
                              self.val.to(device), self.fill, self.cutoff)

    def to_dense(self) -> torch.Tensor:
        """The dense (N, N) float32 tensor (refuses if it would not fit in memory)."""
        ensure_fits(4 * self.n * self.n, self.device,
                    f"a dense {self.n} x {self.n} distance matrix",
                    "keep the SparseDistance (dbscan accepts it directly)")
        dense = torch.full((self.n, self.n), self.fill, dtype=torch.float32, device=self.device)
        dense[self.rows(), self.col] = self.val.float()
        return dense

    def within(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR ``(crow, col)`` of the pairs with ``d <= eps``."""
        if self.cutoff is not None and eps > self.cutoff:
            raise ValueError(
                f"eps={eps} exceeds the cutoff {self.cutoff} this SparseDistance was built "
                "with; recompute jaccard_distance with max_distance >= eps")
        if eps >= self.fill:
            raise ValueError(
                f"eps={eps} >= {self.fill}: every pair of images would be a neighbour (pairs "
                f"whose neighbourhoods never meet have distance {self.fill}); use eps < {self.fill}")
        kept = self._select(self.val <= eps)
        return kept.crow, kept.col

    def _select(self, keep: torch.Tensor) -> "SparseDistance":
        counts = torch.zeros(self.n + 1, dtype=torch.int64, device=self.device)
        counts[1:] = torch.bincount(self.rows()[keep], minlength=self.n)
        return SparseDistance(self.n, torch.cumsum(counts, 0), self.col[keep], self.val[keep],
                              self.fill, self.cutoff)

    def truncated(self, cutoff: float | None) -> "SparseDistance":
        """A copy that keeps only the pairs with ``d <= cutoff`` (None: unchanged)."""
        if cutoff is None:
            return self
        kept = self._select(self.val <= cutoff)
        kept.cutoff = cutoff
        return kept

    @staticmethod
    def from_dense(dist: torch.Tensor, fill: float = 1.0) -> "SparseDistance":
        """Keep the entries of a dense matrix that differ from ``fill``."""
        n = dist.shape[0]
        rows, cols = torch.nonzero(dist != fill, as_tuple=True)
        counts = torch.zeros(n + 1, dtype=torch.int64, device=dist.device)
        counts[1:] = torch.bincount(rows, minlength=n)
        return SparseDistance(n, torch.cumsum(counts, 0), cols, dist[rows, cols].float(), fill)
