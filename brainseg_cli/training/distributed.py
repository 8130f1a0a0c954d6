"""Data-parallel training on PyTorch's own engine (DistributedDataParallel).

Two ways in:

* ``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint host:port ...] -m brainseg_cli.cli.main
  pretrain ...`` (one process per GPU, any number of machines): torchrun sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads them.
* ``brainseg pretrain --nproc N``: :func:`launch` starts N local processes with torch's elastic
  launcher (the engine behind torchrun) and runs the same library function in each.

The backend is NCCL when the processes use CUDA and gloo on CPUs. Only rank 0 writes files.
Every rank samples different patches (each sample of a global batch is drawn from its own seed,
see :mod:`brainseg_cli.training.batches`), gradients are averaged by DDP.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from brainseg_cli.errors import BrainsegError, ConfigError

logger = logging.getLogger(__name__)

#: Collective-operation timeout: generous, since rank 0 validates while the others wait.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this machine (picks the CUDA device).
        backend: ``"nccl"``, ``"gloo"`` or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0


SINGLE = DistContext()


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or None when not set."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {os.environ.get('RANK')!r}/"
            f"{os.environ.get('WORLD_SIZE')!r}/{os.environ.get('LOCAL_RANK')!r}"
        ) from None
    return rank, world, local


def init_from_env(*, use_cuda: bool) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Args:
        use_cuda: the processes train on CUDA (NCCL backend) rather than CPUs (gloo).

    Returns:
        The :class:`DistContext`; :data:`SINGLE` when the variables are absent or the world size
        is 1.
    """
    found = env_world()
    if found is None or found[1] <= 1:
        return SINGLE
    rank, world, local = found
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        logger.info("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process).

    All ranks meet at a barrier first: a rank destroying the group while another still communicates
    aborted that rank ("terminate called without an active exception") in about 1 of 4 torchrun runs.
    """
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over ranks (the input for a single process)."""
    if not ctx.distributed:
        return tensor
    # NCCL reduces CUDA tensors only; gloo takes any.
    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else tensor.device
    out = tensor.detach().to(device, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / ctx.world_size).to(tensor.device)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects only)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _entry(fn: Callable[..., Any], kwargs: dict[str, Any], log_level: int) -> Any:
    """Body of every launched process: logging, then ``fn(**kwargs)`` (only rank 0's result matters)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_run_logged)(fn, kwargs, log_level)


def _run_logged(fn: Callable[..., Any], kwargs: dict[str, Any], log_level: int) -> Any:
    rank = int(os.environ.get("RANK", "0"))
    root = logging.getLogger("brainseg_cli")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        root.addHandler(handler)
    root.setLevel(log_level if rank == 0 else max(log_level, logging.WARNING))
    root.propagate = False
    try:
        return fn(**kwargs)
    except BrainsegError as exc:
        # Re-raised as a plain error carrying the message, so the launcher reports one line.
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from None


def launch(fn: Callable[..., Any], *, nproc: int, kwargs: dict[str, Any]) -> Any:
    """Run ``fn(**kwargs)`` in ``nproc`` local processes joined into one process group.

    Uses :func:`torch.distributed.launcher.api.elastic_launch` (torchrun's engine) with a
    rendezvous on a free local port and no restarts; ``fn`` and ``kwargs`` must be picklable
    (``fn`` a module-level function). Each process sees torchrun's variables, so ``fn`` calls
    :func:`init_from_env`.

    Args:
        fn: the function each process runs.
        nproc: number of processes (>= 2).
        kwargs: its keyword arguments.

    Returns:
        Rank 0's return value.

    Raises:
        ConfigError: ``nproc < 2``.
        BrainsegError: a process failed (the first failure's message).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 2:
        raise ConfigError(f"--nproc must be >= 2 to launch processes, got {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"brainseg-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    level = logging.getLogger("brainseg_cli").getEffectiveLevel()
    logger.info("launching %d processes", nproc)
    # torch's launcher logs a failed child's full traceback; the error below carries its message.
    noisy = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    previous = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.CRITICAL)
    try:
        results = elastic_launch(config, _entry)(fn, kwargs, level)
    except ChildFailedError as exc:
        failures = exc.failures
        first = failures[min(failures)] if failures else None
        message = first.message if first is not None else str(exc)
        if isinstance(message, dict):
            message = message.get("message", str(message))
        text = " ".join(str(message).split()).removeprefix("RuntimeError: ")
        error = BrainsegError(f"a training process failed: {text[:500]}")
        if "ConfigError" in text:
            error.exit_code = 2
        raise error from None
    finally:
        for log, level_before in zip(noisy, previous):
            log.setLevel(level_before)
    return results[0]
