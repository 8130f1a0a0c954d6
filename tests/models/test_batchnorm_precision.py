"""Batch normalisation in fp32 under autocast (issue #23: ``unet3d`` diverged in bf16 on real BraTS data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainseg_cli.models import build_model
from brainseg_cli.models.base import BatchNorm2d, BatchNorm3d


@pytest.mark.parametrize("cls, ref_cls, shape", [(BatchNorm3d, nn.BatchNorm3d, (2, 4, 2, 2, 2)),
                                                 (BatchNorm2d, nn.BatchNorm2d, (2, 4, 3, 3))])
def test_batch_norm_matches_fp32_under_bf16_autocast(cls, ref_cls, shape):
    torch.manual_seed(0)
    # a channel far from zero with a small spread and few values (the deepest level of a 3-D U-Net)
    x = (40.0 + torch.randn(shape)).to(torch.bfloat16).float()
    ours, ref = cls(4, affine=False), ref_cls(4, affine=False)
    assert isinstance(ours, ref_cls) and ours.state_dict().keys() == ref.state_dict().keys()
    a = x.clone().to(torch.bfloat16).requires_grad_()
    b = x.clone().requires_grad_()
    weights = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(a)
    assert out.dtype == torch.bfloat16
    expected = ref(b)
    torch.testing.assert_close(out.float(), expected, atol=0.03, rtol=0.02)
    (out.float() * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(a.grad.float(), b.grad, atol=0.05, rtol=0.05)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    # without autocast it is nn.BatchNorm*d
    torch.testing.assert_close(cls(4, affine=False)(x), ref_cls(4, affine=False)(x))


@pytest.mark.parametrize("name, dims, width", [("unet3d", 3, {"base_filters": 4}), ("ratlesnet", 3, {"filters": 4}),
                                               ("unet2d-classic", 2, {"base_filters": 4}),
                                               ("unet", 2, {"base_features": 4, "norm": "batch", "depth": 2})])
def test_batch_norm_models_use_the_fp32_variant(name, dims, width):
    model = build_model(name, spatial_dims=dims, in_channels=2, num_classes=2, **width)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, (BatchNorm2d, BatchNorm3d)) for m in norms)


def test_small_levels_run_in_fp32_under_autocast():
    """Issue #23: a level whose input has at most ``max_voxels`` voxels per channel runs in float32 under
    autocast (exactly the fp32 result); larger inputs stay in the autocast dtype; the keys are nn.Sequential's."""
    from brainseg_cli.models.base import SmallLevelFp32

    torch.manual_seed(0)
    layers = [nn.Conv3d(3, 4, 3, padding=1), BatchNorm3d(4, affine=False), nn.ReLU()]
    level = SmallLevelFp32(*layers, max_voxels=8)
    assert level.state_dict().keys() == nn.Sequential(*layers).state_dict().keys()
    small, large = torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 4, 4, 4)
    reference = level(small)  # no autocast: plain nn.Sequential
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_small, out_large = level(small), level(large)
    assert out_small.dtype == torch.float32 and out_large.dtype == torch.bfloat16
    torch.testing.assert_close(out_small, reference, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert SmallLevelFp32(*layers, max_voxels=0)(small).dtype == torch.bfloat16  # 0: never


def test_unet3d_runs_its_deepest_levels_in_fp32():
    from brainseg_cli.models.base import SmallLevelFp32
    from brainseg_cli.models.unet3d import FP32_MAX_VOXELS

    model = build_model("unet3d", spatial_dims=3, in_channels=2, num_classes=2, base_filters=2)
    levels = [*model.encoder, model.bottleneck, *(d.convs for d in model.decoder)]
    assert all(isinstance(m, SmallLevelFp32) and m.max_voxels == FP32_MAX_VOXELS for m in levels)
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.shape == (2, 2, 16, 16, 16) and torch.isfinite(y.float()).all()
