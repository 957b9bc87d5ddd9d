"""PPLR losses (docs/method.md §3): plain PyTorch twins, and the combined classification
loss with a backend switch to the fused Triton op (pplr_fast.kernels); the
part-based baseline's hard-label loss."""
from .aals import aals_loss
from .baseline import baseline_classification_loss
from .classification import pplr_classification_loss
from .fused import pplr_classification_loss_fused
from .inter_camera_proxy import inter_camera_proxy_loss
from .label_smoothing import cross_entropy_label_smoothing
from .pglr import pglr_loss
from .soft_triplet import soft_triplet_loss

__all__ = ["aals_loss", "baseline_classification_loss", "cross_entropy_label_smoothing",
           "inter_camera_proxy_loss",
           "pglr_loss", "pplr_classification_loss", "pplr_classification_loss_fused",
           "soft_triplet_loss"]
