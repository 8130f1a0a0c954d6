"""Freezing stages of a pretrained network for fine-tuning (``finetune --freeze``).

Stage names are those of docs/DEFINITIONS.md §6 (``encoder.K``, ``bottleneck``, ``decoder.K``, ``head``; see
:mod:`brainseg_cli.models.base`). Freeze presets:

- ``none``: everything trains;
- ``encoder``: every encoder stage and the bottleneck are frozen;
- ``firstK`` (``first1``, ``first2``, ...): encoder stages ``0 .. K-1`` are frozen; K larger than
  the model's number of encoder stages is a :class:`~brainseg_cli.errors.ConfigError`.

A frozen parameter has ``requires_grad=False`` and is left out of :func:`param_groups`, so the
optimiser never touches it (no weight decay either). Frozen normalisation layers with running
statistics (BatchNorm) are kept in eval mode so their statistics do not drift: ``model.train()``
puts them back in training mode, so call :func:`keep_frozen_norms_in_eval` after every
``model.train()``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from brainseg_cli.errors import ConfigError, did_you_mean
from brainseg_cli.models.base import SegmentationModel, stage_of

logger = logging.getLogger(__name__)

#: The freeze presets, ``firstK`` standing for ``first1``, ``first2``, ...
FREEZE_PRESETS: tuple[str, ...] = ("none", "encoder", "firstK")


@dataclass(frozen=True)
class FreezeSpec:
    """A parsed freeze preset."""

    kind: str
    """``"none"``, ``"encoder"`` or ``"first"``."""
    k: int = 0
    """For ``"first"``: how many encoder stages (from stage 0) are frozen."""

    def __str__(self) -> str:
        return f"first{self.k}" if self.kind == "first" else self.kind


@dataclass(frozen=True)
class FreezeReport:
    """What :func:`apply_freeze` did."""

    spec: FreezeSpec
    """The preset applied."""
    frozen_stages: tuple[str, ...]
    """Stages whose parameters no longer train."""
    frozen_parameters: int
    """Parameter scalars frozen."""
    trainable_parameters: int
    """Parameter scalars still trainable."""
    frozen_norm_layers: int
    """Normalisation layers with running statistics put in eval mode."""


def parse_freeze(preset: str) -> FreezeSpec:
    """Parse ``"none"``, ``"encoder"`` or ``"firstK"`` (K >= 1), case-insensitively.

    Raises:
        ConfigError: any other text (names the presets and the closest one).
    """
    text = str(preset).strip().lower()
    if text in ("none", "encoder"):
        return FreezeSpec(text)
    found = re.fullmatch(r"first(\d+)", text)
    if found:
        k = int(found.group(1))
        if k < 1:
            raise ConfigError(f"freeze preset '{preset}': K must be at least 1 (first1, first2, ...)")
        return FreezeSpec("first", k)
    raise ConfigError(
        f"unknown freeze preset '{preset}'{did_you_mean(text, ('none', 'encoder', 'first1', 'first2', 'first3'))}; "
        "valid: none, encoder, firstK (e.g. first2)"
    )


def frozen_stages(model: SegmentationModel, spec: FreezeSpec) -> tuple[str, ...]:
    """The stage names ``spec`` freezes in ``model``.

    Raises:
        ConfigError: ``firstK`` with K above the model's number of encoder stages (names the count).
    """
    n = model.num_encoder_stages
    if spec.kind == "none":
        return ()
    if spec.kind == "encoder":
        return (*(f"encoder.{k}" for k in range(n)), "bottleneck")
    if spec.k > n:
        raise ConfigError(
            f"freeze preset '{spec}' asks for {spec.k} encoder stages but model '{model.name}' has {n} "
            f"(encoder.0 .. encoder.{n - 1}); use first1 .. first{n} or 'encoder'"
        )
    return tuple(f"encoder.{k}" for k in range(spec.k))


def _has_running_stats(module: nn.Module) -> bool:
    return isinstance(getattr(module, "running_mean", None), torch.Tensor)


def keep_frozen_norms_in_eval(model: nn.Module, spec: FreezeSpec) -> int:
    """Put the normalisation layers with running statistics of frozen stages in eval mode.

    Call after every ``model.train()`` (which turns them back to training mode).

    Returns:
        The number of layers put in eval mode.
    """
    stages = set(frozen_stages(_unwrap(model), spec))
    count = 0
    for name, module in model.named_modules():
        if name and _has_running_stats(module) and stage_of(name) in stages:
            module.eval()
            count += 1
    return count


def apply_freeze(model: nn.Module, spec: FreezeSpec) -> FreezeReport:
    """Freeze the stages ``spec`` names: ``requires_grad=False`` and BatchNorm statistics fixed.

    Args:
        model: a :class:`SegmentationModel` (or one wrapped by DDP / ``torch.compile``).
        spec: from :func:`parse_freeze`.

    Returns:
        A :class:`FreezeReport`.

    Raises:
        ConfigError: see :func:`frozen_stages`.
    """
    stages = frozen_stages(_unwrap(model), spec)
    chosen = set(stages)
    frozen = trainable = 0
    for name, param in model.named_parameters():
        if stage_of(name) in chosen:
            param.requires_grad_(False)
        if param.requires_grad:
            trainable += param.numel()
        else:
            frozen += param.numel()
    norms = keep_frozen_norms_in_eval(model, spec)
    logger.info("froze %s: %d parameters frozen, %d trainable", ", ".join(stages) or "nothing", frozen, trainable)
    return FreezeReport(spec, stages, frozen, trainable, norms)


def unfreeze(model: nn.Module) -> None:
    """Make every parameter trainable again and restore every layer's mode to the model's mode."""
    for param in model.parameters():
        param.requires_grad_(True)
    model.train(model.training)


def stage_table(model: nn.Module, spec: FreezeSpec) -> list[dict[str, int | str]]:
    """Per stage, the parameter scalars ``spec`` leaves trainable and freezes.

    Returns:
        ``[{"stage": name, "trainable": int, "frozen": int}, ...]`` in data-flow order.
    """
    base = _unwrap(model)
    chosen = set(frozen_stages(base, spec))
    table = {stage: {"stage": stage, "trainable": 0, "frozen": 0} for stage in base.stage_names()}
    for name, param in base.named_parameters():
        stage = stage_of(name)
        table[stage]["frozen" if stage in chosen else "trainable"] += param.numel()
    return list(table.values())


def param_groups(model: nn.Module, *, lr: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser parameter groups of the trainable parameters only.

    Args:
        model: the model (frozen parameters are skipped).
        lr: learning rate of the decoder and heads.
        encoder_lr_scale: factor on ``lr`` for the encoder stages and the bottleneck (> 0).

    Returns:
        Up to two groups ``{"name": "encoder" | "decoder", "params": [...], "lr": float}``; empty
        groups are left out.

    Raises:
        ConfigError: ``lr`` or ``encoder_lr_scale`` not positive.
    """
    if not lr > 0 or not encoder_lr_scale > 0:
        raise ConfigError(f"learning rate and encoder_lr_scale must be > 0, got lr={lr!r}, scale={encoder_lr_scale!r}")
    encoder, decoder = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stage = stage_of(name)
        (encoder if stage.startswith("encoder.") or stage == "bottleneck" else decoder).append(param)
    groups = []
    if encoder:
        groups.append({"name": "encoder", "params": encoder, "lr": lr * encoder_lr_scale})
    if decoder:
        groups.append({"name": "decoder", "params": decoder, "lr": lr})
    return groups


def _unwrap(model: nn.Module) -> SegmentationModel:
    """The :class:`SegmentationModel` inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    inner = model
    while not isinstance(inner, SegmentationModel):
        nxt = getattr(inner, "module", None)
        if not isinstance(nxt, nn.Module):
            nxt = getattr(inner, "_orig_mod", None)
        if not isinstance(nxt, nn.Module):
            raise ConfigError(f"transfer operations need a brainseg SegmentationModel, got {type(model).__name__}")
        inner = nxt
    return inner


