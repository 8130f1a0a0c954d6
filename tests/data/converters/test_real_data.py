"""Every dataset in ../shared/data that has a converter, converted and checked voxel by voxel.

Checks: canonical label k holds exactly the voxels of its source label(s) (mapping written out
here from docs/DEFINITIONS.md §2, independently of the library), geometry equal to the source to 1e-5 mm,
channel order and names (each output channel equals its source file/volume). Subsets of the
BraTS data are linked into tmp_path to keep the suite fast; the full BraTS 2018 set is `slow`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from brainseg_cli.data.convert import ConvertConfig, convert_dataset
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.io import read_image

BRATS2017_LUT = {0: 0, 1: 2, 2: 1, 4: 3}
BRATS2015_LUT = {0: 0, 1: 2, 2: 1, 3: 2, 4: 3}


def _link_cases(src: Path, dst: Path, cases: list[str]) -> Path:
    """Link the files of some case folders into ``dst`` (keeping relative paths); the source is untouched."""
    for case in cases:
        for f in sorted((src / case).rglob("*")):
            if f.is_file():
                target = dst / case / f.relative_to(src / case)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f, target)
    return dst


def _map(array: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    out = np.full(array.shape, 255, np.uint8)
    for s, t in lut.items():
        out[array == s] = t
    assert not np.any(out == 255), f"source values outside {sorted(lut)}: {np.unique(array[out == 255])}"
    return out


def _same_geometry(a, b) -> None:
    assert a.spatial_shape == b.spatial_shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=1e-5)


def _check_channels_and_label(out: Path, case: str, sources: dict[str, Path], label_src: Path, lut: dict[int, int]) -> None:
    info = load_dataset(out)
    assert info.channels == tuple(sources)
    for i, (ch, path) in enumerate(sources.items()):
        src = read_image(path)
        got = read_image(info.image_paths(case)[i])
        assert got.array.dtype == src.array.dtype, ch
        np.testing.assert_array_equal(got.array, src.array, err_msg=f"{case} {ch}")
        _same_geometry(got, src)
    src_label = read_image(label_src)
    got = read_image(info.label_path(case))
    _same_geometry(got, src_label)
    np.testing.assert_array_equal(got.array, _map(np.asarray(src_label.array), lut))


def _check_brats2018(shared: Path, out: Path, cases: list[str]) -> None:
    src = shared / "brats2018_deepbrainseg"
    for case in cases:
        files = {ch: src / case / f"{case}_{s}.nii.gz" for ch, s in (("T1", "t1"), ("T1c", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"))}
        _check_channels_and_label(out, case, files, src / case / f"{case}_seg.nii.gz", BRATS2017_LUT)


def _nnunet_verify(folder: Path) -> None:
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    verify.verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem


def test_brats2018_subset(shared_data: Path, tmp_path: Path) -> None:
    cases = ["Brats18_2013_3_1", "Brats18_TCIA13_623_1"]  # int16 and uint8 labels, HGG and LGG
    src = _link_cases(shared_data / "brats2018_deepbrainseg", tmp_path / "src", cases)
    s = convert_dataset(config=ConvertConfig(source="brats", input=src, output=tmp_path / "out", workers=1))
    assert json.loads(s.dataset_json.read_text())["brainseg"]["generation"] == "2017-2021"
    _check_brats2018(shared_data, tmp_path / "out", cases)


def test_brats2018_subset_passes_nnunet_integrity_check(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    src = _link_cases(shared_data / "brats2018_deepbrainseg", tmp_path / "src", ["Brats18_CBICA_ABM_1"])
    s = convert_dataset(config=ConvertConfig(source="brats", input=src, output=tmp_path / "raw", nnunet_id=501, name="BraTS18"))
    assert s.output.name == "Dataset501_BraTS18"
    _nnunet_verify(s.output)


@pytest.mark.slow
def test_brats2018_all_cases(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "brats2018_deepbrainseg"
    s = convert_dataset(config=ConvertConfig(source="brats", input=src, output=tmp_path / "out", workers=2))
    cases = sorted(p.name for p in src.iterdir() if p.is_dir())
    assert [c.case for c in s.cases] == cases and s.num_training == 9
    _check_brats2018(shared_data, tmp_path / "out", cases)
    _nnunet_verify(tmp_path / "out")


def test_brats2012(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "brats2012_mha"
    s = convert_dataset(config=ConvertConfig(source="brats", input=src, output=tmp_path / "out"))
    meta = json.loads(s.dataset_json.read_text())["brainseg"]
    assert meta["generation"] == "2012" and meta["regions"] == {"WT": [1, 2], "TC": [2]}
    assert s.labels == {"background": 0, "edema": 1, "active tumour": 2}
    case = "BRATS_HG0001"
    files = {ch: src / case / f"{case}_{s}.mha" for ch, s in (("T1", "T1"), ("T1c", "T1C"), ("T2", "T2"), ("FLAIR", "FLAIR"))}
    _check_channels_and_label(tmp_path / "out", case, files, src / case / f"{case}_truth.mha", {0: 0, 1: 1, 2: 2})


def test_brats2015_deepmedic_via_nifti(shared_data: Path, tmp_path: Path) -> None:
    cases = ["train/brats_2013_pat0005_1", "validation/brats_2013_pat0003_1"]
    src = _link_cases(shared_data / "brats2015_deepmedic", tmp_path / "src", cases)
    cfg = ConvertConfig(source="nifti", input=src, output=tmp_path / "out",
                        channel_patterns=(("FLAIR", "**/Flair*.nii.gz"), ("T1c", "**/T1c*.nii.gz")),
                        label_pattern="**/OTMultiClass.nii.gz", label_map="brats2015")
    s = convert_dataset(config=cfg)
    assert [c.case for c in s.cases] == ["brats_2013_pat0003_1", "brats_2013_pat0005_1"]
    for rel in cases:
        case = rel.split("/")[1]
        folder = shared_data / "brats2015_deepmedic" / rel
        files = {"T1c": folder / "T1c_subtrMeanDivStd.nii.gz", "FLAIR": folder / "Flair_subtrMeanDivStd.nii.gz"}
        _check_channels_and_label(tmp_path / "out", case, files, folder / "OTMultiClass.nii.gz", BRATS2015_LUT)
        # intensities untouched: the negative background constant is still there
        assert read_image(tmp_path / "out" / "imagesTr" / f"{case}_0001.nii.gz").array.min() < -2


def test_msd_task01(shared_data: Path, tmp_path: Path) -> None:
    task = shared_data / "msd_task01_from_brats2018" / "Task01_BrainTumour"
    src = tmp_path / "Task01_BrainTumour"
    for rel in ("dataset.json", "imagesTr/BRATS_001.nii.gz", "imagesTr/._BRATS_001.nii.gz", "labelsTr/BRATS_001.nii.gz"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(task / rel, src / rel)
    s = convert_dataset(config=ConvertConfig(source="msd", input=src, output=tmp_path / "out"))
    assert s.channels == ("T1", "T1c", "T2", "FLAIR") and s.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    four_d = read_image(task / "imagesTr" / "BRATS_001.nii.gz")  # channels FLAIR, T1w, t1gd, T2w
    info = load_dataset(tmp_path / "out")
    image, label = read_case(info, "BRATS_001")
    for out_index, src_index in enumerate((1, 2, 3, 0)):
        np.testing.assert_array_equal(image.array[out_index], four_d.array[src_index])
        _same_geometry(read_image(info.image_paths("BRATS_001")[out_index]), four_d.channel(src_index))
    src_label = read_image(task / "labelsTr" / "BRATS_001.nii.gz")
    np.testing.assert_array_equal(label.array, src_label.array)
    _same_geometry(label, src_label)


def test_mrbrains18(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "mrbrains18_from_voxelmorph"
    s = convert_dataset(config=ConvertConfig(source="mrbrains18", input=src, output=tmp_path / "out"))
    assert [c.case for c in s.cases] == ["1"]
    pre = src / "training" / "1" / "pre"
    files = {"T1": pre / "T1.nii.gz", "FLAIR": pre / "FLAIR.nii.gz", "IR": pre / "IR.nii.gz"}
    _check_channels_and_label(tmp_path / "out", "1", files, src / "training" / "1" / "segm.nii.gz", {k: k for k in range(11)})
    np.testing.assert_allclose(s.spacing_range[0], (0.958, 0.958, 3.0), atol=1e-6)


def test_lgg(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
    s = convert_dataset(config=ConvertConfig(source="lgg", input=src, output=tmp_path / "out", spacing=(1.0, 1.0, 3.0)))
    patients = sorted(p.name for p in src.iterdir() if p.is_dir())
    assert [c.case for c in s.cases] == patients and s.num_training == len(patients)
    info = load_dataset(tmp_path / "out")
    patient = patients[0]
    numbers = sorted(int(p.stem.split("_")[4]) for p in (src / patient).glob("*.tif") if not p.stem.endswith("_mask"))
    image, label = read_case(info, patient)
    assert image.spacing == (1.0, 1.0, 3.0) and image.array.shape[-1] == len(numbers)
    for k, n in enumerate(numbers):
        rgb = tifffile.imread(src / patient / f"{patient}_{n}.tif")
        mask = tifffile.imread(src / patient / f"{patient}_{n}_mask.tif")
        for out_index, sample in enumerate((0, 2, 1)):  # T1 = pre-contrast, T1c = post-contrast, FLAIR
            np.testing.assert_array_equal(image.array[out_index, :, :, k], rgb[:, :, sample])
        np.testing.assert_array_equal(label.array[:, :, k], (mask == 255).astype(np.uint8))
