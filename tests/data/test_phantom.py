"""The phantom generator and its dataset / BraTS / Kaggle-LGG writers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainseg_cli.data.phantom import (
    CONTRASTS,
    INTENSITY_SCALE,
    TISSUE_LABELS,
    TUMOUR_LABELS,
    _case_seed,
    make_phantom,
    write_phantom_brats,
    write_phantom_dataset,
    write_phantom_lgg,
)
from brainseg_cli.errors import ConfigError, InputError, RegistryError
from brainseg_cli.io import read_image
from brainseg_cli.io.slices import list_lgg_patients, read_lgg_patient

SMALL = (40, 40, 32)


@pytest.fixture(scope="module")
def clean():
    """A noise- and bias-free phantom with all five modalities."""
    return make_phantom(seed=3, shape=(96, 96, 64), channels=("T1", "T1c", "T2", "FLAIR", "IR"),
                        noise=0.0, bias=0.0)


def test_deterministic_per_seed() -> None:
    a, b, c = (make_phantom(seed=s, shape=SMALL) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    np.testing.assert_array_equal(a.tissue.array, b.tissue.array)
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert not np.array_equal(a.image.array, c.image.array)


def test_shapes_types_and_label_sets(clean) -> None:
    assert clean.image.array.shape == (5, 96, 96, 64) and clean.image.array.dtype == np.float32
    assert clean.channels == ("T1", "T1c", "T2", "FLAIR", "IR")
    assert clean.labels.array.dtype == np.uint8 and clean.tissue.array.dtype == np.uint8
    assert set(np.unique(clean.tissue.array)) == set(TISSUE_LABELS.values())
    assert set(np.unique(clean.labels.array)) == set(TUMOUR_LABELS.values())
    clean.image.check_same_grid(clean.labels, "labels")
    clean.image.check_same_grid(clean.tissue, "tissue")
    healthy = make_phantom(seed=3, shape=SMALL, tumour=False)
    assert not healthy.labels.array.any()


@pytest.mark.parametrize("seed", range(4))
def test_tumour_labels_nested(seed: int) -> None:
    labels = make_phantom(seed=seed).labels.array
    counts = np.bincount(labels.ravel(), minlength=4)
    assert (counts[1:] > 0).all(), counts
    assert counts[1] > counts[3] > 0  # edema is the largest region
    # necrotic core (2) is wrapped in enhancing rim (3); the tumour core is wrapped in edema
    around_necrosis = labels[ndimage.binary_dilation(labels == 2)]
    assert set(np.unique(around_necrosis)) <= {2, 3}
    around_core = labels[ndimage.binary_dilation(labels >= 2)]
    assert 0 not in around_core
    tissue = make_phantom(seed=seed).tissue.array
    assert (tissue[labels > 0] > 0).all()  # tumours only inside the brain


def test_intensities_follow_contrast_table(clean) -> None:
    tissue, labels = clean.tissue.array, clean.labels.array
    # interior voxels only (the partial-volume blur touches region borders)
    masks = {name: ndimage.binary_erosion((tissue == value) & (labels == 0), iterations=2)
             for name, value in (("CSF", 1), ("grey matter", 2), ("white matter", 3))}
    masks.update({name: ndimage.binary_erosion(labels == value, iterations=2)
                  for name, value in (("edema", 1), ("necrosis", 2), ("enhancing", 3))})
    assert all(m.sum() > 20 for m in masks.values()), {k: int(m.sum()) for k, m in masks.items()}
    for c, channel in enumerate(clean.channels):
        volume = clean.image.array[c]
        for region, mask in masks.items():
            expected = CONTRASTS[channel][region] * INTENSITY_SCALE
            assert np.median(volume[mask]) == pytest.approx(expected, rel=0.02), (channel, region)
    med = {(ch, r): np.median(clean.image.array[c][m])
           for c, ch in enumerate(clean.channels) for r, m in masks.items()}
    assert med["T1", "white matter"] > med["T1", "grey matter"] > med["T1", "CSF"]
    assert med["T2", "CSF"] > med["T2", "grey matter"] > med["T2", "white matter"]
    assert med["FLAIR", "CSF"] < med["FLAIR", "white matter"]
    assert med["FLAIR", "edema"] == max(v for (ch, _), v in med.items() if ch == "FLAIR")
    assert med["T1c", "enhancing"] == max(v for (ch, _), v in med.items() if ch == "T1c")
    assert med["T1c", "enhancing"] > 1.5 * med["T1", "enhancing"]
    assert med["T2", "edema"] > med["T2", "white matter"]
    assert med["IR", "white matter"] - med["IR", "grey matter"] > \
        med["T1", "white matter"] - med["T1", "grey matter"]


def test_background_is_zero_and_skull_option() -> None:
    plain = make_phantom(seed=1, shape=SMALL)
    outside = plain.tissue.array == 0
    assert (plain.image.array[:, outside] == 0).all()
    assert (plain.image.array[:, ~outside] > 0).all()
    skull = make_phantom(seed=1, shape=SMALL, skull=True)
    ring = (skull.tissue.array == 0) & (skull.image.array[0] > 0)
    assert ring.sum() > 0.05 * ring.size  # skull and scalp voxels, labelled background
    assert skull.image.array[0, 0, 0, 0] == 0  # the corner stays outside the head
    assert (skull.tissue.array > 0).sum() < (plain.tissue.array > 0).sum()


def test_bias_and_noise_options() -> None:
    def wm_interior(ph):
        m = ndimage.binary_erosion((ph.tissue.array == 3) & (ph.labels.array == 0), iterations=3)
        return ph.image.array[0][m]

    flat = wm_interior(make_phantom(seed=2, noise=0.0, bias=0.0))
    assert np.ptp(flat) < 0.05
    noisy = make_phantom(seed=2, noise=0.05, bias=0.0)
    assert 30 < wm_interior(noisy).std() < 70  # Rician, sigma = 0.05 * 1000
    biased = make_phantom(seed=2, noise=0.0, bias=0.3)
    values = wm_interior(biased)
    assert values.std() / values.mean() > 0.05
    # the bias field is smooth: neighbouring voxels differ far less than with noise
    vol_b, vol_n = biased.image.array[0], noisy.image.array[0]
    m = ndimage.binary_erosion(biased.tissue.array == 3, iterations=3) & (biased.labels.array == 0)
    step_b = np.abs(np.diff(vol_b, axis=0))[m[1:]].mean()
    step_n = np.abs(np.diff(vol_n, axis=0))[m[1:]].mean()
    assert step_b < 0.35 * step_n


def test_geometry_honoured() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    ph = make_phantom(seed=0, shape=(32, 28, 20), spacing=(0.9, 0.9, 3.0), direction=direction,
                      origin=(10.0, -20.0, 5.0))
    for img in (ph.image, ph.labels, ph.tissue):
        assert img.spatial_shape == (32, 28, 20)
        assert img.spacing == (0.9, 0.9, 3.0) and img.origin == (10.0, -20.0, 5.0)
        np.testing.assert_allclose(img.direction, direction)


def test_anatomy_is_resolution_independent() -> None:
    fine = make_phantom(seed=4, shape=(64, 64, 48)).labels.array
    coarse = make_phantom(seed=4, shape=(32, 32, 24)).labels.array
    down = fine[::2, ::2, ::2] > 0
    dice = 2 * (down & (coarse > 0)).sum() / (down.sum() + (coarse > 0).sum())
    assert dice > 0.85


def test_two_dimensional_phantom() -> None:
    ph = make_phantom(seed=0, shape=(48, 40), spacing=(0.5, 0.5), channels=("flair", "T1"))
    assert ph.channels == ("FLAIR", "T1")
    assert ph.image.array.shape == (2, 48, 40) and ph.image.spatial_dims == 2
    assert ph.labels.array.shape == (48, 40) and ph.labels.spacing == (0.5, 0.5)
    assert set(np.unique(ph.tissue.array)) == {0, 1, 2, 3}
    assert ph.labels.array.any()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shape": (4, 64, 64)}, ConfigError, "at least 8"),
        ({"shape": (16, 16, 16, 16)}, ConfigError, "2 or 3 sizes"),
        ({"shape": (16, 16), "spacing": (1, 1, 1)}, ConfigError, "does not match"),
        ({"noise": -0.1}, ConfigError, "noise and bias"),
        ({"channels": ("T1", "flari")}, RegistryError, "did you mean 'flair'"),
        ({"channels": ("T1", "t1")}, ConfigError, "given twice"),
        ({"channels": "T1"}, ConfigError, "non-empty list"),
    ],
)
def test_make_phantom_rejects_bad_options(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        make_phantom(seed=0, **kwargs)


# ------------------------------------------------------------------------------ writers
def test_write_phantom_dataset_tumour(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "Dataset001_Phantom", n_cases=2, seed=5, shape=SMALL,
                                 spacing=(1.0, 1.0, 2.0))
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "edema": 1, "non-enhancing tumour": 2,
                              "enhancing tumour": 3}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["brainseg"]["source"] == "phantom"
    assert meta["brainseg"]["regions"] == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    names = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert names == [f"phantom_{i:03d}_{c:04d}.nii.gz" for i in range(2) for c in range(4)]
    assert (root / "imagesTs").is_dir()
    label = read_image(root / "labelsTr" / "phantom_001.nii.gz")
    flair = read_image(root / "imagesTr" / "phantom_001_0003.nii.gz")
    flair.check_same_grid(label, "phantom_001")
    assert label.spacing == (1.0, 1.0, 2.0)
    expected = make_phantom(seed=_case_seed(5, 1), shape=SMALL, spacing=(1.0, 1.0, 2.0))
    np.testing.assert_array_equal(label.array, expected.labels.array)
    np.testing.assert_array_equal(flair.array, expected.image.array[3])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_write_phantom_dataset_loads_with_layout(tmp_path: Path) -> None:
    layout = pytest.importorskip("brainseg_cli.data.layout")
    root = write_phantom_dataset(tmp_path / "ds", n_cases=1, seed=0, kind="tissue", shape=SMALL)
    info = layout.load_dataset(root)
    assert info.channels == ("T1", "FLAIR", "IR")
    assert info.labels == TISSUE_LABELS and info.training_cases == ("phantom_000",)
    assert not info.regions and "regions" not in info.extra
    label = read_image(info.label_path("phantom_000"))
    assert set(np.unique(label.array)) == {0, 1, 2, 3}


def test_write_phantom_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown phantom kind 'tumor'.*did you mean 'tumour'"):
        write_phantom_dataset(tmp_path / "a", n_cases=1, seed=0, kind="tumor")
    with pytest.raises(ConfigError, match="n_cases must be at least 1"):
        write_phantom_dataset(tmp_path / "a", n_cases=0, seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(InputError, match="already exists"):
        write_phantom_dataset(tmp_path / "full", n_cases=1, seed=0, shape=SMALL)
    assert (tmp_path / "full" / "x").read_text() == "keep"


@pytest.mark.parametrize(
    "generation, case, sep, suffixes, ext, values, preset",
    [
        ("2018", "Brats18_Phantom_001_1", "_", ("t1", "t1ce", "t2", "flair", "seg"), ".nii.gz",
         {0, 1, 2, 4}, "brats2017"),
        ("2023", "BraTS-GLI-00001-000", "-", ("t1n", "t1c", "t2w", "t2f", "seg"), ".nii.gz",
         {0, 1, 2, 3}, "brats2023"),
        ("2012", "BRATS_HG0001", "_", ("T1", "T1C", "T2", "FLAIR", "truth"), ".mha",
         {0, 1, 2}, None),
    ],
)
def test_write_phantom_brats(tmp_path: Path, generation, case, sep, suffixes, ext, values,
                             preset) -> None:
    root = write_phantom_brats(tmp_path / "brats", n_cases=2, seed=9, generation=generation,
                               shape=SMALL)
    assert sorted(p.name for p in (root / case).iterdir()) == sorted(
        f"{case}{sep}{s}{ext}" for s in suffixes)
    seg = read_image(root / case / f"{case}{sep}{suffixes[-1]}{ext}")
    t1 = read_image(root / case / f"{case}{sep}{suffixes[0]}{ext}")
    assert t1.array.dtype == np.int16 and t1.array.max() > 500
    t1.check_same_grid(seg, case)
    assert set(np.unique(seg.array)) == values
    canonical = make_phantom(seed=_case_seed(9, 1), shape=SMALL).labels.array
    if preset is not None:
        from brainseg_cli.data.labelmaps import get_label_map

        np.testing.assert_array_equal(get_label_map(preset).apply(seg.array, what=case), canonical)
        affine = nib.load(root / case / f"{case}{sep}{suffixes[0]}{ext}").affine
        np.testing.assert_allclose(affine, [[-1, 0, 0, 0], [0, -1, 0, SMALL[1] - 1],
                                            [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-6)
    else:  # 2012: 1 edema, 2 active tumour (canonical core 2 and 3)
        np.testing.assert_array_equal(seg.array == 1, canonical == 1)
        np.testing.assert_array_equal(seg.array == 2, canonical >= 2)


def test_write_phantom_brats_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown BraTS generation '2019'"):
        write_phantom_brats(tmp_path / "b", n_cases=1, seed=0, generation="2019")
    with pytest.raises(ConfigError, match="3-D"):
        write_phantom_brats(tmp_path / "b", n_cases=1, seed=0, shape=(32, 32))


def test_write_phantom_lgg(tmp_path: Path) -> None:
    root = write_phantom_lgg(tmp_path / "kaggle_3m", n_patients=2, seed=1, shape=(48, 40, 12))
    patients = list_lgg_patients(root)
    assert [p.name for p in patients] == ["TCGA_PH_0001_20000101", "TCGA_PH_0002_20000101"]
    assert (root / "data.csv").read_text().splitlines() == ["Patient", "TCGA_PH_0001",
                                                             "TCGA_PH_0002"]
    p = read_lgg_patient(patients[1])
    assert p.slice_numbers == list(range(1, 13))
    assert p.image.array.shape == (3, 48, 40, 12) and p.image.array.dtype == np.uint8
    ph = make_phantom(seed=_case_seed(1, 2), shape=(48, 40, 12), channels=("T1", "FLAIR", "T1c"))
    np.testing.assert_array_equal(p.mask.array, (ph.labels.array > 0).astype(np.uint8))
    assert (p.image.array[:, ph.tissue.array == 0] == 0).all()
    for c in range(3):  # scaled by the 99.5th percentile: a few voxels saturate at 255
        inside = p.image.array[c][ph.tissue.array > 0]
        assert inside.max() == 255 and 0.002 < (inside == 255).mean() < 0.02
    flair = p.image.array[1].astype(float)
    assert flair[p.mask.array == 1].mean() > flair[(ph.tissue.array > 0) & (p.mask.array == 0)].mean()
