"""Exact copies tie exactly: products computed once per distinct row.

A BLAS GEMM does not promise that two equal rows of its input give equal
rows of its output: the micro-kernel that computes an output entry depends on
where the entry falls in the blocking (a full tile or an edge, the diagonal
block of a SYRK, the split of the work across threads), and the blocking
depends on the library, its version, the instruction set it picked for this
CPU (AVX2, AVX-512, AMX) and the thread count. The results then differ in the
last bit, and two exact copies of an image -- a tie that must be broken by
index -- are ordered by that last bit instead.

:func:`tied_matmul` makes the tie hold by construction: it multiplies the
distinct rows only and copies each result to every row that equals it, so
equal rows give bit-identical result rows (and equal rows of the second
operand bit-identical columns) on every machine and whatever the BLAS does.
Rows count as equal when their values are equal (``-0.0`` equals ``0.0``).
Finding the copies costs one integer pass over the matrix (a hash of each
row's bit pattern, then a check of the rows whose hashes collide); when every
row is distinct, nothing is copied.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistinctRows:
    """The distinct rows of an (N, D) matrix ``x``.

    ``first``: (U,) ascending indices of the first occurrence of each distinct
    row; ``inverse``: (N,) the position in ``first`` of the row equal to row i,
    so ``x[first][inverse]`` equals ``x``. ``None`` for both when every row is
    distinct (the common case: nothing to copy).
    """

    n: int
    first: torch.Tensor | None
    inverse: torch.Tensor | None

    @property
    def all_distinct(self) -> bool:
        return self.first is None

    @classmethod
    def of(cls, x: torch.Tensor) -> "DistinctRows":
        """The distinct rows of ``x`` (any floating dtype, any device)."""
        n = x.shape[0]
        if n < 2:
            return cls(n, None, None)
        # +0.0 turns -0.0 into 0.0 (IEEE), so equal values have equal bit patterns
        canonical = (x.reshape(n, -1) + 0.0).contiguous()
        bits = canonical.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])
        # integer sums are exact, so equal rows get equal hashes on every machine
        key = bits.sum(dim=1, dtype=torch.int64)
        order = torch.argsort(key, stable=True)
        sorted_key = key[order]
        same_as_next = sorted_key[1:] == sorted_key[:-1]
        if not bool(same_as_next.any()):
            return cls(n, None, None)
        shared = torch.zeros(n, dtype=torch.bool, device=x.device)
        shared[1:] |= same_as_next
        shared[:-1] |= same_as_next
        candidates = torch.sort(order[shared]).values        # rows whose hash another row has
        _, group = torch.unique(canonical[candidates], dim=0, return_inverse=True)
        # representative of each row: the lowest index among the rows equal to it
        representative = torch.arange(n, device=x.device)
        lowest = torch.full((int(group.max()) + 1,), n, dtype=torch.int64, device=x.device)
        lowest.scatter_reduce_(0, group, candidates, reduce="amin")
        representative[candidates] = lowest[group]
        is_first = representative == torch.arange(n, device=x.device)
        if bool(is_first.all()):
            return cls(n, None, None)
        first = torch.nonzero(is_first).flatten()
        position = torch.cumsum(is_first, 0) - 1
        return cls(n, first, position[representative])

    def distinct(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` (N, ...) at the first occurrences."""
        return x if self.all_distinct else x[self.first]

    def expand(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        """``values`` computed per distinct row along ``dim``, copied to every row."""
        return values if self.all_distinct else values.index_select(dim, self.inverse)


def tied_matmul(a: torch.Tensor, b: torch.Tensor, rows_a: DistinctRows | None = None,
                rows_b: DistinctRows | None = None) -> torch.Tensor:
    """``a @ b.T`` in which equal rows of ``a`` give bit-equal result rows and equal rows of
    ``b`` bit-equal result columns, whatever kernel the BLAS picks.

    ``rows_a`` / ``rows_b``: the :class:`DistinctRows` of ``a`` / ``b`` when the caller
    already has them (e.g. the same ``b`` for many blocks of ``a``).
    """
    rows_a = DistinctRows.of(a) if rows_a is None else rows_a
    if rows_b is None:
        rows_b = rows_a if b is a else DistinctRows.of(b)
    product = rows_a.distinct(a) @ rows_b.distinct(b).T
    if rows_a.all_distinct or rows_b.all_distinct:
        return rows_b.expand(rows_a.expand(product, 0), 1)
    return product[rows_a.inverse[:, None], rows_b.inverse[None, :]]     # one copy, not two
