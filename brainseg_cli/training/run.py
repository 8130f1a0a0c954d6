"""One training run's live objects and what an epoch does to them (:class:`TrainingRun`).

:func:`brainseg_cli.training.fit.fit` builds a :class:`TrainingRun` and loops over its epochs;
the module docstring of :mod:`brainseg_cli.training.fit` describes the behaviour.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli import __version__
from brainseg_cli.checkpoint import (
    RESUME_KEYS,
    bare_state_dict,
    checkpoint_payload,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from brainseg_cli.data.plan_schema import Plan
from brainseg_cli.errors import BrainsegError, CheckpointError, ConfigError
from brainseg_cli.losses import DeepSupervisionLoss
from brainseg_cli.training import distributed as D
from brainseg_cli.training.batches import (
    StepBatches,
    TrainingCases,
    batch_iterator,
    case_iterator,
    close_iterator,
    local_sample_indices,
)
from brainseg_cli.training.config import Runtime, TrainConfig, config_differences
from brainseg_cli.training.decisions import Decisions, decide_and_store
from brainseg_cli.training.ema import WeightAverage
from brainseg_cli.training.logging import MetricsLog, TensorBoardLog
from brainseg_cli.training.optim import (
    StepSchedule,
    build_optimizer,
    resolved_optimizer_settings,
    steps_left_in_budget,
)
from brainseg_cli.training.rundir import BEST, LAST, check_run_dir, write_config_json
from brainseg_cli.training.seeding import epoch_seed, seed_everything
from brainseg_cli.training.step import TrainStep
from brainseg_cli.training.targets import Outputs, training_loss
from brainseg_cli.training.validation import ValidationResult, validate

logger = logging.getLogger(__name__)

#: Progress descriptions are refreshed (and the loss synchronised) every this many steps; with
#: several processes the budget is also checked this often.
PROGRESS_EVERY = 10


@dataclass(frozen=True)
class EpochState:
    """What an epoch hook sees (called at the start of every epoch).

    Attributes:
        epoch: the 0-based epoch about to start.
        model: the bare model (not wrapped by DDP or ``torch.compile``).
        optimizer: the optimiser; a hook may ``add_param_group`` (the schedule applies to new
            groups too; the group's ``lr`` at that moment is its initial rate).
        replay: True when the hook is replayed on ``--resume`` for an epoch that already ran
            (hooks must bring the model and optimiser into the state they had, e.g. unfreeze and
            add the same parameter group; they should not log as if the epoch were starting).
    """

    epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    replay: bool = False


EpochHook = Callable[[EpochState], None]


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`fit`.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: ``run_dir / "best.pt"``.
        last_checkpoint: ``run_dir / "last.pt"``.
        epochs_completed: number of epochs trained (including those before a resume).
        best_epoch: 0-based epoch of the best validation Dice.
        best_val_dice: mean foreground Dice of the best epoch (before post-processing).
        val_dice: per-entity validation Dice of the best epoch.
        postprocessing: the post-processing decision stored in ``best.pt``.
        region_thresholds: the region thresholds stored in ``best.pt`` (``{region: threshold}``;
            empty for softmax models).
        region_min_volumes: the minimum region volumes stored in ``best.pt`` (``{region: mm³}``;
            empty for softmax models).
        stop_reason: ``"epochs"``, ``"patience"`` or ``"max_time"``.
        step_losses: training loss of every step of this process's run (averaged over ranks).
        seconds: wall-clock seconds of the whole run (time before a resume included).
        bundle: the bundle archive written at the end (``--bundle``), else None.
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    epochs_completed: int
    best_epoch: int
    best_val_dice: float
    val_dice: dict[str, float]
    postprocessing: dict[str, dict[str, bool]]
    stop_reason: str
    region_thresholds: dict[str, float] = field(default_factory=dict)
    region_min_volumes: dict[str, float] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0
    bundle: Path | None = None


def _trainable_signature(model: nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


@dataclass
class _Progress:
    """Best-so-far bookkeeping, saved in ``last.pt`` under ``training``."""

    best_val_dice: float = -1.0
    best_epoch: int = -1
    best_val: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)


class TrainingRun:
    """The live objects of one training run and what happens to them in an epoch.

    :func:`fit` builds it and calls :meth:`train_epoch`, :meth:`end_epoch` and :meth:`finish`.
    """

    def __init__(self, *, model: nn.Module, plan: Plan, dataset: TrainingCases,
                 train_cases: Sequence[str], val_cases: Sequence[str], run_dir: Path, config: TrainConfig,
                 runtime: Runtime, ctx: D.DistContext, param_groups: Iterable[dict[str, Any]] | None,
                 epoch_hooks: Sequence[EpochHook], train_mode_hook: Callable[[nn.Module], None] | None,
                 checkpoint_extra: Mapping[str, Any] | None,
                 progress: Callable[[str, int, int], None] | None) -> None:
        self.model, self.plan, self.dataset, self.run_dir, self.config = model, plan, dataset, run_dir, config
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)
        self.runtime, self.ctx, self.hooks, self.train_mode_hook = runtime, ctx, epoch_hooks, train_mode_hook
        self.progress_fn = progress
        self.device = torch.device(runtime.device)
        resume_from = check_run_dir(run_dir, resume=config.resume, is_main=ctx.is_main)
        self.outputs = Outputs.of(plan, model)
        loss_fn = training_loss(config.loss, plan=plan, model=model)
        # Validation scores one whole case at full resolution: the loss without deep supervision.
        self.val_loss_fn = loss_fn.loss if isinstance(loss_fn, DeepSupervisionLoss) else loss_fn

        self.settings = resolved_optimizer_settings(name=config.optimizer, lr=config.lr, schedule=config.schedule,
                                                    weight_decay=config.weight_decay)
        model.to(self.device)
        groups = list(param_groups) if param_groups is not None else list(model.parameters())
        self.optimizer = build_optimizer(groups, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
        self.total_steps = config.epochs * config.iterations_per_epoch
        self.schedule = StepSchedule(self.optimizer, name=self.settings["schedule"], total_steps=self.total_steps)
        # The weights validated and saved: the model's own, or their moving average (--ema).
        self.average = WeightAverage(model, config.ema) if config.ema is not None else None
        self.evaluated = self.average.module if self.average is not None else model
        self.step = TrainStep(model=model, optimizer=self.optimizer, schedule=self.schedule, loss_fn=loss_fn,
                              precision=runtime.precision, grad_clip=config.grad_clip, average=self.average)

        self.state = _Progress()
        self.start_epoch = 0
        if resume_from is not None:
            self.start_epoch = self._restore(resume_from)
        else:
            seed_everything(config.seed + ctx.rank)
        self.metrics = MetricsLog(run_dir, list(self.outputs.entities), enabled=ctx.is_main)
        if resume_from is not None:
            self.metrics.load_until(self.start_epoch - 1)
        self.tensorboard = TensorBoardLog(run_dir / "tensorboard", enabled=ctx.is_main,
                                          purge_step=self.start_epoch if resume_from is not None else None)
        if ctx.is_main:
            write_config_json(run_dir, config, runtime, {
                "optimizer": self.settings, "train_cases": self.train_cases, "val_cases": self.val_cases,
                "world_size": ctx.world_size, "tool_version": __version__,
            })
        self.data_iter = self._batches()
        self.network = wrap_network(model, ctx=ctx, device=self.device, compile_model=config.compile)
        self.signature = _trainable_signature(model)

        extra = dict(checkpoint_extra or {})
        self.common_training = {
            "seed": config.seed, "config": config.to_dict(), "optimizer": self.settings,
            "train_cases": self.train_cases, "val_cases": self.val_cases, "world_size": ctx.world_size,
            "precision": runtime.precision, "dataset_fingerprint": extra.pop("dataset_fingerprint", None), **extra,
        }
        self.best_validation: ValidationResult | None = None
        self.last_validated: tuple[int, ValidationResult] | None = None  # (epoch, its validation)
        self.val_seconds = 0.0  # the last validation's duration: what the budget keeps for the last one
        self.step_losses: list[float] = []
        self.stop_reason = "epochs"
        self.segment_start = time.perf_counter()
        self.elapsed_before = self.state.elapsed
        self.last_loss = float("nan")
        self.speed = ""  # the last epoch's steps, seconds and steps per second, for its log line

    # ------------------------------------------------------------------------------- set-up
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batch_size = int(self.plan.batch_size)
        world = self.ctx.world_size
        if batch_size < world:
            raise ConfigError(f"batch size {batch_size} is smaller than the {world} processes; raise --batch-size")
        if batch_size % world:
            logger.warning("batch size %d is not a multiple of %d processes: ranks get unequal shares", batch_size,
                           world)
        first_step = self.start_epoch * self.config.iterations_per_epoch
        fraction = float(self.plan.sampling.foreground_fraction)
        batches = StepBatches(self.dataset, self.train_cases, batch_size=batch_size, seed=self.config.seed,
                              first_step=first_step, num_steps=max(self.total_steps - first_step, 0),
                              indices=local_sample_indices(batch_size, self.ctx), augment=self.config.augment,
                              foreground_fraction=fraction)
        return batch_iterator(batches, workers=self.runtime.workers, pin_memory=self.device.type == "cuda")

    def _restore(self, path: Path) -> int:
        """Load ``last.pt`` into the live objects; return the epoch to start with.

        With a weight average the checkpoint's ``state_dict`` is the average and ``train_state_dict``
        the trained weights.
        """
        config, model, optimizer, state = self.config, self.model, self.optimizer, self.state
        ckpt = load_checkpoint(path, map_location="cpu")
        for key in RESUME_KEYS:
            if key not in ckpt:
                raise CheckpointError(f"checkpoint {path} lacks '{key}' and cannot be resumed from")
        training = ckpt["training"]
        saved_config = training.get("config", {})
        if saved_config.get("epochs") != config.epochs:
            raise ConfigError(
                f"--resume: the run was started with --epochs {saved_config.get('epochs')}, not {config.epochs} "
                "(the learning-rate schedule depends on it)"
            )
        diffs = config_differences(saved_config, config)
        if diffs:
            raise ConfigError(f"--resume with options that differ from the run in {path.parent}: {'; '.join(diffs)}")
        start = int(training["epoch"]) + 1
        for epoch in range(start):
            for hook in self.hooks:
                hook(EpochState(epoch=epoch, model=model, optimizer=optimizer, replay=True))
        if self.average is not None:
            if "train_state_dict" not in ckpt or "ema" not in training:
                raise CheckpointError(f"checkpoint {path} lacks the trained weights behind its average (--ema)")
            self.average.load(ckpt["state_dict"], training["ema"], source=str(path))
        weights = ckpt["train_state_dict"] if self.average is not None else ckpt["state_dict"]
        model.load_state_dict({k: v.to(self.device) for k, v in weights.items()}, strict=True)
        optimizer.load_state_dict(ckpt["optimizer"]["state"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        if self.step.scaler is not None and ckpt["optimizer"].get("grad_scaler"):
            self.step.scaler.load_state_dict(ckpt["optimizer"]["grad_scaler"])
        set_rng_state(ckpt["rng"], self.device)
        state.best_val_dice = float(training.get("best_val_dice", -1.0))
        state.best_epoch = int(training.get("best_epoch", -1))
        state.elapsed = float(training.get("elapsed_seconds", 0.0))
        state.epoch_seconds = [float(s) for s in training.get("epoch_seconds", [])]
        if state.best_epoch >= 0 and (path.parent / BEST).exists():
            best = load_checkpoint(path.parent / BEST)
            state.best_val = {str(k): float(v) for k, v in best["training"].get("val_dice", {}).items()}
        logger.info("resuming %s at epoch %d", path.parent, start)
        return start

    # ------------------------------------------------------------------------------- an epoch
    def elapsed(self) -> float:
        """Training seconds so far, time before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.segment_start

    def describe(self, epoch: int) -> str:
        text = f"epoch {epoch + 1}/{self.config.epochs}"
        if _finite(self.last_loss):
            text += f" loss {self.last_loss:.4f}"
        if self.state.best_epoch >= 0:
            text += f" best Dice {self.state.best_val_dice:.3f}"
        return text

    def _report(self, epoch: int, done_steps: int, suffix: str = "") -> None:
        """Tell the progress callback; with a time budget the total is the steps the budget allows."""
        if self.progress_fn is not None and self.ctx.is_main:
            total = self.total_steps
            if self.schedule.remaining is not None:
                total = min(total, done_steps + self.schedule.remaining)
            self.progress_fn(self.describe(epoch) + suffix, done_steps, total)

    def _out_of_time_now(self) -> bool:
        """Whether the budget, less the time the last validation took, is spent (the same answer on every rank)."""
        spent = self.config.max_time_min is not None and (
            self.elapsed() + self.val_seconds > self.config.max_time_min * 60.0)
        return bool(D.broadcast_object(spent, self.ctx))

    def start_epoch_hooks(self, epoch: int) -> None:
        """Seed the epoch, run the hooks, re-wrap the network if they changed what trains, train mode."""
        # Global RNGs (dropout, anything a model draws) restart from (seed, rank, epoch) every
        # epoch, so a resumed or re-run epoch draws the same numbers on every rank.
        seed_everything(epoch_seed(self.config.seed, self.ctx.rank, epoch))
        for hook in self.hooks:
            hook(EpochState(epoch=epoch, model=self.model, optimizer=self.optimizer))
        if _trainable_signature(self.model) != self.signature:
            self.signature = _trainable_signature(self.model)
            self.network = wrap_network(self.model, ctx=self.ctx, device=self.device, compile_model=self.config.compile)
        self.network.train()
        if self.train_mode_hook is not None:
            self.train_mode_hook(self.model)

    def train_epoch(self, epoch: int) -> tuple[float, float, bool]:
        """The optimiser steps of one epoch.

        With a time budget the clock is checked after every step (every :data:`PROGRESS_EVERY` steps
        with several processes): once the budget less the last validation's duration is spent, the
        epoch ends early and becomes the last.

        Returns:
            ``(train loss (mean over the steps and ranks), seconds spent waiting for data, cut short)``.

        Raises:
            BrainsegError: the loss is not finite (training diverged).
        """
        self.start_epoch_hooks(epoch)
        started = time.perf_counter()
        iterations = self.config.iterations_per_epoch
        check_every = PROGRESS_EVERY if self.ctx.distributed else 1
        losses = torch.zeros(iterations, dtype=torch.float32, device=self.device)
        data_seconds, done, cut = 0.0, 0, False
        for it in range(iterations):
            t0 = time.perf_counter()
            images, label = next(self.data_iter)
            data_seconds += time.perf_counter() - t0
            images = images.to(self.device, non_blocking=True)
            target = self.outputs.target(label.to(self.device, non_blocking=True))
            losses[it] = self.step(self.network, images, target)
            done = it + 1
            if done % PROGRESS_EVERY == 0 or done == iterations:
                if self.progress_fn is not None and self.ctx.is_main:
                    self.last_loss = float(losses[max(0, done - PROGRESS_EVERY):done].mean())
                self._report(epoch, epoch * iterations + done)
            if (self.config.max_time_min is not None and done < iterations and done % check_every == 0
                    and self._out_of_time_now()):
                cut = True
                break
        seconds = time.perf_counter() - started
        self.speed = f"{done} steps in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} steps/s)"
        losses = D.all_reduce_mean(losses[:done], self.ctx).cpu()
        self.step_losses.extend(float(v) for v in losses)
        train_loss = float(losses.mean())
        self.last_loss = train_loss
        if not math.isfinite(train_loss):
            chosen = (f" in {self.runtime.precision}, which --precision auto chose on this machine"
                      if self.config.precision == "auto" and self.runtime.precision != "fp32" else "")
            raise BrainsegError(f"training diverged: the loss is {train_loss} in epoch {epoch}{chosen} "
                                "(lower --lr or use --precision fp32)")
        return train_loss, data_seconds, cut

    def _decide_epoch(self, epoch: int, train_seconds: float, cut: bool) -> dict[str, bool]:
        """Rank 0 decides whether this epoch is the last and whether to validate it."""
        decision = None
        if self.ctx.is_main:
            state, config = self.state, self.config
            estimate = (np.mean(state.epoch_seconds[-5:] + [train_seconds]) if state.epoch_seconds
                        else train_seconds)
            out_of_time = cut or (config.max_time_min is not None
                                  and self.elapsed() + estimate > config.max_time_min * 60.0)
            is_last = epoch + 1 >= config.epochs or out_of_time
            decision = {"out_of_time": out_of_time, "do_val": is_last or (epoch + 1) % config.validation_every == 0}
        return D.broadcast_object(decision, self.ctx)

    def _validate(self, epoch: int, train_loss: float) -> tuple[ValidationResult | None, bool]:
        """Validate on rank 0; return ``(validation (None on other ranks), improved)``."""
        val, improved = None, False
        if self.ctx.is_main:
            self._report(epoch, (epoch + 1) * self.config.iterations_per_epoch, " validating")
            start = time.perf_counter()
            val = validate(self.evaluated, case_iterator(self.dataset, self.val_cases), plan=self.plan,
                           entities=self.outputs.entities, loss_fn=self.val_loss_fn,
                           target_fn=self.outputs.val_target, precision=self.runtime.precision,
                           device=self.device, keep_probabilities=self.outputs.region_based)
            self.val_seconds = time.perf_counter() - start
            if self.train_mode_hook is not None:
                self.train_mode_hook(self.model)
            self.last_validated = (epoch, val)
            state = self.state
            improved = math.isfinite(val.mean) and val.mean > state.best_val_dice
            if improved:
                state.best_val_dice, state.best_epoch = val.mean, epoch
                state.best_val = dict(val.mean_per_entity)
                self.best_validation = val
            logger.info("epoch %d: train loss %.4f, %s; val loss %.4f, val Dice %s, mean %.4f%s", epoch, train_loss,
                        self.speed, val.loss, ", ".join(f"{k} {v:.3f}" for k, v in val.mean_per_entity.items()),
                        val.mean, " (best)" if improved else "")
        return val, bool(D.broadcast_object(improved, self.ctx))

    def _payload(self, epoch: int, *, last: bool, val: Mapping[str, float]) -> dict[str, Any]:
        state, average = self.state, self.average
        training: dict[str, Any] = {
            **self.common_training, "epoch": epoch, "best_epoch": state.best_epoch,
            "best_val_dice": state.best_val_dice, "val_dice": dict(val), "elapsed_seconds": state.elapsed,
            "epoch_seconds": list(state.epoch_seconds),
        }
        if average is not None:
            training["ema"] = average.state_dict()
        resume = None
        if last:
            resume = {"train_state_dict": bare_state_dict(self.model)} if average is not None else {}
            resume["optimizer"] = {"state": self.optimizer.state_dict(),
                                   "grad_scaler": self.step.scaler.state_dict() if self.step.scaler is not None
                                   else None}
            resume["scheduler"] = self.schedule.state_dict()
            resume["rng"] = rng_state(self.device)
        return checkpoint_payload(model=self.model, plan=self.plan, labels=self.outputs.labels,
                                  regions=self.outputs.regions, postprocessing=self.outputs.no_postprocessing(),
                                  training=training, state_dict=bare_state_dict(self.evaluated), resume=resume)

    def _record(self, epoch: int, *, train_loss: float, val: ValidationResult | None, improved: bool,
                seconds: float, data_seconds: float) -> None:
        """The epoch's metrics row, then ``best.pt`` (when improved) and ``last.pt`` (rank 0)."""
        if not self.ctx.is_main:
            return
        row = {"epoch": epoch, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": seconds, "data_seconds": data_seconds}
        if val is not None:
            row["val_loss"] = val.loss
            row.update({f"val_dice_{k}": v for k, v in val.mean_per_entity.items()})
            row["val_dice_mean"] = val.mean
        # The row goes first: a crash between the two writes leaves a row the resume drops,
        # never a checkpoint without its row.
        self.metrics.append(row)
        self.tensorboard.scalars(row, step=epoch)
        if improved:
            save_checkpoint(self.run_dir / BEST, self._payload(epoch, last=False, val=self.state.best_val))
        save_checkpoint(self.run_dir / LAST, self._payload(epoch, last=True,
                                                           val=val.mean_per_entity if val is not None else {}))

    def _stop(self, epoch: int, decision: Mapping[str, bool]) -> str | None:
        """Why training stops after this epoch (None: it goes on); re-aims the schedule at the budget."""
        stop = horizon = None
        config, state = self.config, self.state
        if self.ctx.is_main:
            if config.max_time_min is not None:
                horizon = steps_left_in_budget(budget_seconds=config.max_time_min * 60.0, elapsed=state.elapsed,
                                               epoch_seconds=state.epoch_seconds,
                                               iterations=config.iterations_per_epoch, val_every=config.validation_every)
            if decision["out_of_time"] and epoch + 1 < config.epochs:
                stop = "max_time"
            elif (config.patience is not None and decision["do_val"] and state.best_epoch >= 0
                  and epoch - state.best_epoch >= config.patience and epoch + 1 < config.epochs):
                stop = "patience"
        stop, horizon = D.broadcast_object((stop, horizon), self.ctx)
        if horizon is not None:
            self.schedule.retarget(horizon)
        if stop is not None:
            logger.info("stopping after epoch %d: %s", epoch, "wall-clock budget reached" if stop == "max_time"
                        else f"no improvement for {config.patience} epochs")
        return stop

    def end_epoch(self, epoch: int, *, epoch_start: float, train_loss: float, data_seconds: float,
                  cut: bool) -> str | None:
        """Validate when due, record the epoch, and say why training stops here (None: it goes on)."""
        decision = self._decide_epoch(epoch, time.perf_counter() - epoch_start, cut)
        val, improved = self._validate(epoch, train_loss) if decision["do_val"] else (None, False)
        if not decision["do_val"] and self.ctx.is_main:
            logger.info("epoch %d: train loss %.4f, %s", epoch, train_loss, self.speed)
        seconds = time.perf_counter() - epoch_start
        self.state.epoch_seconds.append(seconds)
        self.state.elapsed = self.elapsed()
        self._record(epoch, train_loss=train_loss, val=val, improved=improved, seconds=seconds,
                     data_seconds=data_seconds)
        return self._stop(epoch, decision)

    def close(self) -> None:
        self.tensorboard.close()
        close_iterator(self.data_iter)

    def finish(self, epoch: int) -> TrainResult:
        """Make the end-of-training decisions (rank 0) and report the run (every rank)."""
        decided = Decisions(postprocessing=self.outputs.no_postprocessing())
        if self.ctx.is_main:
            last = self.last_validated
            decided = decide_and_store(
                self.run_dir, model=self.model, dataset=self.dataset, train_cases=self.train_cases,
                val_cases=self.val_cases, plan=self.plan,
                labels=self.outputs.labels, entities=self.outputs.entities,
                validations={BEST: self.best_validation, LAST: last[1] if last is not None and last[0] == epoch else None},
                precision=self.runtime.precision, device=self.device)
        decided = D.broadcast_object(decided, self.ctx)
        best = D.broadcast_object((self.state.best_epoch, self.state.best_val_dice, self.state.best_val), self.ctx)
        D.barrier(self.ctx)
        run_dir = self.run_dir
        return TrainResult(
            run_dir=run_dir, best_checkpoint=run_dir / BEST, last_checkpoint=run_dir / LAST,
            epochs_completed=epoch + 1, best_epoch=best[0], best_val_dice=best[1], val_dice=dict(best[2]),
            postprocessing=decided.postprocessing, region_thresholds=decided.region_thresholds,
            region_min_volumes=decided.region_min_volumes, stop_reason=self.stop_reason,
            step_losses=self.step_losses, seconds=self.state.elapsed,
        )


def wrap_network(model: nn.Module, *, ctx: D.DistContext, device: torch.device, compile_model: bool) -> nn.Module:
    """The model as trained: wrapped in DDP with several processes, compiled with ``--compile``."""
    network: nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # Some parameters never take part in the loss (the lowest deep-supervision head has loss
        # weight 0), which DDP refuses unless told.
        network = DDP(model, device_ids=ids, find_unused_parameters=True)
    if compile_model:
        network = torch.compile(network)
    return network


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
