"""``unetr``: UNETR (Hatamizadeh et al., WACV 2022), a ViT encoder with a convolutional decoder (3-D).

The image is cut into 16x16x16 patches, each linearly embedded (a strided convolution) and added
to a learned position embedding; 12 pre-norm transformer blocks (multi-head self-attention and a
GELU MLP) follow. The outputs ``z3, z6, z9`` of blocks 3, 6 and 9 (1-based, as in the paper) and
the layer-normalised output ``z12`` are reshaped to 1/16-resolution feature maps. The decoder
projects ``z9, z6, z3`` to 1/8, 1/4 and 1/2 resolution by 1, 2 and 3 transposed convolutions
(the latter ones each followed by a residual conv block), and ``z0`` (the image itself) by a
residual conv block (always with a 1x1x1 shortcut) at full resolution; from ``z12`` upwards, each
level transposed-convolves by 2, concatenates the projected skip and applies a residual conv block
(Conv3x3x3 -> InstanceNorm -> LeakyReLU, Conv -> Norm, plus a 1x1x1 shortcut when the width
changes). The skip taps follow the paper (z3, z6, z9); MONAI's implementation taps one block later.

Stages (docs/DEFINITIONS.md §6): ``encoder.0`` = patch embedding + blocks 1-3, ``encoder.1`` = blocks 4-6,
``encoder.2`` = blocks 7-9, ``encoder.3`` = blocks 10-12, ``bottleneck`` = the final LayerNorm
(so freezing ``encoder`` freezes the whole ViT), ``decoder.K`` = the projection of the skip of
level K plus the up-block producing level K (``decoder.0``'s skip projection convolves the raw
image, so it is an input layer too), ``head`` = the 1x1x1 output convolution.

Position embeddings are learned for the token grid of ``img_size``; other input sizes (any
multiple of 16) use the embedding grid resampled trilinearly to their token grid.

Presets (all with 12 blocks): ``base`` is the published size (hidden 768, MLP 3072, 12 heads; about
92.8M parameters with one input channel and ``feature_size=16``); ``small`` (ViT-S widths: hidden
384, MLP 1536, 6 heads; about 26M) and ``tiny`` (ViT-Ti widths: hidden 192, MLP 768, 3 heads; about
9M) train on a CPU. The patch embedding adds ``in_channels * hidden * 16^3`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models.base import SegmentationModel

#: Patch edge length of the ViT (fixed, as in the paper).
PATCH_SIZE = 16


@dataclass(frozen=True)
class VitPreset:
    """Transformer width of a UNETR preset."""

    hidden_size: int
    """Token embedding width."""
    mlp_dim: int
    """Hidden width of each block's MLP."""
    num_heads: int
    """Attention heads (``hidden_size`` must be divisible by it)."""


#: UNETR sizes: the published one and a CPU-trainable one.
PRESETS: dict[str, VitPreset] = {
    "base": VitPreset(hidden_size=768, mlp_dim=3072, num_heads=12),
    "small": VitPreset(hidden_size=384, mlp_dim=1536, num_heads=6),
    "tiny": VitPreset(hidden_size=192, mlp_dim=768, num_heads=3),
}

_BLOCKS_PER_STAGE = 3
_NUM_STAGES = 4


class PatchEmbedding(nn.Module):
    """Non-overlapping 16^3 patches -> tokens, plus a learned (resampled) position embedding."""

    def __init__(self, in_channels: int, hidden_size: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.grid = grid
        self.position = nn.Parameter(torch.zeros(1, grid[0] * grid[1] * grid[2], hidden_size))
        nn.init.trunc_normal_(self.position, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, X, Y, Z) -> (B, X*Y*Z/16^3, hidden)`` tokens in X-major order."""
        y = self.proj(x)
        grid = tuple(y.shape[2:])
        tokens = y.flatten(2).transpose(1, 2)
        position = self.position
        if grid != self.grid:
            hidden = position.shape[-1]
            volume = position.transpose(1, 2).reshape(1, hidden, *self.grid)
            volume = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
            position = volume.flatten(2).transpose(1, 2)
        return tokens + position


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden) -> (B, N, hidden)``."""
        b, n, h = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.out_proj(attn.transpose(1, 2).reshape(b, n, h))
        return x + self.mlp(self.norm2(x))


class VitStage(nn.Module):
    """Three transformer blocks, preceded by the patch embedding in stage 0."""

    def __init__(self, blocks: list[TransformerBlock], embedding: PatchEmbedding | None) -> None:
        super().__init__()
        self.embedding = embedding
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 0: image ``(B, C, X, Y, Z)`` -> tokens; later stages: tokens -> tokens."""
        if self.embedding is not None:
            x = self.embedding(x)
        return self.blocks(x)


class ResConvBlock(nn.Module):
    """MONAI's ``UnetResBlock``: Conv3 -> IN -> LReLU -> Conv3 -> IN, + shortcut, LReLU.

    The shortcut is the identity, or a 1x1 conv -> IN when the width changes or ``project`` is set.
    """

    def __init__(self, in_ch: int, out_ch: int, *, project: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(out_ch, affine=True)
        self.conv2 = nn.Conv3d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(out_ch, affine=True)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        if project or in_ch != out_ch:
            self.conv3 = nn.Conv3d(in_ch, out_ch, kernel_size=1, bias=False)
            self.norm3 = nn.InstanceNorm3d(out_ch, affine=True)
        else:
            self.conv3 = None
            self.norm3 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.conv3 is None else self.norm3(self.conv3(x))
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + residual)


def _up(in_ch: int, out_ch: int) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)


class SkipProjection(nn.Module):
    """Tokens at 1/16 -> features at 1/2^(4-n): a transposed conv, then ``n-1`` (transposed conv, res block)."""

    def __init__(self, hidden_size: int, out_ch: int, num_upsamplings: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_up(hidden_size, out_ch)]
        for _ in range(num_upsamplings - 1):
            layers.append(nn.Sequential(_up(out_ch, out_ch), ResConvBlock(out_ch, out_ch)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UnetrDecoderStage(nn.Module):
    """Decoder level K: project the skip, transposed-conv the deeper features, concat, res block."""

    def __init__(self, skip: nn.Module, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.skip = skip
        self.up = _up(in_ch, out_ch)
        self.block = ResConvBlock(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` deeper features ``(B, in_ch, *s)``, ``skip`` the raw skip (tokens as a map, or the image)."""
        return self.block(torch.cat((self.up(x), self.skip(skip)), dim=1))


class UNETR(SegmentationModel):
    """UNETR (see the module docstring).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels.
        num_classes: output channels.
        preset: ``"base"`` (published: hidden 768), ``"small"`` (hidden 384) or ``"tiny"`` (hidden 192).
        feature_size: decoder width at full resolution (16 in the paper); levels have 1, 2, 4, 8 x.
        img_size: the input size ``(X, Y, Z)`` (multiples of 16) the position embedding grid is
            learned for; other sizes resample it.
    """

    name = "unetr"

    #: ``img_size`` must be a multiple of this on every axis (the planner pads patches to it).
    img_size_multiple = PATCH_SIZE

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        preset: str = "base",
        feature_size: int = 16,
        img_size: Sequence[int] = (96, 96, 96),
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"model 'unetr': preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        if isinstance(feature_size, bool) or not isinstance(feature_size, int) or feature_size < 1:
            raise ConfigError(f"model 'unetr': feature_size must be a positive integer, got {feature_size!r}")
        if (
            not isinstance(img_size, (list, tuple))
            or len(img_size) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < PATCH_SIZE or s % PATCH_SIZE for s in img_size)
        ):
            raise ConfigError(
                f"model 'unetr': img_size must be 3 positive multiples of {PATCH_SIZE}, got {img_size!r}"
            )
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            size_divisor=(PATCH_SIZE,) * 3,
            config={"preset": preset, "feature_size": feature_size, "img_size": [int(s) for s in img_size]},
        )
        vit = PRESETS[preset]
        hidden, fs = vit.hidden_size, feature_size
        self.hidden_size = hidden
        grid = tuple(int(s) // PATCH_SIZE for s in img_size)
        embedding = PatchEmbedding(in_channels, hidden, grid)  # type: ignore[arg-type]
        self.encoder = nn.ModuleList(
            [
                VitStage(
                    [TransformerBlock(hidden, vit.mlp_dim, vit.num_heads) for _ in range(_BLOCKS_PER_STAGE)],
                    embedding if k == 0 else None,
                )
                for k in range(_NUM_STAGES)
            ]
        )
        self.bottleneck = nn.LayerNorm(hidden)
        widths = [fs, 2 * fs, 4 * fs, 8 * fs]
        self.decoder = nn.ModuleList(
            [
                # The block reading the image always projects its shortcut, so the layer set (and
                # the checkpoint keys) do not depend on whether in_channels equals feature_size.
                UnetrDecoderStage(ResConvBlock(in_channels, fs, project=True), widths[1], fs),
                UnetrDecoderStage(SkipProjection(hidden, widths[1], 3), widths[2], widths[1]),
                UnetrDecoderStage(SkipProjection(hidden, widths[2], 2), widths[3], widths[2]),
                UnetrDecoderStage(SkipProjection(hidden, widths[3], 1), hidden, widths[3]),
            ]
        )
        self.head = nn.Conv3d(fs, num_classes, kernel_size=1)
        self.ds_heads = nn.ModuleList()
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def input_layers(self) -> list[nn.Module]:
        """The patch embedding and the convolutions of ``decoder.0``'s skip block that read the image."""
        block = self.decoder[0].skip
        return [self.encoder[0].embedding.proj, block.conv1, block.conv3]

    def _forward(self, x: torch.Tensor, *, with_ds: bool) -> torch.Tensor:
        grid = [s // PATCH_SIZE for s in x.shape[2:]]
        batch = x.shape[0]

        def as_map(tokens: torch.Tensor) -> torch.Tensor:
            return tokens.transpose(1, 2).reshape(batch, self.hidden_size, *grid)

        image = x
        taps = []
        tokens = x
        for stage in self.encoder:
            tokens = stage(tokens)
            taps.append(tokens)
        y = as_map(self.bottleneck(tokens))
        skips = [image, as_map(taps[0]), as_map(taps[1]), as_map(taps[2])]
        for k in reversed(range(len(self.decoder))):
            y = self.decoder[k](y, skips[k])
        return self.head(y)
