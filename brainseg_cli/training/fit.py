"""The training loop: :func:`fit` trains a model on preprocessed cases and writes a run folder.

One loop serves ``pretrain`` and ``finetune``. It is generic in the model (any
:class:`~brainseg_cli.models.base.SegmentationModel`), the optimiser parameter groups (frozen
parameters left out, per-group learning rates), and per-epoch hooks (e.g. unfreeze the encoder at
epoch K).

**Epochs and batches.** An epoch is :attr:`TrainConfig.iterations_per_epoch` optimiser steps. The
global batch of step ``t`` has ``plan["batch_size"]`` samples; sample ``j`` is drawn (case choice,
patch position, augmentation) from its own generator ``numpy.random.default_rng([seed, t, j])``, and
the last third of each batch (``plan["sampling"]["foreground_fraction"]``) is forced to contain
foreground (nnU-Net's oversampling). A batch is
therefore a pure function of ``(seed, t)``: the same whatever the number of data-loading workers,
after a ``--resume``, and across data-parallel ranks (rank ``r`` of ``W`` takes samples
``j = r, r + W, ...``, so W processes see exactly the global batch one process would).

**Validation** (every :attr:`TrainConfig.val_every` epochs and after the last) runs on rank 0 with
:func:`brainseg_cli.training.validation.validate`; the mean foreground Dice picks ``best.pt``.
``last.pt`` is written after every epoch with the optimiser, schedule and RNG states; resuming from
it replays the remaining epochs exactly (bit-identical weights with ``--deterministic``).
With ``ema`` (``--ema DECAY``) a moving average of the weights
(:class:`~brainseg_cli.training.ema.WeightAverage`, updated after every step) is what is validated
and saved as the checkpoints' ``state_dict``; ``last.pt`` also keeps the trained weights
(``train_state_dict``) for ``--resume``.

**Stopping.** After ``epochs`` epochs; earlier when the mean validation Dice has not improved for
``patience`` epochs; or when the wall-clock budget ``max_time_min`` would be exceeded by another
epoch (estimated from the mean epoch time so far), in which case the epoch that just ended is
validated and becomes the last. With a budget the learning-rate schedule follows the clock: after
every epoch it is re-aimed at the steps the budget still allows (:class:`StepSchedule`), so a
time-limited run ends at the schedule's final rate whatever ``epochs`` says.

**Decisions at the end**, made for ``best.pt`` on the best epoch's validation predictions and for
``last.pt`` on the last epoch's, and stored in each: keep-largest-component per label
(:func:`brainseg_cli.training.validation.decide_postprocessing`), then, for region-based models, the
threshold each region grows to from the post-processed labels
(:func:`brainseg_cli.training.validation.decide_region_thresholds`, checkpoint key
``region_thresholds``).

Run folder: ``best.pt``, ``last.pt``, ``metrics.csv``, ``config.json`` (the resolved config),
``tensorboard/`` (event files with the same numbers), plus what the caller writes
(``plan.json`` for ``pretrain``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from brainseg_cli import __version__
from brainseg_cli.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from brainseg_cli.errors import BrainsegError, CheckpointError, ConfigError
from brainseg_cli.inference.postprocess import apply_largest_component, decided_groups
from brainseg_cli.io.atomic import atomic_write
from brainseg_cli.training import distributed as D
from brainseg_cli.training.config import Runtime, TrainConfig, config_differences, resolve_runtime
from brainseg_cli.training.ema import WeightAverage
from brainseg_cli.training.logging import MetricsLog, TensorBoardLog
from brainseg_cli.training.optim import SCHEDULE_FACTORS, build_optimizer, resolved_optimizer_settings
from brainseg_cli.training.validation import (
    ValidationResult,
    decide_postprocessing,
    decide_region_thresholds,
    validate,
    validation_entities,
)

logger = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
CONFIG_FILE = "config.json"
#: Entries of a run folder that callers of :func:`fit` write before it starts (``pretrain``'s plan
#: and preprocessed cases); a fresh run tolerates them.
CALLER_ENTRIES: tuple[str, ...] = ("plan.json", "preprocessed")

#: Default share of each batch forced to contain foreground (nnU-Net: 0.33); plans override it
#: with ``plan["sampling"]["foreground_fraction"]``.
FOREGROUND_FRACTION = 1.0 / 3.0

#: Progress descriptions are refreshed (and the loss synchronised) every this many steps.
PROGRESS_EVERY = 10


class TrainingCases(Protocol):
    """What :func:`fit` needs from the data: preprocessed cases and a patch sampler."""

    def load_case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, X, Y, Z) float32, label (X, Y, Z) uint8)`` of one case in the plan's space."""

    def sample(self, case: str, *, rng: np.random.Generator, force_foreground: bool,
               augment: bool) -> tuple[np.ndarray, np.ndarray]:
        """One training patch ``(image (C, *patch) float32, label (*patch) integer)``."""


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
        stop_reason: ``"epochs"``, ``"patience"`` or ``"max_time"``.
        step_losses: training loss of every step of this process's run (averaged over ranks).
        seconds: wall-clock seconds of the whole run (time before a resume included).
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
    step_losses: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------- batches
class StepSchedule:
    """Per-iteration learning-rate schedule (see :mod:`brainseg_cli.training.optim`).

    The rate is ``initial_lr * f(p)`` with ``f`` the schedule's factor and ``p`` in [0, 1] the
    progress through the schedule. Without a time budget ``p = step / total_steps``. With one
    (``--max-time``), :meth:`retarget` is told after every epoch how many more steps the budget
    still allows, and every later step moves ``p`` an equal share of the way that is left, so the
    rate reaches its end value (0 for ``poly``) when the time runs out rather than after
    ``total_steps`` (``p`` never falls behind ``step / total_steps``, so an ``--epochs`` limit
    that comes first still ends the schedule).

    Each parameter group's initial rate is remembered under ``"initial_lr"`` the first time the
    schedule sees it, so groups added later by a hook are scheduled from their own initial rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, name: str, total_steps: int) -> None:
        if name not in SCHEDULE_FACTORS:
            raise ConfigError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULE_FACTORS)}")
        if total_steps < 1:
            raise ConfigError(f"the schedule needs at least one step, got {total_steps}")
        self.optimizer = optimizer
        self.name = name
        self.total_steps = total_steps
        self.step_count = 0
        self.progress = 0.0
        self.remaining: int | None = None
        self.apply()

    def factor(self) -> float:
        """The current multiplier of the initial rates."""
        return SCHEDULE_FACTORS[self.name](self.progress, 1.0)

    def apply(self) -> None:
        """Set every group's ``lr`` for the current step."""
        f = self.factor()
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * f

    def retarget(self, remaining_steps: int | None) -> None:
        """End the schedule after ``remaining_steps`` more steps (None: after ``total_steps``)."""
        self.remaining = None if remaining_steps is None else max(0, int(remaining_steps))

    def step(self) -> None:
        """Advance one optimiser step."""
        self.step_count += 1
        by_steps = min(1.0, self.step_count / self.total_steps)
        if self.remaining is None:
            self.progress = by_steps
        else:
            share = 1.0 if self.remaining <= 1 else 1.0 / self.remaining
            self.progress = max(by_steps, min(1.0, self.progress + (1.0 - self.progress) * share))
            self.remaining = max(0, self.remaining - 1)
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        """``{"name", "total_steps", "step", "progress", "remaining"}``."""
        return {"name": self.name, "total_steps": self.total_steps, "step": self.step_count,
                "progress": self.progress, "remaining": self.remaining}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the step count and progress (the name and total must match this run's)."""
        if state.get("name") != self.name or state.get("total_steps") != self.total_steps:
            raise ConfigError(
                f"the saved schedule ({state.get('name')}, {state.get('total_steps')} steps) differs from this run's "
                f"({self.name}, {self.total_steps} steps)"
            )
        self.step_count = int(state["step"])
        self.progress = float(state.get("progress", min(1.0, self.step_count / self.total_steps)))
        remaining = state.get("remaining")
        self.remaining = None if remaining is None else int(remaining)
        self.apply()


def steps_left_in_budget(*, budget_seconds: float, elapsed: float, epoch_seconds: Sequence[float],
                         iterations: int, val_every: int) -> int:
    """Optimiser steps that still fit a wall-clock budget, in whole epochs.

    An epoch is estimated as the mean of the recent epochs, over a window long enough to hold
    validated and unvalidated epochs in their proportion (``max(5, 2 * val_every)``), so the
    estimate agrees with the loop's stopping rule.
    """
    if not epoch_seconds:
        return 0
    window = list(epoch_seconds[-max(5, 2 * val_every):])
    per_epoch = float(np.mean(window))
    if per_epoch <= 0:
        return 0
    return int(max(0.0, budget_seconds - elapsed) // per_epoch) * iterations


def local_sample_indices(batch_size: int, ctx: D.DistContext) -> list[int]:
    """Indices ``j`` of the global batch this rank draws (``rank, rank + W, ...``)."""
    return list(range(ctx.rank, batch_size, ctx.world_size))


def foreground_forced(j: int, batch_size: int, fraction: float, rng: np.random.Generator) -> bool:
    """Whether sample ``j`` of a batch must contain foreground.

    nnU-Net's rule: the samples ``j >= round(batch_size * (1 - fraction))`` are forced. With a
    batch of one (where that rule never forces anything) the sample is forced with probability
    ``fraction``, drawn from its own generator.
    """
    if batch_size == 1:
        return bool(rng.random() < fraction)
    return j >= round(batch_size * (1.0 - fraction))


class StepBatches(torch.utils.data.Dataset):
    """Item ``k`` is this rank's share of the global batch of step ``first_step + k``.

    Args:
        data: the cases (:class:`TrainingCases`).
        cases: training case names.
        batch_size: the global batch size.
        seed: the run's seed.
        first_step: global step of item 0.
        num_steps: number of items.
        indices: the sample indices this rank draws (:func:`local_sample_indices`).
        augment: augment the patches.
        foreground_fraction: share of each batch forced to contain foreground.
    """

    def __init__(self, data: TrainingCases, cases: Sequence[str], *, batch_size: int, seed: int, first_step: int,
                 num_steps: int, indices: Sequence[int], augment: bool,
                 foreground_fraction: float = FOREGROUND_FRACTION) -> None:
        self.data = data
        self.cases = list(cases)
        self.batch_size = batch_size
        self.seed = seed
        self.first_step = first_step
        self.num_steps = num_steps
        self.indices = list(indices)
        self.augment = augment
        self.foreground_fraction = foreground_fraction

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.first_step + k
        images, labels = [], []
        for j in self.indices:
            rng = np.random.default_rng([self.seed, step, j])
            case = self.cases[int(rng.integers(len(self.cases)))]
            forced = foreground_forced(j, self.batch_size, self.foreground_fraction, rng)
            image, label = self.data.sample(case, rng=rng, force_foreground=forced, augment=self.augment)
            images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
            labels.append(torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)))
        return torch.stack(images), torch.stack(labels)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_iterator(batches: StepBatches, *, workers: int, pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate the steps in order, loading ahead in ``workers`` processes (0: in this process)."""
    if workers == 0:
        return (batches[k] for k in range(len(batches)))
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=_worker_init, persistent_workers=False, prefetch_factor=2,
    )
    return iter(loader)


# ----------------------------------------------------------------------------------- RNG state
def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python) as checkpoint-safe data."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_safe(np.random.get_state()),
        "python": _python_state_to_safe(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np.random.set_state(_numpy_state_from_safe(state["numpy"]))
    random.setstate(_python_state_from_safe(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)


def _numpy_state_to_safe(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_safe(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"]))


def _python_state_to_safe(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "state": list(internal), "gauss": gauss}


def _python_state_from_safe(state: Mapping[str, Any]) -> tuple:
    return (state["version"], tuple(int(v) for v in state["state"]), state["gauss"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of the global RNGs at the start of ``epoch`` on ``rank``."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def set_determinism(deterministic: bool) -> None:
    """Deterministic algorithms (``--deterministic``) or cuDNN autotuning (the default)."""
    import os

    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


# ----------------------------------------------------------------------------------- helpers
def bare_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tensors cloned to the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def training_loss(name: str, *, plan: Mapping[str, Any], model: nn.Module) -> nn.Module:
    """The training loss of a plan: ``loss(outputs, target) -> scalar``.

    Dice (+ CE, or + BCE for region-based plans' sigmoid outputs); the softmax Dice term leaves the
    background out (nnU-Net); Dice per sample or over the batch as ``plan["loss"]["batch_dice"]`` says
    (plans written before that key: per sample); deep supervision when the model has it.

    Args:
        name: a registered loss (``"dice-ce"``, ``"dice"``).
        plan: the run's plan (``region_based`` and ``loss`` are read).
        model: the network (its ``deep_supervision`` and ``num_outputs``).
    """
    from brainseg_cli.losses import DeepSupervisionLoss, build_loss

    region_based = bool(plan.get("region_based"))
    options: dict[str, Any] = {"activation": "sigmoid" if region_based else "softmax",
                               "batch_dice": bool((plan.get("loss") or {}).get("batch_dice", False))}
    if not region_based:
        options["include_background"] = False
    base_loss = build_loss(name, **options)
    num_outputs = int(getattr(model, "num_outputs", 1)) if getattr(model, "deep_supervision", False) else 1
    return DeepSupervisionLoss(base_loss, num_outputs) if num_outputs > 1 else base_loss


def write_config_json(run_dir: Path, config: TrainConfig, runtime: Runtime, extra: Mapping[str, Any]) -> None:
    """Write ``run_dir/config.json``: the resolved config (atomic)."""
    data = {"train_config": config.to_dict(), "runtime": {"device": runtime.device, "precision": runtime.precision,
                                                           "workers": runtime.workers}, **extra}
    with atomic_write(run_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


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


# ----------------------------------------------------------------------------------- fit
def fit(
    *,
    model: nn.Module,
    plan: Mapping[str, Any],
    dataset: TrainingCases,
    train_cases: Sequence[str],
    val_cases: Sequence[str],
    run_dir: str | Path,
    config: TrainConfig,
    param_groups: Iterable[dict[str, Any]] | None = None,
    epoch_hooks: Sequence[EpochHook] = (),
    train_mode_hook: Callable[[nn.Module], None] | None = None,
    checkpoint_extra: Mapping[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    dist_ctx: D.DistContext | None = None,
) -> TrainResult:
    """Train ``model`` and write ``best.pt``, ``last.pt``, ``metrics.csv`` and ``config.json`` to ``run_dir``.

    Args:
        model: a :class:`~brainseg_cli.models.base.SegmentationModel` (on the CPU; moved to the
            config's device). Its weights are the starting point (ignored on ``--resume``, which
            loads ``last.pt``).
        plan: the plan (``patch_size``, ``batch_size``, ``labels``, ``regions``, ``region_based``,
            ``channels``, ``slice_axis``, ...).
        dataset: the preprocessed cases (:class:`TrainingCases`).
        train_cases: names of the training cases.
        val_cases: names of the validation cases (at least one).
        run_dir: the run folder (created; must be empty unless ``config.resume``).
        config: the training options.
        param_groups: optimiser parameter groups (dicts with ``params`` and optionally ``lr``);
            default: all parameters that require grad, one group.
        epoch_hooks: called with an :class:`EpochState` at the start of every epoch (and replayed on
            resume for the epochs already run).
        train_mode_hook: called with the model after every ``model.train()`` (e.g. to put frozen
            BatchNorm layers back into eval mode).
        checkpoint_extra: entries merged into the checkpoints' ``training`` section (e.g.
            ``dataset_fingerprint``, the pretrained checkpoint a fine-tune started from).
        progress: ``progress(description, done_steps, total_steps)``.
        dist_ctx: the data-parallel context (default: a single process).

    Returns:
        The :class:`TrainResult` (on every rank).

    Raises:
        ConfigError: a non-empty run folder without ``resume``, a resume whose options differ,
            invalid options for this machine.
        BrainsegError: training diverged (non-finite loss).
    """
    ctx = dist_ctx or D.SINGLE
    run_dir = Path(run_dir)
    if not val_cases:
        raise ConfigError("training needs at least one validation case")
    if not train_cases:
        raise ConfigError("training needs at least one training case")
    runtime = resolve_runtime(config, local_rank=ctx.local_rank if ctx.distributed else None,
                              model=(plan.get("model") or {}).get("name"))
    for note in runtime.notes:
        logger.warning(note)
    logger.info("training on %s, precision %s (--precision %s)", runtime.device, runtime.precision, config.precision)
    device = torch.device(runtime.device)
    set_determinism(config.deterministic)

    resume_from = check_run_dir(run_dir, resume=config.resume, is_main=ctx.is_main)
    region_based = bool(plan.get("region_based"))
    regions = {str(k): [int(v) for v in vs] for k, vs in (plan.get("regions") or {}).items()}
    labels = {str(k): int(v) for k, v in plan["labels"].items()}
    entities = validation_entities(labels=labels, regions=regions, region_based=region_based)
    region_lists = list(regions.values()) if region_based else None
    expected = len(regions) if region_based else len(labels)
    outputs_of_model = getattr(model, "num_classes", expected)
    if outputs_of_model != expected:
        what = f"{expected} regions ({', '.join(regions)})" if region_based else f"{expected} labels ({', '.join(labels)})"
        raise ConfigError(f"the model has {outputs_of_model} outputs but the plan needs {what}")

    from brainseg_cli.losses import DeepSupervisionLoss, labels_to_regions

    train_loss_fn = training_loss(config.loss, plan=plan, model=model)
    # Validation scores one whole case at full resolution: the loss without deep supervision.
    base_loss = train_loss_fn.loss if isinstance(train_loss_fn, DeepSupervisionLoss) else train_loss_fn

    def make_target(label: torch.Tensor) -> torch.Tensor:
        return labels_to_regions(label, region_lists) if region_lists is not None else label

    def val_target(label: np.ndarray) -> torch.Tensor:
        return make_target(torch.from_numpy(np.asarray(label).astype(np.int64))[None])

    # Optimiser and schedule.
    settings = resolved_optimizer_settings(name=config.optimizer, lr=config.lr, schedule=config.schedule,
                                           weight_decay=config.weight_decay)
    model.to(device)
    groups = list(param_groups) if param_groups is not None else list(model.parameters())
    optimizer = build_optimizer(groups, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.iterations_per_epoch
    schedule = StepSchedule(optimizer, name=settings["schedule"], total_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda") if runtime.precision == "fp16" else None
    # The weights validated and saved: the model's own, or their moving average (--ema).
    average = WeightAverage(model, config.ema) if config.ema is not None else None
    evaluated = average.module if average is not None else model

    state = _Progress()
    start_epoch = 0
    if resume_from is not None:
        start_epoch = _restore(resume_from, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler,
                               state=state, device=device, hooks=epoch_hooks, config=config, average=average)
    else:
        seed_everything(config.seed + ctx.rank)

    metrics = MetricsLog(run_dir, list(entities), enabled=ctx.is_main)
    if resume_from is not None:
        metrics.load_until(start_epoch - 1)
    tensorboard = TensorBoardLog(run_dir / "tensorboard", enabled=ctx.is_main,
                                 purge_step=start_epoch if resume_from is not None else None)
    if ctx.is_main:
        write_config_json(run_dir, config, runtime, {
            "optimizer": settings, "train_cases": list(train_cases), "val_cases": list(val_cases),
            "world_size": ctx.world_size, "tool_version": __version__,
        })

    batch_size = int(plan["batch_size"])
    if batch_size < ctx.world_size:
        raise ConfigError(f"batch size {batch_size} is smaller than the {ctx.world_size} processes; raise --batch-size")
    if batch_size % ctx.world_size:
        logger.warning("batch size %d is not a multiple of %d processes: ranks get unequal shares", batch_size,
                       ctx.world_size)
    first_step = start_epoch * config.iterations_per_epoch
    batches = StepBatches(dataset, train_cases, batch_size=batch_size, seed=config.seed, first_step=first_step,
                          num_steps=max(total_steps - first_step, 0), indices=local_sample_indices(batch_size, ctx),
                          augment=config.augment,
                          foreground_fraction=float((plan.get("sampling") or {}).get("foreground_fraction",
                                                                                     FOREGROUND_FRACTION)))
    data_iter = batch_iterator(batches, workers=runtime.workers, pin_memory=device.type == "cuda")

    network = _wrap(model, ctx=ctx, device=device, compile_model=config.compile)
    signature = _trainable_signature(model)

    base_extra = dict(checkpoint_extra or {})
    common_training = {
        "seed": config.seed, "config": config.to_dict(), "optimizer": settings,
        "train_cases": list(train_cases), "val_cases": list(val_cases), "world_size": ctx.world_size,
        "precision": runtime.precision, "dataset_fingerprint": base_extra.pop("dataset_fingerprint", None),
        **base_extra,
    }

    def payload(epoch: int, *, last: bool, postprocessing: Mapping[str, Any], val: Mapping[str, float]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "model": {"name": getattr(model, "name", type(model).__name__), "config": dict(getattr(model, "config", {}))},
            "plan": dict(plan),
            "channels": list(plan.get("channels", [])),
            "labels": labels,
            "regions": regions,
            "postprocessing": {k: dict(v) for k, v in postprocessing.items()},
            "training": {
                **common_training,
                "epoch": epoch,
                "best_epoch": state.best_epoch,
                "best_val_dice": state.best_val_dice,
                "val_dice": dict(val),
                "elapsed_seconds": state.elapsed,
                "epoch_seconds": list(state.epoch_seconds),
            },
            "state_dict": bare_state_dict(evaluated),
        }
        if average is not None:
            data["training"]["ema"] = average.state_dict()
        if last:
            if average is not None:  # the raw weights, for --resume
                data["train_state_dict"] = bare_state_dict(model)
            data["optimizer"] = {"state": optimizer.state_dict(),
                                 "grad_scaler": scaler.state_dict() if scaler is not None else None}
            data["scheduler"] = schedule.state_dict()
            data["rng"] = rng_state(device)
        return data

    default_pp = {name: {"largest_component": False} for name, v in sorted(labels.items(), key=lambda kv: kv[1]) if v}
    best_validation: ValidationResult | None = None
    last_validated: tuple[int, ValidationResult] | None = None  # (epoch, its validation)
    step_losses: list[float] = []
    stop_reason = "epochs"
    segment_start = time.perf_counter()
    elapsed_before = state.elapsed
    epoch = start_epoch - 1
    last_loss = float("nan")

    def describe(ep: int) -> str:
        text = f"epoch {ep + 1}/{config.epochs}"
        if _finite(last_loss):
            text += f" loss {last_loss:.4f}"
        if state.best_epoch >= 0:
            text += f" best Dice {state.best_val_dice:.3f}"
        return text

    try:
        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            # Global RNGs (dropout, anything a model draws) restart from (seed, rank, epoch) every
            # epoch, so a resumed or re-run epoch draws the same numbers on every rank.
            seed_everything(epoch_seed(config.seed, ctx.rank, epoch))
            for hook in epoch_hooks:
                hook(EpochState(epoch=epoch, model=model, optimizer=optimizer))
            if _trainable_signature(model) != signature:
                signature = _trainable_signature(model)
                network = _wrap(model, ctx=ctx, device=device, compile_model=config.compile)
            network.train()
            if train_mode_hook is not None:
                train_mode_hook(model)

            losses = torch.zeros(config.iterations_per_epoch, dtype=torch.float32, device=device)
            data_seconds = 0.0
            for it in range(config.iterations_per_epoch):
                t0 = time.perf_counter()
                images, label = next(data_iter)
                data_seconds += time.perf_counter() - t0
                images = images.to(device, non_blocking=True)
                target = make_target(label.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                with _autocast(runtime.precision, device):
                    outputs = network(images)
                outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
                loss = train_loss_fn(outputs, target)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   config.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                schedule.step()
                if average is not None:
                    average.update(model)
                losses[it] = loss.detach()  # stays on the device: no synchronisation per step
                if progress is not None and ctx.is_main and ((it + 1) % PROGRESS_EVERY == 0 or it + 1 == config.iterations_per_epoch):
                    last_loss = float(losses[max(0, it + 1 - PROGRESS_EVERY):it + 1].mean())
                    progress(describe(epoch), epoch * config.iterations_per_epoch + it + 1, total_steps)

            losses = D.all_reduce_mean(losses, ctx).cpu()
            step_losses.extend(float(v) for v in losses)
            train_loss = float(losses.mean())
            last_loss = train_loss
            if not math.isfinite(train_loss):
                chosen = (f" in {runtime.precision}, which --precision auto chose on this machine"
                          if config.precision == "auto" and runtime.precision != "fp32" else "")
                raise BrainsegError(f"training diverged: the loss is {train_loss} in epoch {epoch}{chosen} "
                                    "(lower --lr or use --precision fp32)")

            # Decide (on rank 0) whether this epoch is the last and whether to validate it.
            train_seconds = time.perf_counter() - epoch_start
            val: ValidationResult | None = None
            decision = None
            if ctx.is_main:
                estimate = np.mean(state.epoch_seconds[-5:] + [train_seconds]) if state.epoch_seconds else train_seconds
                elapsed_now = elapsed_before + time.perf_counter() - segment_start
                out_of_time = (config.max_time_min is not None
                               and elapsed_now + estimate > config.max_time_min * 60.0)
                is_last = epoch + 1 >= config.epochs or out_of_time
                do_val = is_last or (epoch + 1) % config.val_every == 0
                decision = {"out_of_time": out_of_time, "do_val": do_val}
            decision = D.broadcast_object(decision, ctx)

            improved = False
            if decision["do_val"]:
                if ctx.is_main:
                    if progress is not None:
                        progress(describe(epoch) + " validating", (epoch + 1) * config.iterations_per_epoch, total_steps)
                    val = validate(evaluated, _val_iter(dataset, val_cases), plan=plan, entities=entities,
                                   loss_fn=base_loss, target_fn=val_target, precision=runtime.precision,
                                   device=device, keep_probabilities=region_based)
                    if train_mode_hook is not None:
                        train_mode_hook(model)
                    last_validated = (epoch, val)
                    improved = math.isfinite(val.mean) and val.mean > state.best_val_dice
                    if improved:
                        state.best_val_dice = val.mean
                        state.best_epoch = epoch
                        state.best_val = dict(val.mean_per_entity)
                        best_validation = val
                    logger.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %s, mean %.4f%s", epoch, train_loss,
                                val.loss, ", ".join(f"{k} {v:.3f}" for k, v in val.mean_per_entity.items()), val.mean,
                                " (best)" if improved else "")
                improved = bool(D.broadcast_object(improved, ctx))
            elif ctx.is_main:
                logger.info("epoch %d: train loss %.4f", epoch, train_loss)

            seconds = time.perf_counter() - epoch_start
            state.epoch_seconds.append(seconds)
            state.elapsed = elapsed_before + time.perf_counter() - segment_start
            if ctx.is_main:
                row = {"epoch": epoch, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                       "seconds": seconds, "data_seconds": data_seconds}
                if val is not None:
                    row["val_loss"] = val.loss
                    row.update({f"val_dice_{k}": v for k, v in val.mean_per_entity.items()})
                    row["val_dice_mean"] = val.mean
                # The row goes first: a crash between the two writes leaves a row the resume drops,
                # never a checkpoint without its row.
                metrics.append(row)
                tensorboard.scalars(row, step=epoch)
                if improved:
                    save_checkpoint(run_dir / BEST, payload(epoch, last=False, postprocessing=default_pp,
                                                            val=state.best_val))
                save_checkpoint(run_dir / LAST, payload(epoch, last=True, postprocessing=default_pp,
                                                        val=val.mean_per_entity if val is not None else {}))

            stop = None
            horizon = None
            if ctx.is_main:
                if config.max_time_min is not None:
                    horizon = steps_left_in_budget(budget_seconds=config.max_time_min * 60.0, elapsed=state.elapsed,
                                                   epoch_seconds=state.epoch_seconds,
                                                   iterations=config.iterations_per_epoch,
                                                   val_every=config.val_every)
                if decision["out_of_time"] and epoch + 1 < config.epochs:
                    stop = "max_time"
                elif (config.patience is not None and decision["do_val"] and state.best_epoch >= 0
                      and epoch - state.best_epoch >= config.patience and epoch + 1 < config.epochs):
                    stop = "patience"
            stop, horizon = D.broadcast_object((stop, horizon), ctx)
            if horizon is not None:
                schedule.retarget(horizon)
            if stop is not None:
                stop_reason = stop
                logger.info("stopping after epoch %d: %s", epoch,
                            "wall-clock budget reached" if stop == "max_time"
                            else f"no improvement for {config.patience} epochs")
                break
    finally:
        tensorboard.close()
        _close(data_iter)

    # Post-processing decisions (rank 0): each checkpoint's on its own epoch's validation predictions.
    decided: tuple[dict[str, dict[str, bool]], dict[str, float]] = (default_pp, {})
    if ctx.is_main:
        decided = decide_and_store(run_dir, model=model, dataset=dataset, val_cases=val_cases, plan=plan,
                                   labels=labels, entities=entities,
                                   validations={BEST: best_validation,
                                                LAST: last_validated[1] if last_validated is not None
                                                and last_validated[0] == epoch else None},
                                   precision=runtime.precision, device=device)
    postprocessing, region_thresholds = D.broadcast_object(decided, ctx)
    best = D.broadcast_object((state.best_epoch, state.best_val_dice, state.best_val), ctx)
    D.barrier(ctx)
    return TrainResult(
        run_dir=run_dir, best_checkpoint=run_dir / BEST, last_checkpoint=run_dir / LAST,
        epochs_completed=epoch + 1, best_epoch=best[0], best_val_dice=best[1], val_dice=dict(best[2]),
        postprocessing=postprocessing, region_thresholds=region_thresholds, stop_reason=stop_reason, step_losses=step_losses,
        seconds=state.elapsed,
    )


def _autocast(precision: str, device: torch.device):
    from brainseg_cli.inference.sliding_window import autocast_context

    return autocast_context(precision, device) if precision != "fp32" else nullcontext()


def _wrap(model: nn.Module, *, ctx: D.DistContext, device: torch.device, compile_model: bool) -> nn.Module:
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


def _close(iterator: Iterator) -> None:
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _val_iter(dataset: TrainingCases, cases: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for case in cases:
        image, label = dataset.load_case(case)
        yield case, image, label


def discard_unstarted_run(run_dir: Path) -> bool:
    """Remove a run folder this run created when it fails before its first checkpoint.

    Callers use it for a :class:`~brainseg_cli.errors.BrainsegError` raised by planning,
    preprocessing or the checks before training: the folder (plan, part of the cache) would
    otherwise stay behind, and the next run with the same ``-o`` would need ``--resume``. A
    folder with ``last.pt`` is kept (it can be resumed).

    Returns:
        True when the folder was removed.
    """
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / LAST).exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    logger.debug("removed %s: the run failed before its first checkpoint", run_dir)
    return not run_dir.exists()


def check_run_dir(run_dir: Path, *, resume: bool, is_main: bool = True, create: bool = True) -> Path | None:
    """Check the run folder before a run; return ``last.pt`` to resume from, or None for a fresh run.

    A fresh run needs a missing or empty folder (files callers write first, :data:`CALLER_ENTRIES`,
    are allowed). ``resume`` needs ``last.pt``; a run folder that stopped before its first epoch
    ended (it has ``config.json`` or ``plan.json`` but no ``last.pt``) starts afresh.

    Args:
        run_dir: the run folder.
        resume: ``--resume`` was given.
        is_main: only rank 0 checks the folder's content.
        create: create the folder.

    Raises:
        ConfigError: a non-empty folder without ``resume``, or nothing to resume.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if resume:
        if last.exists():
            return last
        if any((run_dir / name).exists() for name in (CONFIG_FILE, *CALLER_ENTRIES)):
            if is_main:
                logger.warning("--resume: %s has no %s yet (the run stopped in its first epoch); starting afresh",
                               run_dir, LAST)
        else:
            raise ConfigError(f"--resume: nothing to resume in {run_dir} (no {LAST}); start a new run without --resume")
    elif is_main and run_dir.exists():
        if not run_dir.is_dir():
            raise ConfigError(f"run folder {run_dir} exists and is not a folder")
        extra = sorted(p.name for p in run_dir.iterdir() if p.name not in CALLER_ENTRIES)
        if extra:
            raise ConfigError(
                f"run folder {run_dir} is not empty (it holds {', '.join(extra[:3])}); "
                "continue it with --resume or choose a new folder"
            )
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return None


def _restore(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: StepSchedule,
             scaler: Any, state: _Progress, device: torch.device, hooks: Sequence[EpochHook],
             config: TrainConfig, average: WeightAverage | None = None) -> int:
    """Load ``last.pt`` into the live objects; return the epoch to start with.

    With a weight average the checkpoint's ``state_dict`` is the average and ``train_state_dict``
    the trained weights.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    for key in ("optimizer", "scheduler", "rng"):
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
        for hook in hooks:
            hook(EpochState(epoch=epoch, model=model, optimizer=optimizer, replay=True))
    if average is not None:
        if "train_state_dict" not in ckpt or "ema" not in training:
            raise CheckpointError(f"checkpoint {path} lacks the trained weights behind its average (--ema)")
        average.load(ckpt["state_dict"], training["ema"], source=str(path))
    weights = ckpt["train_state_dict"] if average is not None else ckpt["state_dict"]
    model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
    optimizer.load_state_dict(ckpt["optimizer"]["state"])
    schedule.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt["optimizer"].get("grad_scaler"):
        scaler.load_state_dict(ckpt["optimizer"]["grad_scaler"])
    set_rng_state(ckpt["rng"], device)
    state.best_val_dice = float(training.get("best_val_dice", -1.0))
    state.best_epoch = int(training.get("best_epoch", -1))
    state.elapsed = float(training.get("elapsed_seconds", 0.0))
    state.epoch_seconds = [float(s) for s in training.get("epoch_seconds", [])]
    if state.best_epoch >= 0 and (path.parent / BEST).exists():
        best = load_checkpoint(path.parent / BEST)
        state.best_val = {str(k): float(v) for k, v in best["training"].get("val_dice", {}).items()}
    logger.info("resuming %s at epoch %d", path.parent, start)
    return start


def decide_and_store(run_dir: Path, *, model: nn.Module, dataset: TrainingCases, val_cases: Sequence[str],
                     plan: Mapping[str, Any], labels: Mapping[str, int], entities: Mapping[str, Sequence[int]],
                     validations: Mapping[str, ValidationResult | None], precision: str,
                     device: torch.device) -> tuple[dict[str, dict[str, bool]], dict[str, float]]:
    """Decide the post-processing and region thresholds of ``best.pt`` and ``last.pt``, each on its own weights.

    Keep-largest-component first; region-based models then get a growing threshold per region,
    decided on the post-processed labels (:func:`~brainseg_cli.training.validation.decide_region_thresholds`,
    stored as the checkpoint's ``region_thresholds``), the order in which ``predict`` applies them.
    :func:`fit` calls it at the end; called on a finished run folder (``validations`` empty) it makes
    the decisions again from the checkpoints' weights, e.g. after the decision rules changed.

    Args:
        validations: checkpoint file name (:data:`BEST`, :data:`LAST`) -> that epoch's validation
            (label maps, and probabilities for region-based models), or None where it is not at hand
            (it ran before a resume): the checkpoint's weights then predict the validation cases
            again. When both names hold the same validation (the best epoch is the last), the
            decision is made once.

    Returns:
        ``(postprocessing, region_thresholds)`` stored in ``best.pt`` (the ones :class:`TrainResult`
        reports; thresholds empty for softmax models); with no best checkpoint (validation never
        produced a finite Dice), post-processing off, no thresholds and nothing written.
    """
    off = {name: {"largest_component": False} for name, v in labels.items() if v}
    if not (run_dir / BEST).exists():
        logger.warning("no best checkpoint (validation never produced a finite Dice): post-processing stays off")
        return off, {}
    region_based = bool(plan.get("region_based"))
    regions = {name: list(values) for name, values in entities.items()} if region_based else None
    references = {case: dataset.load_case(case)[1] for case in val_cases}

    def complete(result: ValidationResult | None) -> bool:
        return (result is not None and set(result.predictions) == set(val_cases)
                and (not region_based or set(result.probabilities) == set(val_cases)))

    decided: dict[str, tuple[dict[str, dict[str, bool]], dict[str, float]]] = {}
    made: dict[int, tuple[Any, Any]] = {}  # id of a validation -> (that validation, its decisions)
    for name in (BEST, LAST):
        path = run_dir / name
        if not path.exists():
            continue
        ckpt = load_checkpoint(path)
        result = validations.get(name)
        if not complete(result):
            import copy

            net = copy.deepcopy(model)
            net.load_state_dict({k: v.to(device) for k, v in ckpt["state_dict"].items()})
            result = validate(net, _val_iter(dataset, val_cases), plan=plan, entities=entities, precision=precision,
                              device=device, keep_probabilities=region_based)
        if id(result) not in made:  # the validation is kept with its decisions, so its id is not reused
            decision = decide_postprocessing(result.predictions, references, labels=labels, entities=entities)
            thresholds: dict[str, float] = {}
            dice_after = decision.dice_after
            if regions is not None:
                groups = decided_groups(decision.postprocessing, labels=labels, regions=regions)
                processed = {case: apply_largest_component(pred, labels_to_process=groups) if groups else pred
                             for case, pred in result.predictions.items()}
                chosen = decide_region_thresholds(result.probabilities, processed, references, regions=regions)
                thresholds, dice_after = chosen.thresholds, chosen.dice_after
            made[id(result)] = (result, (decision, thresholds, dice_after))
        decision, thresholds, dice_after = made[id(result)][1]
        ckpt["postprocessing"] = decision.postprocessing
        ckpt["training"]["val_dice_postprocessed"] = dice_after
        if region_based:
            ckpt["region_thresholds"] = dict(thresholds)
        save_checkpoint(path, ckpt)
        decided[name] = (decision.postprocessing, dict(thresholds))
    return decided.get(BEST, (off, {}))

