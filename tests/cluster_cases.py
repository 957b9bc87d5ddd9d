"""The one case list of the clustering tests, and the implementations each case runs on.

Every op test takes its inputs from here and checks every implementation
against the brute-force oracles of ``cluster_oracles.py`` (and the fast ones
against the reference, bit for bit where the op promises it):

``reference-cpu``   the public ops with ``backend="reference"``
``fast-cpu``        the public ops with ``backend="fast"`` (the C++ kernels)
``gpu-path``        ``pplr_fast.cluster.fast_cuda`` (Triton kernels) on the test
                    device: CPU tensors through the Triton interpreter, or CUDA
                    tensors with ``PPLR_TEST_GPU=1``
``reference-cuda``  the public ops with ``backend="reference"`` on CUDA tensors
                    (``PPLR_TEST_GPU=1`` only)

DBSCAN's GPU path (CUDA C) runs on a host emulation instead; see
``test_cluster_dbscan.py``. The Triton interpreter is slow, so the GPU path
takes the smaller variant of each feature case when it is interpreted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cluster_oracles import clustered_features, lattice_features, normalize
from pplr_fast.cluster import SparseDistance, api, common, fast_cpu, fast_cuda, reference

ON_GPU = os.environ.get("PPLR_TEST_GPU", "0") == "1"


# ---------------------------------------------------------------- feature cases
@dataclass(frozen=True)
class FeatureCase:
    """Features of one case: ``full`` for compiled paths, ``small`` under the interpreter."""

    full: Callable[[], torch.Tensor]
    small: Callable[[], torch.Tensor]


def _isotropic(n: int, dim: int) -> torch.Tensor:
    return normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(3)))


FEATURES = {
    "clustered": FeatureCase(lambda: clustered_features(300, 32, groups=20, spread=0.6, seed=0),
                             lambda: clustered_features(150, 32, groups=15, spread=0.6, seed=0)),
    "duplicates": FeatureCase(
        lambda: clustered_features(200, 16, groups=10, spread=0.4, seed=1, duplicates=25),
        lambda: clustered_features(120, 16, groups=8, spread=0.4, seed=1, duplicates=20)),
    "lattice-ties": FeatureCase(lambda: lattice_features(120, 8, seed=2),
                                lambda: lattice_features(80, 8, seed=2)),
    "isotropic": FeatureCase(lambda: _isotropic(150, 256), lambda: _isotropic(60, 256)),
    "tiny": FeatureCase(lambda: clustered_features(9, 8, groups=2, spread=0.3, seed=4),
                        lambda: clustered_features(9, 8, groups=2, spread=0.3, seed=4)),
    "single": FeatureCase(lambda: normalize(torch.ones(1, 4)), lambda: normalize(torch.ones(1, 4))),
}

# (features, k1, k2): k2 == 1 (no query expansion), k2 == k1, N < k1, N == 1, and
# k1 = 9 and 5, where round(k1 / 2) rounds half to even (4 and 2, not 5 and 3)
JACCARD_CASES = [("clustered", 30, 6), ("duplicates", 20, 6), ("lattice-ties", 10, 3),
                 ("isotropic", 15, 2), ("tiny", 30, 6), ("clustered", 11, 1),
                 ("duplicates", 7, 7), ("single", 30, 6), ("duplicates", 9, 6),
                 ("lattice-ties", 5, 2)]

# features whose part spaces are noisy copies (duplicates stay exact copies in every part)
CROSS_AGREEMENT_FEATURES = ["clustered", "duplicates", "lattice-ties", "tiny", "single"]
CROSS_AGREEMENT_K = (1, 5, 20)


def part_features(x_g: torch.Tensor, name: str) -> torch.Tensor:
    """(N, D, 3) parts: x_g plus noise, renormalised; exact copies kept exact."""
    n = x_g.shape[0]
    x_p = torch.stack([normalize(x_g + 0.3 * torch.randn(x_g.shape,
                                                         generator=torch.Generator().manual_seed(p)))
                       for p in range(3)], dim=2)
    if name == "duplicates":
        x_p[(7 * 3 + 3) % n] = x_p[(5 * 3 + 1) % n]
    return x_p


def independent_parts(n: int, duplicates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and 3 part spaces drawn independently (little agreement), with copies."""
    x_g = clustered_features(n, 8, groups=4, spread=0.5, seed=n, duplicates=duplicates)
    x_p = torch.stack([clustered_features(n, 8, groups=4, spread=0.5, seed=n + 10 * p,
                                          duplicates=duplicates) for p in range(3)], dim=2)
    return x_g, x_p


# (n, k, duplicates): N > k, N < k with copies, N < k, N == 1
INDEPENDENT_PART_CASES = [(40, 5, 0), (30, 20, 4), (6, 20, 0), (1, 20, 0)]


# ---------------------------------------------------------------- DBSCAN cases
def random_distance_matrix(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Symmetric (n, n) float32 distances: 2-D points, quantised (many pairs exactly at
    eps, border ties) or Jaccard-like (mostly 1)."""
    if kind == "points":
        pts = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0)
        pts[: n // 3] += 4.0
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    elif kind == "quantised":
        pts = rng.integers(0, 6, size=(n, 2)).astype(np.float64)
        d = np.abs(pts[:, None] - pts[None]).sum(-1) / 4.0
    else:
        d = np.ones((n, n))
        mask = rng.random((n, n)) < 0.08
        d[mask] = rng.uniform(0, 1, size=mask.sum())
        d = np.minimum(d, d.T)
        np.fill_diagonal(d, 0)
    return d.astype(np.float32)


def dbscan_case(seed: int) -> tuple[torch.Tensor, float, int]:
    """(dist, eps, min_samples) of random case ``seed``: N in [1, 150), min_samples in [1, 7]."""
    rng = np.random.default_rng(seed)
    kind = ["points", "quantised", "jaccard-like"][seed % 3]
    n = int(rng.integers(1, 150))
    d = random_distance_matrix(rng, n, kind)
    if kind == "quantised":
        eps = float(rng.choice([0.25, 0.5, 0.75, 1.0]))
    else:
        eps = float(rng.uniform(0.1, 1.2))
    if kind == "jaccard-like":
        eps = min(eps, 0.9)
    min_samples = 1 if seed % 8 == 1 else int(rng.integers(2, 8))
    return torch.from_numpy(d), eps, min_samples


def border_case() -> torch.Tensor:
    """Two dense groups; point 0 (non-core) touches both, the later-numbered first;
    9 and 10 are a pair too small to be core (noise)."""
    n = 11
    d = torch.ones(n, n)
    d.fill_diagonal_(0)
    for grp in ([1, 2, 3, 4], [5, 6, 7, 8]):    # 1..4 become cluster 0, 5..8 cluster 1
        for i in grp:
            for j in grp:
                d[i, j] = 0.1 if i != j else 0
    d[0, 8] = d[8, 0] = d[0, 2] = d[2, 0] = 0.2
    d[9, 10] = d[10, 9] = 0.2
    return d


def path_graph(order: list[int]) -> torch.Tensor:
    """Distances of a path visiting the points in ``order`` (0.1 along the path, else 1)."""
    n = len(order)
    d = torch.ones(n, n)
    d.fill_diagonal_(0)
    a, b = torch.tensor(order[:-1]), torch.tensor(order[1:])
    d[a, b] = d[b, a] = 0.1
    return d


# ---------------------------------------------------------------- implementations
@dataclass(frozen=True)
class Implementation:
    """One way to run the clustering ops; results come back on the CPU."""

    name: str
    backend: str                 # "reference" or "fast"
    device: torch.device
    gpu_path: bool = False       # fast_cuda called directly (CPU tensors: interpreted)

    @property
    def interpreted(self) -> bool:
        return self.gpu_path and self.device.type == "cpu"

    @property
    def is_reference(self) -> bool:
        return self.backend == "reference"

    def features(self, name: str) -> torch.Tensor:
        case = FEATURES[name]
        return (case.small if self.interpreted else case.full)()

    def knn(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device)
        if self.gpu_path:
            dist, index = fast_cuda.nearest_neighbours(x, k)
        else:
            dist, index = api.nearest_neighbours(x, k, backend=self.backend)
        return dist.cpu(), index.cpu()

    def path_module(self, device: torch.device):
        """The module of this implementation's path (reference, fast_cpu or fast_cuda)."""
        return fast_cuda if self.gpu_path else api._implementation(self.backend, device, "jaccard")

    def jaccard_from_neighbours(self, x: torch.Tensor, rank: torch.Tensor, k1: int, k2: int,
                                max_distance: float | None = None):
        """The public op; with k1 > N, which the public ops refuse, the path below them
        (which must still handle N < k1: every list holds all N images)."""
        x, rank = x.to(self.device), rank.to(self.device)
        if self.gpu_path or k1 > x.shape[0]:
            module = self.path_module(x.device)
            if module is reference:
                return SparseDistance.from_dense(reference.jaccard_from_neighbours(x, rank, k1, k2)
                                                 ).truncated(max_distance).to("cpu")
            out = module.jaccard_from_neighbours(x, rank, k1, k2, max_distance)
        else:
            out = api.jaccard_from_neighbours(x, rank, k1, k2, max_distance, self.backend)
        return out.to("cpu")

    def jaccard(self, x: torch.Tensor, k1: int, k2: int, max_distance: float | None = None):
        """The whole op from features; the interpreted GPU path starts from the
        reference kNN lists (its own kNN is tested on its own, and is slow)."""
        if self.interpreted:
            rank = api.nearest_neighbours(x, k1, backend="reference")[1]
            return self.jaccard_from_neighbours(x, rank, k1, k2, max_distance)
        x = x.to(self.device)
        if self.gpu_path or k1 > x.shape[0]:       # k1 > N: below the public check, as above
            module = self.path_module(x.device)
            if module is reference:
                return SparseDistance.from_dense(reference.jaccard_distance(x, k1, k2)
                                                 ).truncated(max_distance).to("cpu")
            return module.jaccard_distance(x, k1, k2, max_distance).to("cpu")
        return api.jaccard_distance(x, k1, k2, self.backend, max_distance).to("cpu")

    def cross_agreement_from_neighbours(self, rank_g: torch.Tensor, ranks_p: list[torch.Tensor],
                                        k: int) -> torch.Tensor:
        rank_g, ranks_p = rank_g.to(self.device), [r.to(self.device) for r in ranks_p]
        if self.gpu_path:
            return fast_cuda.cross_agreement_from_neighbours(rank_g, ranks_p, k).cpu()
        return api.cross_agreement_from_neighbours(rank_g, ranks_p, k, self.backend).cpu()

    def cross_agreement(self, x_g: torch.Tensor, x_p: torch.Tensor, k: int) -> torch.Tensor:
        """The whole op from features; the interpreted GPU path starts from the
        reference kNN lists."""
        if self.interpreted:
            size = min(k + 1, x_g.shape[0])
            rank_g = api.nearest_neighbours(x_g, size, backend="reference")[1]
            ranks_p = [api.nearest_neighbours(x_p[:, :, p].contiguous(), size,
                                              backend="reference")[1]
                       for p in range(x_p.shape[2])]
            return self.cross_agreement_from_neighbours(rank_g, ranks_p, k)
        x_g, x_p = x_g.to(self.device), x_p.to(self.device)
        if self.gpu_path:
            return fast_cuda.cross_agreement(x_g, x_p, k).cpu()
        return api.cross_agreement(x_g, x_p, k, self.backend).cpu()


CPU = torch.device("cpu")
TEST_DEVICE = torch.device("cuda") if ON_GPU else CPU
IMPLEMENTATIONS = [Implementation("reference-cpu", "reference", CPU),
                   Implementation("fast-cpu", "fast", CPU),
                   Implementation("gpu-path", "fast", TEST_DEVICE, gpu_path=True)]
if ON_GPU:
    IMPLEMENTATIONS.append(Implementation("reference-cuda", "reference", TEST_DEVICE))


# kNN selection paths of each fast implementation: the filter as it runs here,
# the other filter precision, and candidate caps that send rows to the exact fallback.
KNN_MODES = {"fast-cpu": ["bf16-filter", "fp32-filter", "overflow"],
             "gpu-path": ["filter", "some-overflow", "overflow"]}


def set_knn_mode(monkeypatch, implementation: Implementation, mode: str) -> None:
    """Route the fast kNN of ``implementation`` through selection path ``mode``."""
    if implementation.name == "fast-cpu":
        monkeypatch.setattr(fast_cpu, "cpu_has_native_bf16", lambda: mode != "fp32-filter")
    caps = {"overflow": 3, "some-overflow": 40}
    if mode in caps:
        monkeypatch.setattr(common, "CANDIDATE_CAP", caps[mode])


def with_knn_modes(implementations=None, gpu_modes: bool = True):
    """pytest params ``(implementation, knn_mode)``: every implementation, each fast
    one in each of its kNN selection paths (the GPU path's only when ``gpu_modes``)."""
    params = []
    for impl in implementations or IMPLEMENTATIONS:
        modes = KNN_MODES.get(impl.name, ["-"])
        if impl.gpu_path and not gpu_modes:
            modes = modes[:1]
        params += [(impl, mode) for mode in modes]
    return params


def param_id(value) -> str:
    return value.name if isinstance(value, Implementation) else str(value)
