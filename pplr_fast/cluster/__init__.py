"""The clustering stage: kNN -> k-reciprocal Jaccard -> DBSCAN, and cross-agreement.

Every op takes ``backend="reference"`` (plain PyTorch, the oracle) or
``backend="fast"`` (compiled CPU kernels / Triton + CUDA on a GPU); both give
the same pseudo-labels. Torch tensors in, torch tensors out.

Files: ``api.py`` the public ops (checks + backend choice), ``reference.py``
the reference path, ``fast_cpu.py`` the fast CPU path, ``fast_cuda.py`` the
fast GPU path (the three follow the contract of ``ops.py``), ``stage.py`` the
whole stage of one epoch, ``distributed_stage.py`` the stage shared by the
processes of a ``torch.distributed`` job with ``row_blocks.py`` its row-block
kernels; ``common.py``, ``checks.py`` and ``sparse_distance.py`` are the
helpers they share. ``docs/architecture.md`` walks through adding an op.
"""
from .api import (cross_agreement, cross_agreement_from_neighbours, dbscan, jaccard_distance,
                  jaccard_from_neighbours, nearest_neighbours)
from .checks import ClusterInputError
from .sparse_distance import SparseDistance
from .stage import ClusterStageResult, run_cluster_stage

__all__ = ["ClusterInputError", "ClusterStageResult", "SparseDistance", "cross_agreement",
           "cross_agreement_from_neighbours", "dbscan", "jaccard_distance",
           "jaccard_from_neighbours", "nearest_neighbours", "run_cluster_stage"]
