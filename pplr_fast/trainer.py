"""The PPLR trainer: per epoch extract -> cluster -> re-initialise classifiers -> train.

SPEC §4. Data flows one way: images -> features -> clustering stage ->
pseudo-labels and agreement scores -> losses -> model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .cluster.distributed_stage import run_distributed_cluster_stage
from .cluster.stage import ClusterStageResult, run_cluster_stage
from .config import NO_PRETRAINED, TrainConfig, check_data_size
from .data import (ImageDataset, RandomIdentitySampler, ReidDataset, build_train_transform)
from .evaluation import evaluate_split
from .features import extract_features
from .gpu_fallback import drain_fallback_records
from .losses import (baseline_classification_loss, inter_camera_proxy_loss,
                     pplr_classification_loss, soft_triplet_loss)
from .models import PPLRNet, load_pretrained
from .pseudo_label_quality import pseudo_label_quality
from .utils import distributed
from .utils.checkpoint import (CheckpointError, load_checkpoint, restore_rng_state, rng_state,
                               save_checkpoint)
from .utils.metrics_log import MetricsLog, plot_metrics
from .utils.progress import show_progress

__all__ = ["PPLRTrainer", "RunCompleteError", "TrainConfig", "EpochPlan", "plan_epoch",
           "cluster_means"]


def cluster_means(x: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of the rows of ``x`` per label in [0, count): (count, *x.shape[1:])."""
    sums = torch.zeros((count, *x.shape[1:]), dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    members = torch.bincount(labels, minlength=count).to(x.dtype)
    return sums / members.view(-1, *([1] * (x.dim() - 1)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EndlessSampler(torch.utils.data.Sampler):
    """Successive reshuffled passes of an identity sampler, without end.

    An epoch is a fixed number of iterations (SPEC §4), which may be more or
    fewer than one pass over the pseudo-labelled images: with few clusters a
    batch spans passes instead of never filling.
    """

    def __init__(self, sampler: RandomIdentitySampler, epoch: int):
        if len(sampler) == 0:
            raise ValueError("no pseudo-labelled images to sample from")
        self.sampler, self.epoch = sampler, epoch

    def __iter__(self):
        for cycle in itertools.count():
            self.sampler.set_epoch(self.epoch * 10_000 + cycle)
            yield from self.sampler


# Below this fraction of images in clusters, an epoch is reported as "few kept".
FEW_KEPT_FRACTION = 0.2
# A cluster count that more than doubles or halves from one epoch to the next is reported.
CLUSTER_JUMP_FACTOR = 2.0


@dataclass
class EpochPlan:
    """What an epoch's clustering result lets the trainer do, and why.

    ``events`` are short codes recorded in metrics.jsonl; ``messages`` are the
    matching log lines, each saying what happened and what the trainer does.
    """

    train: bool = True
    camera_loss: bool = True
    events: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def note(self, event: str, message: str) -> None:
        self.events.append(event)
        self.messages.append(message)


def plan_epoch(labels: torch.Tensor, cams: torch.Tensor, *, eps: float, cam: bool,
               previous_clusters: int | None) -> EpochPlan:
    """Decide, from the pseudo-labels alone, what this epoch can train.

    - no cluster: nothing to train; the epoch is skipped (evaluated and saved as usual);
    - one cluster: every loss needs a second class or a negative; skipped too;
    - with ``cam``, no cluster seen by two cameras: the camera loss has no
      positive anywhere, so the epoch trains without it;
    - few images kept, or a cluster count that jumps: trained as usual, and said.
    """
    plan = EpochPlan()
    n = labels.numel()
    clusters = int(labels.max()) + 1 if n else 0
    kept = int((labels >= 0).sum())
    if clusters == 0:
        plan.train = False
        plan.note("no clusters", f"DBSCAN found no cluster (eps={eps}): all {n} images are "
                  "outliers; skipping training this epoch — if this persists, raise --eps")
        return plan
    if clusters == 1:
        plan.train = False
        plan.note("one cluster", f"DBSCAN put all {kept} kept images into one cluster (eps={eps}): "
                  "with a single pseudo identity no loss has a second class or a negative; "
                  "skipping training this epoch — if this persists, lower --eps (on real data, "
                  "start from ImageNet weights with --pretrained)")
        return plan
    if kept < FEW_KEPT_FRACTION * n:
        plan.note("few kept", f"only {kept} of {n} images ({kept / n:.0%}) are in clusters, the "
                  "rest are outliers; training on those — if this persists, raise --eps")
    if previous_clusters and not (previous_clusters / CLUSTER_JUMP_FACTOR <= clusters
                                  <= previous_clusters * CLUSTER_JUMP_FACTOR):
        plan.note("cluster jump", f"the cluster count jumped from {previous_clusters} to "
                  f"{clusters}; the classifiers are rebuilt from this epoch's centroids as "
                  "every epoch, training goes on")
    if cam:
        member = labels >= 0
        pairs = torch.unique(torch.stack([labels[member], cams[member].to(labels)], 1), dim=0)
        if torch.unique(pairs[:, 0]).numel() == pairs.shape[0]:
            plan.camera_loss = False
            plan.note("no cross-camera cluster",
                      "no cluster holds images of two cameras: the camera loss has no positive; "
                      "training without it this epoch")
    return plan


class RunCompleteError(CheckpointError):
    """--resume of a checkpoint that has already trained every epoch this run asks for.

    ``epochs_given`` (False when --epochs was left at its default) only words the message.
    """

    def __init__(self, path: str, last_epoch: int, configured: int | None, requested: int,
                 epochs_given: bool = True):
        super().__init__(path)
        self.path, self.last_epoch, self.configured = path, last_epoch, configured
        self.requested, self.epochs_given = requested, epochs_given

    def __str__(self) -> str:
        done = self.last_epoch + 1
        trained = f"epochs 0-{self.last_epoch}" if done > 1 else "epoch 0"
        if self.configured is not None and done >= self.configured:
            status = (f"{self.path} is a finished run: it trained {trained}, all {done} epochs "
                      "it was configured for")
        else:
            configured = ("" if self.configured is None
                          else f" of the {self.configured} it was configured for")
            status = f"{self.path} has already trained {done} epochs ({trained}{configured})"
        asked = (f"--epochs {self.requested} is the total this run asks for" if self.epochs_given
                 else f"without --epochs the total is the default {self.requested}")
        return (f"{status}; {asked}, so there is nothing to train. --epochs is the total of the "
                f"run, not the epochs to add: to train further, resume with --epochs M, M > "
                f"{done} (e.g. --resume {self.path} --epochs {done + 10})")


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
        self.resume_state = self._read_resume(config.resume) if config.resume else None
        seed_everything(config.seed)      # before the model exists: its init draws from it
        self.model = PPLRNet(config.arch, num_parts=config.parts).to(device)
        if config.pretrained and config.pretrained != NO_PRETRAINED and self.resume_state is None:
            report = load_pretrained(self.model, config.pretrained)
            self.say(f"loaded ImageNet weights: {report.num_tensors} tensors from {report.path}")
        if config.sync_bn and distributed.is_initialized():
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = self._wrap(self.model)
        self.optimizer: torch.optim.Optimizer | None = None
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
        return self.cfg.lr * 0.1 ** (epoch // self.cfg.step_size)

    def _rebuild_optimizer(self, epoch: int) -> None:
        """Adam over the backbone (state kept) and this epoch's new classifiers."""
        old = self.optimizer.state if self.optimizer is not None else {}
        backbone = list(self.model.backbone_parameters())
        groups = [{"params": backbone}, {"params": list(self.model.classifier_parameters())}]
        self.optimizer = torch.optim.Adam(groups, lr=self._lr(epoch),
                                          weight_decay=self.cfg.weight_decay)
        for p in backbone:
            if p in old:
                self.optimizer.state[p] = old[p]

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
        keep = torch.nonzero(result.labels >= 0).flatten()
        labels = result.labels[keep]
        samples = [(self.train_samples[i][0], int(lab), self.train_samples[i][2])
                   for i, lab in zip(keep.tolist(), labels.tolist())]
        scores = result.scores[keep].to(self.device)
        c = result.num_clusters
        targets = labels.to(self.device)
        x_g_kept = x_g[keep.to(x_g.device)].to(self.device)
        x_p_kept = x_p[keep.to(x_p.device)].to(self.device)                 # (n, D, N_p)
        centroids_g = cluster_means(x_g_kept, targets, c)
        centroids_p = cluster_means(x_p_kept, targets, c)
        self.model.reset_classifiers(centroids_g, centroids_p)
        self.net = self._wrap(self.model)
        self._rebuild_optimizer(epoch)
        proxies = (self._camera_proxies(targets, samples, x_g_kept, x_p_kept)
                   if self.cfg.cam and camera_loss else None)
        return samples, scores, proxies

    def _camera_proxies(self, labels, samples, x_g, x_p):
        """Normalised mean feature of every (cluster, camera) pair, global and per part."""
        cams = torch.tensor([s[2] for s in samples], device=self.device)
        pairs, which = torch.unique(torch.stack([labels, cams], 1), dim=0, return_inverse=True)
        return {"g": F.normalize(cluster_means(x_g, which, len(pairs)), dim=1),
                "p": F.normalize(cluster_means(x_p, which, len(pairs)), dim=1),
                "pids": pairs[:, 0], "cams": pairs[:, 1]}

    def train_epoch(self, epoch: int, samples, scores, proxies) -> dict:
        cfg = self.cfg
        sampler = RandomIdentitySampler([s[1] for s in samples], [s[2] for s in samples],
                                        cfg.num_instances, seed=cfg.seed,
                                        num_replicas=distributed.world_size(),
                                        rank=distributed.rank())
        per_rank_batch = max(cfg.num_instances, cfg.batch_size // distributed.world_size())
        loader = DataLoader(ImageDataset(samples, build_train_transform(cfg.height, cfg.width)),
                            batch_size=per_rank_batch, sampler=EndlessSampler(sampler, epoch),
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
        stream = iter(loader)
        self.net.train()
        use_aals = epoch >= cfg.aals_epoch
        sums: dict[str, float] = {}
        bar = tqdm(range(cfg.iters), desc=f"epoch {epoch}: train", leave=False,
                   disable=not show_progress(cfg.progress) or not distributed.is_main())
        steps = 0
        for _ in bar:
            images, targets, cams, index = next(stream)
            images = images.to(self.device, non_blocking=True)
            targets, cams = targets.to(self.device), cams.to(self.device)
            out = self.net(images)
            if cfg.method == "baseline":
                loss_g, loss_p = baseline_classification_loss(out.logits_g, out.logits_p, targets)
            else:
                loss_g, loss_p = pplr_classification_loss(
                    out.logits_g, out.logits_p, targets, scores[index.to(self.device)],
                    beta=cfg.beta, use_aals=use_aals, epsilon=cfg.label_smoothing,
                    backend=cfg.backend)
            loss_tri = soft_triplet_loss(out.f_g, targets)
            global_term = "global_ce" if cfg.method == "baseline" else "pglr"
            terms = {global_term: loss_g, "part": loss_p, "triplet": loss_tri}
            if proxies is not None:
                cam_g = inter_camera_proxy_loss(out.f_g, targets, cams, proxies["g"], proxies["pids"],
                                                proxies["cams"])
                cam_p = torch.stack([inter_camera_proxy_loss(
                    out.f_p[:, :, n], targets, cams, proxies["p"][:, :, n], proxies["pids"],
                    proxies["cams"]) for n in range(cfg.parts)]).mean()
                terms["camera"] = cfg.lam_cam * (cam_g + cam_p)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}: the loss became {float(loss)} ({ {k: float(v) for k, v in terms.items()} }); "
                    "lower --lr or check the input images")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            steps += 1
            for name, value in (*terms.items(), ("loss", loss)):
                sums[name] = sums.get(name, 0.0) + value.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if distributed.any_rank(bool(self.stop_requested), self.device):
                self.stop_requested = self.stop_requested or signal.SIGTERM
                break
        record = {f"loss_{k}" if k != "loss" else k: distributed.all_reduce_mean(v / max(1, steps), self.device)
                  for k, v in sums.items()}
        record["iters"] = steps          # fewer than --iters when a signal stopped the epoch
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
        return {
            "model": self.model.state_dict(),
            "num_classes": self.model.num_classes,
            "optimizer": self.optimizer.state_dict() if self.optimizer and optimizer else None,
            "scheduler": {"base_lr": self.cfg.lr, "step_size": self.cfg.step_size, "gamma": 0.1},
            "epoch": epoch,
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            "initial_metrics": self.initial_metrics,
            "pseudo_labels": None if result is None else result.labels,
            "scores": None if result is None else result.scores,
            "rng": rng_state(),
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self, name: str, epoch: int, result, optimizer: bool = True) -> None:
        if distributed.is_main():
            save_checkpoint(self.state(epoch, result, optimizer), self.logs / name)

    def _read_resume(self, path: str) -> dict:
        """The --resume checkpoint, checked against this run's settings before anything is
        written: same arch/parts/method, optimizer state present, epochs left to train."""
        state = load_checkpoint(path, map_location="cpu", command="resume")
        saved = state.get("config", {})
        for key in ("arch", "parts", "method"):
            if saved.get(key, "pplr" if key == "method" else None) != getattr(self.cfg, key):
                raise CheckpointError(
                    f"{path} was trained with --{key} {saved.get(key)}, this run asks for "
                    f"--{key} {getattr(self.cfg, key)}; resume with the same settings")
        if state.get("optimizer") is None:
            raise CheckpointError(
                f"{path} holds no optimizer state (best.pth keeps only the weights); resume "
                "from the run's last.pth")
        if state["epoch"] + 1 >= self.cfg.epochs:
            raise RunCompleteError(path, state["epoch"], state.get("config", {}).get("epochs"),
                                   self.cfg.epochs)
        return state

    def restore(self, path: str) -> None:
        state = self.resume_state if self.resume_state is not None else self._read_resume(path)
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
        summary = {"initial": self.initial_metrics, "best_epoch": self.best_epoch}
        if distributed.is_main():
            best = self.logs / "best.pth"
            final = None
            if best.exists():
                state = load_checkpoint(best, map_location=self.device)
                final = next((r for r in self.metrics.read() if r.get("epoch") == state["epoch"]
                              and "mAP" in r), None)
            summary["final"] = final
            plot_metrics(self.metrics.read(), self.logs / "metrics.png")
            (self.logs / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            if self.initial_metrics and final:
                self.say(f"mAP before training {self.initial_metrics['mAP']:.1%} -> after training "
                         f"{final['mAP']:.1%} (best epoch {self.best_epoch}; rank-1 "
                         f"{final['rank1']:.1%}, rank-5 {final['rank5']:.1%}, "
                         f"rank-10 {final['rank10']:.1%}, mINP {final['mINP']:.1%})")
            self.say(f"logs, checkpoints and metrics.png in {self.logs}")
        return summary

