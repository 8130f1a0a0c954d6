"""``brainseg pretrain``: a dataset folder in, a trained run folder out.

:func:`pretrain` loads the dataset (nnU-Net v2 raw layout), fingerprints it, makes the plan (saved
as ``RUN_DIR/plan.json``), preprocesses the cases into ``RUN_DIR/preprocessed``, splits the cases
(validation count, fraction or K-fold), builds the planned network with the run's seed and trains
it with :func:`brainseg_cli.training.fit.fit`.

With ``--resume`` the run's own ``plan.json`` is reused (the plan never changes within a run) and
cached cases are kept. With ``nproc > 1`` the same function runs in ``nproc`` processes joined by
DDP (:func:`brainseg_cli.training.distributed.launch`); under ``torchrun`` every process calls it
directly. Rank 0 plans and preprocesses, the others wait and read its files (multi-machine runs
need RUN_DIR on a shared file system).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from brainseg_cli.data.fingerprint import compute_fingerprint
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.data.plan import PlanOverrides, make_plan
from brainseg_cli.errors import ConfigError
from brainseg_cli.models import model_info
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.process import (
    CACHE_DIR,
    PLAN_FILE,
    launch_or_run,
    plan_and_cache,
    planned_model,
    train,
    training_process,
)
from brainseg_cli.training.run import TrainResult
from brainseg_cli.training.splits import split_cases

logger = logging.getLogger(__name__)


def check_model_config(plan_overrides: Mapping[str, Any]) -> None:
    """Refuse a ``--model`` that does not support the asked ``--config`` (before any work).

    Raises:
        ConfigError: e.g. ``model 'unet3d' is 3-D only and cannot train --config 2d``.
    """
    name, config = plan_overrides.get("model"), plan_overrides.get("config")
    if name is None:
        return
    dims = model_info(name).dims
    if config is not None:
        wanted = 2 if config == "2d" else 3
        if wanted not in dims:
            only = " or ".join(f"{d}-D" for d in dims)
            raise ConfigError(f"model '{name}' is {only} only and cannot train --config {config}")


def pretrain(
    *,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    train_config: TrainConfig,
    plan_overrides: Mapping[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    bundle: str | None = None,
) -> TrainResult:
    """Plan, preprocess and train on a dataset; write the run folder.

    Args:
        dataset_dir: a dataset in the nnU-Net v2 raw layout (``brainseg convert`` output).
        run_dir: the run folder (``plan.json``, ``preprocessed/``, ``best.pt``, ``last.pt``,
            ``metrics.csv``, ``config.json``).
        train_config: training options.
        plan_overrides: :class:`brainseg_cli.data.plan.PlanOverrides` fields (``config``,
            ``model``, ``regions``, ``patch_size``, ``target_spacing``, ``batch_size``, ...).
        progress: ``progress(description, done, total)`` (single-process runs only; launched
            processes log instead).
        bundle: also write ``RUN_DIR/BUNDLE.bundle.zip`` (``best.pt`` and its model card) at the end.

    Returns:
        The :class:`~brainseg_cli.training.fit.TrainResult`.

    Raises:
        ConfigError: invalid options or combinations (fp16 on a CPU, a 3-D-only model with
            ``config="2d"``, a non-empty run folder without ``resume``, ...).
        InputError: an invalid dataset.
    """
    overrides = dict(plan_overrides or {})
    check_model_config(overrides)
    return launch_or_run(_pretrain_process, run_dir=Path(run_dir), train_config=train_config,
                         kwargs={"dataset_dir": str(dataset_dir), "plan_overrides": overrides}, progress=progress,
                         bundle=bundle)


def _pretrain_process(
    *,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    train_config: TrainConfig,
    plan_overrides: Mapping[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """One process of :func:`pretrain` (the whole run without DDP)."""
    with training_process(run_dir, train_config) as proc:
        info = load_dataset(dataset_dir)

        def new_plan() -> dict[str, Any]:
            try:
                overrides = PlanOverrides(**_plan_override_values(plan_overrides))
            except TypeError as exc:
                raise ConfigError(f"invalid plan options: {exc}") from None
            fingerprint = compute_fingerprint(info, workers=proc.workers, progress=progress)
            return make_plan(fingerprint=fingerprint, info=info, overrides=overrides, device=proc.runtime.device)

        plan, cache = plan_and_cache(proc, info=info, make_plan=new_plan, progress=progress)
        train_cases, val_cases = split_cases(list(info.training_cases), val_cases=train_config.val_cases,
                                             val_split=train_config.val_split, fold=train_config.fold,
                                             folds=train_config.folds)
        logger.info("%d training and %d validation cases (validation: %s)", len(train_cases), len(val_cases),
                    ", ".join(val_cases))
        model = planned_model(plan, seed=train_config.seed)
        return train(proc, model=model, plan=plan, cache=cache, info=info, dataset_dir=dataset_dir,
                     train_cases=train_cases, val_cases=val_cases, progress=progress)


def _plan_override_values(overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in overrides.items():
        if value is None:
            continue
        out[key] = tuple(value) if isinstance(value, list) and key in ("patch_size", "target_spacing") else value
    return out


__all__ = ["CACHE_DIR", "PLAN_FILE", "check_model_config", "pretrain"]
