"""The model registry: name -> architecture, dimensionality checks and :func:`build_model`."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from brainseg_cli.errors import ConfigError, did_you_mean, look_up
from brainseg_cli.models.base import SegmentationModel
from brainseg_cli.models.ratlesnet import RatLesNetV2
from brainseg_cli.models.unet import PlainUNet
from brainseg_cli.models.unet3d import UNet3dCicek
from brainseg_cli.models.unet_classic import ClassicUNet2d
from brainseg_cli.models.unetr import UNETR


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture."""

    name: str
    """Registry name (``build_model``'s first argument)."""
    dims: tuple[int, ...]
    """Spatial dimensionalities the architecture supports (2, 3 or both)."""
    description: str
    """One line for listings."""
    reduced_precision: bool = True
    """Whether ``--precision auto`` may train it in bf16 / fp16. False where it was measured to diverge
    there with its default plan: ``auto`` then trains it in fp32 (an explicit ``--precision`` is obeyed)."""


@dataclass(frozen=True)
class _Entry:
    cls: type[SegmentationModel]
    info: ModelInfo


_REGISTRY: dict[str, _Entry] = {
    entry.info.name: entry
    for entry in (
        _Entry(ClassicUNet2d, ModelInfo("unet2d-classic", (2,), "the Kaggle LGG / Ronneberger 2-D U-Net (BatchNorm, max-pool)")),
        _Entry(PlainUNet, ModelInfo("unet", (2, 3), "nnU-Net-style plain-conv U-Net, per-stage kernels and strides")),
        # unet3d: with its CPU plan (16^3 patches, batch 2: 2^3 voxels per channel at the bottleneck's
        # BatchNorm) bf16 autocast returned NaN from the bottleneck convolution's weight gradient in
        # epoch 0 on real BraTS cases (issue #23); fp32 trains. With 32^3 patches bf16 trains, at 8x the step.
        _Entry(UNet3dCicek, ModelInfo("unet3d", (3,), "the 3-D U-Net of Cicek et al. (2016)", reduced_precision=False)),
        _Entry(UNETR, ModelInfo("unetr", (3,), "UNETR: ViT encoder over 16^3 patches, conv decoder")),
        _Entry(RatLesNetV2, ModelInfo("ratlesnet", (3,), "RatLesNetv2: small residual 3-D network")),
    )
}

#: Registered model names.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Describe a registered model; :class:`~brainseg_cli.errors.RegistryError` (did-you-mean) if unknown."""
    return look_up(name, _REGISTRY, "model").info


def models_for_dims(spatial_dims: int) -> list[str]:
    """Names of the models that support ``spatial_dims`` (2 or 3)."""
    return [name for name, entry in _REGISTRY.items() if spatial_dims in entry.info.dims]


def img_size_multiple(name: str) -> int:
    """What a model's ``img_size`` option must be a multiple of on every axis (1 for none)."""
    return int(getattr(look_up(name, _REGISTRY, "model").cls, "img_size_multiple", 1))


def model_options(name: str) -> tuple[str, ...]:
    """The architecture-specific keyword arguments ``build_model`` accepts for ``name``."""
    cls = look_up(name, _REGISTRY, "model").cls
    params = inspect.signature(cls.__init__).parameters
    return tuple(p for p in params if p not in ("self", "spatial_dims", "in_channels", "num_classes"))


def _positive_int(value: Any, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model '{name}': {what} must be a positive integer, got {value!r}")
    return value


def build_model(name: str, *, spatial_dims: int, in_channels: int, num_classes: int, **config: Any) -> SegmentationModel:
    """Build a registered segmentation network.

    Args:
        name: a name in :data:`MODEL_NAMES`.
        spatial_dims: 2 (inputs ``(B, C, X, Y)``) or 3 (``(B, C, X, Y, Z)``).
        in_channels: input channels.
        num_classes: output channels (classes for softmax, regions or 1 for sigmoid).
        **config: architecture options (see each model class); ``model.config`` holds the resolved
            values so that ``build_model(model.name, **model.config)`` rebuilds the same network.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        RegistryError: unknown name (lists the names and the closest one).
        ConfigError: unsupported dimensionality (names the models that support it), unknown or
            invalid option, non-positive channel or class count.
    """
    entry = look_up(name, _REGISTRY, "model")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"model '{name}': spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if spatial_dims not in entry.info.dims:
        only = " or ".join(f"{d}-D" for d in entry.info.dims)
        raise ConfigError(
            f"model '{name}' is {only} only; models for {spatial_dims}-D: {', '.join(models_for_dims(spatial_dims))}"
        )
    _positive_int(in_channels, "in_channels", name)
    _positive_int(num_classes, "num_classes", name)
    options = model_options(name)
    unknown = [key for key in config if key not in options]
    if unknown:
        raise ConfigError(
            f"model '{name}' has no option '{unknown[0]}'{did_you_mean(unknown[0], options)}; "
            f"options: {', '.join(options)}"
        )
    return entry.cls(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **config)
