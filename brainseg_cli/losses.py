"""Segmentation losses: soft Dice, Dice + cross-entropy, BCE + Dice, deep supervision.

Two output conventions (the plan decides which):

- ``activation="softmax"``: mutually exclusive classes. Logits ``(B, K, *spatial)`` with
  ``K >= 2``; targets are integer labels ``(B, *spatial)`` (or ``(B, 1, *spatial)``) in ``[0, K)``.
- ``activation="sigmoid"``: one independent probability per output channel, for a binary mask
  (``K = 1``) or overlapping regions such as BraTS WT/TC/ET (nnU-Net's region-based training).
  Targets are ``{0, 1}`` floats of the logits' shape ``(B, R, *spatial)``;
  :func:`labels_to_regions` builds them from integer labels.

Soft Dice per channel is ``(2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)`` over the spatial
axes of each sample (``batch_dice=False``) or over the batch and spatial axes together
(``batch_dice=True``); the loss is ``1 - mean`` over channels (and samples), or a weighted mean
over channels when ``channel_weights`` are given (each weight divided by their sum, so the loss keeps
its scale; the cross-entropy of sigmoid outputs is weighted the same way per channel). This is MONAI's
``DiceLoss`` with ``smooth_nr = smooth_dr = eps``, and nnU-Net's ``SoftDiceLoss`` up to the sign.
With an empty target channel the Dice is ``eps / (sum(p) + eps)``, so predicting nothing there
scores (almost) 1. Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError, InputError, did_you_mean, look_up

#: Output activations a loss can assume.
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels ``(B, *spatial)`` -> float one-hot ``(B, num_classes, *spatial)``."""
    out = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().unsqueeze(1), 1.0)


def labels_to_regions(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Integer labels -> one binary channel per (possibly overlapping) region.

    Args:
        labels: ``(B, *spatial)`` integer tensor (canonical labels).
        regions: one list of label values per region, e.g. ``[[1, 2, 3], [2, 3], [3]]`` for WT, TC, ET.

    Returns:
        ``(B, R, *spatial)`` float32 tensor, 1 where the voxel's label is in the region.
    """
    channels = [torch.isin(labels, torch.as_tensor(list(r), device=labels.device, dtype=labels.dtype)) for r in regions]
    return torch.stack(channels, dim=1).float()


def _check_activation(activation: str, where: str) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"loss '{where}': activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            f"{did_you_mean(str(activation), ACTIVATIONS)}"
        )


def _prepare(logits: torch.Tensor, target: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return float32 logits and the target as labels (softmax) or float masks (sigmoid)."""
    logits = logits.float()
    if activation == "softmax":
        if logits.shape[1] < 2:
            raise InputError(f"softmax loss needs at least 2 output channels; got logits of shape {tuple(logits.shape)}")
        if target.dim() == logits.dim() and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise InputError(
                f"softmax loss: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
                "(expected (B, *spatial) labels)"
            )
        if target.is_floating_point():
            target = target.round()
        target = target.long()
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= logits.shape[1]:
            raise InputError(
                f"softmax loss: target labels span [{low}, {high}] but the logits have {logits.shape[1]} classes"
            )
        return logits, target
    if target.shape != logits.shape:
        raise InputError(
            f"sigmoid loss: target shape {tuple(target.shape)} must equal the logits shape {tuple(logits.shape)}"
        )
    return logits, target.float()


def soft_dice(
    probs: torch.Tensor, target: torch.Tensor, *, batch_dice: bool = False, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft Dice per channel (and per sample unless ``batch_dice``).

    Args:
        probs: ``(B, K, *spatial)`` probabilities.
        target: ``(B, K, *spatial)`` one-hot / binary target.
        batch_dice: sum over the batch too (one Dice per channel) instead of per sample.
        smooth: epsilon added to numerator and denominator.

    Returns:
        ``(K,)`` if ``batch_dice`` else ``(B, K)`` Dice values.
    """
    axes = tuple(range(2, probs.dim()))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probs * target).sum(axes)
    denominator = probs.sum(axes) + target.sum(axes)
    return (2.0 * intersection + smooth) / (denominator + smooth)


class SoftDiceLoss(nn.Module):
    """``1 - mean soft Dice`` (see the module docstring).

    Args:
        activation: ``"softmax"`` (labels) or ``"sigmoid"`` (binary masks / regions).
        include_background: softmax only: count channel 0 (background) in the mean.
        batch_dice: one Dice per channel over the whole batch instead of per sample (nnU-Net's
            ``batch_dice``; MONAI's ``batch=True``).
        smooth: epsilon added to Dice numerator and denominator.
        channel_weights: one weight >= 0 per output channel (after ``include_background`` drops
            channel 0), at least one > 0, or ``None`` for the plain mean; the channel count is
            checked against the logits in ``forward``.
    """

    loss_name = "dice"

    def __init__(
        self,
        *,
        activation: str = "softmax",
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        channel_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        name = self.loss_name
        _check_activation(activation, name)
        if activation == "sigmoid" and not include_background:
            raise ConfigError(
                f"loss '{name}': include_background=False needs softmax outputs; sigmoid outputs have no background channel"
            )
        if smooth < 0:
            raise ConfigError(f"loss '{name}': smooth must be >= 0, got {smooth!r}")
        self.activation = activation
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.smooth = float(smooth)
        self.channel_weights: tuple[float, ...] | None = None
        if channel_weights is not None:
            weights = tuple(float(w) for w in channel_weights)
            if not weights or any(not (w >= 0.0 and w < float("inf")) for w in weights) or sum(weights) <= 0:
                raise ConfigError(
                    f"loss '{name}': channel_weights must be finite numbers >= 0 with a positive sum, "
                    f"got {list(channel_weights)!r}"
                )
            self.channel_weights = weights

    def _channel_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values (..., K)`` over the last axis (weighted by ``channel_weights``) and the rest."""
        if self.channel_weights is None:
            return values.mean()
        if values.shape[-1] != len(self.channel_weights):
            raise InputError(
                f"loss '{self.loss_name}': {len(self.channel_weights)} channel weights for {values.shape[-1]} "
                "output channels"
            )
        weights = values.new_tensor(self.channel_weights)
        return (values * (weights / weights.sum())).sum(-1).mean()

    def dice_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1 - mean Dice`` for prepared float logits and target (labels or masks)."""
        if self.activation == "softmax":
            probs = torch.softmax(logits, dim=1)
            masks = one_hot(target, logits.shape[1])
            if not self.include_background:
                probs, masks = probs[:, 1:], masks[:, 1:]
        else:
            probs, masks = torch.sigmoid(logits), target
        return 1.0 - self._channel_mean(soft_dice(probs, masks, batch_dice=self.batch_dice, smooth=self.smooth))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: ``logits (B, K, *spatial)``, ``target`` as in the module docstring. Returns a scalar."""
        logits, target = _prepare(logits, target, self.activation)
        return self.dice_term(logits, target)


class DiceCELoss(SoftDiceLoss):
    """``weight_dice * soft Dice loss + weight_ce * cross-entropy``.

    The cross-entropy is the mean over voxels of ``CrossEntropy(logits, labels)`` for softmax
    and of ``BCEWithLogits(logits, masks)`` over voxels and channels for sigmoid; it always covers
    every channel (``include_background`` only affects the Dice term), as in MONAI and nnU-Net.

    Args:
        activation, include_background, batch_dice, smooth: as :class:`SoftDiceLoss`.
        weight_dice: weight of the Dice term (0.5 by default; nnU-Net uses 1).
        weight_ce: weight of the cross-entropy term (0.5 by default; nnU-Net uses 1).
        channel_weights: as :class:`SoftDiceLoss`; sigmoid outputs also weight their per-channel
            binary cross-entropy (softmax cross-entropy stays unweighted).
    """

    loss_name = "dice-ce"

    def __init__(
        self,
        *,
        activation: str = "softmax",
        include_background: bool = True,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        weight_dice: float = 0.5,
        weight_ce: float = 0.5,
        channel_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            activation=activation, include_background=include_background, batch_dice=batch_dice, smooth=smooth,
            channel_weights=channel_weights,
        )
        if weight_dice < 0 or weight_ce < 0:
            raise ConfigError(
                f"loss '{self.loss_name}': weights must be >= 0, got weight_dice={weight_dice!r}, weight_ce={weight_ce!r}"
            )
        self.weight_dice = float(weight_dice)
        self.weight_ce = float(weight_ce)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: ``logits (B, K, *spatial)``, ``target`` as in the module docstring. Returns a scalar."""
        logits, target = _prepare(logits, target, self.activation)
        if self.activation == "softmax":
            ce = F.cross_entropy(logits, target)
        elif self.channel_weights is None:
            ce = F.binary_cross_entropy_with_logits(logits, target)
        else:
            per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            ce = self._channel_mean(per_voxel.movedim(1, -1))
        return self.weight_dice * self.dice_term(logits, target) + self.weight_ce * ce


class BCEDiceLoss(DiceCELoss):
    """Binary cross-entropy + sigmoid soft Dice, for binary masks and overlapping regions.

    The same as :class:`DiceCELoss` with ``activation="sigmoid"``; any other activation is a
    :class:`~brainseg_cli.errors.ConfigError`.

    Args:
        activation: must be ``"sigmoid"``.
        batch_dice, smooth, weight_dice, weight_ce, channel_weights: as :class:`DiceCELoss`.
    """

    loss_name = "bce-dice"

    def __init__(
        self,
        *,
        activation: str = "sigmoid",
        batch_dice: bool = False,
        smooth: float = 1e-5,
        weight_dice: float = 0.5,
        weight_ce: float = 0.5,
        channel_weights: Sequence[float] | None = None,
    ) -> None:
        if activation != "sigmoid":
            raise ConfigError(f"loss 'bce-dice' needs sigmoid outputs, got activation={activation!r}; use 'dice-ce'")
        super().__init__(
            activation="sigmoid", batch_dice=batch_dice, smooth=smooth, weight_dice=weight_dice, weight_ce=weight_ce,
            channel_weights=channel_weights,
        )


_LOSSES: dict[str, type[SoftDiceLoss]] = {"dice": SoftDiceLoss, "dice-ce": DiceCELoss, "bce-dice": BCEDiceLoss}

#: Registered loss names.
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def build_loss(name: str, **options: Any) -> nn.Module:
    """Build a registered loss.

    Args:
        name: ``"dice"``, ``"dice-ce"`` or ``"bce-dice"``.
        **options: the class's keyword arguments (``activation``, ``include_background``,
            ``batch_dice``, ``smooth``, ``weight_dice``, ``weight_ce``, ``channel_weights`` where they apply).

    Returns:
        The loss module: ``loss(logits, target) -> scalar``.

    Raises:
        RegistryError: unknown name (did-you-mean).
        ConfigError: an option the loss does not have, or an invalid value.
    """
    cls = look_up(name, _LOSSES, "loss")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"loss '{name}' has no option '{key}'{did_you_mean(key, accepted)}; options: {', '.join(accepted)}"
            )
    return cls(**options)


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights: ``1 / 2**i``, the lowest resolution 0, normalised to sum 1.

    Args:
        num_outputs: number of outputs, full resolution first (1 gives ``[1.0]``).

    Returns:
        ``num_outputs`` floats summing to 1.
    """
    if num_outputs < 1:
        raise ConfigError(f"deep supervision needs at least one output, got {num_outputs}")
    weights = [1.0 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, size: Sequence[int], *, has_channels: bool) -> torch.Tensor:
    """Nearest-neighbour resize of a target to ``size`` (``nearest-exact``, as nnU-Net v2).

    Args:
        target: ``(B, *spatial)`` labels (``has_channels=False``) or ``(B, R, *spatial)`` masks.
        size: the new spatial size.
        has_channels: whether ``target`` has a channel axis.

    Returns:
        The resized target, same dtype.
    """
    if tuple(target.shape[2 if has_channels else 1 :]) == tuple(size):
        return target
    x = target if has_channels else target.unsqueeze(1)
    y = F.interpolate(x.float(), size=tuple(size), mode="nearest-exact").to(target.dtype)
    return y if has_channels else y[:, 0]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over deep-supervision outputs (weights :func:`deep_supervision_weights`).

    Args:
        loss: the per-output loss (e.g. :class:`DiceCELoss`); its ``activation`` decides whether the
            target has a channel axis.
        num_outputs: number of outputs the model returns in training mode (``model.num_outputs``).
    """

    def __init__(self, loss: nn.Module, num_outputs: int) -> None:
        super().__init__()
        self.loss = loss
        self.num_outputs = num_outputs
        self.weights = deep_supervision_weights(num_outputs)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted loss.

        Args:
            outputs: the list ``[full resolution, lower, ...]`` of logits, or one tensor (eval-mode
                output; then the plain loss).
            target: the full-resolution target; it is downsampled by nearest neighbour to each
                output's size (labels ``(B, *spatial)`` or ``(B, 1, *spatial)``, or masks ``(B, R, *spatial)``).

        Returns:
            Scalar loss.
        """
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if len(outputs) != self.num_outputs:
            raise InputError(f"deep supervision expects {self.num_outputs} outputs, got {len(outputs)}")
        has_channels = target.dim() == outputs[0].dim()
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output in zip(self.weights, outputs, strict=True):
            if weight == 0.0:
                continue
            total = total + weight * self.loss(output, downsample_target(target, output.shape[2:], has_channels=has_channels))
        return total
