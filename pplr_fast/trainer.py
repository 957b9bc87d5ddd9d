"""The PPLR trainer: per epoch extract -> cluster -> re-initialise classifiers -> train.

docs/method.md §4. Data flows one way: images -> features -> clustering stage ->
pseudo-labels and agreement scores -> losses -> model. :class:`PPLRTrainer`
orders the stages and owns the run's state (model, optimizer, best mAP,
signals); the pieces are in :mod:`pplr_fast.training` (the epoch plan, the
pseudo-labelled set, camera proxies, each method's losses, the training
loop, the summary) and :mod:`pplr_fast.utils.checkpoint` (what a checkpoint
holds, the --resume checks).
"""
from __future__ import annotations

import hashlib
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cluster.distributed_stage import run_distributed_cluster_stage
from .cluster.stage import ClusterStageResult, run_cluster_stage
from .config import NO_PRETRAINED, TrainConfig, check_data_size
from .data import ReidDataset
from .evaluation import evaluate_split
from .features import extract_features
from .gpu_fallback import drain_fallback_records
from .models import PPLRNet, load_pretrained
from .pseudo_label_quality import pseudo_label_quality
from .training import (CameraProxies, EpochPlan, TrainingLoop, build_optimizer, cluster_means,
                       learning_rate, plan_epoch, pseudo_labelled_set, write_summary)
from .utils import distributed
from .utils.checkpoint import (RunCompleteError, read_resume_checkpoint, restore_rng_state,
                               save_checkpoint, training_state)
from .utils.metrics_log import MetricsLog

__all__ = ["PPLRTrainer", "RunCompleteError", "TrainConfig", "EpochPlan", "plan_epoch",
           "cluster_means", "run_cluster_stage"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PPLRTrainer:
    """Runs a whole PPLR (or PPLR-CAM) training; ``fit()`` returns the final metrics."""

    def __init__(self, config: TrainConfig, dataset: ReidDataset, device: torch.device):
        self.cfg = config
        self.dataset = dataset
        self.device = device
        self.logs = Path(config.logs_dir)
        self.train_samples = sorted(dataset.train)
        self.train_cams = torch.tensor([cam for _, _, cam in self.train_samples])
        self.train_ids = [pid for _, pid, _ in self.train_samples]    # for the log only
        check_data_size(config, len(self.train_samples))
        # a --resume file is read (and checked) here, before the caller writes anything
        self.resume_state = (read_resume_checkpoint(config.resume, config) if config.resume
                             else None)
        seed_everything(config.seed)      # before the model exists: its init draws from it
        self.model = PPLRNet(config.arch, num_parts=config.parts).to(device)
        if config.pretrained and config.pretrained != NO_PRETRAINED and self.resume_state is None:
            report = load_pretrained(self.model, config.pretrained)
            self.say(f"loaded ImageNet weights: {report.num_tensors} tensors from {report.path}")
        if config.sync_bn and distributed.is_initialized():
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = self._wrap(self.model)
        self.optimizer: torch.optim.Optimizer | None = None
        self.loop = TrainingLoop(config, device)
        self.start_epoch = 0
        self.best_map = -1.0
        self.best_epoch = -1
        self.initial_metrics: dict | None = None
        self.stop_requested: int | bool = False   # the signal number once one arrived
        self.previous_clusters: int | None = None
        self.metrics = MetricsLog(self.logs / "metrics.jsonl") if distributed.is_main() else None

    # ------------------------------------------------------------------ helpers
    def say(self, message: str) -> None:
        if distributed.is_main():
            tqdm.write(message)

    def _wrap(self, model: PPLRNet) -> torch.nn.Module:
        if not distributed.is_initialized():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _lr(self, epoch: int) -> float:
        return learning_rate(self.cfg, epoch)

    def _rebuild_optimizer(self, epoch: int) -> None:
        """Adam over the backbone (state kept) and this epoch's new classifiers."""
        self.optimizer = build_optimizer(self.model, self.cfg, epoch, self.optimizer)

    # ------------------------------------------------------------------ stages
    def extract(self, samples, desc: str):
        return extract_features(self.net, samples, height=self.cfg.height, width=self.cfg.width,
                                batch_size=max(64, self.cfg.batch_size), workers=self.cfg.workers,
                                device=self.device, desc=desc, progress=self.cfg.progress)

    def cluster(self, epoch: int) -> tuple[ClusterStageResult, torch.Tensor, torch.Tensor, float]:
        """Features of the training set and the clustering stage (shared by the ranks)."""
        start = time.perf_counter()
        x_g, x_p = self.extract(self.train_samples, f"epoch {epoch}: features")
        extract_time = time.perf_counter() - start
        settings = dict(eps=self.cfg.eps, k1=self.cfg.k1, k2=self.cfg.k2,
                        min_samples=self.cfg.min_samples, k=self.cfg.k, backend=self.cfg.backend)
        if distributed.is_initialized():     # every rank computes its block of the stage
            result = run_distributed_cluster_stage(x_g, x_p, gathered=True, **settings)
            self._log_rank_digest(epoch, result.labels, result.scores)
        else:
            result = run_cluster_stage(x_g, x_p, **settings)
        return (ClusterStageResult(result.labels.cpu(), result.scores.cpu(), result.timings,
                                   result.backend), x_g, x_p, extract_time)

    def _log_rank_digest(self, epoch: int, labels: torch.Tensor, scores: torch.Tensor) -> None:
        """Each rank records a digest of the pseudo-labels it trains on (ranks must agree)."""
        digest = hashlib.sha1(labels.cpu().numpy().tobytes() + scores.cpu().numpy().tobytes())
        MetricsLog(self.logs / f"rank{distributed.rank()}.jsonl").append(
            {"epoch": epoch, "rank": distributed.rank(), "pseudo_labels_sha1": digest.hexdigest()})

    def prepare_epoch(self, epoch: int, result: ClusterStageResult, x_g, x_p,
                      camera_loss: bool = True):
        """Pseudo-labelled training set, classifier re-init from centroids, camera proxies
        (with ``--cam``, unless ``camera_loss`` is False: then None)."""
        kept = pseudo_labelled_set(self.train_samples, result, x_g, x_p, self.device)
        self.model.reset_classifiers(*kept.centroids())
        self.net = self._wrap(self.model)
        self._rebuild_optimizer(epoch)
        proxies = (CameraProxies.from_clusters(kept.targets, kept.cameras(), kept.x_g, kept.x_p)
                   if self.cfg.cam and camera_loss else None)
        return kept.samples, kept.scores, proxies

    def train_epoch(self, epoch: int, samples, scores, proxies: CameraProxies | None) -> dict:
        """The epoch's iterations (:class:`~pplr_fast.training.TrainingLoop`); its loss record."""
        record, stopped = self.loop.run(self.net, self.optimizer, epoch, samples, scores, proxies,
                                        stop_requested=lambda: bool(self.stop_requested))
        if stopped:        # another rank's signal, when this one received none
            self.stop_requested = self.stop_requested or signal.SIGTERM
        return record

    @torch.no_grad()
    def evaluate(self) -> dict:
        return evaluate_split(self.net, self.dataset.query, self.dataset.gallery,
                              height=self.cfg.height, width=self.cfg.width,
                              batch_size=max(64, self.cfg.batch_size), workers=self.cfg.workers,
                              device=self.device, progress=self.cfg.progress)

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, result: ClusterStageResult | None, optimizer: bool = True) -> dict:
        """What a checkpoint holds; ``optimizer=False`` leaves out the Adam state (best.pth:
        evaluation needs only the weights; last.pth keeps it for --resume)."""
        return training_state(
            model=self.model, optimizer=self.optimizer if optimizer else None, config=self.cfg,
            epoch=epoch, best_map=self.best_map, best_epoch=self.best_epoch,
            initial_metrics=self.initial_metrics,
            pseudo_labels=None if result is None else result.labels,
            scores=None if result is None else result.scores)

    def save(self, name: str, epoch: int, result, optimizer: bool = True) -> None:
        if distributed.is_main():
            save_checkpoint(self.state(epoch, result, optimizer), self.logs / name)

    def restore(self, path: str) -> None:
        state = (self.resume_state if self.resume_state is not None
                 else read_resume_checkpoint(path, self.cfg))
        self.resume_state = None
        self.model.resize_classifiers(state["num_classes"])
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.net = self._wrap(self.model)
        self._rebuild_optimizer(state["epoch"] + 1)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = state["epoch"] + 1
        self.best_map, self.best_epoch = state["best_map"], state["best_epoch"]
        self.initial_metrics = state.get("initial_metrics")
        restore_rng_state(state["rng"])
        if self.metrics is not None:
            self.metrics = MetricsLog(self.logs / "metrics.jsonl", truncate_after_epoch=state["epoch"])
        self.say(f"resumed from {path}: continuing at epoch {self.start_epoch}")

    # ------------------------------------------------------------------ main loop
    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = signum
        self.say(f"received signal {signum}: finishing the current step, then saving and exiting")

    def fit(self) -> dict:
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._fit()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _fit(self) -> dict:
        cfg = self.cfg
        if cfg.resume:
            self.restore(cfg.resume)
        else:
            eval_start = time.perf_counter()
            self.initial_metrics = self.evaluate()
            if distributed.is_main():
                self.metrics.append({"epoch": -1, **self.initial_metrics,
                                     "eval_s": time.perf_counter() - eval_start})
                self.say(f"before training: mAP {self.initial_metrics['mAP']:.1%}, "
                         f"rank-1 {self.initial_metrics['rank1']:.1%}")
        for epoch in range(self.start_epoch, cfg.epochs):
            self._run_epoch(epoch)
            if self.stop_requested:
                self.save("interrupted.pth", epoch - 1, None)
                self.say(f"stopped during epoch {epoch}; last complete epoch saved in "
                         f"{self.logs / 'last.pth'}, current weights in {self.logs / 'interrupted.pth'}."
                         f" Continue with --resume {self.logs / 'last.pth'}")
                return {"interrupted": True, "epoch": epoch, "signal": int(self.stop_requested)}
        return self._finish()

    def _run_epoch(self, epoch: int) -> dict:
        """One epoch, and its metrics.jsonl line. Its seconds: ``extract_s`` (features of the
        training set), ``cluster_s`` (the clustering stage; each of its stages under its own
        name: ``knn_global_s``, ``knn_parts_s``, ``encoding_s``, ``jaccard_s``, ``dbscan_s``,
        ``cross_agreement_s``, and under torchrun ``features_s``, the ranks' feature
        exchange), ``train_s`` (the iterations; ``s_per_iter``), ``eval_s`` (in evaluated
        epochs) and ``epoch_s``, the whole epoch: these plus the centroids, the pseudo-label
        numbers and best.pth."""
        cfg = self.cfg
        start = time.perf_counter()
        result, x_g, x_p, extract_time = self.cluster(epoch)
        stages = {f"{k}_s": v for k, v in result.timings.items() if k != "total"}
        record = {"epoch": epoch, "clusters": result.num_clusters, "outliers": result.num_outliers,
                  "extract_s": extract_time, "cluster_s": result.timings["total"], **stages,
                  "cluster_backend": result.backend, "lr": self._lr(epoch)}
        # the true identities are read here only, for the log (never for training)
        record.update(pseudo_label_quality(result.labels, self.train_ids, result.scores))
        self.say(f"epoch {epoch}: {result.num_clusters} clusters, {result.num_outliers} outliers "
                 f"(clustering {result.timings['total']:.2f}s on {result.backend})")
        plan = plan_epoch(result.labels, self.train_cams, eps=cfg.eps, cam=cfg.cam,
                          previous_clusters=self.previous_clusters)
        self.previous_clusters = result.num_clusters
        for message in plan.messages:
            self.say(f"epoch {epoch}: {message}")
        if plan.events:
            record["events"] = plan.events
        if not plan.train:
            record["skipped"] = plan.events[0]
        else:
            samples, scores, proxies = self.prepare_epoch(epoch, result, x_g, x_p,
                                                          camera_loss=plan.camera_loss)
            del x_g, x_p
            train_start = time.perf_counter()
            record.update(self.train_epoch(epoch, samples, scores, proxies))
            record["train_s"] = time.perf_counter() - train_start
            record["s_per_iter"] = record["train_s"] / max(1, record["iters"])
        fallbacks = drain_fallback_records()
        if fallbacks:       # a fast GPU piece did not run this epoch: the log says so every epoch
            record["gpu_fallbacks"] = fallbacks
            for f in fallbacks:
                self.say(f"epoch {epoch}: on {f['device']} the fast {f['op']} ran {f['ran']} "
                         f"({f['calls']} calls): {f['reason']}; fix: {f['fix']}")
        if self.stop_requested:
            return record
        if (epoch + 1) % cfg.eval_step == 0 or epoch == cfg.epochs - 1:
            eval_start = time.perf_counter()
            metrics = self.evaluate()
            record.update(metrics, eval_s=time.perf_counter() - eval_start)
            if distributed.is_main():
                improved = metrics["mAP"] > self.best_map
                if improved:
                    self.best_map, self.best_epoch = metrics["mAP"], epoch
                self.say(f"epoch {epoch}: mAP {metrics['mAP']:.1%} rank-1 {metrics['rank1']:.1%} "
                         f"(best {self.best_map:.1%} at epoch {self.best_epoch})")
                if improved:
                    self.save("best.pth", epoch, result, optimizer=False)
        record["epoch_s"] = time.perf_counter() - start
        if distributed.is_main():    # the log line first: a crash after last.pth never loses it
            self.metrics.append(record)
        self.save("last.pth", epoch, result)
        return record

    def _finish(self) -> dict:
        if not distributed.is_main():
            return {"initial": self.initial_metrics, "best_epoch": self.best_epoch}
        return write_summary(self.logs, self.metrics, self.initial_metrics, self.best_epoch,
                             self.device, self.say)
