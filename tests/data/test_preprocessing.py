"""preprocess_case and its inverse restore_to_original; resampling helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainseg_cli.data.preprocessing import (
    PreprocessInfo,
    axis_codes,
    normalize_channel,
    orientation_transform,
    preprocess_case,
    restore_to_original,
)
from brainseg_cli.data.resampling import (
    compute_new_shape,
    lowres_axis,
    resample_images,
    resample_labels,
    resample_linear,
    separate_axis,
)
from brainseg_cli.errors import ConfigError, GeometryError, InputError
from brainseg_cli.io import Image


def make_plan(**changes):
    """A minimal plan with the keys preprocessing reads."""
    plan = {
        "format_version": 1, "config": "3d", "channels": ["T1", "FLAIR"], "orientation": "LPS", "crop_to_brain": True,
        "normalization": [{"channel": c, "scheme": "zscore", "lower_pct": 10.0, "upper_pct": 99.0}
                          for c in ("T1", "FLAIR")],
        "target_spacing": [1.0, 1.0, 1.0], "slice_axis": None,
        "resampling": {"image_order": 3, "label_order": 0, "probability_order": 1, "anisotropy_threshold": 3.0},
        "labels": {"background": 0, "outer": 1, "inner": 2}, "regions": {}, "region_based": False,
        "patch_size": [16, 16, 16], "batch_size": 2,
        "model": {"name": "unet", "spatial_dims": 3, "in_channels": 2, "num_classes": 3, "config": {}},
    }
    plan.update(changes)
    if len(plan["patch_size"]) != (2 if plan["config"] == "2d" else 3):
        plan["patch_size"] = [16] * (2 if plan["config"] == "2d" else 3)
    return plan


def make_case(shape=(30, 28, 24), spacing=(1.0, 1.0, 1.0), direction=None, origin=(5.0, -3.0, 2.0), seed=0,
              radii=(6, 3)):
    """A two-channel head (ellipsoid on a zero background) with a spherical 'tumour' (labels 1, 2)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    c = np.array([(s - 1) / 2 for s in shape])[:, None, None, None]
    r = (grid - c) / (np.array(shape)[:, None, None, None] * 0.4)
    head = (r**2).sum(0) <= 1.0
    t_c = c + np.array([3, -2, 1])[:, None, None, None]
    d = np.sqrt(((grid - t_c) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[(d <= radii[0]) & head] = 1
    label[(d <= radii[1]) & head] = 2
    a = np.where(head, 100 + 20 * rng.normal(size=shape), 0)
    b = np.where(head, 50 + 30 * label + 5 * rng.normal(size=shape), 0)
    data = np.stack([a, b]).astype(np.float32)
    image = Image(data, spacing, origin, direction)
    return image, Image(label, spacing, origin, direction)


def one_hot(seg, k):
    return np.eye(k, dtype=np.float32)[seg].transpose(3, 0, 1, 2)


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_identity_roundtrip_is_exact():
    image, label = make_case()
    data, seg, info = preprocess_case(image, make_plan(), label=label)
    assert data.dtype == np.float32 and data.flags.c_contiguous and seg.dtype == np.uint8
    assert data.shape[1:] == seg.shape == info.resampled_shape == info.cropped_shape
    assert data.shape[1:] != image.spatial_shape  # cropped to the head
    back = restore_to_original(one_hot(seg, 3), info)
    assert back.shape == (3, *image.spatial_shape) and back.dtype == np.float32
    assert np.array_equal(back.argmax(0), label.array)
    # Outside the crop: background probability 1, the others 0.
    outside = np.ones(image.spatial_shape, bool)
    outside[tuple(slice(a, b) for a, b in info.bbox)] = False
    assert outside.any() and np.all(back[0][outside] == 1.0) and np.all(back[1:, outside] == 0.0)


def test_zscore_inside_brain_and_zero_outside():
    image, label = make_case()
    data, _, info = preprocess_case(image, make_plan(crop_to_brain=False), label=label)
    assert info.cropped_shape == image.spatial_shape
    head = np.asarray(image.array[0]) != 0
    for c in range(2):
        inside = data[c][head]
        assert inside.mean() == pytest.approx(0.0, abs=1e-4)
        assert inside.std() == pytest.approx(1.0, abs=1e-3)
        assert np.all(data[c][~head] == 0.0)


def test_clip_zscore_clips_to_brain_percentiles():
    values = np.arange(1, 101, dtype=np.float32).reshape(4, 5, 5)
    mask = np.ones_like(values, bool)
    out = normalize_channel(values, mask, scheme="clip_zscore", lower_pct=10, upper_pct=99)
    clipped = np.clip(values, np.percentile(values, 10), np.percentile(values, 99))
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, normalize_channel(values, mask, scheme="zscore"))
    with pytest.raises(ConfigError, match="unknown normalization scheme 'minmax'"):
        normalize_channel(values, mask, scheme="minmax")


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.3), (1.25, 1.25, 0.9)])
def test_resampled_roundtrip_is_close(spacing):
    image, label = make_case(shape=(48, 44, 40), spacing=spacing, radii=(12, 7))
    plan = make_plan(target_spacing=[1.0, 1.0, 1.0])
    data, seg, info = preprocess_case(image, plan, label=label)
    assert info.resampled_shape == compute_new_shape(info.cropped_shape, spacing, (1, 1, 1))
    assert info.resampled_shape != info.cropped_shape
    np.testing.assert_allclose(info.spacing_preprocessed, [1.0, 1.0, 1.0], atol=0.05)
    back = restore_to_original(one_hot(seg, 3), info).argmax(0)
    lab = np.asarray(label.array)
    for k in (1, 2):
        assert dice(back == k, lab == k) > 0.95


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("shape, new_shape", [((20, 17, 13), (10, 9, 7)), ((9, 11, 7), (20, 5, 7)), ((12, 30), (7, 41))])
def test_spline_resampling_equals_scipy_zoom(order, shape, new_shape):
    # Per axis, one matrix built from scipy's zoom of the identity: the result is scipy's own.
    from scipy import ndimage

    rng = np.random.default_rng(order)
    data = rng.normal(size=(2, *shape)).astype(np.float32) * 100.0
    out = resample_images(data, new_shape, order=order)
    factors = [n / m for n, m in zip(new_shape, shape)]
    expected = np.stack([ndimage.zoom(c, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
                         for c in data])
    assert out.shape == (2, *new_shape) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-3)  # values ~100: float32 rounding


@pytest.mark.parametrize("shape, new_shape", [((7, 9, 5), (14, 30, 11)), ((20, 17, 13), (10, 9, 7)), ((6, 8), (13, 3))])
def test_linear_resampling_equals_scipy_linear_zoom(shape, new_shape):
    # Pixel-centred, edge-clamped linear = scipy's order-1 zoom with grid_mode and mode "nearest".
    from scipy import ndimage

    data = np.random.default_rng(2).random((3, *shape)).astype(np.float32)
    out = resample_linear(data, new_shape)
    factors = [n / m for n, m in zip(new_shape, shape)]
    expected = np.stack([ndimage.zoom(c, factors, order=1, mode="nearest", grid_mode=True) for c in data])
    assert out.shape == (3, *new_shape) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_spline_resampling_separate_axis_equals_slice_by_slice_zoom():
    from scipy import ndimage

    data = np.random.default_rng(1).normal(size=(1, 16, 15, 5)).astype(np.float32)
    out = resample_images(data, (8, 12, 10), order=3, separate=2)
    planes = np.stack([ndimage.zoom(data[0, :, :, z], (8 / 16, 12 / 15), order=3, mode="nearest", grid_mode=True)
                       for z in range(5)], axis=-1)
    np.testing.assert_allclose(out[0], planes[:, :, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]], atol=1e-5)
    with pytest.raises(ConfigError, match="spline order must be 0-5, got 7"):
        resample_images(data, (8, 12, 10), order=7)


def test_anisotropic_resampling_uses_nearest_along_the_low_res_axis():
    assert lowres_axis((1.0, 1.0, 3.5)) == 2
    assert lowres_axis((1.0, 1.0, 3.0)) is None
    assert lowres_axis((4.0, 4.0, 1.0)) is None  # two coarse axes
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 5.0)) == 2
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 6, 6, 5)).astype(np.float32)
    out = resample_images(vol, (12, 12, 10), order=3, separate=2)
    # Along the separate axis, slices are copied (nearest), never blended.
    np.testing.assert_array_equal(out[0, :, :, 0], out[0, :, :, 1])
    probs = resample_linear(vol, (6, 6, 10), separate=2)
    np.testing.assert_array_equal(probs[0, :, :, 0], vol[0, :, :, 0])
    np.testing.assert_array_equal(probs[0, :, :, 1], vol[0, :, :, 0])
    # Joint resampling blends them.
    joint = resample_linear(vol, (6, 6, 10))
    assert not np.allclose(joint[0, :, :, 1], vol[0, :, :, 0])

    image, label = make_case(shape=(40, 36, 10), spacing=(0.9, 0.9, 4.0))
    data, seg, info = preprocess_case(image, make_plan(target_spacing=[0.9, 0.9, 2.0]), label=label)
    assert info.separate_axis == 2
    back = restore_to_original(one_hot(seg, 3), info).argmax(0)
    # Upsampling z by 2 with nearest and coming back with nearest: exact.
    assert np.array_equal(back, label.array)


def test_linear_resampling_keeps_constants_and_centres():
    const = np.full((2, 5, 7, 3), 0.25, np.float32)
    np.testing.assert_allclose(resample_linear(const, (9, 4, 6)), 0.25)
    ramp = np.arange(4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 2, 2), np.float32)
    up = resample_linear(ramp, (8, 2, 2))
    # Pixel-centred: output centres at -0.25, 0.25, 0.75, ... (clamped at the edges).
    np.testing.assert_allclose(up[0, :, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    labels = np.arange(4, dtype=np.uint8)[:, None, None] * np.ones((4, 2, 2), np.uint8)
    np.testing.assert_array_equal(resample_labels(labels, (8, 2, 2))[:, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("direction", [
    np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),  # permuted + flipped
    np.diag([-1.0, -1.0, 1.0]),                                          # RAS-stored
    np.array([[0.96592583, -0.25881905, 0.0], [0.25881905, 0.96592583, 0.0], [0.0, 0.0, 1.0]]),  # oblique 15 deg
])
def test_reorientation_and_geometry_survive(direction):
    image, label = make_case(direction=direction, spacing=(1.0, 1.2, 1.5))
    # The preprocessed axes point L, P, S; the target spacing is given in those axes.
    expected_axes, _ = orientation_transform(axis_codes(direction), "LPS")
    target = [image.spacing[a] for a in expected_axes]
    data, seg, info = preprocess_case(image, make_plan(target_spacing=target), label=label)
    assert info.axes == expected_axes
    assert info.spacing_preprocessed == pytest.approx([image.spacing[a] for a in expected_axes])
    back = restore_to_original(one_hot(seg, 3), info)
    assert back.shape[1:] == image.spatial_shape
    assert np.array_equal(back.argmax(0), label.array)
    assert info.spacing == image.spacing and info.origin == image.origin
    np.testing.assert_allclose(np.asarray(info.direction), direction)
    restored = PreprocessInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert restored == info


def test_axis_codes():
    assert axis_codes(np.eye(3)) == "LPS"
    assert axis_codes(np.diag([-1.0, -1.0, 1.0])) == "RAS"
    assert axis_codes(np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)) == "PSL"
    assert orientation_transform("RAS", "LPS") == ((0, 1, 2), (True, True, False))
    with pytest.raises(ConfigError, match="invalid orientation 'LLS'"):
        orientation_transform("LPS", "LLS")


def test_a_different_plan_orientation_flips_the_arrays():
    image, label = make_case(seed=3)
    d_lps, s_lps, _ = preprocess_case(image, make_plan(), label=label)
    d_ras, s_ras, info = preprocess_case(image, make_plan(orientation="RAS"), label=label)
    assert info.flips == (True, True, False)
    np.testing.assert_array_equal(s_ras, s_lps[::-1, ::-1, :])
    np.testing.assert_allclose(d_ras, d_lps[:, ::-1, ::-1, :])
    assert np.array_equal(restore_to_original(one_hot(s_ras, 3), info).argmax(0), label.array)


def test_two_d_plan_resamples_in_plane_only():
    image, label = make_case(shape=(60, 56, 9), spacing=(0.5, 0.5, 3.0), radii=(20, 10))
    plan = make_plan(config="2d", slice_axis=2, target_spacing=[1.0, 1.0, 1.0])
    data, seg, info = preprocess_case(image, plan, label=label)
    assert info.resampled_shape[2] == info.cropped_shape[2]
    assert info.resampled_shape[:2] == compute_new_shape(info.cropped_shape[:2], (0.5, 0.5), (1.0, 1.0))
    assert info.spacing_preprocessed[2] == pytest.approx(3.0)
    back = restore_to_original(one_hot(seg, 3), info).argmax(0)
    lab = np.asarray(label.array)
    assert dice(back > 0, lab > 0) > 0.95


def test_two_d_input_image_is_one_slice():
    image, label = make_case(shape=(30, 28, 1))
    img2 = Image(np.asarray(image.array)[..., 0], (1.0, 1.0))
    lab2 = Image(np.asarray(label.array)[..., 0], (1.0, 1.0))
    data, seg, info = preprocess_case(img2, make_plan(config="2d", slice_axis=2), label=lab2)
    assert data.ndim == 4 and data.shape[-1] == 1
    back = restore_to_original(one_hot(seg, 3), info)
    assert back.shape == (3, 30, 28)
    assert np.array_equal(back.argmax(0), lab2.array)


def test_given_mask_replaces_the_border_rule():
    image, label = make_case()
    mask = np.zeros(image.spatial_shape, bool)
    mask[5:20, 6:18, 4:15] = True
    data, _, info = preprocess_case(image, make_plan(), mask=mask)
    assert info.bbox == ((5, 20), (6, 18), (4, 15))
    assert data.shape[1:] == (15, 12, 11)
    with pytest.raises(GeometryError, match="brain mask shape"):
        preprocess_case(image, make_plan(), mask=mask[:-1])


def test_background_class_false_and_errors():
    image, label = make_case()
    data, seg, info = preprocess_case(image, make_plan(), label=label)
    probs = np.full((3, *seg.shape), 0.5, np.float32)
    back = restore_to_original(probs, info, background_class=False)
    outside = np.ones(image.spatial_shape, bool)
    outside[tuple(slice(a, b) for a, b in info.bbox)] = False
    assert np.all(back[:, outside] == 0.0)
    assert np.all(back[:, ~outside] == 0.5)
    with pytest.raises(InputError, match="do not match the preprocessed grid"):
        restore_to_original(probs[:, :-1], info)
    with pytest.raises(InputError, match="image has 2 channel\\(s\\) but the plan expects 3"):
        preprocess_case(image, make_plan(channels=["T1", "FLAIR", "T2"], normalization=[
            {"channel": c, "scheme": "zscore", "lower_pct": 10.0, "upper_pct": 99.0} for c in ("T1", "FLAIR", "T2")]))
    other = Image(np.asarray(label.array), (1.0, 1.0, 2.0))
    with pytest.raises(GeometryError):
        preprocess_case(image, make_plan(), label=other)


def test_real_brats_case_roundtrip(shared_data):
    """A real BraTS 2018 case (cropped to its lower half to stay fast): exact identity round trip."""
    from brainseg_cli.io import read_image

    folder = shared_data / "brats2018_deepbrainseg" / "Brats18_2013_3_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    chans = [read_image(folder / f"Brats18_2013_3_1_{m}.nii.gz") for m in ("t1", "flair")]
    seg = read_image(folder / "Brats18_2013_3_1_seg.nii.gz")
    region = (slice(None), slice(None), slice(40, 100))
    arr = np.stack([np.asarray(c.array)[region] for c in chans]).astype(np.float32)
    lab = np.asarray(seg.array)[region].astype(np.uint8)
    lab[lab == 4] = 3
    image = Image(arr, chans[0].spacing, chans[0].origin, chans[0].direction)
    label = Image(lab, chans[0].spacing, chans[0].origin, chans[0].direction)
    assert axis_codes(image.direction) == "LPS"
    data, s, info = preprocess_case(image, make_plan(orientation="RAS"), label=label)
    assert info.flips == (True, True, False)
    assert data.shape[1:] != image.spatial_shape
    back = restore_to_original(one_hot(s, 4), info)
    assert np.array_equal(back.argmax(0), lab)
