"""Surface extraction and directed surface distances on volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from brainseg_cli.metrics.surface import SurfaceDistances, bounding_box, surface, surface_distances


def _random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    mask = ndimage.binary_opening(rng.random(shape) < 0.55)
    mask[tuple(slice(0, 2) for _ in shape)] = True  # touches the image border
    return mask


def _brute_force(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    sp = np.asarray(spacing, dtype=float)
    ep, eg = pred ^ ndimage.binary_erosion(pred), ref ^ ndimage.binary_erosion(ref)
    pts_p, pts_g = np.argwhere(ep) * sp, np.argwhere(eg) * sp
    d = cdist(pts_p, pts_g)
    return d.min(axis=1), d.min(axis=0)


@pytest.mark.parametrize("shape", [(9, 11), (7, 9, 8)])
def test_surface_equals_xor_with_scipy_erosion_border_included(shape) -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = _random_mask(rng, shape)
        np.testing.assert_array_equal(surface(mask), mask ^ ndimage.binary_erosion(mask))
    full = np.ones(shape, dtype=bool)
    interior = tuple(slice(1, -1) for _ in shape)
    assert surface(full)[interior].sum() == 0 and surface(full).sum() == full.size - full[interior].size


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.2, 3.0), (2.0, 0.5, 0.7)])
def test_directed_distances_equal_brute_force(spacing) -> None:
    rng = np.random.default_rng(2)
    for _ in range(4):
        pred = _random_mask(rng, (10, 9, 8))
        ref = np.roll(_random_mask(rng, (10, 9, 8)), 2, axis=0)
        dists = surface_distances(pred, ref, spacing=spacing)
        p2r, r2p = _brute_force(pred, ref, spacing)
        np.testing.assert_allclose(np.sort(dists.pred_to_ref), np.sort(p2r), atol=1e-12)
        np.testing.assert_allclose(np.sort(dists.ref_to_pred), np.sort(r2p), atol=1e-12)


def test_far_apart_masks_use_the_tree() -> None:
    pred = np.zeros((40, 6, 6), dtype=bool)
    ref = np.zeros_like(pred)
    pred[2:5, 2:4, 2:4] = True
    ref[30:33, 2:4, 2:4] = True
    dists = surface_distances(pred, ref, spacing=(0.5, 1.0, 1.0))
    # Facing faces: x 4 -> 30 = 26 voxels * 0.5 mm; farthest: x 2 -> 30 = 28 voxels * 0.5 mm.
    assert dists.pred_to_ref.min() == pytest.approx(13.0)
    assert dists.hd() == pytest.approx(14.0)


def test_shifted_cube_hand_computed() -> None:
    """A 4^3 cube and its copy shifted by 2 voxels along x (1 mm in-plane, 3 mm slices)."""
    ref = np.zeros((12, 8, 8), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.roll(ref, 2, axis=0)
    dists = surface_distances(pred, ref, spacing=(1.0, 1.0, 3.0))
    # Each cube has 56 surface voxels (64 - 2^3 interior); the farthest is 2 voxels = 2 mm away.
    p2r, r2p = _brute_force(pred, ref, (1.0, 1.0, 3.0))
    assert dists.pred_to_ref.size == 56 and dists.ref_to_pred.size == 56
    np.testing.assert_allclose(np.sort(dists.pred_to_ref), np.sort(p2r))
    assert dists.hd() == pytest.approx(2.0)
    assert dists.assd() == pytest.approx(np.concatenate([p2r, r2p]).mean())


def test_hd95_max_and_pooled_definitions() -> None:
    d = SurfaceDistances(pred_to_ref=np.array([0.0, 0.0, 0.0, 10.0]), ref_to_pred=np.zeros(16))
    # max: the larger directed 95th percentile: pred_to_ref -> 0 + 0.85 * 10 (linear) = 8.5.
    assert d.hd95("max") == pytest.approx(8.5)
    # pooled: 20 values, one of them 10: position 0.95 * 19 = 18.05 -> 0 + 0.05 * 10 = 0.5.
    assert d.hd95("pooled") == pytest.approx(0.5)
    assert d.hd() == 10.0
    assert d.assd() == pytest.approx(0.5)
    assert d.nsd(1.0) == pytest.approx(19 / 20)
    with pytest.raises(ValueError, match="unknown HD95 mode"):
        d.hd95("median")


def test_empty_masks_have_no_distances() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    b = a.copy()
    b[1, 1, 1] = True
    assert surface_distances(a, b, spacing=(1, 1, 1)) is None
    assert surface_distances(b, a, spacing=(1, 1, 1)) is None
    assert surface_distances(a, a, spacing=(1, 1, 1)) is None


def test_bounding_box() -> None:
    m = np.zeros((10, 8, 6), dtype=bool)
    assert bounding_box(m) is None
    m[3, 2:4, 5] = True
    assert bounding_box(m) == (slice(3, 4), slice(2, 4), slice(5, 6))
    assert bounding_box(m, margin=2) == (slice(1, 6), slice(0, 6), slice(3, 6))


def test_shape_and_spacing_errors() -> None:
    with pytest.raises(ValueError, match="differs"):
        surface_distances(np.ones((3, 3)), np.ones((3, 4)), spacing=(1, 1))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(np.ones((3, 3)), np.ones((3, 3)), spacing=(1, 1, 1))
