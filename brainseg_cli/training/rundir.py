"""The run folder of a training run: its file names, the checks before a run, and its clean-up.

A run folder holds ``best.pt``, ``last.pt``, ``metrics.csv``, ``config.json`` (the resolved
config), ``tensorboard/`` and what the caller writes first (:data:`CALLER_ENTRIES`: ``pretrain``'s
``plan.json`` and preprocessed cases).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainseg_cli.errors import ConfigError
from brainseg_cli.io.atomic import atomic_write
from brainseg_cli.training.config import Runtime, TrainConfig

logger = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
CONFIG_FILE = "config.json"
#: Entries of a run folder that callers of :func:`~brainseg_cli.training.fit.fit` write before it
#: starts (``pretrain``'s plan and preprocessed cases); a fresh run tolerates them.
CALLER_ENTRIES: tuple[str, ...] = ("plan.json", "preprocessed")


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


def discard_unstarted_run(run_dir: Path) -> bool:
    """Remove a run folder this run created when it fails before its first checkpoint.

    Callers use it for a :class:`~brainseg_cli.errors.BrainsegError` raised by planning,
    preprocessing or the checks before training: the folder (plan, part of the cache) would
    otherwise stay behind, and the next run with the same ``-o`` would need ``--resume``. A
    folder with ``last.pt`` is kept (it can be resumed).

    Returns:
        True when the folder was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / LAST).exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    logger.debug("removed %s: the run failed before its first checkpoint", run_dir)
    return not run_dir.exists()


def write_config_json(run_dir: Path, config: TrainConfig, runtime: Runtime, extra: Mapping[str, Any]) -> None:
    """Write ``run_dir/config.json``: the resolved config (atomic)."""
    data = {"train_config": config.to_dict(), "runtime": {"device": runtime.device, "precision": runtime.precision,
                                                           "workers": runtime.workers}, **extra}
    with atomic_write(run_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
