"""The pieces of a PPLR training run that :class:`pplr_fast.trainer.PPLRTrainer` drives.

- ``epoch_plan``: what an epoch's pseudo-labels let it train (skips, warnings);
- ``epoch_data``: the pseudo-labelled training set and the cluster means;
- ``camera_proxies``: PPLR-CAM's (cluster, camera) proxies;
- ``method_losses``: each method's loss terms behind one hook, ``METHOD_LOSSES``;
- ``optim``: Adam and the step schedule;
- ``loop``: the training iterations of an epoch, the one training step;
- ``summary``: summary.json and metrics.png at the end of a run.

Checkpoint contents, the --resume checks and restoring generators are in
``pplr_fast.utils.checkpoint``.
"""
from .camera_proxies import CameraProxies
from .epoch_data import PseudoLabelledSet, cluster_means, pseudo_labelled_set
from .epoch_plan import CLUSTER_JUMP_FACTOR, FEW_KEPT_FRACTION, EpochPlan, plan_epoch
from .loop import EndlessSampler, TrainingLoop
from .method_losses import METHOD_LOSSES, LossSettings, TrainingBatch
from .optim import build_optimizer, learning_rate
from .summary import write_summary

__all__ = ["CLUSTER_JUMP_FACTOR", "CameraProxies", "EndlessSampler", "EpochPlan",
           "FEW_KEPT_FRACTION", "LossSettings", "METHOD_LOSSES", "PseudoLabelledSet",
           "TrainingBatch", "TrainingLoop", "build_optimizer", "cluster_means", "learning_rate",
           "plan_epoch", "pseudo_labelled_set", "write_summary"]
