"""Kaggle-LGG TIFF slice stacks (synthetic folders and the real kaggle_3m layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainseg_cli.errors import InputError
from brainseg_cli.io import read_tiff, write_tiff
from brainseg_cli.io.slices import (
    LGG_CHANNELS,
    list_lgg_patients,
    read_lgg_patient,
    write_lgg_masks,
)

PATIENT = "TCGA_AB_0001_20000101"


def make_patient(root: Path, numbers=(1, 2, 10, 3), masks: bool | tuple = True,
                 shape=(8, 6)) -> Path:
    folder = root / PATIENT
    folder.mkdir(parents=True)
    for n in numbers:
        rgb = np.zeros((*shape, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = n, 100 + n, 200 + n  # channel c, slice n
        rgb[0, 1, :] = 7  # marks TIFF row 0, column 1
        write_tiff(folder / f"{PATIENT}_{n}.tif", rgb)
        if masks is True or (isinstance(masks, tuple) and n in masks):
            mask = np.zeros(shape, np.uint8)
            mask[n % shape[0], :2] = 255
            write_tiff(folder / f"{PATIENT}_{n}_mask.tif", mask)
    (root / "data.csv").write_text("Patient\nTCGA_AB_0001\n")
    (folder / "README.md").write_text("not a slice")
    return folder


def test_read_patient_numeric_order_and_axes(tmp_path: Path) -> None:
    folder = make_patient(tmp_path)
    p = read_lgg_patient(folder, spacing=(1.0, 1.0, 3.0))
    assert p.patient == PATIENT
    assert p.slice_numbers == [1, 2, 3, 10]
    assert p.image.array.shape == (3, 8, 6, 4) and p.image.array.dtype == np.uint8
    assert p.image.spacing == (1.0, 1.0, 3.0)
    assert LGG_CHANNELS == ("T1", "FLAIR", "T1c")
    np.testing.assert_array_equal(p.image.array[0, 5, 5, :], [1, 2, 3, 10])
    np.testing.assert_array_equal(p.image.array[2, 5, 5, :], [201, 202, 203, 210])
    assert (p.image.array[:, 0, 1, :] == 7).all() and (p.image.array[:, 1, 0, :] != 7).all()
    assert p.mask is not None and p.mask.array.dtype == np.uint8
    assert set(np.unique(p.mask.array)) == {0, 1}
    assert p.mask.array[10 % 8, 0, 3] == 1 and p.mask.array[:, :, 3].sum() == 2
    p.image.check_same_grid(p.mask, "mask")


def test_unlabelled_patient_has_no_mask(tmp_path: Path) -> None:
    p = read_lgg_patient(make_patient(tmp_path, masks=False))
    assert p.mask is None and p.slice_numbers == [1, 2, 3, 10]


def test_partially_missing_masks_is_an_error(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, masks=(1, 2))
    with pytest.raises(InputError, match=rf"2 of 4 slices have no mask, e.g. {PATIENT}_3_mask"):
        read_lgg_patient(folder)


def test_bad_mask_value_names_file(tmp_path: Path) -> None:
    folder = make_patient(tmp_path)
    bad = np.zeros((8, 6), np.uint8)
    bad[0, 0] = 128
    write_tiff(folder / f"{PATIENT}_2_mask.tif", bad)
    with pytest.raises(InputError, match=rf"{PATIENT}_2_mask.tif: mask values must be 0/255, found 128"):
        read_lgg_patient(folder)


def test_shape_and_channel_errors(tmp_path: Path) -> None:
    folder = make_patient(tmp_path)
    write_tiff(folder / f"{PATIENT}_3.tif", np.zeros((8, 7, 3), np.uint8))
    with pytest.raises(InputError, match=rf"{PATIENT}_3.tif: slice shape \(8, 7, 3\) differs"):
        read_lgg_patient(folder)
    write_tiff(folder / f"{PATIENT}_3.tif", np.zeros((8, 6), np.uint8))
    with pytest.raises(InputError, match=rf"{PATIENT}_3.tif: expected an RGB slice"):
        read_lgg_patient(folder)
    write_tiff(folder / f"{PATIENT}_3.tif", np.zeros((8, 6, 3), np.uint8))
    write_tiff(folder / f"{PATIENT}_3_mask.tif", np.zeros((8, 5), np.uint8))
    with pytest.raises(InputError, match=rf"{PATIENT}_3_mask.tif: mask shape"):
        read_lgg_patient(folder)


def test_orphan_mask_and_duplicate_number(tmp_path: Path) -> None:
    folder = make_patient(tmp_path)
    write_tiff(folder / f"{PATIENT}_99_mask.tif", np.zeros((8, 6), np.uint8))
    with pytest.raises(InputError, match=rf"{PATIENT}_99_mask.tif: mask without the image slice"):
        read_lgg_patient(folder)
    (folder / f"{PATIENT}_99_mask.tif").unlink()
    write_tiff(folder / f"{PATIENT}_01.tif", np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(InputError, match="slice 1 also given by"):
        read_lgg_patient(folder)


def test_list_patients(tmp_path: Path) -> None:
    folder = make_patient(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    assert list_lgg_patients(tmp_path) == [folder]
    assert list_lgg_patients(folder) == [folder]
    with pytest.raises(InputError, match="no Kaggle-LGG patient folders"):
        list_lgg_patients(tmp_path / "empty_dir")
    with pytest.raises(InputError, match="folder not found"):
        list_lgg_patients(tmp_path / "nope")
    with pytest.raises(InputError, match="no slices named"):
        read_lgg_patient(tmp_path / "empty_dir")


def test_write_masks_round_trip(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, masks=False)
    mask = np.zeros((8, 6, 4), np.uint8)
    mask[2:4, 1:3, 0] = 1
    mask[5, 5, 3] = 1
    write_lgg_masks(folder, patient=PATIENT, mask=mask, slice_numbers=[1, 2, 3, 10])
    raw = read_tiff(folder / f"{PATIENT}_10_mask.tif")
    assert raw.dtype == np.uint8 and raw.shape == (8, 6) and set(np.unique(raw)) == {0, 255}
    back = read_lgg_patient(folder)
    np.testing.assert_array_equal(back.mask.array, mask)
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_write_masks_validation(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mask has 2 slices but 3 slice numbers"):
        write_lgg_masks(tmp_path, patient="P", mask=np.zeros((4, 4, 2)), slice_numbers=[1, 2, 3])
    with pytest.raises(InputError, match="mask values must be 0/1, found 0, 2"):
        two = np.zeros((4, 4, 1), np.int64)
        two[0, 0, 0] = 2
        write_lgg_masks(tmp_path, patient="P", mask=two, slice_numbers=[1])
    with pytest.raises(InputError, match=r"must be \(X, Y, Z\)"):
        write_lgg_masks(tmp_path, patient="P", mask=np.zeros((4, 4)), slice_numbers=[1])
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ real kaggle_3m
@pytest.fixture(scope="module")
def kaggle_root(shared_data: Path) -> Path:
    root = shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_real_kaggle3m_patients(kaggle_root: Path) -> None:
    patients = list_lgg_patients(kaggle_root)
    assert [p.name for p in patients] == [f"TCGA_BX_000{i}_2018{d}" for i, d in
                                          zip(range(1, 6), ("0111", "0212", "0313", "0414", "0515"))]
    p = read_lgg_patient(patients[0], spacing=(1.0, 1.0, 3.0))
    n = len(p.slice_numbers)
    assert p.slice_numbers == list(range(1, n + 1))
    assert p.image.array.shape == (3, 256, 256, n) and p.image.array.dtype == np.uint8
    assert p.mask is not None and set(np.unique(p.mask.array)) <= {0, 1} and p.mask.array.any()
    # slice k of the volume is TIFF number k+1, rows = X, columns = Y
    raw = read_tiff(patients[0] / f"{patients[0].name}_10.tif")
    np.testing.assert_array_equal(p.image.array[:, :, :, 9], np.moveaxis(raw, -1, 0))
    raw_mask = read_tiff(patients[0] / f"{patients[0].name}_10_mask.tif")
    np.testing.assert_array_equal(p.mask.array[:, :, 9] * 255, raw_mask)
    # FLAIR (channel 1) is brighter inside the whole-tumour mask than in the brain around it
    flair = p.image.array[1].astype(float)
    brain = (flair > 0) & (p.mask.array == 0)
    assert flair[p.mask.array == 1].mean() > flair[brain].mean()
