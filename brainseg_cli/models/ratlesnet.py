"""``ratlesnet``: RatLesNetv2 (Valverde et al., 2020), a small 3-D lesion-segmentation network.

A 1x1x1 stem convolution, then residual blocks ``x + [ReLU -> BatchNorm -> Conv3x3x3] x 2`` with
identity shortcuts and 2x2x2 max-pooling (``ceil_mode``) between three encoder levels; the
bottleneck is one residual block at 1/8 resolution. Each decoder level upsamples trilinearly to the
skip's exact size, concatenates the skip, applies a 1x1x1 "bottleneck block" (ReLU -> BatchNorm ->
Conv1x1x1, ``2F -> F``) and a residual block. All blocks have ``filters`` (F) channels, so the
network is small (about 0.4M parameters at F = 32). Because pooling rounds up and upsampling goes
to the skip's size, every input size is accepted (``size_divisor`` is 1).

Stages: ``encoder.0`` (stem + residual block), ``encoder.1``, ``encoder.2``, ``bottleneck``,
``decoder.2..0`` (1x1x1 block + residual block), ``head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models.base import BatchNorm3d, SegmentationModel


class ResidualBlock(nn.Module):
    """``x + [ReLU -> BatchNorm -> Conv3x3x3] x 2`` (channels unchanged)."""

    def __init__(self, filters: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            BatchNorm3d(filters),
            nn.Conv3d(filters, filters, kernel_size=3, padding=1),
            nn.ReLU(),
            BatchNorm3d(filters),
            nn.Conv3d(filters, filters, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F, X, Y, Z) -> (B, F, X, Y, Z)``."""
        return x + self.body(x)


class _EncoderStage(nn.Module):
    """Optional stem (1x1x1 conv) then a residual block."""

    def __init__(self, filters: int, stem_in: int | None) -> None:
        super().__init__()
        self.stem = nn.Conv3d(stem_in, filters, kernel_size=1) if stem_in is not None else None
        self.block = ResidualBlock(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.block(x)


class _DecoderStage(nn.Module):
    """Trilinear upsampling to the skip's size, concatenation, 1x1x1 block ``2F -> F``, residual block."""

    def __init__(self, filters: int) -> None:
        super().__init__()
        self.merge = nn.Sequential(nn.ReLU(), BatchNorm3d(2 * filters), nn.Conv3d(2 * filters, filters, kernel_size=1))
        self.block = ResidualBlock(filters)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.block(self.merge(torch.cat((x, skip), dim=1)))


class RatLesNetV2(SegmentationModel):
    """RatLesNetv2 (see the module docstring).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels.
        num_classes: output channels.
        filters: channels of every block (32 in the paper).
    """

    name = "ratlesnet"

    def __init__(self, *, spatial_dims: int, in_channels: int, num_classes: int, filters: int = 32) -> None:
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ConfigError(f"model 'ratlesnet': filters must be a positive integer, got {filters!r}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            size_divisor=(1, 1, 1),
            config={"filters": filters},
        )
        self.encoder = nn.ModuleList([_EncoderStage(filters, in_channels), _EncoderStage(filters, None), _EncoderStage(filters, None)])
        self.bottleneck = ResidualBlock(filters)
        self.decoder = nn.ModuleList([_DecoderStage(filters) for _ in range(3)])
        self.head = nn.Conv3d(filters, num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList()

    def input_layers(self) -> list[nn.Module]:
        """The 1x1x1 stem of ``encoder.0``."""
        return [self.encoder[0].stem]

    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor:
        skips = []
        for k, stage in enumerate(self.encoder):
            x = stage(x if k == 0 else F.max_pool3d(x, 2, ceil_mode=True))
            skips.append(x)
        x = self.bottleneck(F.max_pool3d(x, 2, ceil_mode=True))
        for k in reversed(range(len(self.decoder))):
            x = self.decoder[k](x, skips[k])
        return self.head(x)
