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

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from brainseg_cli.errors import BrainsegError, ConfigError
from brainseg_cli.training import distributed as D
from brainseg_cli.training.config import TrainConfig, resolve_runtime
from brainseg_cli.training.fit import TrainResult, check_run_dir, discard_unstarted_run, fit, seed_everything

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CACHE_DIR = "preprocessed"


def check_model_config(plan_overrides: Mapping[str, Any]) -> None:
    """Refuse a ``--model`` that does not support the asked ``--config`` (before any work).

    Raises:
        ConfigError: e.g. ``model 'unet3d' is 3-D only and cannot train --config 2d``.
    """
    name, config = plan_overrides.get("model"), plan_overrides.get("config")
    if name is None:
        return
    from brainseg_cli.models import model_info

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

    Returns:
        The :class:`~brainseg_cli.training.fit.TrainResult`.

    Raises:
        ConfigError: invalid options or combinations (fp16 on a CPU, a 3-D-only model with
            ``config="2d"``, a non-empty run folder without ``resume``, ...).
        InputError: an invalid dataset.
    """
    overrides = dict(plan_overrides or {})
    check_model_config(overrides)
    run_dir = Path(run_dir)
    if train_config.nproc > 1 and D.env_world() is None:
        resolve_runtime(train_config)  # usage errors here, not in the launched processes
        check_run_dir(run_dir, resume=train_config.resume, is_main=True, create=False)
        return D.launch(_pretrain_process, nproc=train_config.nproc,
                        kwargs={"dataset_dir": str(dataset_dir), "run_dir": str(run_dir),
                                "train_config": train_config, "plan_overrides": overrides})
    return _pretrain_process(dataset_dir=dataset_dir, run_dir=run_dir, train_config=train_config,
                             plan_overrides=overrides, progress=progress)


def _pretrain_process(
    *,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    train_config: TrainConfig,
    plan_overrides: Mapping[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """One process of :func:`pretrain` (the whole run without DDP)."""
    import torch

    from brainseg_cli.data.augmentation import AugmentConfig
    from brainseg_cli.data.cache import build_cache, open_cache
    from brainseg_cli.data.datasets import CachedCases
    from brainseg_cli.data.fingerprint import compute_fingerprint
    from brainseg_cli.data.layout import load_dataset
    from brainseg_cli.data.plan import PlanOverrides, load_plan, make_plan, save_plan
    from brainseg_cli.models import build_model
    from brainseg_cli.training.splits import split_cases

    run_dir = Path(run_dir)
    found = D.env_world()
    local_rank = found[2] if found is not None and found[1] > 1 else None
    runtime = resolve_runtime(train_config, local_rank=local_rank)
    ctx = D.init_from_env(use_cuda=runtime.device.startswith("cuda"))
    if ctx.distributed and runtime.device == "cpu":
        # Processes on one machine share its cores (oversubscribed OpenMP threads are very slow).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // local)))
    created = ctx.is_main and not run_dir.exists()  # removed again if planning fails
    try:
        if ctx.is_main:
            check_run_dir(run_dir, resume=train_config.resume, is_main=True, create=True)
        D.barrier(ctx)
        info = load_dataset(dataset_dir)
        plan_path = run_dir / PLAN_FILE
        workers = max(1, runtime.workers)
        if ctx.is_main:
            if train_config.resume and plan_path.exists():
                plan = load_plan(plan_path)
                logger.info("resuming with the run's plan %s", plan_path)
            else:
                try:
                    overrides = PlanOverrides(**_plan_override_values(plan_overrides))
                except TypeError as exc:
                    raise ConfigError(f"invalid plan options: {exc}") from None
                fingerprint = compute_fingerprint(info, workers=workers, progress=progress)
                plan = make_plan(fingerprint=fingerprint, info=info, overrides=overrides, device=runtime.device)
                save_plan(plan, plan_path)
            _log_plan(plan)
            build_cache(info, plan, folder=run_dir / CACHE_DIR, workers=workers, progress=progress)
        D.barrier(ctx)
        plan = load_plan(plan_path)
        cache = open_cache(run_dir / CACHE_DIR, plan=plan)
        train_cases, val_cases = split_cases(list(info.training_cases), val_cases=train_config.val_cases,
                                             val_split=train_config.val_split, fold=train_config.fold,
                                             folds=train_config.folds)
        logger.info("%d training and %d validation cases (validation: %s)", len(train_cases), len(val_cases),
                    ", ".join(val_cases))
        seed_everything(train_config.seed)
        spec = plan["model"]
        model = build_model(spec["name"], spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"],
                            num_classes=spec["num_classes"], **spec["config"])
        augment = AugmentConfig.preset(train_config.augment_preset)
        data = CachedCases(cache, plan, augment=augment)
        extra = {
            "dataset_fingerprint": (plan.get("fingerprint") or {}).get("hash"),
            "dataset": info.name,
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "augmentation": dataclasses.asdict(augment) if train_config.augment else None,
        }
        torch.set_float32_matmul_precision("high")
        return fit(model=model, plan=plan, dataset=data, train_cases=train_cases, val_cases=val_cases,
                   run_dir=run_dir, config=train_config, checkpoint_extra=extra, progress=progress, dist_ctx=ctx)
    except BrainsegError:
        if created:
            discard_unstarted_run(run_dir)
        raise
    finally:
        D.shutdown(ctx)


def _plan_override_values(overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in overrides.items():
        if value is None:
            continue
        out[key] = tuple(value) if isinstance(value, list) and key in ("patch_size", "target_spacing") else value
    return out


def _log_plan(plan: Mapping[str, Any]) -> None:
    logger.info("plan: %s, %s, patch %s, batch %d, spacing %s mm, %s outputs (%s)", plan["config"],
                plan["model"]["name"], "x".join(str(p) for p in plan["patch_size"]), plan["batch_size"],
                "x".join(f"{s:g}" for s in plan["target_spacing"]), plan["model"]["num_classes"],
                "regions " + ", ".join(plan["regions"]) if plan.get("region_based") else "softmax")


__all__ = ["CACHE_DIR", "PLAN_FILE", "check_model_config", "pretrain"]
