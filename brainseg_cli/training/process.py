"""The process skeleton ``pretrain`` and ``finetune`` share: launch, run folder, plan, cache, model, fit.

Both commands run the same steps and differ only in how they plan and what they do to the network
before training:

1. :func:`launch_or_run`: with ``nproc > 1`` outside ``torchrun``, check usage errors in this
   process, then start ``nproc`` processes joined by DDP
   (:func:`brainseg_cli.training.distributed.launch`); otherwise run here. Under ``torchrun`` every
   process calls the command's process function directly.
2. :func:`training_process` (a context manager): resolve the device and precision, join the
   process group, cap each process's CPU threads when several share one machine's cores, check
   (rank 0) and create the run folder; on a :class:`~brainseg_cli.errors.BrainsegError` before
   the first checkpoint the folder this run created is removed again; the process group is left
   at the end.
3. :func:`plan_and_cache`: rank 0 makes the plan (or reuses the run's own ``plan.json`` on
   ``--resume``: the plan never changes within a run) and preprocesses the cases into
   ``RUN_DIR/preprocessed``; the other ranks wait and read its files (multi-machine runs need
   RUN_DIR on a shared file system).
4. :func:`planned_model`: the planned network, built after seeding with the run's seed.
5. :func:`train`: the cached cases with the run's augmentation, the checkpoints' ``training``
   entries every run stores, and :func:`brainseg_cli.training.fit.fit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainseg_cli.bundles import check_name, write_bundle
from brainseg_cli.data.augmentation import AugmentConfig
from brainseg_cli.data.cache import PreprocessedCache, build_cache, open_cache
from brainseg_cli.data.datasets import CachedCases
from brainseg_cli.data.plan import load_plan, save_plan
from brainseg_cli.data.plan_schema import Plan
from brainseg_cli.errors import BrainsegError
from brainseg_cli.models import build_model
from brainseg_cli.training import distributed as D
from brainseg_cli.training.config import Runtime, TrainConfig, resolve_runtime
from brainseg_cli.training.fit import fit
from brainseg_cli.training.run import EpochHook, TrainResult
from brainseg_cli.training.rundir import check_run_dir, discard_unstarted_run
from brainseg_cli.training.seeding import seed_everything

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CACHE_DIR = "preprocessed"

Progress = Callable[[str, int, int], None]


def launch_or_run(process: Callable[..., TrainResult], *, run_dir: Path, train_config: TrainConfig,
                  kwargs: Mapping[str, Any], progress: Progress | None, bundle: str | None = None) -> TrainResult:
    """Run ``process(run_dir=..., train_config=..., **kwargs)`` here, or in ``nproc`` DDP processes.

    With ``bundle`` (``--bundle NAME``), rank 0 then writes ``RUN_DIR/NAME.bundle.zip``: ``best.pt``
    with its model card (:func:`brainseg_cli.bundles.write_bundle`), named in the result's ``bundle``.

    Args:
        process: the command's process function (module level, so that it can be started in a
            new process).
        run_dir: the run folder.
        train_config: the training options (``nproc`` decides).
        kwargs: the other arguments of ``process`` (picklable).
        progress: ``progress(description, done, total)``, given only to a process run here
            (launched processes log instead).

    Raises:
        ConfigError: a usage error (checked before any process starts).
    """
    if bundle is not None:
        check_name(bundle)
    found = D.env_world()
    if train_config.nproc > 1 and found is None:
        resolve_runtime(train_config)  # usage errors here, not in the launched processes
        check_run_dir(run_dir, resume=train_config.resume, is_main=True, create=False)
        result = D.launch(process, nproc=train_config.nproc,
                          kwargs={**kwargs, "run_dir": str(run_dir), "train_config": train_config})
    else:
        result = process(**kwargs, run_dir=run_dir, train_config=train_config, progress=progress)
    if bundle is not None and (found is None or found[0] == 0):
        result = dataclasses.replace(result, bundle=write_bundle(run_dir, name=bundle))
    return result


@dataclass(frozen=True)
class TrainingProcess:
    """One process of a training run.

    Attributes:
        run_dir: the run folder (exists once :func:`training_process` has entered).
        train_config: the training options.
        runtime: the resolved device, precision and workers.
        ctx: the data-parallel context (a single process without DDP).
    """

    run_dir: Path
    train_config: TrainConfig
    runtime: Runtime
    ctx: D.DistContext

    @property
    def workers(self) -> int:
        """Processes for fingerprinting and preprocessing (at least one)."""
        return max(1, self.runtime.workers)


@contextlib.contextmanager
def training_process(run_dir: str | os.PathLike[str], train_config: TrainConfig, *,
                     check_resume: Callable[[Path], None] | None = None) -> Iterator[TrainingProcess]:
    """Set up one process of a training run (module docstring, step 2).

    Args:
        run_dir: the run folder.
        train_config: the training options.
        check_resume: with ``--resume``, called (rank 0) with the run folder before it is checked,
            to refuse options that differ from the run's.
    """
    run_dir = Path(run_dir)
    found = D.env_world()
    local_rank = found[2] if found is not None and found[1] > 1 else None
    runtime = resolve_runtime(train_config, local_rank=local_rank)
    ctx = D.init_from_env(use_cuda=runtime.device.startswith("cuda"))
    if ctx.distributed and runtime.device == "cpu":
        # Processes on one machine share its cores (oversubscribed OpenMP threads are very slow).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // local)))
    created = ctx.is_main and not run_dir.exists()  # removed again if the run fails before training
    try:
        if ctx.is_main:
            if train_config.resume and check_resume is not None:
                check_resume(run_dir)
            check_run_dir(run_dir, resume=train_config.resume, is_main=True, create=True)
        D.barrier(ctx)
        yield TrainingProcess(run_dir=run_dir, train_config=train_config, runtime=runtime, ctx=ctx)
    except BrainsegError:
        if created:
            discard_unstarted_run(run_dir)
        raise
    finally:
        D.shutdown(ctx)


def plan_and_cache(proc: TrainingProcess, *, info: Any, make_plan: Callable[[], Plan],
                   cases: Callable[[Plan], Sequence[str]] | None = None,
                   progress: Progress | None = None) -> tuple[Plan, PreprocessedCache]:
    """The run's plan and its preprocessed cases (module docstring, step 3).

    Args:
        proc: the process.
        info: the dataset (:class:`~brainseg_cli.data.layout.DatasetInfo`).
        make_plan: makes a new plan (rank 0, not on ``--resume`` of a run that has one).
        cases: the cases to preprocess for a plan (default: every training case).
        progress: ``progress(description, done, total)``.

    Returns:
        ``(plan, cache)``, the plan as read back from ``plan.json`` on every rank.
    """
    plan_path = proc.run_dir / PLAN_FILE
    if proc.ctx.is_main:
        if proc.train_config.resume and plan_path.exists():
            plan = load_plan(plan_path)
            logger.info("resuming with the run's plan %s", plan_path)
        else:
            plan = make_plan()
            save_plan(plan, plan_path)
        _log_plan(plan)
        build_cache(info, plan, folder=proc.run_dir / CACHE_DIR, cases=None if cases is None else list(cases(plan)),
                    workers=proc.workers, progress=progress)
    D.barrier(proc.ctx)
    plan = load_plan(plan_path)
    return plan, open_cache(proc.run_dir / CACHE_DIR, plan=plan)


def planned_model(plan: Plan, *, seed: int) -> nn.Module:
    """The plan's network, its fresh weights drawn after seeding every generator with ``seed``."""
    seed_everything(seed)
    spec = plan.model
    return build_model(spec.name, spatial_dims=spec.spatial_dims, in_channels=spec.in_channels,
                       num_classes=spec.num_classes, **spec.config)


def train(proc: TrainingProcess, *, model: nn.Module, plan: Plan, cache: PreprocessedCache,
          info: Any, dataset_dir: str | os.PathLike[str], train_cases: Sequence[str], val_cases: Sequence[str],
          extra: Mapping[str, Any] | None = None, param_groups: Iterable[dict[str, Any]] | None = None,
          epoch_hooks: Sequence[EpochHook] = (), train_mode_hook: Callable[[nn.Module], None] | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train ``model`` on the cached cases (module docstring, step 5).

    Every checkpoint's ``training`` section gets ``dataset_fingerprint``, ``dataset``,
    ``dataset_dir`` and ``augmentation`` (None without augmentation), then ``extra``.
    """
    config = proc.train_config
    augment = AugmentConfig.preset(config.augment_preset)
    checkpoint_extra = {
        "dataset_fingerprint": plan.fingerprint_hash,
        "dataset": info.name,
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "augmentation": dataclasses.asdict(augment) if config.augment else None,
        **dict(extra or {}),
    }
    torch.set_float32_matmul_precision("high")
    return fit(model=model, plan=plan, dataset=CachedCases(cache, plan, augment=augment), train_cases=train_cases,
               val_cases=val_cases, run_dir=proc.run_dir, config=config, param_groups=param_groups,
               epoch_hooks=epoch_hooks, train_mode_hook=train_mode_hook, checkpoint_extra=checkpoint_extra,
               progress=progress, dist_ctx=proc.ctx)


def _log_plan(plan: Plan) -> None:
    logger.info("plan: %s, %s, patch %s, batch %d, spacing %s mm, %s outputs (%s)", plan.config,
                plan.model.name, "x".join(str(p) for p in plan.patch_size), plan.batch_size,
                "x".join(f"{s:g}" for s in plan.target_spacing), plan.model.num_classes,
                "regions " + ", ".join(plan.regions) if plan.region_based else "softmax")
