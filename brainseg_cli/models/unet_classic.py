"""``unet2d-classic``: the 2-D U-Net of the published Kaggle LGG pipeline (Buda et al., 2019).

Four encoder blocks of [Conv3x3 (no bias) -> BatchNorm -> ReLU] x 2 with ``base_filters`` x
(1, 2, 4, 8) filters and 2x2 max-pooling between them, a bottleneck block with 16 x
``base_filters``, decoder levels of a 2x2 transposed convolution (stride 2) halving the filters,
concatenation with the skip and the same double-conv block, and a 1x1 output convolution.
``base_filters=32`` is the Kaggle LGG network (about 7.8M parameters with 3 inputs and 1 output);
``base_filters=64`` is the original Ronneberger et al. U-Net width (about 31M).

The network returns logits; with one output class the sigmoid of the published model is applied by
the loss (``bce-dice`` / sigmoid Dice) and by inference (``activation="sigmoid"``), with several
classes the softmax likewise.

Stages: ``encoder.0..3`` (the four blocks; pooling precedes blocks 1-3), ``bottleneck``,
``decoder.3..0`` (upconv + block), ``head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models.base import BatchNorm2d, SegmentationModel, UpConcatBlock


def _double_conv(in_channels: int, features: int) -> nn.Sequential:
    """[Conv3x3 (no bias) -> BatchNorm -> ReLU] x 2, as in the Kaggle LGG U-Net."""
    return nn.Sequential(
        nn.Conv2d(in_channels, features, kernel_size=3, padding=1, bias=False),
        BatchNorm2d(features),
        nn.ReLU(inplace=True),
        nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False),
        BatchNorm2d(features),
        nn.ReLU(inplace=True),
    )


class ClassicUNet2d(SegmentationModel):
    """The Kaggle LGG / Ronneberger 2-D U-Net (see the module docstring).

    Args:
        spatial_dims: must be 2.
        in_channels: input channels (3 in the Kaggle LGG data: pre-contrast, FLAIR, post-contrast).
        num_classes: output channels (1 for the binary FLAIR-abnormality mask).
        base_filters: filters of the first block; the blocks have 1, 2, 4, 8 and 16 times this.
    """

    name = "unet2d-classic"

    def __init__(self, *, spatial_dims: int, in_channels: int, num_classes: int, base_filters: int = 32) -> None:
        if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
            raise ConfigError(f"model 'unet2d-classic': base_filters must be a positive integer, got {base_filters!r}")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            size_divisor=(16, 16),
            config={"base_filters": base_filters},
        )
        f = [base_filters * 2**k for k in range(5)]
        self.encoder = nn.ModuleList(
            [_double_conv(in_channels, f[0]), _double_conv(f[0], f[1]), _double_conv(f[1], f[2]), _double_conv(f[2], f[3])]
        )
        self.bottleneck = _double_conv(f[3], f[4])
        self.decoder = nn.ModuleList(
            [
                UpConcatBlock(nn.ConvTranspose2d(f[k + 1], f[k], kernel_size=2, stride=2), _double_conv(2 * f[k], f[k]))
                for k in range(4)
            ]
        )
        self.head = nn.Conv2d(f[0], num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList()

    def input_layers(self) -> list[nn.Module]:
        """The first convolution of ``encoder.0``."""
        return [self.encoder[0][0]]

    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.encoder):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.bottleneck(F.max_pool2d(x, 2))
        for k in reversed(range(len(self.decoder))):
            x = self.decoder[k](x, skips[k])
        return self.head(x)
