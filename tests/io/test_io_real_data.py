"""Every image format in ../shared/data reads with the right geometry and round-trips exactly.

Each file is read once per module (module-scoped fixtures); round trips use a crop of the real
volume (origin moved accordingly) so the tests stay fast.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg_cli.errors import InputError
from brainseg_cli.io import Image, read_image, write_image

BRATS18_CASE = "Brats18_2013_11_1"
BRATS15_CASE = "train/brats_2013_pat0005_1"
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def folder(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def counts(array: np.ndarray) -> dict[int, int]:
    values, n = np.unique(array, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, n)}


def crop(image: Image, start: tuple[int, ...], size: tuple[int, ...]) -> Image:
    """Crop the spatial axes, moving the origin to the first kept voxel."""
    sl = tuple(slice(s, s + n) for s, n in zip(start, size))
    array = image.array[(slice(None), *sl)] if image.has_channels else image.array[sl]
    origin = np.asarray(image.origin) + image.direction @ (np.asarray(image.spacing) * start)
    return Image(array, image.spacing, tuple(origin), image.direction)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def brats18(shared_data: Path) -> dict[str, Image]:
    case = folder(shared_data, "brats2018_deepbrainseg") / BRATS18_CASE
    return {m: read_image(case / f"{BRATS18_CASE}_{m}.nii.gz")
            for m in ("t1", "t1ce", "t2", "flair", "seg")}


@pytest.fixture(scope="module")
def brats15(shared_data: Path) -> dict[str, Image]:
    case = folder(shared_data, "brats2015_deepmedic") / BRATS15_CASE
    return {name: read_image(case / f"{name}.nii.gz")
            for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass", "brainmask")}


@pytest.fixture(scope="module")
def msd(shared_data: Path) -> dict[str, Image]:
    task = folder(shared_data, "msd_task01_from_brats2018") / "Task01_BrainTumour"
    return {"image": read_image(task / "imagesTr" / "BRATS_002.nii.gz"),
            "label": read_image(task / "labelsTr" / "BRATS_002.nii.gz")}


@pytest.fixture(scope="module")
def brats12(shared_data: Path) -> dict[str, Image]:
    case = folder(shared_data, "brats2012_mha") / "BRATS_HG0001"
    return {m: read_image(case / f"BRATS_HG0001_{m}.mha") for m in ("FLAIR", "truth")}


@pytest.fixture(scope="module")
def mricrop(shared_data: Path) -> dict[str, Image]:
    base = folder(shared_data, "itksnap_mricrop")
    return {"orig": read_image(base / "MRIcrop-orig.gipl.gz"),
            "seg": read_image(base / "MRIcrop-seg.gipl.gz")}


# ------------------------------------------------------------------------------ known geometry
def test_brats2018_nifti(shared_data: Path, brats18: dict[str, Image]) -> None:
    seg = brats18["seg"]
    assert seg.array.shape == (240, 240, 155) and seg.array.dtype == np.int16
    np.testing.assert_allclose(seg.affine, BRATS_AFFINE, atol=1e-6)
    for m, img in brats18.items():
        img.check_same_grid(seg, f"{BRATS18_CASE} {m} vs seg")
        assert img.array.dtype == np.int16
    assert counts(seg.array) == {0: 8788743, 1: 45839, 2: 73741, 4: 19677}
    # voxels and world coordinates agree with nibabel
    nii = nib.load(shared_data / "brats2018_deepbrainseg" / BRATS18_CASE
                   / f"{BRATS18_CASE}_flair.nii.gz")
    np.testing.assert_allclose(brats18["flair"].affine, nii.affine, atol=1e-6)
    np.testing.assert_array_equal(brats18["flair"].array, np.asanyarray(nii.dataobj))


def test_brats2015_nifti_forms_and_scaled_mask(shared_data: Path, brats15: dict[str, Image]) -> None:
    case = shared_data / "brats2015_deepmedic" / BRATS15_CASE
    flair, label, mask = brats15["Flair_subtrMeanDivStd"], brats15["OTMultiClass"], brats15["brainmask"]
    # images: qform_code 0 / sform_code 2; label: qform_code 2 / sform_code 1 -> same world
    for name, img in brats15.items():
        np.testing.assert_allclose(img.affine, nib.load(case / f"{name}.nii.gz").affine, atol=1e-6)
        np.testing.assert_allclose(img.affine, BRATS_AFFINE, atol=1e-6)
        img.check_same_grid(label, f"{name} vs label")
    hdr = nib.load(case / "OTMultiClass.nii.gz").header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (2, 1)
    # int32 on disk with scl_slope/scl_inter: ITK gives exactly 0/1
    assert mask.array.dtype == np.float32 and set(np.unique(mask.array)) == {0.0, 1.0}
    assert flair.array.dtype == np.float32 and flair.array.min() < -2.5
    assert counts(label.array) == {0: 8847318, 1: 23030, 2: 35416, 3: 3882, 4: 18354}


def test_msd_4d_nifti(shared_data: Path, msd: dict[str, Image]) -> None:
    image, label = msd["image"], msd["label"]
    assert image.array.shape == (4, 240, 240, 155) and image.array.dtype == np.float32
    assert image.num_channels == 4 and image.spatial_shape == (240, 240, 155)
    image.check_same_grid(label, "BRATS_002 image vs label")
    np.testing.assert_allclose(image.affine, BRATS_AFFINE, atol=1e-6)
    assert set(np.unique(label.array)) == {0, 1, 2, 3}
    nii = nib.load(shared_data / "msd_task01_from_brats2018" / "Task01_BrainTumour"
                   / "imagesTr" / "BRATS_002.nii.gz")
    assert nii.shape == (240, 240, 155, 4)
    np.testing.assert_array_equal(image.array[2, 100:140, 90:130, 70:80],
                                  nii.dataobj[100:140, 90:130, 70:80, 2])


def test_msd_appledouble_is_clean_error(shared_data: Path) -> None:
    path = (folder(shared_data, "msd_task01_from_brats2018") / "Task01_BrainTumour" / "imagesTr"
            / "._BRATS_001.nii.gz")
    with pytest.raises(InputError, match=r"\._BRATS_001\.nii\.gz: .*AppleDouble"):
        read_image(path)


def test_brats2012_mha(brats12: dict[str, Image]) -> None:
    flair, truth = brats12["FLAIR"], brats12["truth"]
    assert truth.array.shape == (160, 216, 176) and truth.array.dtype == np.int16
    np.testing.assert_allclose(truth.origin, (-76.368, -124.94, -50.735), atol=1e-3)
    np.testing.assert_allclose(truth.spacing, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(truth.direction, np.eye(3))
    flair.check_same_grid(truth, "BRATS_HG0001 FLAIR vs truth")
    assert counts(truth.array) == {0: 5973741, 1: 52076, 2: 56743}


def test_itksnap_gipl(mricrop: dict[str, Image]) -> None:
    orig, seg = mricrop["orig"], mricrop["seg"]
    assert orig.array.shape == (78, 110, 64) and orig.array.dtype == np.int16
    assert seg.array.dtype == np.uint8
    assert orig.origin == (0.0, 0.0, 0.0) and orig.spacing == (1.0, 1.0, 1.0)
    c = counts(seg.array)
    assert c[7] == 7661 and c[8] == 16841 and c[0] == 493227
    assert 0 <= orig.array.min() and orig.array.max() == 269


def test_kaggle_tiff_slice(shared_data: Path) -> None:
    root = folder(shared_data, "lgg_kaggle3m_from_brats2018") / "kaggle_3m" / "TCGA_BX_0001_20180111"
    img = read_image(root / "TCGA_BX_0001_20180111_20.tif")
    assert img.array.shape == (3, 256, 256) and img.array.dtype == np.uint8 and img.spatial_dims == 2
    mask = read_image(root / "TCGA_BX_0001_20180111_20_mask.tif")
    assert mask.array.shape == (256, 256) and set(np.unique(mask.array)) <= {0, 255}


def test_mrbrains_anisotropic(shared_data: Path) -> None:
    base = folder(shared_data, "mrbrains18_from_voxelmorph") / "training" / "1"
    seg = read_image(base / "segm.nii.gz")
    assert seg.spatial_shape == (240, 240, 48)
    np.testing.assert_allclose(seg.spacing, (0.958, 0.958, 3.0), atol=1e-3)
    np.testing.assert_allclose(seg.affine, nib.load(base / "segm.nii.gz").affine, atol=1e-5)


def test_npz_is_not_an_image(shared_data: Path) -> None:
    path = folder(shared_data, "voxelmorph_test_scan") / "test_scan.npz"
    with pytest.raises(InputError, match=r"test_scan\.npz: unsupported image file ending"):
        read_image(path)


# ------------------------------------------------------------------------------ round trips
SOURCES = {
    "brats2018-seg": ("brats18", "seg", (90, 90, 60), (64, 64, 40)),
    "brats2018-flair": ("brats18", "flair", (90, 90, 60), (64, 64, 40)),
    "brats2015-flair": ("brats15", "Flair_subtrMeanDivStd", (80, 80, 50), (48, 48, 32)),
    "brats2015-mask": ("brats15", "brainmask", (80, 80, 50), (48, 48, 32)),
    "msd-4d": ("msd", "image", (100, 100, 60), (40, 40, 24)),
    "brats2012-t": ("brats12", "truth", (50, 60, 60), (64, 64, 48)),
    "mricrop": ("mricrop", "orig", (0, 0, 0), (78, 110, 64)),
}


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_real_round_trip(request: pytest.FixtureRequest, tmp_path: Path, source: str,
                         ext: str) -> None:
    fixture, key, start, size = SOURCES[source]
    image = crop(request.getfixturevalue(fixture)[key], start, size)
    write_image(image, tmp_path / f"x{ext}")
    back = read_image(tmp_path / f"x{ext}")
    assert back.array.dtype == image.array.dtype and back.array.shape == image.array.shape
    np.testing.assert_array_equal(back.array, image.array)
    image.check_same_grid(back, f"{source} via {ext}", tol=1e-5)


def test_crop_origin_matches_world(brats12: dict[str, Image]) -> None:
    """The cropped image's voxel 0 sits where voxel `start` of the full image did."""
    full = brats12["truth"]
    part = crop(full, (50, 60, 60), (8, 8, 8))
    np.testing.assert_allclose(part.affine @ [0, 0, 0, 1], full.affine @ [50, 60, 60, 1])
