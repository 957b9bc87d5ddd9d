"""The clustering stage: kNN -> k-reciprocal Jaccard -> DBSCAN, and cross-agreement.

Every op takes ``backend="reference"`` (plain PyTorch, the oracle) or
``backend="fast"`` (compiled CPU kernels / Triton + CUDA on a GPU); both give
the same pseudo-labels. Torch tensors in, torch tensors out.
"""
from .checks import ClusterInputError
from .cross_agreement import cross_agreement
from .dbscan import dbscan
from .jaccard import jaccard_distance
from .knn import nearest_neighbours
from .sparse_distance import SparseDistance

__all__ = ["ClusterInputError", "SparseDistance", "cross_agreement", "dbscan",
           "jaccard_distance", "nearest_neighbours"]
