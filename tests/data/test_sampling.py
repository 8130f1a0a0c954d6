"""Patch positions, slice weights and patch extraction (brainseg_cli.data.sampling)."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg_cli.data.augmentation import SpatialTransform
from brainseg_cli.data.sampling import choose_start, extract_patch, slice_weights


def test_random_starts_cover_the_case_and_stay_inside():
    rng = np.random.default_rng(0)
    starts = np.array([choose_start((20, 30, 10), (8, 8, 10), rng)[0] for _ in range(500)])
    assert starts.min(axis=0).tolist() == [0, 0, 0]
    assert starts.max(axis=0).tolist() == [12, 22, 0]


def test_small_cases_are_centred_and_padded():
    start, _ = choose_start((6, 20), (10, 8), np.random.default_rng(0))
    assert start[0] == -2
    data = np.ones((1, 6, 20), np.float32)
    seg = np.ones((6, 20), np.uint8)
    img, lab = extract_patch(data, seg, start, (10, 8))
    assert img.shape == (1, 10, 8) and lab.shape == (10, 8)
    assert img[0, :2].sum() == 0 and img[0, 2:8].min() == 1 and img[0, 8:].sum() == 0


def test_forced_patches_contain_foreground_of_every_class():
    seg = np.zeros((40, 40, 40), np.uint8)
    seg[2:4, 2:4, 2:4] = 1       # near a corner: the patch is moved inside
    seg[30:32, 35:37, 20:22] = 2
    fg = {k: np.argwhere(seg == k) for k in (1, 2)}
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        start, centred = choose_start(seg.shape, (16, 16, 16), rng, foreground=fg, force_foreground=True)
        assert centred and all(0 <= s <= 24 for s in start)
        _, lab = extract_patch(np.zeros((1, *seg.shape), np.float32), seg, start, (16, 16, 16))
        present = set(np.unique(lab)) - {0}
        assert present
        seen |= present
    assert seen == {1, 2}  # classes drawn first, then voxels: the small class is not starved
    # No foreground: a random patch.
    _, centred = choose_start(seg.shape, (16, 16, 16), rng, foreground={}, force_foreground=True)
    assert not centred


def test_slice_weights():
    uniform = slice_weights([0, 5, 0, 10], weighting="uniform", drop_edges=False)
    np.testing.assert_allclose(uniform, 0.25)
    fg = slice_weights([0, 5, 0, 15], weighting="foreground", drop_edges=False)
    # area + 10 % of the mean area (0.5): [0.5, 5.5, 0.5, 15.5] / 22
    np.testing.assert_allclose(fg, np.array([0.5, 5.5, 0.5, 15.5]) / 22)
    dropped = slice_weights([3, 5, 0, 10, 7], weighting="foreground", drop_edges=True)
    assert dropped[0] == dropped[-1] == 0 and dropped.sum() == pytest.approx(1)
    assert slice_weights([0, 0], weighting="foreground", drop_edges=True).tolist() == [0.5, 0.5]
    np.testing.assert_allclose(slice_weights([0, 0, 0], weighting="foreground", drop_edges=False), 1 / 3)


def test_identity_transform_equals_the_plain_crop():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 20, 18, 16)).astype(np.float32)
    seg = rng.integers(0, 4, size=(20, 18, 16)).astype(np.uint8)
    plain = extract_patch(data, seg, (3, -2, 4), (10, 12, 8))
    via = extract_patch(data, seg, (3, -2, 4), (10, 12, 8), transform=SpatialTransform(np.eye(3)))
    np.testing.assert_allclose(via[0], plain[0], atol=1e-5)
    np.testing.assert_array_equal(via[1], plain[1])
    # A 90-degree rotation in the first two axes maps the grid onto itself: exact for labels.
    rot = SpatialTransform(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    img, lab = extract_patch(data, seg, (5, 5, 4), (10, 10, 8), transform=rot)
    ref_img, ref_lab = extract_patch(data, seg, (5, 5, 4), (10, 10, 8))
    np.testing.assert_array_equal(lab, np.rot90(ref_lab, k=-1, axes=(0, 1)))
    np.testing.assert_allclose(img, np.rot90(ref_img, k=-1, axes=(1, 2)), atol=1e-5)


def test_transform_outside_the_case_is_zero():
    data = np.ones((1, 10, 10), np.float32)
    seg = np.ones((10, 10), np.uint8)
    img, lab = extract_patch(data, seg, (100, 100), (4, 4), transform=SpatialTransform(np.eye(2)))
    assert img.sum() == 0 and lab.sum() == 0
