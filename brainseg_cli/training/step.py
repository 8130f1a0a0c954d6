"""One optimiser step of :func:`~brainseg_cli.training.fit.fit`.

Forward under autocast in the run's precision, the loss in float32 on float32 outputs, backward
(scaled in fp16), gradient-norm clipping, the optimiser step, the learning-rate schedule and the
weight average, in that order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brainseg_cli.models.precision import autocast_context, grad_scaler
from brainseg_cli.training.ema import WeightAverage
from brainseg_cli.training.optim import StepSchedule


class TrainStep:
    """Applies one training step to a batch.

    Args:
        model: the bare model (the weight average follows it).
        optimizer: its optimiser.
        schedule: the learning-rate schedule (advanced after every step).
        loss_fn: ``loss(outputs, target) -> scalar`` (outputs as the network returns them, in float32).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (fp16 adds loss scaling).
        grad_clip: maximum gradient norm, or None / 0 for none.
        average: the weight average updated after every step, or None.

    Attributes:
        scaler: the fp16 loss scaler (None in other precisions); saved in ``last.pt``.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: StepSchedule,
                 loss_fn: Callable[..., torch.Tensor], precision: str, grad_clip: float | None,
                 average: WeightAverage | None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.loss_fn = loss_fn
        self.precision = precision
        self.grad_clip = grad_clip
        self.average = average
        self.scaler = grad_scaler(precision)

    def __call__(self, network: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return the detached loss (still on the device: no synchronisation).

        Args:
            network: the model as trained (possibly wrapped by DDP or ``torch.compile``).
            images: ``(B, C, *spatial)`` on the model's device.
            target: labels ``(B, *spatial)`` or region masks ``(B, R, *spatial)`` on the same device.
        """
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.precision, images.device):
            outputs = network(images)
        outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
        loss = self.loss_fn(outputs, target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()
        if self.average is not None:
            self.average.update(self.model)
        return loss.detach()
