"""Numeric precision: the ``--precision`` names, their autocast dtypes and the contexts that apply them.

One source for training (``pretrain``/``finetune``), validation and inference:

* ``"fp32"``: no autocast.
* ``"bf16"``: :func:`torch.autocast` with ``torch.bfloat16`` (CPUs with native bf16, recent GPUs).
* ``"fp16"``: :func:`torch.autocast` with ``torch.float16``; training adds loss scaling
  (:class:`torch.amp.GradScaler`), CUDA only.
* ``"auto"`` (training only) is resolved per machine and architecture by
  :func:`brainseg_cli.training.config.resolve_runtime`.
"""

from __future__ import annotations

import contextlib

import torch

from brainseg_cli import choices
from brainseg_cli.errors import look_up

#: Precision names -> autocast dtype (``None``: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: The precisions a network can run in (``predict --precision``).
PRECISIONS: tuple[str, ...] = choices.PRECISIONS

#: ``pretrain``/``finetune --precision`` choices: the above and ``"auto"``.
TRAIN_PRECISIONS: tuple[str, ...] = choices.TRAIN_PRECISIONS


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for ``"fp32"``).

    Raises:
        ConfigError: an unknown precision name (with a did-you-mean hint).
    """
    dtype = look_up(precision, AUTOCAST_DTYPES, "precision")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler training needs in ``precision`` (fp16 on CUDA), else None."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None
