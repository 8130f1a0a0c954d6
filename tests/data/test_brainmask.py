"""The brain mask from the border's constant value (brainseg_cli.data.brainmask)."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg_cli.data.brainmask import background_value, background_values, bounding_box, brain_mask


def _ball(shape=(20, 22, 18), radius=6.0, centre=None) -> np.ndarray:
    centre = np.asarray(centre if centre is not None else [(s - 1) / 2 for s in shape])
    grid = np.indices(shape).astype(float)
    return ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_negative_constant_background_is_found():
    ball = _ball()
    rng = np.random.default_rng(0)
    data = np.where(ball, rng.normal(0, 1, ball.shape), -3.25).astype(np.float32)[None]
    assert background_value(data[0]) == pytest.approx(-3.25)
    mask = brain_mask(data)
    assert np.array_equal(mask, ball)


def test_background_needs_half_the_border():
    rng = np.random.default_rng(1)
    noisy = rng.normal(0, 1, (10, 10, 10)).astype(np.float32)
    assert background_value(noisy) is None
    # No channel has a background: the whole volume is brain.
    assert brain_mask(noisy[None]).all()
    # Zero on two of ten Z slices: faces covered 1, 0 and 4 x 0.2, mean 0.3 < 0.5.
    noisy[:, :, :2] = 0.0
    assert background_value(noisy) is None
    assert background_value(noisy, min_border_fraction=0.25) == 0.0


def test_thin_slab_faces_weigh_like_the_others():
    # A 3-slice slab whose first and last slices are mostly brain (value 5): the large Z faces
    # alone would make 5 the background; every face weighing the same keeps 0.
    data = np.zeros((40, 40, 3), np.float32)
    data[2:38, 2:38, :] = 5.0
    assert background_value(data) == 0.0


def test_any_channel_marks_brain_and_holes_are_filled():
    ball = _ball()
    a = np.where(ball, 1.0, 0.0).astype(np.float32)
    b = np.full(ball.shape, -2.0, np.float32)
    # A cavity inside the ball equal to the background in both channels.
    cavity = _ball(radius=2.0)
    a[cavity] = 0.0
    data = np.stack([a, b])
    filled = brain_mask(data)
    assert np.array_equal(filled, ball)
    raw = brain_mask(data, fill_holes=False)
    assert not raw[cavity].any()
    # Channel b (constant everywhere) has a background and never differs: no effect.
    assert background_values(data) == [0.0, -2.0]


def test_slice_axis_fills_holes_open_in_3d():
    # A tube through the volume along Z is not a 3-D hole (it reaches the border) but is a hole
    # in every axial slice.
    ball = _ball(shape=(20, 20, 20), radius=8.0)
    data = ball.astype(np.float32)
    data[9:11, 9:11, :] = 0.0
    open3d = brain_mask(data[None])
    assert not open3d[10, 10, 10]
    per_slice = brain_mask(data[None], slice_axis=2)
    assert per_slice[10, 10, 10]
    # Along another axis the tube is not enclosed in the slices' plane.
    assert not brain_mask(data[None], slice_axis=0)[10, 10, 10]


def test_bounding_box():
    mask = np.zeros((5, 6, 7), bool)
    mask[1:3, 2, 4:7] = True
    assert bounding_box(mask) == ((1, 3), (2, 3), (4, 7))
    assert bounding_box(np.zeros((2, 3), bool)) == ((0, 2), (0, 3))


def test_deepmedic_brainmask_matches(shared_data):
    """Real z-scored BraTS 2015 case: the border rule reproduces the shipped brainmask.nii.gz."""
    from brainseg_cli.io import Image, read_image

    folder = shared_data / "brats2015_deepmedic" / "train" / "brats_2013_pat0005_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    image = Image.stack([read_image(folder / "Flair_subtrMeanDivStd.nii.gz"),
                         read_image(folder / "T1c_subtrMeanDivStd.nii.gz")])
    reference = np.asarray(read_image(folder / "brainmask.nii.gz").array) > 0.5
    backgrounds = background_values(image.array)
    assert all(bg is not None and bg < -1.0 for bg in backgrounds)
    mask = brain_mask(image.array, backgrounds=backgrounds)
    dice = 2 * np.count_nonzero(mask & reference) / (mask.sum() + reference.sum())
    assert dice > 0.98
