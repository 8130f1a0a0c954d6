"""Finding cases in every accepted input layout and reading them in the model's channel order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from brainseg_cli.errors import GeometryError, InputError
from brainseg_cli.inference.inputs import channel_from_name, discover_cases, load_case
from brainseg_cli.io import Image, write_image

MODEL = ["T1", "T1c", "T2", "FLAIR"]


def _vol(value: float, shape=(6, 5, 4), spacing=(1.0, 1.0, 2.0)) -> Image:
    return Image(np.full(shape, value, np.float32), spacing, (1.0, 2.0, 3.0))


def _brats_case(folder, case, names=("t1", "t1ce", "t2", "flair"), sep="_", ext=".nii.gz"):
    folder.mkdir(parents=True, exist_ok=True)
    values = {"t1": 1, "t1ce": 2, "t1n": 1, "t1c": 2, "t2": 3, "t2w": 3, "flair": 4, "t2f": 4}
    for n in names:
        write_image(_vol(values[n]), folder / f"{case}{sep}{n}{ext}")
    write_image(Image(np.zeros((6, 5, 4), np.uint8), (1.0, 1.0, 2.0), (1.0, 2.0, 3.0)), folder / f"{case}{sep}seg{ext}")


@pytest.mark.parametrize("stem,expected", [
    ("Brats18_2013_20_1_t1ce", ("T1c", "Brats18_2013_20_1")),
    ("BraTS-GLI-00000-000-t2f", ("FLAIR", "BraTS-GLI-00000-000")),
    ("BRATS_HG0001_T1C", ("T1c", "BRATS_HG0001")),
    ("T1c_subtrMeanDivStd", ("T1c", "")),
    ("VSD.Brain.XX.O.MR_Flair.54512", ("FLAIR", "VSD.Brain.XX.O.MR")),
    ("Brats18_2013_20_1_seg", None),
    ("BRATS_001", None),
])
def test_channel_from_name(stem, expected):
    assert channel_from_name(stem) == expected


def test_brats_case_folders(tmp_path):
    _brats_case(tmp_path / "in" / "Brats18_A", "Brats18_A")
    _brats_case(tmp_path / "in" / "BraTS-GLI-00001-000", "BraTS-GLI-00001-000", names=("t1n", "t1c", "t2w", "t2f"), sep="-")
    (tmp_path / "in" / "notes").mkdir()  # a folder without images is ignored
    cases = discover_cases(tmp_path / "in")
    assert [c.case for c in cases] == ["BraTS-GLI-00001-000", "Brats18_A"]
    assert all(c.layout == "named" and c.output_ext == ".nii.gz" for c in cases)
    for c in cases:
        loaded = load_case(c, channels=MODEL)
        assert loaded.image.array.shape == (4, 6, 5, 4) and loaded.image.array.dtype == np.float32
        np.testing.assert_array_equal(loaded.image.array[:, 0, 0, 0], [1, 2, 3, 4])
        assert loaded.image.spacing == (1.0, 1.0, 2.0) and loaded.image.origin == (1.0, 2.0, 3.0)
    # another model order, and a two-channel model: extra channels are an error naming the case
    loaded = load_case(cases[1], channels=["FLAIR", "T1", "T1c", "T2"])
    np.testing.assert_array_equal(loaded.image.array[:, 0, 0, 0], [4, 1, 2, 3])
    with pytest.raises(InputError, match=r"case Brats18_A: extra channel\(s\) T1, T2"):
        load_case(cases[1], channels=["T1c", "FLAIR"])


def test_nested_channel_folders_and_mha(tmp_path):
    case = tmp_path / "in" / "brats_2013_pat0001_1"
    for name, v in (("Flair", 4), ("T1", 1), ("T1c", 2), ("T2", 3)):
        sub = case / f"VSD.Brain.XX.O.MR_{name}.{5450 + v}"
        sub.mkdir(parents=True)
        write_image(_vol(v), sub / f"VSD.Brain.XX.O.MR_{name}.{5450 + v}.mha")
    (case / "VSD.Brain_3more.XX.O.OT.54517").mkdir()
    write_image(_vol(0), case / "VSD.Brain_3more.XX.O.OT.54517" / "VSD.Brain_3more.XX.O.OT.54517.mha")
    (c,) = discover_cases(tmp_path / "in")
    assert c.case == "brats_2013_pat0001_1" and c.output_ext == ".mha"
    np.testing.assert_array_equal(load_case(c, channels=MODEL).image.array[:, 1, 1, 1], [1, 2, 3, 4])


def test_single_case_folder_and_flat_named_folder(tmp_path):
    _brats_case(tmp_path / "Brats18_B", "Brats18_B")
    (c,) = discover_cases(tmp_path / "Brats18_B")
    assert c.case == "Brats18_B"
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in ("a", "b"):
        for n, v in (("T1c", 2), ("flair", 4)):
            write_image(_vol(v), flat / f"{case}_{n}.nii.gz")
    cases = discover_cases(flat)
    assert [c.case for c in cases] == ["a", "b"]
    np.testing.assert_array_equal(load_case(cases[0], channels=["FLAIR", "T1c"]).image.array[:, 0, 0, 0], [4, 2])
    # deepmedic style: the channel token first, the case named by its folder
    dm = tmp_path / "brats_2013_pat0005_1"
    dm.mkdir()
    write_image(_vol(2), dm / "T1c_subtrMeanDivStd.nii.gz")
    write_image(_vol(4), dm / "Flair_subtrMeanDivStd.nii.gz")
    write_image(_vol(1), dm / "brainmask.nii.gz")
    (c,) = discover_cases(dm)
    assert c.case == "brats_2013_pat0005_1"
    np.testing.assert_array_equal(load_case(c, channels=["T1c", "FLAIR"]).image.array[:, 0, 0, 0], [2, 4])


def test_duplicate_and_missing_named_channels(tmp_path):
    case = tmp_path / "in" / "X"
    _brats_case(case, "X", names=("t1", "flair"))
    write_image(_vol(9), case / "X_t2f.nii.gz")
    _brats_case(tmp_path / "in" / "Y", "Y", names=("t1",))
    x, y = discover_cases(tmp_path / "in")
    with pytest.raises(InputError, match="case X: two FLAIR files, X_flair.nii.gz and X_t2f.nii.gz"):
        load_case(x, channels=["T1", "FLAIR"])
    with pytest.raises(InputError, match=r"case Y: missing channel\(s\) FLAIR; found T1, the model needs T1, FLAIR"):
        load_case(y, channels=["T1", "FLAIR"])


def test_dataset_layout_with_and_without_dataset_json(tmp_path):
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for case in ("c1", "c2"):
        for i, v in enumerate((10, 20)):
            write_image(_vol(v), folder / f"{case}_{i:04d}.nii.gz")
    cases = discover_cases(folder)
    assert [c.case for c in cases] == ["c1", "c2"] and cases[0].layout == "dataset" and cases[0].names is None
    # without names: the checkpoint's order
    np.testing.assert_array_equal(load_case(cases[0], channels=["FLAIR", "T1"]).image.array[:, 0, 0, 0], [10, 20])
    # --channel-order overrides
    np.testing.assert_array_equal(
        load_case(cases[0], channels=["FLAIR", "T1"], channel_order=["T1", "FLAIR"]).image.array[:, 0, 0, 0], [20, 10])
    # dataset.json in the parent (a dataset root) names the channels
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "t1", "1": "flair"}}))
    root_cases = discover_cases(tmp_path)
    assert root_cases[0].names == ("T1", "FLAIR")
    np.testing.assert_array_equal(load_case(root_cases[0], channels=["FLAIR", "T1"]).image.array[:, 0, 0, 0], [20, 10])
    with pytest.raises(InputError, match=r"case c1: 2 channel\(s\) but the model needs 3"):
        load_case(cases[0], channels=["T1", "T2", "FLAIR"])


def test_dataset_layout_missing_channel_file(tmp_path):
    for name in ("c1_0000.nii.gz", "c1_0002.nii.gz", "c2_0000.nii.gz", "c2_0001.nii.gz", "c2_0002.nii.gz"):
        write_image(_vol(1), tmp_path / name)
    c1, c2 = discover_cases(tmp_path)
    with pytest.raises(InputError, match=r"case c1: missing channel file\(s\) c1_0001.nii.gz"):
        load_case(c1, channels=["T1", "T2", "FLAIR"])
    assert load_case(c2, channels=["T1", "T2", "FLAIR"]).image.num_channels == 3


def test_four_d_nifti_folder_with_decathlon_json(tmp_path):
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    arr = np.stack([np.full((6, 5, 4), v, np.float32) for v in (4, 1, 2, 3)])  # FLAIR, T1w, t1gd, T2w
    write_image(Image(arr, (1.0, 1.0, 1.0)), root / "imagesTr" / "BRATS_001.nii.gz")
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00AppleDouble")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}))
    (c,) = discover_cases(root)
    assert (c.case, c.layout, c.names) == ("BRATS_001", "4d", ("FLAIR", "T1", "T1c", "T2"))
    np.testing.assert_array_equal(load_case(c, channels=MODEL).image.array[:, 0, 0, 0], [1, 2, 3, 4])
    # a single file works too
    (c,) = discover_cases(root / "imagesTr" / "BRATS_001.nii.gz")
    assert c.case == "BRATS_001" and c.names == ("FLAIR", "T1", "T1c", "T2")


def test_lgg_patients(tmp_path):
    for patient in ("TCGA_A_1", "TCGA_B_2"):
        folder = tmp_path / "kaggle_3m" / patient
        folder.mkdir(parents=True)
        for n in (1, 2, 10):
            rgb = np.zeros((8, 8, 3), np.uint8)
            rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20 + n, 30  # T1, FLAIR, T1c
            tifffile.imwrite(folder / f"{patient}_{n}.tif", rgb, photometric="rgb")
            tifffile.imwrite(folder / f"{patient}_{n}_mask.tif", np.zeros((8, 8), np.uint8))
    cases = discover_cases(tmp_path / "kaggle_3m")
    assert [c.case for c in cases] == ["TCGA_A_1", "TCGA_B_2"] and cases[0].layout == "lgg"
    loaded = load_case(cases[0], channels=["FLAIR", "T1", "T1c"])
    assert loaded.slice_numbers == [1, 2, 10]
    np.testing.assert_array_equal(loaded.image.array[:, 0, 0, :], [[21, 22, 30], [10, 10, 10], [30, 30, 30]])
    (single,) = discover_cases(tmp_path / "kaggle_3m" / "TCGA_B_2")
    assert single.case == "TCGA_B_2"


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no input images found"):
        discover_cases(tmp_path / "empty")
    # NaN voxels
    bad = tmp_path / "nan"
    bad.mkdir()
    arr = np.ones((6, 5, 4), np.float32)
    arr[1, 1, 1] = np.nan
    import nibabel as nib
    nib.save(nib.Nifti1Image(arr, np.eye(4)), bad / "c_0000.nii.gz")
    (c,) = discover_cases(bad)
    with pytest.raises(InputError, match=r"case c: c_0000.nii.gz has 1 NaN or infinite voxel\(s\)"):
        load_case(c, channels=["T1"])
    # a 2-D image
    flat = tmp_path / "flat2d"
    flat.mkdir()
    write_image(Image(np.ones((6, 5), np.float32), (1.0, 1.0)), flat / "c_0000.nii.gz")
    (c,) = discover_cases(flat)
    with pytest.raises(InputError, match="case c: c_0000.nii.gz is a 2-D image"):
        load_case(c, channels=["T1"])
    # channels on different grids
    grid = tmp_path / "grid"
    grid.mkdir()
    write_image(_vol(1), grid / "g_0000.nii.gz")
    write_image(_vol(1, shape=(6, 5, 5)), grid / "g_0001.nii.gz")
    (c,) = discover_cases(grid)
    with pytest.raises(GeometryError, match="case g"):
        load_case(c, channels=["T1", "T2"])
    # unreadable file
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "j_0000.nii.gz").write_bytes(b"not a nifti at all")
    (c,) = discover_cases(junk)
    with pytest.raises(InputError, match="j_0000.nii.gz"):
        load_case(c, channels=["T1"])
