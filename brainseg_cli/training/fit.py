"""The training loop: :func:`fit` trains a model on preprocessed cases and writes a run folder.

One loop serves ``pretrain`` and ``finetune``. It is generic in the model (any
:class:`~brainseg_cli.models.base.SegmentationModel`), the optimiser parameter groups (frozen
parameters left out, per-group learning rates), and per-epoch hooks (e.g. unfreeze the encoder at
epoch K). Its parts live in their own modules: the batches (:mod:`brainseg_cli.training.batches`),
one optimiser step (:mod:`brainseg_cli.training.step`), the learning-rate schedule
(:mod:`brainseg_cli.training.optim`), the run folder (:mod:`brainseg_cli.training.rundir`), seeding
(:mod:`brainseg_cli.training.seeding`), the precision (:mod:`brainseg_cli.models.precision`), the
checkpoint payload (:mod:`brainseg_cli.checkpoint`) and the decisions at the end
(:mod:`brainseg_cli.training.decisions`).

**Epochs and batches.** An epoch is :attr:`TrainConfig.iterations_per_epoch` optimiser steps; the
batch of step ``t`` is a pure function of ``(seed, t)`` (see :mod:`brainseg_cli.training.batches`).

**Validation** (every :attr:`TrainConfig.validation_every` epochs and after the last) runs on rank 0 with
:func:`brainseg_cli.training.validation.validate`; the mean foreground Dice picks ``best.pt``.
``last.pt`` is written after every epoch with the optimiser, schedule and RNG states; resuming from
it replays the remaining epochs exactly (bit-identical weights with ``--deterministic``).
With ``ema`` (``--ema DECAY``) a moving average of the weights
(:class:`~brainseg_cli.training.ema.WeightAverage`, updated after every step) is what is validated
and saved as the checkpoints' ``state_dict``; ``last.pt`` also keeps the trained weights
(``train_state_dict``) for ``--resume``.

**Stopping.** After ``epochs`` epochs; earlier when the mean validation Dice has not improved for
``patience`` epochs; or when the wall-clock budget ``max_time_min`` runs out. The budget is checked
after every epoch (another epoch, estimated from the mean epoch time so far, would exceed it) and
after every step (the budget less the last validation's duration is spent: the epoch ends early);
either way the epoch that just ended is validated and becomes the last. With a budget the
learning-rate schedule follows the clock: after every epoch it is re-aimed at the steps the budget
still allows (:class:`~brainseg_cli.training.optim.StepSchedule`), so a time-limited run ends at
the schedule's final rate whatever ``epochs`` says.

**Decisions at the end**, made for ``best.pt`` on the best epoch's validation predictions and for
``last.pt`` on the last epoch's, and stored in each (:func:`brainseg_cli.training.decisions.decide_and_store`).

Run folder: ``best.pt``, ``last.pt``, ``metrics.csv``, ``config.json`` (the resolved config),
``tensorboard/`` (event files with the same numbers), plus what the caller writes
(``plan.json`` for ``pretrain``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.errors import ConfigError
from brainseg_cli.training import distributed as D
from brainseg_cli.training.batches import TrainingCases
from brainseg_cli.training.config import TrainConfig, resolve_runtime
from brainseg_cli.training.run import EpochHook, TrainingRun, TrainResult
from brainseg_cli.training.seeding import set_determinism

logger = logging.getLogger(__name__)


def fit(
    *,
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
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
        plan: the :class:`~brainseg_cli.data.plan_schema.Plan` (or plan data).
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
    plan = as_plan(plan)
    if not val_cases:
        raise ConfigError("training needs at least one validation case")
    if not train_cases:
        raise ConfigError("training needs at least one training case")
    runtime = resolve_runtime(config, local_rank=ctx.local_rank if ctx.distributed else None,
                              model=plan.model.name)
    for note in runtime.notes:
        logger.warning(note)
    logger.info("training on %s, precision %s (--precision %s)", runtime.device, runtime.precision, config.precision)
    set_determinism(config.deterministic)
    run = TrainingRun(model=model, plan=plan, dataset=dataset, train_cases=train_cases, val_cases=val_cases,
               run_dir=run_dir, config=config, runtime=runtime, ctx=ctx, param_groups=param_groups,
               epoch_hooks=epoch_hooks, train_mode_hook=train_mode_hook, checkpoint_extra=checkpoint_extra,
               progress=progress)
    epoch = run.start_epoch - 1
    try:
        for epoch in range(run.start_epoch, config.epochs):
            epoch_start = time.perf_counter()
            train_loss, data_seconds, cut = run.train_epoch(epoch)
            stop = run.end_epoch(epoch, epoch_start=epoch_start, train_loss=train_loss, data_seconds=data_seconds,
                                 cut=cut)
            if stop is not None:
                run.stop_reason = stop
                break
    finally:
        run.close()
    return run.finish(epoch)
