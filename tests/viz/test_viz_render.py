"""Pixel-level building blocks of the overlays: orientation, slicing, scaling, contours, windowing."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg_cli.viz.render import (
    Layer,
    display_index,
    display_size,
    extract_slice,
    inner_contour,
    intensity_window,
    outer_contour,
    render_panel,
    select_slices,
    to_grey,
    view_axes,
    world_axes,
)

LPS_IDENTITY = np.eye(3)
# BraTS/NIfTI "RAS-stored" data: index axes run towards R, A, S, i.e. direction diag(-1, -1, 1) in LPS
RAS_STORED = np.diag([-1.0, -1.0, 1.0])


def test_identity_axial_is_radiological():
    axes = view_axes(LPS_IDENTITY, "axial")
    # X runs to patient left = screen right; Y runs posterior = screen down; no flips
    assert (axes.slice_axis, axes.row_axis, axes.col_axis) == (2, 1, 0)
    assert (axes.row_flip, axes.col_flip) == (False, False)
    assert (axes.left, axes.right, axes.top, axes.bottom) == ("R", "L", "A", "P")


def test_ras_stored_volume_is_flipped_on_both_screen_axes():
    axes = view_axes(RAS_STORED, "axial")
    assert (axes.row_flip, axes.col_flip) == (True, True)
    vol = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    plane = extract_slice(vol, axes, 1)
    # screen top-left shows the most anterior, most right voxel = last Y, last X index
    assert plane[0, 0] == vol[3, 2, 1]
    assert plane.shape == (3, 4)


@pytest.mark.parametrize("view, expected", [
    ("coronal", (1, 2, True, 0, False, ("R", "L", "S", "I"))),
    ("sagittal", (0, 2, True, 1, False, ("A", "P", "S", "I"))),
])
def test_coronal_and_sagittal_put_superior_on_top(view, expected):
    axes = view_axes(LPS_IDENTITY, view)
    assert (axes.slice_axis, axes.row_axis, axes.row_flip, axes.col_axis, axes.col_flip,
            (axes.left, axes.right, axes.top, axes.bottom)) == expected


def test_permuted_direction_finds_the_axial_axis():
    # index axis 0 runs superior, 1 runs left, 2 runs posterior (a sagittally stored scan)
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert world_axes(direction) == ((2, 0, 1), (1, 1, 1))
    axes = view_axes(direction, "axial")
    assert (axes.slice_axis, axes.row_axis, axes.col_axis) == (0, 2, 1)


def test_oblique_direction_uses_nearest_axes():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    assert world_axes(rot) == ((0, 1, 2), (1, 1, 1))


def test_display_index_integer_and_fractional_scale():
    assert display_size(10, 1.0, 3.0) == 30
    np.testing.assert_array_equal(display_index(3, 6), [0, 0, 1, 1, 2, 2])
    # 3 mm slices next to 1 mm pixels: 4 slices over 12 px
    assert display_size(4, 3.0, 1.0) == 12
    idx = display_index(5, 8)
    assert idx[0] == 0 and idx[-1] == 4 and np.all(np.diff(idx) >= 0) and set(idx) == set(range(5))


def test_inner_and_outer_contours_of_a_square():
    mask = np.zeros((8, 9), bool)
    mask[2:6, 3:7] = True
    inner = inner_contour(mask)
    expected = mask.copy()
    expected[3:5, 4:6] = False
    np.testing.assert_array_equal(inner, expected)
    outer = outer_contour(mask)
    ring = np.zeros_like(mask)
    ring[1, 3:7] = ring[6, 3:7] = True
    ring[2:6, 2] = ring[2:6, 7] = True
    np.testing.assert_array_equal(outer, ring)


def test_mask_touching_the_border_has_its_border_pixels_as_contour():
    mask = np.ones((4, 4), bool)
    assert inner_contour(mask).sum() == 12
    assert not outer_contour(mask).any()


def test_window_ignores_masked_background():
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 20), np.float32)
    brain = rng.uniform(100, 200, (10, 10, 10)).astype(np.float32)
    vol[5:15, 5:15, 5:15] = brain
    lo, hi = intensity_window(vol)
    np.testing.assert_allclose((lo, hi), np.percentile(brain, [1, 99]), rtol=1e-6)
    # no dominant background: all voxels count
    flat = rng.uniform(0, 1, (10, 10, 10))
    np.testing.assert_allclose(intensity_window(flat), np.percentile(flat, [1, 99]), rtol=1e-5)
    assert intensity_window(np.full((3, 3, 3), 7.0)) == (7.0, 8.0)


def test_to_grey_maps_window_to_full_range():
    grey = to_grey(np.array([[0.0, 10.0, 20.0, 30.0]]), (10.0, 20.0))
    np.testing.assert_array_equal(grey, [[0, 0, 255, 255]])


def test_select_slices_most_foreground_ascending():
    counts = np.array([0, 5, 9, 1, 9, 0, 2])
    assert select_slices(counts, 3) == [1, 2, 4]
    assert select_slices(counts, 1) == [2]  # tie goes to the lower index
    assert select_slices(counts, 50) == list(range(7))
    assert select_slices(np.zeros(9), 1) == [4]
    assert select_slices(np.zeros(9), 2) == [3, 5]


def test_render_panel_maps_voxels_to_pixels_with_aspect():
    grey = np.full((6, 5, 4), 128, np.uint8)
    mask = np.zeros((6, 5, 4), bool)
    mask[2:4, 1:3, 1:3] = True
    axes = view_axes(LPS_IDENTITY, "coronal")  # rows: Z (3 mm, flipped), cols: X (1 mm)
    panel = render_panel(grey_volume=grey, spacing=(1.0, 1.0, 3.0), axes=axes, index=1, px_per_mm=2.0,
                         layers=[Layer(mask, (255, 0, 0))], title="t", kind="overlay")
    assert panel.rgb.shape == (4 * 3 * 2, 6 * 2, 3)
    red = np.all(panel.rgb == (255, 0, 0), axis=2)
    rows, cols = np.nonzero(red)
    # Z 1-2 with Z flipped: screen rows (4-1-2)*6 .. (4-1-1)*6+5 = 6..17; X 2-3: cols 4..7
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 17, 4, 7)
    np.testing.assert_array_equal(panel.row_voxels[[0, 5, 6, 23]], [3, 3, 2, 0])
    np.testing.assert_array_equal(panel.col_voxels[[0, 1, 2, 11]], [0, 0, 1, 5])
