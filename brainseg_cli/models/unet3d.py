"""``unet3d``: the 3-D U-Net of Cicek et al. (MICCAI 2016), with same-padding convolutions.

Analysis path: each level has two [Conv3x3x3 -> BatchNorm -> ReLU] layers; the first gives
``base_filters * 2**k`` features and the second doubles them (``base_filters=32``: 32->64,
64->128, 128->256, bottleneck 256->512), with 2x2x2 max-pooling (stride 2) between levels.
Synthesis path: a 2x2x2 up-convolution (stride 2) keeping the channel count, concatenation with
the skip, and two [Conv3x3x3 -> BatchNorm -> ReLU] layers with the skip's channel count
(768->256->256, 384->128->128, 192->64->64), then a 1x1x1 output convolution. The original used
unpadded convolutions and cropped skips; like most re-implementations this one pads, so the output
has the input's size and sizes must be multiples of 8. Layers are parametrised as in the original
Caffe model (convolutions with bias, BatchNorm without learned scale and shift, up-convolutions
without bias), so the parameter count is the paper's: 19,069,955 for 3 input channels and 3 classes.

Stages: ``encoder.0..2`` (pooling precedes levels 1-2), ``bottleneck``, ``decoder.2..0``, ``head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models.base import BatchNorm3d, SegmentationModel, SmallLevelFp32, UpConcatBlock


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Conv3x3x3 (with bias) -> BatchNorm (no learned scale/shift, as Caffe's BatchNorm layer) -> ReLU."""
    return [
        nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1),
        BatchNorm3d(out_ch, affine=False),
        nn.ReLU(inplace=True),
    ]


#: Levels whose input has at most this many voxels per channel run in float32 under autocast
#: (:class:`~brainseg_cli.models.base.SmallLevelFp32`, issue #23): ``4**3``, the two deepest levels
#: of the CPU plan's ``16**3`` patch.
FP32_MAX_VOXELS = 4**3


def _level(in_ch: int, mid: int, out_ch: int) -> nn.Sequential:
    """Two Conv3x3x3 -> BN -> ReLU layers: ``in_ch -> mid -> out_ch`` (float32 when spatially small)."""
    return SmallLevelFp32(*_conv_bn_relu(in_ch, mid), *_conv_bn_relu(mid, out_ch), max_voxels=FP32_MAX_VOXELS)


class UNet3dCicek(SegmentationModel):
    """The 3-D U-Net of Cicek et al. (see the module docstring).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels.
        num_classes: output channels.
        base_filters: features of the first convolution (32 in the paper).
    """

    name = "unet3d"

    def __init__(self, *, spatial_dims: int, in_channels: int, num_classes: int, base_filters: int = 32) -> None:
        if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
            raise ConfigError(f"model 'unet3d': base_filters must be a positive integer, got {base_filters!r}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            size_divisor=(8, 8, 8),
            config={"base_filters": base_filters},
        )
        b = base_filters
        # Level k: first conv b*2**k, second 2*b*2**k (its output feeds the skip and the next level).
        out = [2 * b * 2**k for k in range(4)]  # 64, 128, 256, 512 for b = 32
        self.encoder = nn.ModuleList(
            [_level(in_channels, b, out[0]), _level(out[0], 2 * b, out[1]), _level(out[1], 4 * b, out[2])]
        )
        self.bottleneck = _level(out[2], 8 * b, out[3])
        self.decoder = nn.ModuleList(
            [
                UpConcatBlock(
                    nn.ConvTranspose3d(out[k + 1], out[k + 1], kernel_size=2, stride=2, bias=False),
                    _level(out[k + 1] + out[k], out[k], out[k]),
                )
                for k in range(3)
            ]
        )
        self.head = nn.Conv3d(out[0], num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList()

    def input_layers(self) -> list[nn.Module]:
        """The first convolution of ``encoder.0``."""
        return [self.encoder[0][0]]

    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor:
        skips = []
        for k, level in enumerate(self.encoder):
            x = level(x if k == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        x = self.bottleneck(F.max_pool3d(x, 2))
        for k in reversed(range(len(self.decoder))):
            x = self.decoder[k](x, skips[k])
        return self.head(x)
