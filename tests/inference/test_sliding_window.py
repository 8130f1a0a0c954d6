"""Sliding-window inference: window positions, Gaussian map, equivalence with direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_fixtures import nnunet_steps, reference_sliding_window
from scipy.ndimage import gaussian_filter
from torch import nn

from brainseg_cli.errors import ConfigError, RegistryError
from brainseg_cli.inference.sliding_window import (
    gaussian_importance_map,
    mirror_axes_subsets,
    sliding_window_predict,
    window_starts,
)


@pytest.mark.parametrize("size,patch,overlap", [
    ((240, 240, 155), (128, 128, 128), 0.5),
    ((64, 64, 48), (32, 32, 32), 0.5),
    ((100, 37, 17), (40, 37, 9), 0.25),
    ((200, 180), (96, 96), 0.75),
    ((33,), (33,), 0.5),
    ((50, 50), (16, 16), 0.0),
])
def test_window_starts_match_nnunet(size, patch, overlap):
    ours = window_starts(size, patch, overlap=overlap)
    assert ours == nnunet_steps(size, patch, 1 - overlap)
    for starts, s, p in zip(ours, size, patch):
        assert starts[0] == 0 and starts[-1] == s - p


def test_window_starts_rejects_bad_overlap():
    with pytest.raises(ConfigError, match="overlap must be in"):
        window_starts((10,), (5,), overlap=1.0)


@pytest.mark.parametrize("patch", [(8, 10, 12), (7, 9), (5, 6, 7)])
def test_gaussian_matches_nnunet_construction(patch):
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    ref = gaussian_filter(tmp, [p / 8 for p in patch], 0, mode="constant", cval=0)
    ref /= ref.max()
    ref[ref == 0] = ref[ref > 0].min()
    ours = gaussian_importance_map(patch).numpy()
    assert ours.shape == patch
    assert ours.max() == pytest.approx(1.0)
    assert ours[tuple(p // 2 for p in patch)] == pytest.approx(1.0)
    assert (ours > 0).all()
    # scipy's discrete kernel is a normalised sampled Gaussian: same shape up to truncation
    np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=1e-6)


def test_gaussian_is_cached():
    a = gaussian_importance_map((6, 6, 6))
    b = gaussian_importance_map((6, 6, 6))
    assert a is b
    assert gaussian_importance_map((6, 6, 6), sigma_scale=0.25) is not a


class PointwiseNet(nn.Module):
    """A 1x1(x1) convolution: its sliding-window result must equal the whole-image result."""

    def __init__(self, dims: int, cin: int = 2, k: int = 3):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        torch.manual_seed(0)
        self.conv = conv(cin, k, 1)

    def forward(self, x):
        return self.conv(x)


class ContextNet(nn.Module):
    """A small net with spatial context (3-wide kernels), so window position matters."""

    def __init__(self, dims: int, cin: int = 2, k: int = 3):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        torch.manual_seed(1)
        self.body = nn.Sequential(conv(cin, 4, 3, padding=1), nn.ReLU(), conv(4, k, 3, padding=1))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_network_equals_whole_image(dims):
    shape = (2, 23, 17, 11)[: dims + 1]
    image = torch.randn(shape)
    net = PointwiseNet(dims)
    patch = (8, 8, 8)[:dims]
    out = sliding_window_predict(net, image, patch_size=patch, overlap=0.5, batch_size=3)
    with torch.no_grad():
        full = torch.softmax(net(image[None])[0], 0)
    assert out.shape == (3, *shape[1:]) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_matches_independent_implementation(activation, batch_size):
    image = torch.randn(2, 21, 18, 13)
    net = ContextNet(3)
    patch = (10, 8, 8)
    out = sliding_window_predict(net, image, patch_size=patch, overlap=0.5, batch_size=batch_size,
                                 activation=activation)
    ref = reference_sliding_window(net, image, patch, 0.5, activation)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    if activation == "softmax":
        torch.testing.assert_close(out.sum(0), torch.ones(out.shape[1:]), atol=1e-5, rtol=0)


def test_overlap_changes_result():
    image = torch.randn(2, 20, 20)
    net = ContextNet(2)
    a = sliding_window_predict(net, image, patch_size=(8, 8), overlap=0.0)
    b = sliding_window_predict(net, image, patch_size=(8, 8), overlap=0.5)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, reference_sliding_window(net, image, (8, 8), 0.5, "softmax"), atol=2e-5, rtol=1e-4)


def test_sigma_scale_changes_result():
    image = torch.randn(2, 20, 20)
    net = ContextNet(2)
    a = sliding_window_predict(net, image, patch_size=(8, 8), sigma_scale=0.125)
    b = sliding_window_predict(net, image, patch_size=(8, 8), sigma_scale=0.5)
    assert not torch.allclose(a, b)


def test_small_image_is_padded_and_cropped_back():
    image = torch.randn(2, 5, 8, 3)
    net = ContextNet(3)
    out = sliding_window_predict(net, image, patch_size=(8, 8, 8))
    assert out.shape == (3, 5, 8, 3)
    padded = torch.nn.functional.pad(image, (2, 3, 0, 0, 1, 2))  # (8-3)//2=2,3 / 0 / (8-5)//2=1,2
    with torch.no_grad():
        full = torch.softmax(net(padded[None])[0], 0)
    torch.testing.assert_close(out, full[:, 1:6, :, 2:5], atol=1e-5, rtol=1e-5)


def test_tta_averages_mirrored_predictions():
    image = torch.randn(2, 8, 8, 8)
    net = ContextNet(3)
    out = sliding_window_predict(net, image, patch_size=(8, 8, 8), tta=True)
    expected = torch.zeros(3, 8, 8, 8)
    with torch.no_grad():
        for dims in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]:
            x = image.flip(dims) if dims else image
            p = torch.softmax(net(x[None])[0], 0)
            expected += p.flip(dims) if dims else p
    expected /= 8
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    plain = sliding_window_predict(net, image, patch_size=(8, 8, 8), tta=False)
    assert not torch.allclose(out, plain)


def test_mirror_subsets_count():
    assert len(mirror_axes_subsets(3)) == 8 and mirror_axes_subsets(3)[0] == ()
    assert len(mirror_axes_subsets(2)) == 4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_close(precision):
    image = torch.randn(2, 16, 16, 16)
    net = ContextNet(3)
    fp32 = sliding_window_predict(net, image, patch_size=(8, 8, 8))
    low = sliding_window_predict(net, image, patch_size=(8, 8, 8), precision=precision)
    assert low.dtype == torch.float32
    assert (low - fp32).abs().max() < 0.05
    assert (low.argmax(0) == fp32.argmax(0)).float().mean() > 0.95


def test_unknown_precision_and_activation():
    net = PointwiseNet(2)
    with pytest.raises(RegistryError, match="unknown precision 'fp8'"):
        sliding_window_predict(net, torch.randn(2, 8, 8), patch_size=(4, 4), precision="fp8")
    with pytest.raises(ConfigError, match="unknown activation 'relu'"):
        sliding_window_predict(net, torch.randn(2, 8, 8), patch_size=(4, 4), activation="relu")
    with pytest.raises(ConfigError, match="does not match a 3-D patch"):
        sliding_window_predict(net, torch.randn(2, 8, 8), patch_size=(4, 4, 4))
    with pytest.raises(ConfigError, match="batch size"):
        sliding_window_predict(net, torch.randn(2, 8, 8), patch_size=(4, 4), batch_size=0)


class DeepSupervisionNet(ContextNet):
    def forward(self, x):
        out = super().forward(x)
        return [out, out[..., ::2, ::2]] if self.training else out


def test_training_mode_restored_and_eval_used():
    net = DeepSupervisionNet(2)
    net.train()
    image = torch.randn(2, 12, 12)
    out = sliding_window_predict(net, image, patch_size=(8, 8))
    assert net.training
    net.eval()
    torch.testing.assert_close(out, sliding_window_predict(net, image, patch_size=(8, 8)))
    assert not net.training


def test_numpy_input_and_explicit_device():
    image = np.random.default_rng(0).normal(size=(2, 9, 9)).astype(np.float32)
    net = PointwiseNet(2)
    out = sliding_window_predict(net, image, patch_size=(4, 4), device="cpu")
    with torch.no_grad():
        full = torch.softmax(net(torch.from_numpy(image)[None])[0], 0)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slice_axis_equals_slice_by_slice(slice_axis):
    volume = torch.randn(2, 9, 7, 6)
    net = ContextNet(2)
    out = sliding_window_predict(net, volume, patch_size=(4, 4), slice_axis=slice_axis, batch_size=5, tta=True)
    assert out.shape == (3, 9, 7, 6)
    moved = torch.movedim(volume, slice_axis + 1, 1)
    expected = torch.stack([
        sliding_window_predict(net, moved[:, k], patch_size=(4, 4), tta=True) for k in range(moved.shape[1])
    ], dim=1)
    torch.testing.assert_close(out, torch.movedim(expected, 1, slice_axis + 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="slice axis must be in"):
        sliding_window_predict(net, volume, patch_size=(4, 4), slice_axis=3)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_slice_context_gives_each_slice_its_neighbours(slice_axis):
    """2.5-D: the window of slice k sees slices k-1, k, k+1 (edges repeated) as channels, channel-major."""
    n = 5
    index = torch.arange(n, dtype=torch.float32)
    shape = [1, 6, 6, 6]
    shape[slice_axis + 1] = n
    view = [1, 1, 1, 1]
    view[slice_axis + 1] = n
    volume = torch.cat([index.view(view).expand(shape), 10 + index.view(view).expand(shape)])  # 2 channels

    class PickNet(nn.Module):
        """Region logits = input channels 0 (channel 0 at k-1), 2 (channel 0 at k+1), 4 (channel 1 at k)."""

        def forward(self, x):
            return x[:, [0, 2, 4]]

    out = sliding_window_predict(PickNet(), volume, patch_size=(4, 4), slice_axis=slice_axis, slice_context=1,
                                 activation="sigmoid", batch_size=3)
    assert out.shape == (3, *volume.shape[1:])
    moved = torch.movedim(out, slice_axis + 1, 1)
    for k in range(n):
        expected = torch.sigmoid(torch.tensor([max(k - 1, 0), min(k + 1, n - 1), 10 + k], dtype=torch.float32))
        torch.testing.assert_close(moved[:, k].reshape(3, -1).mean(1), expected)
        torch.testing.assert_close(moved[:, k].reshape(3, -1).std(1), torch.zeros(3), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="slice context must be >= 0 and needs a slice axis"):
        sliding_window_predict(PickNet(), volume[:, 0], patch_size=(4, 4), slice_context=1)
