"""The common base of every segmentation network: stage layout, input checks, ``describe()``.

Every architecture is a :class:`SegmentationModel` whose top-level children follow the transfer
learning vocabulary of docs/DEFINITIONS.md §6, so that parameter names say which stage they belong to:

- ``encoder`` (:class:`torch.nn.ModuleList`): stage ``encoder.K`` is ``encoder[K]``; stage 0
  holds the stem (the first convolution, or UNETR's patch embedding);
- ``bottleneck``: the deepest block;
- ``decoder`` (:class:`torch.nn.ModuleList`): ``decoder[K]`` works at the resolution of
  ``encoder[K]`` and consumes its skip connection, so the decoder runs ``decoder[N-1]`` first and
  ``decoder[0]`` last;
- ``head``: the 1x1 convolution giving the full-resolution logits;
- ``ds_heads`` (:class:`torch.nn.ModuleList`, empty without deep supervision): the 1x1 output
  convolutions of the lower decoder levels; they belong to stage ``head``.

Inputs are ``(B, C, X, Y)`` (2-D) or ``(B, C, X, Y, Z)`` (3-D) float tensors, channels first;
outputs are logits ``(B, num_classes, *spatial)`` at the input's size. No final activation is
applied: the loss and the inference code apply softmax (mutually exclusive classes) or sigmoid
(one class, or overlapping regions) as the plan says.
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Any

import torch
from torch import nn

from brainseg_cli.errors import InputError

#: Top-level children of every model, in the order data flows through them.
STAGE_ROOTS: tuple[str, ...] = ("encoder", "bottleneck", "decoder", "head", "ds_heads")

# Wrappers that prefix parameter names: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def stage_of(name: str) -> str:
    """Return the transfer-learning stage a parameter, buffer or module name belongs to.

    Args:
        name: a dotted name as in ``model.named_parameters()`` (e.g. ``"encoder.2.convs.0.weight"``);
            a leading ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) is ignored.

    Returns:
        ``"encoder.K"``, ``"bottleneck"``, ``"decoder.K"`` or ``"head"`` (``ds_heads.*`` is ``"head"``).

    Raises:
        InputError: the name lies outside the stage layout (names the offending name).
    """
    stripped = name
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix) :]
                changed = True
    parts = stripped.split(".")
    root = parts[0]
    if root in ("encoder", "decoder") and len(parts) >= 2 and parts[1].isdigit():
        return f"{root}.{parts[1]}"
    if root == "bottleneck":
        return "bottleneck"
    if root in ("head", "ds_heads"):
        return "head"
    raise InputError(f"parameter '{name}' does not belong to any stage (encoder.K, bottleneck, decoder.K, head)")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def transposed_conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


class _Fp32Statistics:
    """Batch normalisation whose statistics are computed in float32 under autocast (issue #23).

    PyTorch's CPU autocast runs ``batch_norm`` in the input's dtype: in bf16 the batch mean and
    variance of a deep level (few voxels per channel, values far from zero) lose their precision,
    the variance cancels to nothing and training can diverge (``unet3d`` on real BraTS in bf16). This
    computes the layer in float32 and returns the input's dtype; without autocast it is the PyTorch
    layer unchanged (same parameters, buffers and state-dict keys, so checkpoints load either way).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype in (torch.float16, torch.bfloat16) or (
                device in ("cpu", "cuda") and torch.is_autocast_enabled(device)):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return super().forward(x.float()).to(x.dtype)  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


class BatchNorm2d(_Fp32Statistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with float32 statistics under autocast (:class:`_Fp32Statistics`)."""


class BatchNorm3d(_Fp32Statistics, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with float32 statistics under autocast (:class:`_Fp32Statistics`)."""


class SmallLevelFp32(nn.Sequential):
    """``nn.Sequential`` that runs in float32 under autocast when its input is spatially small (issue #23).

    At the deepest levels of a 3-D U-Net a batch-normalised convolution sees a few voxels per channel
    (``2**3`` at the bottleneck of a ``16**3`` patch): rounding the convolution's output to bf16 leaves
    its spread across the batch below the format's resolution. Such levels cost little (few voxels),
    so they run in float32; larger inputs run under the caller's autocast. Outside autocast this is ``nn.Sequential``
    (same children, same state-dict keys).

    Args:
        *modules: the layers, as for ``nn.Sequential``.
        max_voxels: inputs with at most this many voxels per channel and sample run in float32
            (0: never).
    """

    def __init__(self, *modules: nn.Module, max_voxels: int) -> None:
        super().__init__(*modules)
        self.max_voxels = int(max_voxels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, *spatial)``; returns float32 when the level ran in float32, else autocast's dtype."""
        device = x.device.type
        if (device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
                and math.prod(x.shape[2:]) <= self.max_voxels):
            with torch.autocast(device_type=device, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def batch_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """:class:`BatchNorm2d` or :class:`BatchNorm3d` (float32 statistics under autocast)."""
    return BatchNorm2d if spatial_dims == 2 else BatchNorm3d


def instance_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.InstanceNorm2d`` or ``nn.InstanceNorm3d``."""
    return nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d


class UpConcatBlock(nn.Module):
    """One decoder level: upsample the deeper features, concatenate the skip, convolve.

    Attributes:
        up: maps ``(B, C_deep, *s)`` to ``(B, C_up, *(s * stride))``.
        convs: maps ``(B, C_up + C_skip, ...)`` to the level's output.
    """

    def __init__(self, up: nn.Module, convs: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.convs = convs

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Args: ``x`` deeper features, ``skip`` the encoder output of this level (same size after ``up``)."""
        return self.convs(torch.cat((self.up(x), skip), dim=1))


class SegmentationModel(nn.Module, abc.ABC):
    """Base class of every registered architecture (see the module docstring for the layout).

    Subclasses set ``encoder``, ``bottleneck``, ``decoder``, ``head`` and ``ds_heads`` and
    implement :meth:`_forward`, :meth:`input_layers` and :meth:`output_layers`.

    Attributes:
        name: the registry name (class attribute).
        spatial_dims: 2 or 3.
        in_channels: number of input channels ``C``.
        num_classes: number of output channels (classes, or regions for sigmoid outputs).
        size_divisor: every spatial input size must be a positive multiple of this, per axis.
        deep_supervision: when true, ``forward`` in training mode returns a list of logits
            ``[full resolution, next lower, ...]``; in eval mode always a single tensor.
    """

    name: str = ""

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        size_divisor: tuple[int, ...],
        config: dict[str, Any],
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisor = tuple(int(v) for v in size_divisor)
        self.deep_supervision = bool(deep_supervision)
        self._config = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "num_classes": num_classes,
            **copy.deepcopy(config),
        }

    # ----------------------------------------------------------------------------- interface
    @property
    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments: ``build_model(model.name, **model.config)`` rebuilds the model."""
        return copy.deepcopy(self._config)

    @property
    def num_encoder_stages(self) -> int:
        """Number of encoder stages ``N`` (stages ``encoder.0 .. encoder.N-1``)."""
        return len(self.encoder)

    @property
    def num_outputs(self) -> int:
        """Length of the list ``forward`` returns in training mode (1 without deep supervision)."""
        return 1 + len(self.ds_heads) if self.deep_supervision else 1

    def stage_names(self) -> list[str]:
        """Stage names in data-flow order: encoder.0.., bottleneck, decoder.N-1 .. decoder.0, head."""
        names = [f"encoder.{k}" for k in range(len(self.encoder))]
        names.append("bottleneck")
        names.extend(f"decoder.{k}" for k in reversed(range(len(self.decoder))))
        names.append("head")
        return names

    def stage_of(self, param_name: str) -> str:
        """The stage of one of this model's parameter names (see :func:`stage_of`)."""
        return stage_of(param_name)

    @abc.abstractmethod
    def input_layers(self) -> list[nn.Module]:
        """Layers applied to the raw input: their ``weight`` has ``in_channels`` along dim 1."""

    def output_layers(self) -> list[nn.Module]:
        """Output convolutions, main head first, then the deep-supervision heads (dim 0 = classes)."""
        return [self.head, *self.ds_heads]

    def stage_parameter_counts(self) -> list[tuple[str, int]]:
        """Number of parameter scalars per stage, in :meth:`stage_names` order."""
        counts = dict.fromkeys(self.stage_names(), 0)
        for pname, param in self.named_parameters():
            counts[stage_of(pname)] += param.numel()
        return list(counts.items())

    def num_parameters(self) -> int:
        """Total number of parameter scalars."""
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        """A table of stages with their parameter counts, the total and the size divisor."""
        rows = self.stage_parameter_counts()
        width = max(len(stage) for stage, _ in rows)
        lines = [
            f"{self.name} ({self.spatial_dims}-D, {self.in_channels} input channels, {self.num_classes} outputs, "
            f"sizes multiple of {'x'.join(str(v) for v in self.size_divisor)})"
        ]
        lines.extend(f"  {stage:<{width}}  {count:>12,}" for stage, count in rows)
        lines.append(f"  {'total':<{width}}  {self.num_parameters():>12,}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is ``(B, in_channels, *spatial)`` with valid sizes."""
        shape = tuple(x.shape)
        if x.dim() != self.spatial_dims + 2:
            raise InputError(
                f"model '{self.name}' is {self.spatial_dims}-D and needs input (B, C, "
                f"{', '.join('XYZ'[: self.spatial_dims])}); got shape {shape}"
            )
        if shape[1] != self.in_channels:
            raise InputError(f"model '{self.name}' expects {self.in_channels} input channels; got input shape {shape}")
        spatial = shape[2:]
        if any(s <= 0 or s % d for s, d in zip(spatial, self.size_divisor, strict=True)):
            multiple = " x ".join(str(d) for d in self.size_divisor)
            raise InputError(
                f"model '{self.name}' needs each spatial size to be a positive multiple of ({multiple}); "
                f"got input shape {shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch.

        Args:
            x: ``(B, in_channels, *spatial)`` float tensor; each spatial size a multiple of
                :attr:`size_divisor`.

        Returns:
            Logits ``(B, num_classes, *spatial)``; with deep supervision in training mode, the list
            ``[full resolution, half, ...]`` of :attr:`num_outputs` logit tensors.

        Raises:
            InputError: wrong number of dimensions or channels, or a size that is not a multiple.
        """
        self.check_input(x)
        return self._forward(x, with_ds=self.deep_supervision and self.training)

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor | list[torch.Tensor]:
        """The network proper on a checked input; ``with_ds`` asks for the deep-supervision list."""


def he_init(module: nn.Module, *, negative_slope: float = 1e-2) -> None:
    """Kaiming-normal weights and zero biases for every (transposed) convolution (nnU-Net's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def product_per_axis(strides: list[list[int]]) -> tuple[int, ...]:
    """Per-axis product of a list of per-stage strides (the size divisor of a strided network)."""
    return tuple(math.prod(s[axis] for s in strides) for axis in range(len(strides[0])))
