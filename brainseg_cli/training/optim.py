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
smoothly even with few, long epochs) by :class:`StepSchedule`, which also
lets a time budget set ``T``:

* ``poly``: ``(1 - t / T) ** 0.9``
* ``cosine``: ``0.5 * (1 + cos(pi * t / T))``
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
