"""The msd, mrbrains18, lgg and nifti converters on tiny synthetic sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from convert_synth import DIRECTION, OFFSETS, ORIGIN, SPACING, source_labels, volume, write

from brainseg_cli.data.convert import ConvertConfig, convert_dataset
from brainseg_cli.data.converters import SourceOptions
from brainseg_cli.data.converters.nifti import discover as nifti_discover
from brainseg_cli.data.converters.nifti import parse_channel_option
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.io import Image, read_image, write_image

MSD_JSON = {
    "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    "numTraining": 1, "numTest": 1,
}


def _msd(root: Path, meta: dict = MSD_JSON) -> Path:
    modality = [meta["modality"][str(i)] for i in range(len(meta["modality"]))]
    canonical = {"FLAIR": "FLAIR", "T1w": "T1", "t1gd": "T1c", "T2w": "T2", "MRI": "T1"}
    four_d = np.stack([volume(OFFSETS[canonical[m]], dtype=np.float32) for m in modality], axis=0)
    write_image(Image(four_d, SPACING, ORIGIN, DIRECTION), root / "imagesTr" / "BRATS_001.nii.gz")
    write_image(Image(four_d, SPACING, ORIGIN, DIRECTION), root / "imagesTs" / "BRATS_900.nii.gz")
    write(root / "labelsTr" / "BRATS_001.nii.gz", source_labels([0, 1, 2, 3]))
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 78)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_splits_channels_in_canonical_order(tmp_path: Path) -> None:
    src = _msd(tmp_path / "Task01_BrainTumour")
    s = convert_dataset(config=ConvertConfig(source="msd", input=src, output=tmp_path / "out"))
    info = load_dataset(tmp_path / "out")
    assert info.channels == ("T1", "T1c", "T2", "FLAIR")
    assert info.training_cases == ("BRATS_001",) and info.test_cases == ("BRATS_900",)
    assert info.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert info.labels == {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}
    image, label = read_case(info, "BRATS_001")
    for i, ch in enumerate(info.channels):
        np.testing.assert_array_equal(image.array[i], volume(OFFSETS[ch]))
    np.testing.assert_array_equal(label.array, source_labels([0, 1, 2, 3]))
    np.testing.assert_allclose(image.origin, ORIGIN, atol=1e-5)
    assert s.source_format.startswith("Medical Segmentation Decathlon")
    assert info.extra["source_channels"] == MSD_JSON["modality"]


def test_msd_other_task_keeps_its_label_names(tmp_path: Path) -> None:
    meta = {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}
    src = tmp_path / "Task04_Hippocampus"
    write(src / "imagesTr" / "h_1.nii.gz", volume(0, dtype=np.float32))
    write(src / "labelsTr" / "h_1.nii.gz", source_labels([0, 1, 2]))
    (src / "dataset.json").write_text(json.dumps(meta))
    s = convert_dataset(config=ConvertConfig(source="msd", input=src, output=tmp_path / "out"))
    assert s.channels == ("MRI",)
    assert s.labels == {"background": 0, "Anterior": 1, "Posterior": 2} and s.regions == {}


def test_msd_channel_count_mismatch(tmp_path: Path) -> None:
    meta = {**MSD_JSON, "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd"}}
    src = _msd(tmp_path / "T", MSD_JSON)
    (src / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"BRATS_001.nii.gz: 4 channel\(s\) .* dataset.json lists 3 modalities"):
        convert_dataset(config=ConvertConfig(source="msd", input=src, output=tmp_path / "out"))


def test_msd_needs_decathlon_json(tmp_path: Path) -> None:
    (tmp_path / "T").mkdir()
    with pytest.raises(InputError, match="no dataset.json"):
        convert_dataset(config=ConvertConfig(source="msd", input=tmp_path / "T", output=tmp_path / "out"))


def test_mrbrains18(tmp_path: Path) -> None:
    src = tmp_path / "mrb"
    for case in ("1", "7"):
        for ch in ("T1", "IR", "FLAIR"):
            write(src / "training" / case / "pre" / f"{ch}.nii.gz", volume(OFFSETS[ch]))
    write(src / "training" / "1" / "segm.nii.gz", source_labels(list(range(11))[:6]))
    write(src / "training" / "1" / "pre" / "reg_T1.nii.gz", volume(0))  # not used
    s = convert_dataset(config=ConvertConfig(source="mrbrains18", input=src, output=tmp_path / "out"))
    info = load_dataset(tmp_path / "out")
    assert info.channels == ("T1", "FLAIR", "IR")
    assert info.training_cases == ("1",) and info.test_cases == ("7",)
    assert list(info.labels.values()) == list(range(11)) and info.labels["white matter lesions"] == 4
    image, label = read_case(info, "1")
    np.testing.assert_array_equal(image.array[2], volume(OFFSETS["IR"]))
    np.testing.assert_array_equal(label.array, source_labels([0, 1, 2, 3, 4, 5]))
    assert s.regions == {}
    (src / "training" / "7" / "pre" / "IR.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case 7: missing channel IR"):
        convert_dataset(config=ConvertConfig(source="mrbrains18", input=src / "training", output=tmp_path / "o2"))


def _lgg(root: Path, patient: str, n_slices: int, *, mask: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder = root / patient
    folder.mkdir(parents=True)
    for n in range(1, n_slices + 1):
        tifffile.imwrite(folder / f"{patient}_{n}.tif", np.full((6, 5, 3), (n, 100 + n, 200 + n), np.uint8))
        if mask:
            m = np.where(rng.random((6, 5)) > 0.5, 255, 0).astype(np.uint8)
            tifffile.imwrite(folder / f"{patient}_{n}_mask.tif", m)


def test_lgg_spacing_channels_and_masks(tmp_path: Path) -> None:
    src = tmp_path / "kaggle_3m"
    _lgg(src, "TCGA_AA_0001_20000101", 11)
    _lgg(src, "TCGA_AA_0002_20000101", 2, mask=False)
    (src / "data.csv").write_text("a,b\n")
    (src / "README.md").write_text("x")
    s = convert_dataset(config=ConvertConfig(source="lgg", input=src, output=tmp_path / "a"))
    meta = json.loads(s.dataset_json.read_text())
    assert meta["brainseg"]["spacing"]["source"] == "default" and meta["brainseg"]["spacing"]["value"] == [1.0, 1.0, 1.0]
    assert meta["labels"] == {"background": 0, "FLAIR abnormality": 1}
    assert meta["brainseg"]["label_mapping"] == {"0": 0, "255": 1}
    info = load_dataset(tmp_path / "a")
    assert info.channels == ("T1", "T1c", "FLAIR")
    assert info.test_cases == ("TCGA_AA_0002_20000101",)
    image, label = read_case(info, "TCGA_AA_0001_20000101")
    assert image.array.shape == (3, 6, 5, 11)
    # slices in numeric order (1, 2, ..., 10, 11), channels T1 = R, T1c = B, FLAIR = G
    np.testing.assert_array_equal(image.array[0, 0, 0], np.arange(1, 12))
    np.testing.assert_array_equal(image.array[1, 0, 0], 200 + np.arange(1, 12))
    np.testing.assert_array_equal(image.array[2, 0, 0], 100 + np.arange(1, 12))
    mask10 = tifffile.imread(src / "TCGA_AA_0001_20000101" / "TCGA_AA_0001_20000101_10_mask.tif")
    np.testing.assert_array_equal(label.array[:, :, 9], mask10 // 255)
    s = convert_dataset(config=ConvertConfig(source="lgg", input=src, output=tmp_path / "b", spacing=(0.5, 0.5, 3.0)))
    assert json.loads(s.dataset_json.read_text())["brainseg"]["spacing"] == {
        "source": "--spacing", "value": [0.5, 0.5, 3.0], "note": json.loads(s.dataset_json.read_text())["brainseg"]["spacing"]["note"]}
    assert read_image(tmp_path / "b" / "imagesTr" / "TCGA_AA_0001_20000101_0000.nii.gz").spacing == (0.5, 0.5, 3.0)
    with pytest.raises(ConfigError, match=r"--spacing must be three positive numbers"):
        convert_dataset(config=ConvertConfig(source="lgg", input=src, output=tmp_path / "c", spacing=(1.0, 0.0, 1.0)))


def _flat(root: Path) -> Path:
    for case in ("pat01", "pat02"):
        write(root / f"{case}_flair.nii.gz", volume(OFFSETS["FLAIR"]))
        write(root / f"{case}_t1c.nii.gz", volume(OFFSETS["T1c"]))
    write(root / "pat01_truth.nii.gz", source_labels([0, 1, 2, 3, 4], dtype=np.float32).astype(np.float32))
    return root


def test_nifti_flat_layout_with_explicit_pairs(tmp_path: Path) -> None:
    src = _flat(tmp_path / "flat")
    cfg = ConvertConfig(source="nifti", input=src, output=tmp_path / "out",
                        channel_patterns=(("flair", "*_flair.nii.gz"), ("t1ce", "*_t1c.nii.gz")),
                        label_pattern="*_truth.nii.gz", label_map="2:1,1:2,3:2,4:3")
    s = convert_dataset(config=cfg)
    info = load_dataset(tmp_path / "out")
    assert info.channels == ("T1c", "FLAIR")
    assert info.training_cases == ("pat01",) and info.test_cases == ("pat02",)
    _, label = read_case(info, "pat01")
    np.testing.assert_array_equal(label.array, source_labels([0, 2, 1, 2, 3]))
    assert s.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert info.extra["patterns"] == {"T1c": "*_t1c.nii.gz", "FLAIR": "*_flair.nii.gz", "label": "*_truth.nii.gz"}


def test_nifti_case_folders_recursive_glob(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    for split, case in (("train", "a"), ("validation", "b")):
        write(src / split / case / "Flair_x.nii.gz", volume(OFFSETS["FLAIR"]))
        write(src / split / case / "OT.nii.gz", source_labels([0, 1, 2, 3, 4]))
    opts = SourceOptions(channel_patterns=(("FLAIR", "**/Flair*.nii.gz"),), label_pattern="*/*/OT.nii.gz", label_map="brats2015")
    ds = nifti_discover(src, opts)
    assert [c.case_id for c in ds.cases] == ["a", "b"] and all(c.has_label for c in ds.cases)
    one_level = SourceOptions(channel_patterns=(("FLAIR", "*/Flair*.nii.gz"),))
    with pytest.raises(InputError, match=r"--channel FLAIR='\*/Flair\*.nii.gz' matches no file"):
        nifti_discover(src, one_level)


@pytest.mark.parametrize(("opts", "match"), [
    (SourceOptions(), "needs at least one --channel"),
    (SourceOptions(channel_patterns=(("PD", "*.nii.gz"),)), "unknown channel name 'PD'"),
    (SourceOptions(channel_patterns=(("T1", "*.nii.gz"), ("t1n", "*_x.nii.gz"))), "both T1"),
    (SourceOptions(channel_patterns=(("T1", "*_flair.nii.gz"),), label_pattern="*_truth.nii.gz"), "--label needs --label-map"),
    (SourceOptions(channel_patterns=(("T1", "*_flair.nii.gz"),), label_map="msd"), "--label-map needs --label"),
    (SourceOptions(channel_patterns=(("T1", "/abs/*.nii.gz"),)), "must be relative to INPUT"),
    (SourceOptions(channel_patterns=(("T1", "pat01_flair.nii.gz"),)), r"needs a '\*' for the case id"),
    (SourceOptions(channel_patterns=(("T1", "*_flair.nii.gz"),), label_pattern="*_truth.nii.gz", label_map="brats2016"),
     "unknown label map"),
])
def test_nifti_option_errors(tmp_path: Path, opts: SourceOptions, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        nifti_discover(_flat(tmp_path / "flat"), opts)


def test_parse_channel_option() -> None:
    assert parse_channel_option("FLAIR=*/Flair*.nii.gz") == ("FLAIR", "*/Flair*.nii.gz")
    with pytest.raises(ConfigError, match="expected NAME=GLOB"):
        parse_channel_option("FLAIR")
