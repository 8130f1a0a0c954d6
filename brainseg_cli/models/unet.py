"""``unet``: a configurable plain-convolution U-Net for 2-D and 3-D (nnU-Net's ``PlainConvUNet``).

Resolution stage ``s`` (``s = 0 .. S-1``) has ``min(base_features * 2**s, max_features)``
features and two [Conv (kernel ``kernel_sizes[s]``) -> Norm -> LeakyReLU(0.01)] layers; its first
convolution has stride ``strides[s]`` (``strides[0]`` is all ones), so downsampling is by strided
convolution. Stages ``0 .. S-2`` are ``encoder.0 .. encoder.S-2`` and stage ``S-1`` is the
``bottleneck``. Decoder level ``k`` (``decoder.k``, ``k = S-2 .. 0``) upsamples by a transposed
convolution with kernel = stride = ``strides[k+1]``, concatenates the skip of ``encoder.k`` and
applies two convolutions with ``kernel_sizes[k]``. ``head`` is the 1x1 output convolution of level
0; with ``deep_supervision`` every lower decoder level ``k >= 1`` has a 1x1 output in
``ds_heads[k-1]``, and the training-mode output is ``[level 0, level 1, ..., level S-2]``.

Per-stage kernels and strides (lists of per-axis ints) express anisotropic networks, e.g. for
0.96 x 0.96 x 3 mm data a first stage with kernel (3, 3, 1) and stride (1, 1, 1), then (2, 2, 1)
strides until the through-plane spacing has caught up. :func:`plan_unet_topology` chooses them the
way nnU-Net does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models.base import (
    SegmentationModel,
    UpConcatBlock,
    batch_norm_nd,
    conv_nd,
    he_init,
    instance_norm_nd,
    product_per_axis,
    transposed_conv_nd,
)

#: Normalisation layers ``unet`` offers.
NORMS: tuple[str, ...] = ("instance", "batch")

_NEGATIVE_SLOPE = 1e-2


def plan_unet_topology(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    max_depth: int | None = None,
    min_feature_size: int = 4,
) -> tuple[list[list[int]], list[list[int]]]:
    """Choose per-stage kernel sizes and strides for ``unet`` from the patch size and spacing.

    nnU-Net's rule (``get_pool_and_conv_props``): at each stage, an axis is downsampled by 2 when
    its current feature-map size is at least ``2 * min_feature_size``, its current spacing is less
    than twice the smallest current spacing among those axes, and it has been downsampled fewer than
    ``max_depth`` times; a lone remaining axis also needs a size of at least ``3 * min_feature_size``.
    Downsampling stops when no axis qualifies. The kernel along an axis is 1 while that axis's
    spacing is at least twice the smallest spacing, and 3 from the stage where it first comes within
    that factor onwards; the bottleneck always uses 3.

    Args:
        patch_size: patch size per spatial axis, ``(X, Y)`` or ``(X, Y, Z)``.
        spacing: voxel spacing in mm in the same axis order (after resampling to the target spacing).
        max_depth: most downsamplings along any one axis; ``None`` for no limit other than
            ``min_feature_size``.
        min_feature_size: smallest edge (voxels) of a feature map allowed in the bottleneck.

    Returns:
        ``(kernel_sizes, strides)``: two lists with one entry per resolution stage (encoder stages
        then the bottleneck), each a list of per-axis ints; ``strides[0]`` is all ones. The patch
        size must then be a multiple of the per-axis product of the strides (pad it up if not).

    Raises:
        ConfigError: dimensions differ, are not 2 or 3, or a size, spacing or limit is not positive.
    """
    dims = len(patch_size)
    if dims not in (2, 3) or len(spacing) != dims:
        raise ConfigError(
            f"plan_unet_topology needs 2 or 3 axes with one spacing each; got patch size {list(patch_size)} "
            f"and spacing {list(spacing)}"
        )
    if any(int(s) < 1 for s in patch_size) or any(float(v) <= 0 for v in spacing):
        raise ConfigError(
            f"plan_unet_topology needs positive sizes and spacings; got patch size {list(patch_size)} "
            f"and spacing {list(spacing)}"
        )
    if min_feature_size < 1 or (max_depth is not None and max_depth < 0):
        raise ConfigError(
            f"plan_unet_topology: min_feature_size must be >= 1 and max_depth >= 0; "
            f"got {min_feature_size} and {max_depth}"
        )
    limit = float("inf") if max_depth is None else max_depth
    current_spacing = [float(v) for v in spacing]
    current_size = [float(s) for s in patch_size]
    pools_per_axis = [0] * dims
    kernel = [1] * dims
    kernel_sizes: list[list[int]] = []
    strides: list[list[int]] = [[1] * dims]
    while True:
        candidates = [a for a in range(dims) if current_size[a] >= 2 * min_feature_size]
        if not candidates:
            break
        smallest = min(current_spacing[a] for a in candidates)
        candidates = [a for a in candidates if current_spacing[a] / smallest < 2 and pools_per_axis[a] < limit]
        if not candidates or (len(candidates) == 1 and current_size[candidates[0]] < 3 * min_feature_size):
            break
        finest = min(current_spacing)
        kernel = [3 if kernel[a] == 3 or current_spacing[a] / finest < 2 else 1 for a in range(dims)]
        stride = [2 if a in candidates else 1 for a in range(dims)]
        for a in candidates:
            pools_per_axis[a] += 1
            current_spacing[a] *= 2
            current_size[a] = float(-(-current_size[a] // 2))
        kernel_sizes.append(list(kernel))
        strides.append(stride)
    kernel_sizes.append([3] * dims)
    return kernel_sizes, strides


def _per_stage(value: Any, n_stages: int, dims: int, what: str) -> list[list[int]]:
    """Normalise an int, a per-axis list or a per-stage list of those to ``n_stages`` per-axis lists."""
    if isinstance(value, bool):
        raise ConfigError(f"model 'unet': {what} must be integers, got {value!r}")
    if isinstance(value, int):
        return [[value] * dims for _ in range(n_stages)]
    if not isinstance(value, (list, tuple)) or len(value) != n_stages:
        raise ConfigError(f"model 'unet': {what} needs one entry per stage ({n_stages}), got {value!r}")
    out = []
    for entry in value:
        if isinstance(entry, int) and not isinstance(entry, bool):
            out.append([entry] * dims)
        elif (
            isinstance(entry, (list, tuple))
            and len(entry) == dims
            and all(isinstance(v, int) and not isinstance(v, bool) for v in entry)
        ):
            out.append([int(v) for v in entry])
        else:
            raise ConfigError(f"model 'unet': each of {what} must be an int or {dims} ints, got {entry!r}")
    return out


class ConvNormAct(nn.Sequential):
    """Conv (bias) -> InstanceNorm/BatchNorm (affine) -> LeakyReLU(0.01)."""

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, kernel: list[int], stride: list[int], norm: str
    ) -> None:
        norm_cls = instance_norm_nd(spatial_dims) if norm == "instance" else batch_norm_nd(spatial_dims)
        super().__init__(
            conv_nd(spatial_dims)(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=[k // 2 for k in kernel]),
            norm_cls(out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True),
        )


def _stacked(spatial_dims: int, in_ch: int, out_ch: int, kernel: list[int], stride: list[int], norm: str) -> nn.Sequential:
    """Two ConvNormAct layers; the first carries the stride."""
    ones = [1] * spatial_dims
    return nn.Sequential(
        ConvNormAct(spatial_dims, in_ch, out_ch, kernel, stride, norm),
        ConvNormAct(spatial_dims, out_ch, out_ch, kernel, ones, norm),
    )


class PlainUNet(SegmentationModel):
    """nnU-Net-style plain-convolution U-Net (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels.
        depth: number of downsamplings when ``strides`` is not given (each by 2 on every axis);
            when ``strides`` is given it must be ``len(strides) - 1`` or ``None``. Default 4.
        base_features: features of the first stage.
        max_features: cap on the features of any stage (default 320 in 3-D, 512 in 2-D, as nnU-Net).
        kernel_sizes: per-stage kernel sizes (an int for all, or one int / per-axis list per stage);
            odd values only. Default 3 everywhere.
        strides: per-stage strides (one int / per-axis list per stage, ``strides[0]`` all ones).
        norm: ``"instance"`` (nnU-Net) or ``"batch"``.
        deep_supervision: add a 1x1 output at every lower decoder level (training mode only).
    """

    name = "unet"

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        depth: int | None = None,
        base_features: int = 32,
        max_features: int | None = None,
        kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: str = "instance",
        deep_supervision: bool = False,
    ) -> None:
        dims = spatial_dims
        if strides is None:
            depth = 4 if depth is None else depth
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
                raise ConfigError(f"model 'unet': depth must be a positive integer, got {depth!r}")
            stride_list = [[1] * dims] + [[2] * dims for _ in range(depth)]
        else:
            if not isinstance(strides, (list, tuple)) or len(strides) < 2:
                raise ConfigError(f"model 'unet': strides needs at least two stages, got {strides!r}")
            stride_list = _per_stage(list(strides), len(strides), dims, "strides")
            if depth is not None and depth != len(stride_list) - 1:
                raise ConfigError(
                    f"model 'unet': depth {depth!r} disagrees with {len(stride_list)} strides (depth = stages - 1)"
                )
        n_stages = len(stride_list)
        if any(v != 1 for v in stride_list[0]):
            raise ConfigError(f"model 'unet': the first stage must have stride 1, got {stride_list[0]}")
        if any(v < 1 for s in stride_list for v in s):
            raise ConfigError(f"model 'unet': strides must be >= 1, got {stride_list}")
        kernel_list = _per_stage(3 if kernel_sizes is None else kernel_sizes, n_stages, dims, "kernel_sizes")
        if any(k < 1 or k % 2 == 0 for s in kernel_list for k in s):
            raise ConfigError(f"model 'unet': kernel sizes must be odd and positive, got {kernel_list}")
        if max_features is None:
            max_features = 320 if dims == 3 else 512
        for label, value in (("base_features", base_features), ("max_features", max_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model 'unet': {label} must be a positive integer, got {value!r}")
        if norm not in NORMS:
            raise ConfigError(f"model 'unet': norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not isinstance(deep_supervision, bool):
            raise ConfigError(f"model 'unet': deep_supervision must be true or false, got {deep_supervision!r}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            size_divisor=product_per_axis(stride_list),
            deep_supervision=deep_supervision,
            config={
                "base_features": base_features,
                "max_features": max_features,
                "kernel_sizes": kernel_list,
                "strides": stride_list,
                "norm": norm,
                "deep_supervision": deep_supervision,
            },
        )
        features = [min(base_features * 2**s, max_features) for s in range(n_stages)]
        self.features = features
        stages = [
            _stacked(dims, in_channels if s == 0 else features[s - 1], features[s], kernel_list[s], stride_list[s], norm)
            for s in range(n_stages)
        ]
        self.encoder = nn.ModuleList(stages[:-1])
        self.bottleneck = stages[-1]
        up_cls = transposed_conv_nd(dims)
        self.decoder = nn.ModuleList(
            [
                UpConcatBlock(
                    up_cls(features[k + 1], features[k], kernel_size=stride_list[k + 1], stride=stride_list[k + 1]),
                    _stacked(dims, 2 * features[k], features[k], kernel_list[k], [1] * dims, norm),
                )
                for k in range(n_stages - 1)
            ]
        )
        conv = conv_nd(dims)
        self.head = conv(features[0], num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList(
            [conv(features[k], num_classes, kernel_size=1) for k in range(1, n_stages - 1)] if deep_supervision else []
        )
        he_init(self, negative_slope=_NEGATIVE_SLOPE)

    def input_layers(self) -> list[nn.Module]:
        """The first convolution of ``encoder.0``."""
        return [self.encoder[0][0][0]]

    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(x)
        lower: list[torch.Tensor] = []
        for k in reversed(range(len(self.decoder))):
            x = self.decoder[k](x, skips[k])
            if with_ds and k >= 1:
                lower.append(self.ds_heads[k - 1](x))
        main = self.head(x)
        if with_ds:
            return [main, *reversed(lower)]
        return main
