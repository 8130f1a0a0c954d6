"""Augmentation (brainseg_cli.data.augmentation): determinism, alignment, each transform."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg_cli.data.augmentation import (
    AUGMENT_PRESETS,
    AugmentConfig,
    augment_intensity,
    mirror,
    sample_spatial,
)
from brainseg_cli.data.sampling import extract_patch
from brainseg_cli.errors import ConfigError, RegistryError

NONE = AugmentConfig.preset("none")


def _blobs(shape=(40, 40, 32), seed=0):
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for k in (1, 2, 3):
        c = rng.uniform(8, np.array(shape) - 8)
        seg[((grid - c[:, None, None, None]) ** 2).sum(0) < 36] = k
    return seg


def _augmented(config, seed, seg, data, patch=(24, 24, 16), start=(8, 8, 8)):
    rng = np.random.default_rng([seed, 0, 7])
    transform = sample_spatial(config, rng, patch)
    img, lab = extract_patch(data, seg, start, patch, transform=transform)
    img = augment_intensity(img, config, rng)
    return mirror(img, lab, (0, 1, 2), config.p_mirror, rng)


def test_same_seed_same_sample_different_seed_differs():
    seg = _blobs()
    data = np.random.default_rng(1).normal(size=(2, *seg.shape)).astype(np.float32)
    config = AugmentConfig(p_rotation=1.0, p_scale=1.0, p_elastic=0.5, p_noise=1.0, p_gamma=1.0)
    a = _augmented(config, 3, seg, data)
    b = _augmented(config, 3, seg, data)
    c = _augmented(config, 4, seg, data)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("config", [
    AugmentConfig(p_rotation=1.0, p_scale=1.0, p_noise=0.0, p_blur=0.0, p_brightness=0.0, p_contrast=0.0,
                  p_gamma=0.0, p_gamma_inverted=0.0),
    AugmentConfig(p_rotation=1.0, p_scale=1.0, p_elastic=1.0, elastic_alpha=(300.0, 300.0), p_noise=0.0,
                  p_blur=0.0, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0, p_gamma_inverted=0.0),
])
def test_image_and_label_stay_aligned(config):
    """An image equal to its label, augmented spatially, still matches the augmented label."""
    seg = (_blobs() > 0).astype(np.uint8)
    data = seg[None].astype(np.float32)
    for seed in range(5):
        img, lab = _augmented(config, seed, seg, data)
        assert set(np.unique(lab)) <= {0, 1}
        # Linear (image) thresholded at 0.5 and nearest (label) pick the same side of each boundary
        # almost everywhere; a one-voxel misalignment would drop the Dice far lower.
        pred, ref = img[0] >= 0.5, lab == 1
        dice = 2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum())
        assert dice > 0.95
        shifted = np.roll(ref, 1, axis=0)
        assert 2 * np.count_nonzero(pred & shifted) / (pred.sum() + shifted.sum()) < dice - 0.05


def test_mirroring_is_exact_and_shared():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    lab = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    m_img, m_lab = mirror(img, lab, (1,), 1.0, rng)
    np.testing.assert_array_equal(m_img, img[:, :, ::-1])
    np.testing.assert_array_equal(m_lab, lab[:, ::-1])
    same_img, same_lab = mirror(img, lab, (0, 1, 2), 0.0, rng)
    assert same_img is img and same_lab is lab


def test_no_spatial_transform_when_probabilities_are_zero():
    assert sample_spatial(NONE, np.random.default_rng(0), (8, 8)) is None
    assert not NONE.spatial and AugmentConfig().spatial
    t = sample_spatial(AugmentConfig(p_rotation=1.0, rotation_degrees=0.0, p_scale=1.0, scale_range=(2.0, 2.0)),
                       np.random.default_rng(0), (8, 8))
    np.testing.assert_allclose(t.matrix, np.eye(2) / 2.0)
    rot = sample_spatial(AugmentConfig(p_rotation=1.0, rotation_degrees=15.0, p_scale=0.0),
                         np.random.default_rng(0), (8, 8, 8))
    np.testing.assert_allclose(rot.matrix @ rot.matrix.T, np.eye(3), atol=1e-12)
    assert rot.displacement is None


@pytest.mark.parametrize("field", ["p_noise", "p_blur", "p_brightness", "p_contrast", "p_gamma", "p_gamma_inverted"])
def test_each_intensity_transform_changes_the_image(field):
    rng = np.random.default_rng(0)
    img = rng.uniform(0.0, 3.0, size=(2, 12, 12, 12)).astype(np.float32)
    config = NONE.with_changes(**{field: 1.0})
    out = augment_intensity(img.copy(), config, np.random.default_rng(5))
    assert not np.allclose(out, img)
    untouched = augment_intensity(img.copy(), NONE, np.random.default_rng(5))
    np.testing.assert_array_equal(untouched, img)


def test_gamma_and_contrast_keep_statistics_and_range():
    rng = np.random.default_rng(0)
    img = rng.uniform(-1.0, 2.0, size=(1, 16, 16)).astype(np.float32)
    g = augment_intensity(img.copy(), NONE.with_changes(p_gamma=1.0), np.random.default_rng(1))
    assert g.mean() == pytest.approx(img.mean(), abs=1e-4) and g.std() == pytest.approx(img.std(), rel=1e-3)
    c = augment_intensity(img.copy(), NONE.with_changes(p_contrast=1.0), np.random.default_rng(1))
    assert c.min() >= img.min() - 1e-6 and c.max() <= img.max() + 1e-6


def test_presets_and_validation():
    assert AugmentConfig.preset("default") == AugmentConfig()
    lgg = AUGMENT_PRESETS["lgg"]
    assert lgg.scale_range == (0.95, 1.05) and lgg.rotation_degrees == 15.0 and lgg.mirror_left_right_only
    assert lgg.p_noise == 0.0 and lgg.p_rotation == 1.0
    # "brats" is at least as strong as the default in every transform, and stronger in some.
    default, brats = AugmentConfig(), AUGMENT_PRESETS["brats"]
    for name in ("p_rotation", "p_scale", "p_elastic", "p_brightness", "p_contrast", "p_gamma"):
        assert getattr(brats, name) >= getattr(default, name), name
    for name in ("scale_range", "brightness_range", "contrast_range", "gamma_range"):
        (lo, hi), (dlo, dhi) = getattr(brats, name), getattr(default, name)
        assert lo <= dlo and hi >= dhi, name
    assert brats.p_elastic > 0 and brats.contrast_range[0] < default.contrast_range[0]
    from brainseg_cli.cli.training_options import AugmentPreset
    from brainseg_cli.training.config import AUGMENT_PRESET_NAMES

    # Every preset but "none" (that is --no-aug) is a training option and a --aug-preset choice.
    assert set(AUGMENT_PRESET_NAMES) == set(AUGMENT_PRESETS) - {"none"} == {p.value for p in AugmentPreset}
    with pytest.raises(RegistryError, match="unknown augmentation preset 'lgq'"):
        AugmentConfig.preset("lgq")
    with pytest.raises(ConfigError, match="p_rotation must be a probability"):
        AugmentConfig(p_rotation=1.5)
    with pytest.raises(ConfigError, match="scale_range must be a range"):
        AugmentConfig(scale_range=(1.2, 0.8))


def test_brats_preset_keeps_a_real_tumour_aligned(shared_data):
    """The "brats" preset on the largest-tumour axial slice of a real BraTS case: every sample's label
    stays on the tumour it was cut with (image = tumour mask, interpolated linearly, against the label,
    by nearest neighbour; a 2-voxel shift scores about 0.93), and with the real channels the output is
    finite and holds the case's labels only."""
    import nibabel as nib

    folder = shared_data / "brats2018_deepbrainseg" / "Brats18_CBICA_ABM_1"
    seg = np.asarray(nib.load(folder / "Brats18_CBICA_ABM_1_seg.nii.gz").dataobj).astype(np.uint8)
    z = int(np.argmax((seg > 0).sum(axis=(0, 1))))
    seg2d = seg[:, :, z]
    channels = [np.asarray(nib.load(folder / f"Brats18_CBICA_ABM_1_{m}.nii.gz").dataobj)[:, :, z].astype(np.float32)
                for m in ("t1", "t1ce", "t2", "flair")]
    real = np.stack([(c - c.mean()) / (c.std() + 1e-6) for c in channels])
    brats = AUGMENT_PRESETS["brats"]
    spatial_only = brats.with_changes(p_rotation=1.0, p_scale=1.0, p_elastic=1.0, p_noise=0.0, p_blur=0.0,
                                      p_brightness=0.0, p_contrast=0.0, p_gamma=0.0, p_gamma_inverted=0.0)
    ys, xs = np.nonzero(seg2d)
    patch = (96, 96)
    start = (int(ys.mean()) - 48, int(xs.mean()) - 48)
    mask = (seg2d > 0).astype(np.uint8)
    for seed in range(6):
        rng = np.random.default_rng([seed, 1])
        transform = sample_spatial(spatial_only, rng, patch)
        img, lab = extract_patch(mask[None].astype(np.float32), mask, start, patch, transform=transform)
        pred, ref = img[0] >= 0.5, lab == 1
        assert ref.sum() > 100
        assert 2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()) > 0.95

        rng = np.random.default_rng([seed, 2])
        img, lab = extract_patch(real, seg2d, start, patch, transform=sample_spatial(brats, rng, patch))
        img = augment_intensity(img, brats, rng)
        img, lab = mirror(img, lab, (0, 1), brats.p_mirror, rng)
        assert img.shape == (4, *patch) and np.isfinite(img).all()
        assert set(np.unique(lab)) <= set(np.unique(seg2d)) and np.count_nonzero(lab) > 0


def test_grouped_channels_get_one_draw_and_shared_statistics():
    """2.5-D samples: the 3 slices of one modality are brightened, contrasted and gamma-corrected alike."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.5, 3.0, size=(6, 12, 12)).astype(np.float32)
    bright = augment_intensity(img.copy(), NONE.with_changes(p_brightness=1.0), np.random.default_rng(2), group=3)
    factors = (bright / img).reshape(6, -1)
    np.testing.assert_allclose(factors, factors[:, :1].repeat(144, axis=1), rtol=1e-5)
    assert np.allclose(factors[0, 0], factors[:3, 0]) and not np.isclose(factors[0, 0], factors[3, 0])
    contrast = augment_intensity(img.copy(), NONE.with_changes(p_contrast=1.0), np.random.default_rng(2), group=3)
    for block in (slice(0, 3), slice(3, 6)):  # one factor around the block's mean (not per slice), then clipping
        m, lo, hi = img[block].mean(), img[block].min(), img[block].max()
        inside = (contrast[block] > lo + 1e-4) & (contrast[block] < hi - 1e-4) & (np.abs(img[block] - m) > 0.05)
        ratios = (contrast[block] - m)[inside] / (img[block] - m)[inside]
        assert inside.sum() > 100 and np.allclose(ratios, ratios[0], rtol=1e-3)
    one = augment_intensity(img.copy(), NONE.with_changes(p_brightness=1.0), np.random.default_rng(2))
    assert not np.allclose((one / img)[0], (one / img)[1])  # group=1: every channel draws its own factor
    with pytest.raises(ValueError, match="6 channels do not form groups of 4"):
        augment_intensity(img.copy(), NONE, np.random.default_rng(2), group=4)
