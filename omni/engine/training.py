"""One training loop for every stage: ``fit(stage, cfg)``.

A stage supplies a model, a dataset (+ collate), ``loss_fn(model, batch) -> (loss, logs)`` and
optionally ``evaluate(model) -> metrics``. The engine does the rest: device and precision,
gradient accumulation (counted in micro-batches), clipping, warmup + cosine, evaluation, tqdm,
metrics.jsonl, atomic checkpoints, exact resume, a non-finite-loss guard, torch.compile and DDP.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from omni.config import TrainConfig
from omni.data import EpochBatches
from omni.engine import checkpoint as ckpt
from omni.engine.lock import hold_folder
from omni.engine.optim import lr_at, make_optimizer
from omni.engine.runtime import Runtime, StopOnSignal, all_mean, any_rank, peak_rss_bytes, setup_runtime, to_device
from omni.engine.stage import Stage

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    step: int = 0       # optimizer steps done
    epoch: int = 0
    micro: int = 0      # micro-batches of this epoch already consumed (global, all ranks)
    bad_steps: int = 0  # consecutive steps skipped for a non-finite loss or gradient
    best: float | None = None
    skipped_total: int = 0
    best_key: str | None = None  # the metric ``best`` holds (a resume may change the stage's metric)
    since_best: int = 0  # evaluations since ``best`` last improved (train.patience)
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(self, stage: Stage, cfg: TrainConfig, resume: bool, overwrite: bool,
                 rt: Runtime | None = None) -> None:
        self.stage, self.cfg = stage, cfg
        self.rt = rt if rt is not None else setup_runtime(cfg.device, cfg.precision)
        self.save_dir = Path(cfg.save_dir)
        self.raw = stage.model.to(self.rt.device)
        self.opt = make_optimizer(self.raw, cfg, self.rt.device, stage.lr_scales)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.needs_scaler())
        self.p = Progress()
        self.stop = StopOnSignal()
        self._saved_at = time.monotonic()
        torch.manual_seed(cfg.seed + 1_000_003 * self.rt.rank)  # dropout differs per rank
        self._prepare_dir(resume, overwrite)
        model: nn.Module = torch.compile(self.raw) if cfg.compile else self.raw
        if self.rt.device.type == "cuda" and not cfg.compile and self.rt.is_main:
            log.info("on a GPU, train.compile=true usually makes the step faster (docs/results.md); "
                     "its first steps are spent compiling")
        if self.rt.distributed:
            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            model = DDP(model, device_ids=ids, find_unused_parameters=stage.find_unused_parameters)
        self.model = model

    def _prepare_dir(self, resume: bool, overwrite: bool) -> None:
        exists = ckpt.has_train_state(self.save_dir)
        if resume:
            self._restore(ckpt.load_train_state(self.save_dir))
            if self.rt.is_main:
                ckpt.truncate_metrics(self.save_dir, self.p.step)
            log.info("resumed %s at step %d (epoch %d, micro-batch %d)",
                     self.save_dir, self.p.step, self.p.epoch, self.p.micro)
        elif exists and not overwrite:
            raise TrainingError(f"{self.save_dir} already holds a run; pass --resume to continue it, "
                                f"--overwrite to start over, or set train.save_dir=ANOTHER_DIR")
        elif self.rt.is_main and (self.save_dir / ckpt.METRICS_FILE).exists():
            (self.save_dir / ckpt.METRICS_FILE).unlink()
        self.rt.barrier()

    def _restore(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.rt.world_size:
            raise TrainingError(f"{self.save_dir} was trained on {state['world_size']} processes; resume "
                                f"with the same number (got {self.rt.world_size}) for an exact continuation")
        path = self.save_dir / ckpt.STATE_FILE
        ckpt.check_state_fits(self.raw, state["model"], path, self.stage.config)
        self.raw.load_state_dict(state["model"], strict=True)
        try:
            self.opt.load_state_dict(state["optimizer"])
        except ValueError as e:  # the same tensors, other parameter groups (frozen parts, lr_scales)
            raise ckpt.CheckpointError(f"{path}: the optimizer state does not fit this stage's parameter "
                                       f"groups ({e}); resume with the config it was trained with, or start "
                                       "over with --overwrite") from e
        self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.p = Progress(p["step"], p["epoch"], p["micro"], p["bad_steps"], p["best"], p["skipped_total"],
                          p.get("best_key"),  # None: a state from before best_key was recorded
                          p.get("since_best", 0))
        self._resume_rng = state["rng"][self.rt.rank]
        if self.p.best is not None and self.p.best_key != self.stage.best_metric:
            self._retire_best()

    def _retire_best(self) -> None:
        """The run resumes with another best metric (or one its state did not record): the old value
        cannot be compared with the new one, so best/ moves to best_<old metric>/ (kept, not
        overwritten) and the next validation starts a new best/."""
        if self.rt.is_main:
            kept = ckpt.retire_best(self.save_dir, self.p.best_key, self.p.step)
            was = self.p.best_key or "a metric this state did not record"
            log.warning("best metric changed from %s to %s: the old best/ (%.4f) is now %s; the next "
                        "validation starts a new best/", was, self.stage.best_metric, self.p.best, kept)
        self.p.best, self.p.best_key = None, self.stage.best_metric

    # ---------------------------------------------------------------- checkpoints
    def _save_due(self) -> bool:
        """train.checkpoint_minutes have passed since the last save (or the start)."""
        minutes = self.cfg.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self._saved_at >= minutes * 60

    def save(self) -> None:
        """All ranks call this (RNG states are gathered); rank 0 writes."""
        self._saved_at = time.monotonic()
        rng = _rng_state()
        rngs = [None] * self.rt.world_size
        if self.rt.distributed:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if self.rt.is_main:
            state = {"model": self.raw.state_dict(), "optimizer": self.opt.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rngs, "world_size": self.rt.world_size,
                     "progress": {k: v for k, v in vars(self.p).items() if k != "extra"}}
            ckpt.save_snapshot(self.save_dir, self.stage.config, self.raw, {"step": str(self.p.step)},
                               self.stage.save_extra)
            ckpt.save_train_state(state, self.save_dir)
        self.rt.barrier()

    def _save_best(self, metrics: dict[str, float]) -> None:
        key = self.stage.best_metric
        if key is None or key not in metrics or not self.rt.is_main:
            return
        value = metrics[key]
        better = self.p.best is None or (value > self.p.best if self.stage.best_max else value < self.p.best)
        self.p.since_best = 0 if better else self.p.since_best + 1
        if better:
            self.p.best, self.p.best_key = value, key
            best_dir = self.save_dir / "best"
            ckpt.save_snapshot(best_dir, self.stage.config, self.raw, {"step": str(self.p.step), key: str(value)},
                               self.stage.save_extra)
            log.info("new best %s=%.4f at step %d -> %s", key, value, self.p.step, best_dir)

    # ---------------------------------------------------------------- the loop
    def _batches(self):
        """Yield micro-batches forever from the saved position, advancing epoch/micro."""
        cfg = self.cfg
        while self.p.epoch < cfg.max_epochs:
            sampler = EpochBatches(len(self.stage.train_set), cfg.batch_size, self.rt.rank, self.rt.world_size,
                                   cfg.seed, self.p.epoch, self.p.micro, self.stage.lengths)
            if sampler.per_epoch == 0:
                raise TrainingError(f"{self.stage.name}: {len(self.stage.train_set)} training samples "
                                    f"are fewer than one global batch ({cfg.batch_size} x {self.rt.world_size})")
            loader = DataLoader(self.stage.train_set, batch_sampler=sampler, collate_fn=self.stage.collate,
                                num_workers=cfg.num_workers, pin_memory=self.rt.device.type == "cuda",
                                # its own generator: creating a loader must not draw from the global
                                # RNG, or a resumed run's dropout masks would drift from the original
                                generator=torch.Generator().manual_seed(cfg.seed + self.p.epoch))
            for batch in loader:
                self.p.micro += 1
                if batch is not None:  # None: every sample of this micro-batch was unusable
                    yield batch
            self._report_skips()
            self.p.epoch, self.p.micro = self.p.epoch + 1, 0

    def _report_skips(self) -> None:
        """Log the epoch's unusable samples; stop if most of the epoch was unusable."""
        if self.stage.skip_report is None:
            return
        report = self.stage.skip_report()
        seen, skipped = report.get("seen", 0), report.get("skipped", 0)
        if skipped:
            log.warning("epoch %d: skipped %d of %d samples: %s", self.p.epoch, skipped, seen,
                        {k: v for k, v in report.items() if k not in ("seen", "skipped")})
        if self.rt.is_main:
            ckpt.append_metrics(self.save_dir, {"event": "data", "step": self.p.step, "epoch": self.p.epoch, **report})
        if seen and skipped > seen / 2:
            raise TrainingError(f"{self.stage.name}: {skipped} of {seen} samples in epoch {self.p.epoch} were "
                                f"unusable ({report}); fix the data (see the warnings above for files)")

    def _step(self, batches) -> tuple[float, float, float] | None:
        """One optimizer step over gradient_accumulation_steps micro-batches.
        Returns (loss, grad_norm, items) or None when the epochs ran out."""
        accum = self.cfg.gradient_accumulation_steps
        total, items, logs = torch.zeros((), device=self.rt.device), 0.0, {}
        self.model.train()
        for k in range(accum):
            batch = next(batches, None)
            if batch is None:
                return None
            items += self.stage.count_items(batch)
            batch = to_device(batch, self.rt.device)
            sync = k == accum - 1 or not self.rt.distributed
            with (contextlib.nullcontext() if sync else self.model.no_sync()), self.rt.autocast():
                loss, logs = self.stage.loss_fn(self.model, batch)
            self.scaler.scale(loss / accum).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.max_grad_norm)
        loss_v = total.item() / accum
        finite = math.isfinite(loss_v) and (self.rt.needs_scaler() or math.isfinite(gnorm.item()))
        if any_rank(self.rt, not finite):
            self._skip_step(loss_v, gnorm.item())
            return loss_v, gnorm.item(), items
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.p.step, self.cfg) * g["lr_scale"]
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.p.step += 1
        self.p.bad_steps = 0
        self.p.extra = logs
        return all_mean(self.rt, loss_v), gnorm.item(), items * self.rt.world_size

    def _skip_step(self, loss: float, gnorm: float) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.p.bad_steps += 1
        self.p.skipped_total += 1
        log.warning("step %d: non-finite loss %.4g / grad norm %.4g; step skipped (%d in a row)",
                    self.p.step, loss, gnorm, self.p.bad_steps)
        if self.rt.is_main:
            ckpt.append_metrics(self.save_dir, {"event": "skip", "step": self.p.step, "loss": loss})
        if self.p.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(f"{self.p.bad_steps} steps in a row with a non-finite loss or gradient at "
                                f"step {self.p.step}; the last good checkpoint is in {self.save_dir}. "
                                "Lower train.lr, check the data, or set train.precision=fp32")

    def evaluate(self) -> dict[str, float]:
        if self.stage.evaluate is None:
            return {}
        metrics: dict[str, float] = {}
        if self.rt.is_main:
            self.raw.eval()
            with torch.no_grad(), self.rt.autocast():
                metrics = self.stage.evaluate(self.raw)
            self.raw.train()
            ckpt.append_metrics(self.save_dir, {"event": "val", "step": self.p.step, **metrics})
            log.info("step %d: %s", self.p.step, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self._save_best(metrics)
        self.rt.barrier()
        return metrics

    def _stale(self) -> bool:
        """train.patience evaluations in a row without a new best: the held-out metric has stopped
        improving, and more steps would only fit the training set closer."""
        return self.cfg.patience > 0 and self.p.since_best >= self.cfg.patience

    def run(self, stop_at: int | None = None, deadline: float | None = None) -> dict[str, Any]:
        """Train to max_steps; earlier at ``stop_at`` (a step), at ``deadline`` (a ``time.time()``;
        status "deadline") or when the held-out metric stops improving (status "converged"). Each
        way leaves a checkpoint to resume from."""
        cfg, rt = self.cfg, self.rt
        last = stop_at if stop_at is not None else cfg.max_steps
        if hasattr(self, "_resume_rng"):
            _set_rng_state(self._resume_rng)
        batches = self._batches()
        if rt.is_main:
            self._log_start()
        bar = tqdm(total=cfg.max_steps, initial=self.p.step, desc=self.stage.name, disable=not rt.is_main,
                   dynamic_ncols=True, unit="step")
        metrics: dict[str, float] = {}
        evaluated_at = -1  # same on every rank (only rank 0 gets metrics back)
        t0, window_items, status = time.perf_counter(), 0, "done"
        with self.stop:
            while self.p.step < min(last, cfg.max_steps):
                out = self._step(batches)
                if out is None:
                    status = "epochs"
                    break
                loss, gnorm, items = out
                window_items += items
                if self.p.bad_steps == 0:
                    bar.update(1)
                if self.p.step % cfg.log_freq == 0 or self.p.step == 1:
                    dt = time.perf_counter() - t0
                    self._log_train(bar, loss, gnorm, window_items / max(dt, 1e-9))
                    t0, window_items = time.perf_counter(), 0
                if self.p.step % cfg.val_freq == 0:
                    metrics, evaluated_at = self.evaluate(), self.p.step
                if self.p.step % cfg.checkpoint_freq == 0 or any_rank(rt, self._save_due()):
                    self.save()
                if any_rank(rt, self.stop.requested):
                    status = "interrupted"
                    break
                if any_rank(rt, self._stale()):
                    status = "converged"
                    log.info("%s: no better %s in %d evaluations: stopping at step %d (train.patience)",
                             self.stage.name, self.stage.best_metric, cfg.patience, self.p.step)
                    break
                if deadline is not None and any_rank(rt, time.time() >= deadline):
                    status = "deadline"
                    break
        bar.close()
        if status == "done" and self.p.step < cfg.max_steps:
            status = "stopped"  # --stop-at
        if status != "interrupted" and evaluated_at != self.p.step:
            metrics = self.evaluate()
        self.save()
        if rt.is_main:  # how the run ended, for whoever reads the folder later (check_setup.py)
            ckpt.append_metrics(self.save_dir, {"event": "end", "step": self.p.step, "status": status,
                                                "time": time.time()})
        if status == "interrupted":
            log.warning("interrupted: checkpoint at step %d in %s; continue with --resume", self.p.step, self.save_dir)
        return {"status": status, "step": self.p.step, "skipped_steps": self.p.skipped_total, **metrics}

    def _log_start(self) -> None:
        """What this run computes on and in which precision, and why: printed and in metrics.jsonl."""
        rt = self.rt
        rec = {"event": "start", "step": self.p.step, "device": str(rt.device), "precision": rt.precision,
               "precision_reason": rt.precision_reason, "compile": self.cfg.compile,
               "threads": torch.get_num_threads(), "torch": torch.__version__}
        log.info("%s: %s on %s (%s), %d threads%s", self.stage.name, rt.precision, rt.device,
                 rt.precision_reason, rec["threads"], ", compiled" if self.cfg.compile else "")
        ckpt.append_metrics(self.save_dir, rec)

    def _log_train(self, bar: tqdm, loss: float, gnorm: float, speed: float) -> None:
        lr = lr_at(max(self.p.step - 1, 0), self.cfg)
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", f"{self.stage.items_unit}/s": f"{speed:,.0f}"}
        if self.rt.device.type == "cuda":  # the allocator's peak since the start (CUDA context not included)
            memory = {"cuda_peak_gib": torch.cuda.max_memory_allocated(self.rt.device) / 2 ** 30}
            postfix["mem"] = f"{memory['cuda_peak_gib']:.2f}G"
        else:  # the process's peak resident memory: model, optimizer, batches and the Python heap
            memory = {"rss_peak_gib": peak_rss_bytes() / 2 ** 30}
        bar.set_postfix(postfix, refresh=False)
        if self.rt.is_main:
            rec = {"event": "train", "step": self.p.step, "epoch": self.p.epoch, "loss": loss, "lr": lr,
                   "grad_norm": gnorm, f"{self.stage.items_unit}_per_s": speed, **memory, "time": time.time(),
                   **self.p.extra}
            ckpt.append_metrics(self.save_dir, rec)


def fit(stage: Stage, cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
        stop_at: int | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Train ``stage`` under ``cfg``; returns the final status, step and validation metrics.

    ``stop_at``: stop (with a checkpoint) after that step while the schedule still targets
    ``cfg.max_steps``, for time-sliced jobs; continue later with ``resume=True``.
    """
    rt = setup_runtime(cfg.device, cfg.precision)
    with hold_folder(rt, Path(cfg.save_dir)):
        return Trainer(stage, cfg, resume, overwrite, rt).run(stop_at, deadline)
