"""Optimiser presets and learning-rate schedules.

Presets (nnU-Net's SGD; Adam with cosine annealing as in many transfer papers):

=========  ======  =============================================  ============  ===========
name       lr      settings                                       weight decay  schedule
=========  ======  =============================================  ============  ===========
``sgd``    1e-2    momentum 0.99, Nesterov                        3e-5          ``poly``
``adam``   1e-4    betas (0.9, 0.999)                             0             ``cosine``
=========  ======  =============================================  ============  ===========

Schedules are a factor of the initial learning rate as a function of the optimiser step ``t`` out of
``T`` total steps, applied **every iteration** (not every epoch as in nnU-Net, so the rate falls
smoothly even with few, long epochs) by :class:`brainseg_cli.training.fit.StepSchedule`, which also
lets a time budget set ``T``:

* ``poly``: ``(1 - t / T) ** 0.9``
* ``cosine``: ``0.5 * (1 + cos(pi * t / T))``
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from brainseg_cli.errors import ConfigError, look_up


@dataclass(frozen=True)
class OptimizerPreset:
    """Defaults of one ``--optimizer`` choice."""

    lr: float
    """Initial learning rate."""
    weight_decay: float
    """L2 weight decay."""
    schedule: str
    """Default learning-rate schedule."""


PRESETS: dict[str, OptimizerPreset] = {
    "sgd": OptimizerPreset(lr=1e-2, weight_decay=3e-5, schedule="poly"),
    "adam": OptimizerPreset(lr=1e-4, weight_decay=0.0, schedule="cosine"),
}

POLY_EXPONENT = 0.9


def poly_factor(step: int, total: int) -> float:
    """``(1 - step / total) ** 0.9``, clamped to [0, 1]."""
    return max(0.0, 1.0 - min(step, total) / total) ** POLY_EXPONENT


def cosine_factor(step: int, total: int) -> float:
    """``0.5 * (1 + cos(pi * step / total))``, clamped at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


SCHEDULE_FACTORS = {"poly": poly_factor, "cosine": cosine_factor}


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    *,
    name: str,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """An optimiser from a preset.

    Args:
        params: parameters or parameter groups (dicts with ``params`` and optionally ``lr``,
            e.g. a lower rate for a pretrained encoder); parameters that do not require grad are
            dropped (frozen layers).
        name: ``sgd`` or ``adam``.
        lr: initial learning rate (None: the preset's); groups without their own ``lr`` use it.
        weight_decay: None: the preset's.

    Raises:
        ConfigError: unknown name, or no trainable parameter.
    """
    preset = look_up(name, PRESETS, "optimizer")
    rate = preset.lr if lr is None else lr
    decay = preset.weight_decay if weight_decay is None else weight_decay
    items = list(params)
    groups: list[dict[str, Any]] = []
    if items and isinstance(items[0], dict):
        for group in items:
            trainable = [p for p in group["params"] if p.requires_grad]
            if trainable:
                groups.append({**group, "params": trainable})
    else:
        trainable = [p for p in items if p.requires_grad]
        if trainable:
            groups.append({"params": trainable})
    if not groups:
        raise ConfigError("no trainable parameters: every parameter is frozen")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=rate, momentum=0.99, nesterov=True, weight_decay=decay)
    return torch.optim.Adam(groups, lr=rate, betas=(0.9, 0.999), weight_decay=decay)


def resolved_optimizer_settings(*, name: str, lr: float | None, schedule: str | None, weight_decay: float | None) -> dict[str, Any]:
    """The concrete ``{"optimizer", "lr", "schedule", "weight_decay"}`` after applying the preset."""
    preset = look_up(name, PRESETS, "optimizer")
    return {
        "optimizer": name,
        "lr": preset.lr if lr is None else lr,
        "schedule": preset.schedule if schedule is None else schedule,
        "weight_decay": preset.weight_decay if weight_decay is None else weight_decay,
    }
