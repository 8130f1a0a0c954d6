"""The configurable ``unet``: topology planning, per-stage kernels and strides, deep supervision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.models import build_model, plan_unet_topology


def test_plan_isotropic_3d() -> None:
    kernels, strides = plan_unet_topology((128, 128, 128), (1.0, 1.0, 1.0))
    # 128 -> 4 takes five halvings; the bottleneck is stage 5.
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kernels == [[3, 3, 3]] * 6


def test_plan_anisotropic_3d() -> None:
    # 0.96 x 0.96 x 3 mm: Z is 3.1x coarser, so it is neither pooled nor convolved along Z at first.
    kernels, strides = plan_unet_topology((192, 160, 56), (0.96, 0.96, 3.0))
    assert strides[0] == [1, 1, 1]
    assert strides[1] == [2, 2, 1]  # after it X/Y are 1.92 mm: within 2x of Z
    assert kernels[0] == [3, 3, 1]
    assert kernels[1] == [3, 3, 3]
    # Then all axes halve until Z is 7 (< 2 * 4); X and Y (12, 10) halve once more.
    assert strides[2:5] == [[2, 2, 2]] * 3
    assert strides[5:] == [[2, 2, 1]]
    assert kernels[-1] == [3, 3, 3] and len(kernels) == len(strides) == 6
    # The planned network builds and accepts a patch padded to the divisor.
    model = build_model("unet", spatial_dims=3, in_channels=1, num_classes=2, base_features=2, kernel_sizes=kernels, strides=strides)
    assert model.size_divisor == (32, 32, 8)
    assert model.encoder[0][0][0].weight.shape[2:] == (3, 3, 1)
    assert model.encoder[1][0][0].stride == (2, 2, 1)


def test_plan_2d_and_limits() -> None:
    kernels, strides = plan_unet_topology((256, 256), (1.0, 1.0))
    assert len(strides) == 7 and strides[-1] == [2, 2]  # 256 -> 4 in six halvings
    kernels, strides = plan_unet_topology((256, 256), (1.0, 1.0), max_depth=3)
    assert strides == [[1, 1], [2, 2], [2, 2], [2, 2]]
    kernels, strides = plan_unet_topology((256, 256), (1.0, 1.0), min_feature_size=8)
    assert len(strides) == 6
    # An elongated patch: the short axis stops at min_feature_size (32 -> 4); the long one goes on
    # alone while it is at least 3 * min_feature_size (32 -> 16 -> 8).
    _, strides = plan_unet_topology((256, 32), (1.0, 1.0))
    assert strides == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 1], [2, 1]]
    with pytest.raises(ConfigError, match="2 or 3 axes"):
        plan_unet_topology((64, 64, 64), (1.0, 1.0))
    with pytest.raises(ConfigError, match="positive sizes and spacings"):
        plan_unet_topology((64, 64), (1.0, 0.0))


def test_unet_defaults_and_features() -> None:
    model = build_model("unet", spatial_dims=3, in_channels=4, num_classes=4)
    assert model.config["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert model.config["max_features"] == 320 and model.features == [32, 64, 128, 256, 320]
    assert model.size_divisor == (16, 16, 16)
    assert isinstance(model.encoder[0][0][1], nn.InstanceNorm3d)
    assert build_model("unet", spatial_dims=2, in_channels=1, num_classes=2).config["max_features"] == 512
    capped = build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=8, max_features=16, depth=3)
    assert capped.features == [8, 16, 16, 16]


def test_unet_batch_norm_option() -> None:
    model = build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=4, norm="batch")
    assert isinstance(model.encoder[0][0][1], nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="norm must be one of instance, batch, got 'group'"):
        build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, norm="group")


def test_unet_validates_kernels_and_strides() -> None:
    with pytest.raises(ConfigError, match="first stage must have stride 1"):
        build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, strides=[[2, 2], [2, 2]])
    with pytest.raises(ConfigError, match="kernel_sizes needs one entry per stage \\(3\\)"):
        build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, strides=[1, 2, 2], kernel_sizes=[3, 3])
    with pytest.raises(ConfigError, match="kernel sizes must be odd"):
        build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, kernel_sizes=2)
    with pytest.raises(ConfigError, match="depth 2 disagrees with 4 strides"):
        build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, depth=2, strides=[1, 2, 2, 2])
    with pytest.raises(ConfigError, match="each of strides must be an int or 3 ints"):
        build_model("unet", spatial_dims=3, in_channels=1, num_classes=2, strides=[[1, 1], [2, 2]])


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_outputs(dims: int) -> None:
    torch.manual_seed(0)
    model = build_model("unet", spatial_dims=dims, in_channels=2, num_classes=3, base_features=4, depth=3, deep_supervision=True)
    assert model.num_outputs == 3 and len(model.ds_heads) == 2
    x = torch.randn(2, 2, *([16] * dims))
    outputs = model(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16,) * dims, (8,) * dims, (4,) * dims]
    assert all(o.shape[:2] == (2, 3) for o in outputs)
    model.eval()
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor)
    # InstanceNorm keeps no running statistics: eval and train give the same full-resolution output.
    torch.testing.assert_close(single, outputs[0].detach())
    plain = build_model("unet", spatial_dims=dims, in_channels=2, num_classes=3, base_features=4, depth=3)
    assert plain.num_outputs == 1 and len(plain.ds_heads) == 0
    assert isinstance(plain(x), torch.Tensor)


def test_deep_supervision_follows_anisotropic_strides() -> None:
    model = build_model(
        "unet", spatial_dims=3, in_channels=1, num_classes=2, base_features=4,
        strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]], deep_supervision=True,
    )
    outputs = model(torch.randn(1, 1, 16, 16, 6))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 16, 6), (8, 8, 6)]
