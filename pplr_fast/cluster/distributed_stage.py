"""The clustering stage of one epoch shared by the ranks of a ``torch.distributed`` job.

:func:`run_distributed_cluster_stage` gives every rank the same pseudo-labels
and scores as :func:`pplr_fast.cluster.run_cluster_stage` in one process, bit
for bit, while each of K ranks does about 1/K of the work. Rank r owns the
rows of its block ``[o_r, o_r + B_r)`` (the blocks of the ranks in rank order,
B_r = the rows it passed; with ``gathered=True`` the split of
``utils.distributed.shard_range``: ``[N r / K, N (r + 1) / K)``). Blocks may
be empty.

Steps, the collective each uses and what it moves, per rank (N rows, D
dimensions, N_p parts, B = the largest block, k1 and k from the stage's
parameters; all_gather/all_to_all of unequal pieces pad them to the longest):

1. ``features``: ``all_gather`` of every block of X_g and X_p, (1 + N_p) B D
   floats from every rank (skipped with ``gathered=True``: the trainer's
   sharded extraction already gathered them). Each rank then holds the whole
   features: memory O(N·D) per rank. With ``features="ring"`` nothing is
   gathered: an ``all_reduce`` (max) of 2 (1 + N_p) floats (the kNN error
   bound's largest norms), and each rank keeps only its block.
2. ``knn_global`` / ``knn_parts`` (fast CPU path): the upper triangle of each
   space's score matrix is cut into 2K row strips (rows [s0, s1) x columns
   [s0, N)); rank r computes strips r and 2K - 1 - r, which together are
   1/K of the GEMM (the strips shrink as s0 grows), so every rank does the
   single process's half-matrix GEMM divided by K. Each strip serves its rows
   and, transposed, its columns, so a rank sees part of every row; one
   ``all_to_all_single`` per space sends every rank the (column, score)
   candidates of its rows that this rank found (the few columns per row
   that can still reach the exact top-k: 8 bytes each), and each rank
   finishes its block with the exact fp64 re-rank. Other backends (the
   reference path, CUDA tensors): the exact fp64 distances of the block to
   every row and a stable sort (no communication; an fp64 GEMM, slow on
   GPUs with weak fp64).
3. ``encoding``: ``all_gather`` of the global kNN lists, N k1 int64 (every
   row's V needs its neighbours' lists); each rank encodes its block (V'
   rows) and ``all_gather`` shares them: V' is sparse, ~N·(a few hundred)
   (int64 column, float32 value) pairs in all.
4. ``jaccard``: each rank computes the Jaccard rows of its block, keeping the
   pairs within eps; they are gathered (``all_gather``, or ``gather`` to
   rank 0 with ``dbscan_on="one"``): N·(tens) (int64, float32) pairs.
5. ``dbscan``: on the gathered graph, on every rank (default; no further
   collective) or on rank 0 with a ``broadcast`` of the N int64 labels
   (``dbscan_on="one"``). "every" has each rank receive the graph, "one" has
   rank 0 receive it and the others the labels, so the busiest rank moves the
   same bytes; "every" saves the broadcast's extra round trip and keeps no rank
   waiting on another: it is the default (the figures:
   ``benchmarks/results/cluster_stage_ranks_cpu.md``).
6. ``cross_agreement``: each rank scores its block from its own kNN rows;
   ``all_gather`` of B N_p float32 scores.

With ``features="ring"`` (fast CPU path; memory O(N·D / K + N·k) per rank):

2r. ``knn_global`` / ``knn_parts``: one ring pass per space. The blocks visit
   every rank in turn (K - 1 ``batch_isend_irecv`` steps, each sending the
   visiting block, B D floats, to rank r + 1 and receiving the next from
   r - 1: every rank receives (N - B_r) D floats per space). While a block
   visits, the rank scores its rows against it (the same bf16/fp32 filter
   GEMM and error bound), re-ranks the columns still above each row's floor
   with the fp64 distances the one process computes, and merges them into a
   running exact top-k by (distance, index). Each rank computes its rows
   against all N: the whole score matrix over the ranks, twice the GEMM of
   the shared upper triangle (the price of not holding the features).
3r. ``encoding``: ``all_gather`` of the global kNN lists as in step 3; each
   rank lists E(i) of its rows, a second ring pass over X_g computes d(i, e)
   while e's block visits ((N - B_r) D floats received), the rank weighs its
   rows of V, ``all_gather`` shares V (~N·(tens) (int64, float32) pairs), and
   each rank expands its block to V' rows, gathered as in step 3.
   Steps 4-6 are unchanged (they need no features).

Other backends: steps 3-6 run whole on every rank from the gathered kNN lists
(``all_gather`` of the global and part lists), which are O(N·k) and cheap next
to the kNN.

Failures: after each step's local work the ranks agree (a one-float
``all_reduce``) on whether any of them failed; if one did, every rank raises
:class:`DistributedStageError` naming the rank and the step, instead of
waiting in the next collective. A rank that dies outright makes the others'
next collective fail (gloo: the connection drops) or time out after the
process group's ``timeout`` (``init_process_group(timeout=...)``); that too
is raised as :class:`DistributedStageError`.

Names: "rank" is always a process (``ranks``, the process group helper); kNN
lists are "lists" (``lists_block``: this block's rows, ``lists_all``: all N
rows, ``part_lists_*`` for the part spaces). The row-block kernels are in
``row_blocks.py``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from pplr_fast.utils.timing import StageClock

from . import api, row_blocks
from .checks import ClusterInputError, check_part_features, check_stage_args
from .sparse_distance import SparseDistance
from .stage import STAGES, ClusterStageResult

DBSCAN_ON = ("every", "one")
FEATURES = ("gather", "ring")


class DistributedStageError(RuntimeError):
    """The distributed clustering stage failed on some rank; raised on every rank."""


@dataclass
class DistributedStageResult(ClusterStageResult):
    """:class:`ClusterStageResult` of one rank, with what it did and moved."""

    rows: tuple = (0, 0)                  # this rank's block [r0, r1)
    world_size: int = 1
    received_bytes: dict = field(default_factory=dict)   # per stage, bytes this rank received
    sent_bytes: dict = field(default_factory=dict)       # per stage, bytes this rank sent


def block_bounds(counts: list[int]) -> list[int]:
    """Offsets of consecutive blocks of ``counts`` rows: [0, c0, c0 + c1, ..., N]."""
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    return bounds


def strips_of(rank: int, world: int, n: int) -> list[tuple[int, int]]:
    """The two upper-triangle row strips rank ``rank`` computes: strips r and 2K-1-r of 2K."""
    cut = [n * j // (2 * world) for j in range(2 * world + 1)]
    return [(cut[j], cut[j + 1]) for j in (rank, 2 * world - 1 - rank)]


class _Ranks:
    """The collectives of the stage: failure agreement, byte counts, timings."""

    def __init__(self, group, device: torch.device):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.step = "start"
        self.received: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.data_device = device
        self.clock = StageClock(device)

    # -------------------------------------------------------------- bookkeeping
    def _count(self, sent: int, received: int) -> None:
        self.sent[self.step] = self.sent.get(self.step, 0) + sent
        self.received[self.step] = self.received.get(self.step, 0) + received

    @contextmanager
    def stage(self, name: str):
        """Time a stage (local work and collectives); collectives inside count under it."""
        self.step = name
        with self.clock(name):
            yield

    @property
    def timings(self) -> dict[str, float]:
        return self.clock.timings

    @contextmanager
    def local(self, what: str):
        """Local work of one rank; afterwards every rank learns whether any rank failed."""
        error = None
        try:
            yield
        except Exception as err:       # reported to every rank, then re-raised
            error = err
        self.agree(what, error)

    def agree(self, what: str, error: BaseException | None) -> None:
        flag = torch.tensor([float(self.rank + 1) if error is not None else 0.0],
                            device=self.device)
        self._collective(lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group))
        failed = int(flag.item())
        if not failed:
            return
        who = failed - 1
        if error is not None:
            raise DistributedStageError(
                f"clustering stage: rank {self.rank} failed in {what} "
                f"({type(error).__name__}: {error}); every rank stops") from error
        raise DistributedStageError(
            f"clustering stage: rank {who} failed in {what}; every rank stops (see rank {who}'s "
            "error for the cause)")

    def _collective(self, run):
        try:
            return run()
        except DistributedStageError:
            raise
        except (RuntimeError, dist.DistBackendError) as err:
            raise DistributedStageError(
                f"clustering stage, rank {self.rank}: a collective in step {self.step!r} failed "
                f"(another rank stopped, or the process group's timeout passed): "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err

    # -------------------------------------------------------------- collectives
    def all_gather_object(self, obj) -> list:
        out = [None] * self.world
        self._collective(lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def all_gather_rows(self, block: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Concatenate every rank's block (``counts[r]`` rows each) on every rank."""
        longest = max(counts)
        padded = block.new_zeros((longest, *block.shape[1:]), device=self.device)
        padded[:block.shape[0]] = block.to(self.device)
        pieces = [torch.empty_like(padded) for _ in range(self.world)]
        if longest:
            self._collective(lambda: dist.all_gather(pieces, padded.contiguous(), group=self.group))
        piece_bytes = padded.numel() * padded.element_size()
        self._count(piece_bytes * (self.world - 1), piece_bytes * (self.world - 1))
        return torch.cat([p[:c] for p, c in zip(pieces, counts)]).to(self.data_device)

    def all_gather_varying(self, piece: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's 1-D ``piece`` (lengths may differ), in rank order, on every rank."""
        lengths = self.all_gather_rows(torch.tensor([[piece.shape[0]]], device=self.device),
                                       [1] * self.world).flatten().tolist()
        gathered = self.all_gather_rows(piece[:, None], [int(c) for c in lengths])
        return list(torch.split(gathered.flatten(), [int(c) for c in lengths]))

    def gather_varying(self, piece: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's 1-D ``piece`` on rank 0 (None elsewhere)."""
        lengths = self.all_gather_rows(torch.tensor([[piece.shape[0]]], device=self.device),
                                       [1] * self.world).flatten().tolist()
        longest = int(max(lengths))
        padded = piece.new_zeros(longest, device=self.device)
        padded[:piece.shape[0]] = piece.to(self.device)
        pieces = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        self._collective(lambda: dist.gather(padded, pieces, dst=0, group=self.group))
        piece_bytes = padded.numel() * padded.element_size()
        self._count(0 if self.rank == 0 else piece_bytes,
                    piece_bytes * (self.world - 1) if self.rank == 0 else 0)
        if self.rank != 0:
            return None
        return [p[:int(c)].to(self.data_device) for p, c in zip(pieces, lengths)]

    def all_to_all(self, pieces: list[torch.Tensor]) -> list[torch.Tensor]:
        """Send ``pieces[s]`` (1-D, one dtype) to rank s; returns what each rank sent here."""
        lengths = torch.tensor([p.shape[0] for p in pieces], dtype=torch.int64, device=self.device)
        incoming = torch.empty_like(lengths)
        self._collective(lambda: dist.all_to_all_single(incoming, lengths, group=self.group))
        send = torch.cat(pieces).to(self.device)
        out_sizes, in_sizes = incoming.tolist(), lengths.tolist()
        received = send.new_empty(sum(out_sizes))
        self._collective(lambda: dist.all_to_all_single(received, send, out_sizes, in_sizes,
                                                        group=self.group))
        size = send.element_size()
        self._count(size * (sum(in_sizes) - in_sizes[self.rank]),
                    size * (sum(out_sizes) - out_sizes[self.rank]))
        return list(torch.split(received.to(self.data_device), out_sizes))

    def all_reduce_max(self, values: torch.Tensor) -> torch.Tensor:
        moved = values.to(self.device)
        self._collective(lambda: dist.all_reduce(moved, op=dist.ReduceOp.MAX, group=self.group))
        nbytes = moved.numel() * moved.element_size()
        self._count(nbytes, nbytes)
        return moved.to(self.data_device)

    def ring(self, block: torch.Tensor, counts: list[int]):
        """Every rank's block visits this rank once: yields (owner, its rows), this rank's
        own first. Between visits each rank sends the visiting block to rank + 1 and
        receives the next one from rank - 1 (``batch_isend_irecv``); ``counts[s]`` rows
        of rank s's block, the same trailing shape everywhere."""
        current, owner = block.contiguous(), self.rank
        for step in range(self.world):
            yield owner, current
            if step == self.world - 1:
                return
            source = (owner - 1) % self.world
            incoming = current.new_empty((counts[source], *current.shape[1:]), device=self.device)
            outgoing = current.to(self.device)
            ops = []
            if outgoing.numel():
                ops.append(dist.P2POp(dist.isend, outgoing, (self.rank + 1) % self.world,
                                      self.group))
            if incoming.numel():
                ops.append(dist.P2POp(dist.irecv, incoming, (self.rank - 1) % self.world,
                                      self.group))

            def exchange(ops=ops):
                for work in dist.batch_isend_irecv(ops) if ops else []:
                    work.wait()
            self._collective(exchange)
            self._count(outgoing.numel() * outgoing.element_size(),
                        incoming.numel() * incoming.element_size())
            current, owner = incoming.to(self.data_device), source

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.to(self.device)
        self._collective(lambda: dist.broadcast(moved, src=0, group=self.group))
        nbytes = moved.numel() * moved.element_size()
        self._count(nbytes * (self.world - 1) if self.rank == 0 else 0,
                    0 if self.rank == 0 else nbytes)
        return moved.to(self.data_device)


# ------------------------------------------------------------------ kNN
def _strip_neighbours(ranks: _Ranks, x: torch.Tensor, k: int, bounds: list[int]
                      ) -> torch.Tensor:
    """Index rows (B_r, min(k, N)) of this rank's block, from the shared strips."""
    n = x.shape[0]
    with ranks.local("the kNN strips"):
        strips = row_blocks.neighbour_strips(x, k)
        for s0, s1 in strips_of(ranks.rank, ranks.world, n):
            strips.add_strip(s0, s1)
        taken = [strips.take_rows(bounds[s], bounds[s + 1]) if s != ranks.rank else None
                 for s in range(ranks.world)]
    empty_ptr = torch.zeros(1, dtype=torch.int64)
    ptrs = ranks.all_to_all([t[0] if t is not None else empty_ptr for t in taken])
    cols = ranks.all_to_all([t[1] if t is not None else torch.zeros(0, dtype=torch.int32)
                             for t in taken])
    scores = ranks.all_to_all([t[2] if t is not None else torch.zeros(0, dtype=torch.float32)
                               for t in taken])
    r0, r1 = bounds[ranks.rank], bounds[ranks.rank + 1]
    with ranks.local("the kNN of the block"):
        for s in range(ranks.world):
            if s != ranks.rank:
                strips.give_rows(r0, r1, ptrs[s], cols[s], scores[s])
        index = strips.finish_rows(r0, r1)[1]
    return index


def _ring_neighbours(ranks: _Ranks, x_block: torch.Tensor, k: int, bounds: list[int],
                     maxima: tuple[float, float]) -> torch.Tensor:
    """Index rows (B_r, min(k, N)) of this rank's block, every block visiting in the ring."""
    counts = [bounds[s + 1] - bounds[s] for s in range(ranks.world)]
    with ranks.local("the kNN of the block"):
        selection = row_blocks.ring_neighbours(x_block, k, bounds[-1], maxima)
    for owner, visiting in ranks.ring(x_block, counts):
        with ranks.local(f"the kNN ring, step {(ranks.rank - owner) % ranks.world + 1} "
                         f"of {ranks.world}"):
            selection.visit(visiting, bounds[owner])
    with ranks.local("the kNN of the block"):
        index = selection.finish()[1]
    return index


def _block_neighbours(ranks: _Ranks, x: torch.Tensor, k: int, bounds: list[int], strips: bool
                      ) -> torch.Tensor:
    if strips:
        return _strip_neighbours(ranks, x, k, bounds)
    r0, r1 = bounds[ranks.rank], bounds[ranks.rank + 1]
    with ranks.local("the kNN of the block"):
        index = row_blocks.nearest_neighbours_of_rows(x, k, r0, r1)[1]
    return index


# ------------------------------------------------------------------ the stage
def _csr_rows(crow: torch.Tensor) -> torch.Tensor:
    return crow[1:] - crow[:-1]


def _gather_csr(ranks: _Ranks, crow, col, val, everywhere: bool):
    """The CSR rows of every block, concatenated (on every rank, or on rank 0 only)."""
    counts = _csr_rows(torch.as_tensor(crow))
    gather = ranks.all_gather_varying if everywhere else ranks.gather_varying
    parts = [gather(counts), gather(torch.as_tensor(col)), gather(torch.as_tensor(val))]
    if parts[0] is None:
        return None
    counts, col, val = (torch.cat(p) for p in parts)
    crow = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    return crow, col, val


def _check_same_arguments(ranks: _Ranks, settings: dict) -> None:
    """Every rank must pass the same settings; the error names those that differ."""
    seen = ranks.all_gather_object(settings)
    for r, other in enumerate(seen):
        differ = [f"{name}={other[name]!r} (rank 0: {seen[0][name]!r})"
                  for name in settings if other[name] != seen[0][name]]
        if differ:
            raise DistributedStageError(
                f"clustering stage: rank {r} was called with {', '.join(differ)}; every rank "
                "must pass the same settings")


def run_distributed_cluster_stage(x_g: torch.Tensor, x_p: torch.Tensor, *, eps: float,
                                  k1: int = 30, k2: int = 6, min_samples: int = 4, k: int = 20,
                                  backend: str = api.DEFAULT_BACKEND, gathered: bool = False,
                                  features: str = "gather", dbscan_on: str = "every", group=None
                                  ) -> DistributedStageResult:
    """Pseudo-labels and cross-agreement scores of the whole training set on every rank.

    Call it on every rank of an initialised process group (gloo for CPU
    tensors, NCCL for CUDA tensors). Without a process group it is
    :func:`run_cluster_stage` (one rank).

    Args:
        x_g, x_p: with ``gathered=False``, this rank's block of the global
            (B_r, D) and part (B_r, D, N_p) features (L2-normalised rows; the
            blocks of ranks 0, 1, ... in order make the training set; a block
            may be empty); with ``gathered=True``, the whole (N, D) and
            (N, D, N_p) features, the same on every rank.
        eps, k1, k2, min_samples, k, backend: as in :func:`run_cluster_stage`.
        features: ``"gather"`` (default): every rank gathers the whole
            features, O(N·D) memory per rank, and the kNN GEMM is the upper
            triangle shared by the ranks. ``"ring"`` (fast CPU path only, with
            ``gathered=False``): each rank keeps only its block and the blocks
            visit in a ring, O(N·D / K + N·k) memory per rank, for features
            that do not fit on one rank; each rank then computes its rows
            against all N (the full matrix, twice the GEMM of "gather"), so
            "gather" stays the default wherever the features fit. The
            trainer gathers the features anyway (it needs them whole for the
            classifier centroids), so it keeps "gather".
        dbscan_on: ``"every"`` rank runs DBSCAN on the gathered graph, or
            ``"one"`` (rank 0) runs it and broadcasts the labels.
        group: the process group (default: the world).

    Returns:
        The same labels (N,) and scores (N, N_p) on every rank; ``timings``
        are this rank's, ``received_bytes`` / ``sent_bytes`` what it moved.
    """
    if not (dist.is_available() and dist.is_initialized()):
        from .stage import run_cluster_stage
        result = run_cluster_stage(x_g, x_p, eps=eps, k1=k1, k2=k2, min_samples=min_samples,
                                   k=k, backend=backend)
        n = result.labels.shape[0]
        return DistributedStageResult(result.labels, result.scores, result.timings,
                                      result.backend, rows=(0, n), world_size=1)
    if dbscan_on not in DBSCAN_ON:
        raise ClusterInputError(f"dbscan_on must be one of {DBSCAN_ON}, got {dbscan_on!r}")
    if features not in FEATURES:
        raise ClusterInputError(f"features must be one of {FEATURES}, got {features!r}")
    ring = features == "ring"
    if ring and gathered:
        raise ClusterInputError("features='ring' keeps only this rank's block, but with "
                                "gathered=True every rank already holds the whole features: "
                                "pass features='gather', or this rank's block with gathered=False")
    device = x_g.device
    ranks = _Ranks(group, device)
    start = time.perf_counter()
    settings = dict(eps=float(eps), k1=k1, k2=k2, min_samples=min_samples, k=k, backend=backend,
                    feature_shape=tuple(x_g.shape[1:]),
                    part_shape=tuple(x_p.shape[1:]) if x_p.dim() == 3 else None,
                    dtype=str(x_g.dtype), gathered=bool(gathered), features=features,
                    dbscan_on=dbscan_on)
    _check_same_arguments(ranks, settings)

    with ranks.stage("features"):
        if gathered:
            n = x_g.shape[0]
            counts = [n * (r + 1) // ranks.world - n * r // ranks.world for r in range(ranks.world)]
        else:
            counts = [int(c) for c in ranks.all_gather_object(int(x_g.shape[0]))]
            with ranks.local("the feature block"):
                if x_p.dim() != 3 or x_p.shape[0] != x_g.shape[0]:
                    raise ClusterInputError(
                        f"x_g has {x_g.shape[0]} rows but x_p has shape {tuple(x_p.shape)}; "
                        "pass this rank's block of both, (B, D) and (B, D, N_p)")
            if not ring:
                x_g = ranks.all_gather_rows(x_g.contiguous(), counts)
                x_p = ranks.all_gather_rows(x_p.contiguous(), counts)
        bounds = block_bounds(counts)
        n = bounds[-1]
        with ranks.local("the input checks"):
            if ring and n == 0:
                raise ClusterInputError("every rank passed an empty block: the clustering stage "
                                        "needs at least one image")
            if not ring or x_g.shape[0]:     # in the ring, this rank's block (if any)
                check_part_features(x_g, x_p)
            check_stage_args(n, eps=eps, k1=k1, k2=k2, min_samples=min_samples, k=k)
            chosen = api.resolve_backend(backend, device, "cluster stage")
            strips = row_blocks.splits_rows(chosen, device)
            if ring and not strips:
                raise ClusterInputError(
                    f"features='ring' needs the fast CPU path (backend='fast', CPU tensors), "
                    f"not {chosen!r} on {device.type}; pass features='gather'")
            if ring:      # each space's (M, rho_max) of this block, for the kNN error bound
                x_g = x_g.float().contiguous()
                spaces = [x_g] + [x_p[:, :, p].float().contiguous() for p in range(x_p.shape[2])]
                maxima = torch.tensor([row_blocks.ring_maxima(x) for x in spaces],
                                      dtype=torch.float64)
        if ring:
            maxima = ranks.all_reduce_max(maxima).tolist()
    r0, r1 = bounds[ranks.rank], bounds[ranks.rank + 1]

    with ranks.stage("knn_global"):
        if ring:
            lists_block = _ring_neighbours(ranks, spaces[0], max(k1, k + 1), bounds, maxima[0])
        else:
            lists_block = _block_neighbours(ranks, x_g, max(k1, k + 1), bounds, strips)
    with ranks.stage("knn_parts"):
        if ring:
            part_lists_block = [_ring_neighbours(ranks, x, k + 1, bounds, m)
                             for x, m in zip(spaces[1:], maxima[1:])]
            del spaces
        else:
            part_lists_block = [_block_neighbours(ranks, x_p[:, :, p].contiguous(), k + 1, bounds,
                                               strips) for p in range(x_p.shape[2])]
    if strips:
        labels, scores = _split_rest(ranks, x_g, ring, lists_block, part_lists_block, bounds, eps, k1,
                                     k2, min_samples, k, dbscan_on)
    else:
        labels, scores = _whole_rest(ranks, x_g, lists_block, part_lists_block, counts, eps, k1, k2,
                                     min_samples, k, chosen)
    timings = {stage: ranks.timings.get(stage, 0.0) for stage in ("features", *STAGES)}
    timings["total"] = time.perf_counter() - start
    return DistributedStageResult(labels, scores, timings, chosen, rows=(r0, r1),
                                  world_size=ranks.world, received_bytes=dict(ranks.received),
                                  sent_bytes=dict(ranks.sent))


def _ring_encoding(ranks: _Ranks, x_block, lists_all, bounds, k1, k2):
    """This block's rows of V' with only the block's features: E(i) of its rows, the
    distances d(i, e) computed while e's block visits, V's rows, then all of V gathered
    (``all_gather``, O(N·k)) for the query expansion."""
    r0, r1 = bounds[ranks.rank], bounds[ranks.rank + 1]
    with ranks.local("the encoding sets of the block"):
        crow, col = row_blocks.expansion_sets(lists_all, k1, r0, r1)
        row_of = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(crow))
        owner = np.searchsorted(np.asarray(bounds[1:]), col, side="right")
        order = np.argsort(owner, kind="stable")
        first = np.searchsorted(owner[order], np.arange(ranks.world + 1))
        dist = np.empty(col.shape[0], dtype=np.float64)
    counts = [bounds[s + 1] - bounds[s] for s in range(ranks.world)]
    for s, visiting in ranks.ring(x_block, counts):
        with ranks.local(f"the encoding ring, step {(ranks.rank - s) % ranks.world + 1} "
                         f"of {ranks.world}"):
            pairs = order[first[s]:first[s + 1]]
            dist[pairs] = row_blocks.pair_distances(x_block, row_of[pairs], visiting,
                                             col[pairs] - bounds[s])
    with ranks.local("the encoding of the block"):
        v_block = (crow, col, row_blocks.weigh_rows(crow, dist))
    v_all = tuple(t.numpy() for t in _gather_csr(ranks, *v_block, everywhere=True))
    with ranks.local("the encoding of the block"):
        return row_blocks.expand_rows(v_all, lists_all, k1, k2, r0, r1)


def _split_rest(ranks: _Ranks, x_g, ring, lists_block, part_lists_block, bounds, eps, k1, k2,
                min_samples, k, dbscan_on):
    """Steps 3-6 with the row-block kernels (fast CPU path); ``x_g`` is this rank's block
    with ``ring``, else the whole features."""
    n = bounds[-1]
    r0, r1 = bounds[ranks.rank], bounds[ranks.rank + 1]
    counts = [bounds[s + 1] - bounds[s] for s in range(ranks.world)]
    with ranks.stage("encoding"):
        lists_all = ranks.all_gather_rows(lists_block[:, :min(k1, n)].contiguous(), counts)
        if ring:
            encoding = _ring_encoding(ranks, x_g, lists_all, bounds, k1, k2)
        else:
            with ranks.local("the encoding of the block"):
                encoding = row_blocks.encode_rows(x_g, lists_all, k1, k2, r0, r1)
        encoding = _gather_csr(ranks, *encoding, everywhere=True)
    with ranks.stage("jaccard"):
        with ranks.local("the Jaccard rows of the block"):
            pairs = row_blocks.jaccard_rows(tuple(t.numpy() for t in encoding), r0, r1, eps)
        del encoding
        graph = _gather_csr(ranks, *pairs, everywhere=dbscan_on == "every")
    with ranks.stage("dbscan"):
        labels = None
        with ranks.local("DBSCAN"):
            if graph is not None:
                labels = api.dbscan(SparseDistance(n, *graph, cutoff=eps), eps, min_samples, "fast")
        if dbscan_on == "one":
            labels = ranks.broadcast(labels if labels is not None
                                     else torch.empty(n, dtype=torch.int64))
    with ranks.stage("cross_agreement"):
        with ranks.local("the cross-agreement of the block"):
            block_scores = row_blocks.cross_agreement_of_rows(lists_block, part_lists_block, k, r0, n)
        scores = ranks.all_gather_rows(block_scores, counts)
    return labels, scores


def _whole_rest(ranks: _Ranks, x_g, lists_block, part_lists_block, counts, eps, k1, k2, min_samples,
                k, chosen):
    """Steps 3-6 whole on every rank from the gathered kNN lists (reference path, GPUs)."""
    with ranks.stage("encoding"):
        lists_all = ranks.all_gather_rows(lists_block, counts)
    with ranks.stage("jaccard"):
        with ranks.local("the Jaccard distances"):
            distance = api.path_jaccard_from_neighbours(x_g, lists_all, k1, k2, eps, chosen)
    with ranks.stage("dbscan"):
        with ranks.local("DBSCAN"):
            labels = api.dbscan(distance, eps, min_samples, chosen)
    with ranks.stage("cross_agreement"):
        part_lists = [ranks.all_gather_rows(lists, counts) for lists in part_lists_block]
        with ranks.local("the cross-agreement"):
            scores = api.cross_agreement_from_neighbours(lists_all, part_lists, k, chosen)
    return labels, scores
