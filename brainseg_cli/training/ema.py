"""Exponential moving average of a model's weights (``--ema DECAY``).

With small batches (a CPU run trains 2-D slices in batches of 5) consecutive weights are noisy:
the validation Dice of one epoch and the next can differ by several points, so the checkpoint a run
keeps and the decisions made on it depend on where the noise fell. An average of the weights over
the last few hundred steps is a smoother model; validation, ``best.pt`` and ``last.pt`` then hold the
average, and ``last.pt`` keeps the raw weights too so ``--resume`` continues the same run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from brainseg_cli.errors import CheckpointError

#: The warm-up constant of :func:`effective_decay` (TensorFlow's 10).
WARMUP = 10


def effective_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based): ``min(decay, (1 + n) / (WARMUP + n))``.

    The warm-up (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps the first updates
    from being dominated by the initial, untrained weights: update 0 gives the new weights a share
    of 0.9, and the share falls towards ``1 - decay`` as updates accumulate.
    """
    return min(float(decay), (1.0 + updates) / (WARMUP + updates))


class WeightAverage:
    """A frozen copy of ``model`` whose weights follow the trained ones as an exponential moving average.

    After each optimiser step, :meth:`update` sets every floating-point parameter to
    ``avg + (1 - d) * (w - avg)`` with ``d = effective_decay(decay, n)``; buffers (BatchNorm running
    statistics, integer counters) are copied from the model as they are. Frozen parameters stay
    equal to the model's, since they never move.

    Args:
        model: the trained network (on its device; not a DDP or compiled wrapper).
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` steps.

    Attributes:
        module: the averaged network (eval mode, no gradients).
        updates: updates so far.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (one step)."""
        weight = 1.0 - effective_decay(self.decay, self.updates)
        for avg, live in zip(self.module.parameters(), model.parameters(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(live.detach(), weight)
            else:
                avg.copy_(live.detach())
        for avg, live in zip(self.module.buffers(), model.buffers(), strict=True):
            avg.copy_(live)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "updates"}``: what a checkpoint needs besides the averaged weights."""
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: Mapping[str, torch.Tensor], state: Mapping[str, Any], *, source: str) -> None:
        """Restore the averaged weights and the update count saved by a checkpoint.

        Raises:
            CheckpointError: the checkpoint's decay differs from this average's.
        """
        if abs(float(state.get("decay", -1.0)) - self.decay) > 1e-12:
            raise CheckpointError(f"checkpoint {source} averaged weights with decay {state.get('decay')!r}, "
                                  f"not {self.decay!r}")
        device = next(self.module.parameters()).device
        self.module.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
        self.updates = int(state["updates"])
