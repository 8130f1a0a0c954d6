"""BraTS converter: generation detection, name variations, label mapping per generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_synth import OFFSETS, source_labels, volume, write

from brainseg_cli.data.convert import ConvertConfig, convert_dataset
from brainseg_cli.data.converters import SourceOptions
from brainseg_cli.data.converters.brats import classify_file, discover
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.errors import InputError
from brainseg_cli.io import read_image


@pytest.mark.parametrize(("path", "expected"), [
    ("BRATS_HG0001/BRATS_HG0001_FLAIR.mha", ("BRATS_HG0001", "FLAIR", "underscore")),
    ("BRATS_HG0001/BRATS_HG0001_T1C.mha", ("BRATS_HG0001", "T1c", "underscore")),
    ("BRATS_HG0002_T1C_N4.mha", ("BRATS_HG0002", "T1c", "underscore")),
    ("BRATS_HG0001/BRATS_HG0001_truth.mha", ("BRATS_HG0001", "label", "underscore")),
    ("p/VSD.Brain.XX.O.MR_Flair.54512/VSD.Brain.XX.O.MR_Flair.54512.mha", ("p", "FLAIR", "vsd")),
    ("p/VSD.Brain.XX.O.MR_T1c.54514/VSD.Brain.XX.O.MR_T1c.54514.mha", ("p", "T1c", "vsd")),
    ("p/VSD.Brain_3more.XX.O.OT.54517/VSD.Brain_3more.XX.O.OT.54517.mha", ("p", "label", "vsd")),
    ("Brats18_2013_3_1_t1ce.nii.gz", ("Brats18_2013_3_1", "T1c", "underscore")),
    ("Brats18_2013_3_1_FLAIR.nii.gz", ("Brats18_2013_3_1", "FLAIR", "underscore")),
    ("Brats18_2013_3_1_flair (1).nii.gz", ("Brats18_2013_3_1", "FLAIR", "underscore")),
    ("Brats18_2013_3_1_t1ce.nii(1).gz", ("Brats18_2013_3_1", "T1c", "underscore")),
    ("Brats18_2013_3_1_seg - Copy.nii.gz", ("Brats18_2013_3_1", "label", "underscore")),
    ("BraTS2021_00000_t1.nii", ("BraTS2021_00000", "T1", "underscore")),
    ("BraTS-GLI-00000-000-t2f.nii.gz", ("BraTS-GLI-00000-000", "FLAIR", "dash")),
    ("BraTS-GLI-00000-000-T1N.nii.gz", ("BraTS-GLI-00000-000", "T1", "dash")),
    ("BraTS-GLI-00000-000-seg.nii.gz", ("BraTS-GLI-00000-000", "label", "dash")),
])
def test_classify(path: str, expected: tuple) -> None:
    hit = classify_file(Path(path))
    assert hit is not None and hit[:3] == expected


@pytest.mark.parametrize("name", ["mask.nii.gz", "DeepBrainSeg_Prediction.nii.gz", "License.txt", "x_t1.txt", "data.csv"])
def test_classify_ignores_other_files(name: str) -> None:
    assert classify_file(Path(name)) is None


def _write_case(root: Path, names: dict[str, str], label: str | None, values: list[int], *, ending=".nii.gz") -> None:
    for ch, name in names.items():
        write(root / f"{name}{ending}", volume(OFFSETS[ch]))
    if label:
        write(root / f"{label}{ending}", source_labels(values))


# generation -> (channel file names, label name, source values, canonical values, ending)
GENERATIONS = {
    "2012": ({"T1": "P_T1", "T1c": "P_T1C", "T2": "P_T2", "FLAIR": "P_FLAIR"}, "P_truth", [0, 1, 2], [0, 1, 2], ".mha"),
    "2017-2021": ({"T1": "P_t1", "T1c": "P_t1ce", "T2": "P_t2", "FLAIR": "P_flair (1)"}, "P_seg", [0, 1, 2, 4], [0, 2, 1, 3], ".nii.gz"),
    "2023+": ({"T1": "P-t1n", "T1c": "P-t1c", "T2": "P-t2w", "FLAIR": "P-t2f"}, "P-seg", [0, 1, 2, 3], [0, 2, 1, 3], ".nii.gz"),
}


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_convert_each_generation(tmp_path: Path, generation: str) -> None:
    names, label, src, canonical, ending = GENERATIONS[generation]
    _write_case(tmp_path / "src" / "P", names, label, src, ending=ending)
    summary = convert_dataset(config=ConvertConfig(source="brats", input=tmp_path / "src", output=tmp_path / "out"))
    meta = json.loads(summary.dataset_json.read_text())
    assert meta["brainseg"]["generation"] == generation
    assert meta["channel_names"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    info = load_dataset(tmp_path / "out")
    image, lab = read_case(info, "P")
    for i, ch in enumerate(info.channels):
        np.testing.assert_array_equal(image.array[i], volume(OFFSETS[ch]))
    expected = source_labels(canonical)
    np.testing.assert_array_equal(lab.array, expected)


def test_vsd_generation(tmp_path: Path) -> None:
    case = tmp_path / "src" / "HGG" / "brats_2013_pat0001_1"
    mods = {"T1": "MR_T1", "T1c": "MR_T1c", "T2": "MR_T2", "FLAIR": "MR_Flair"}
    for i, (ch, mod) in enumerate(mods.items()):
        name = f"VSD.Brain.XX.O.{mod}.{100 + i}"
        write(case / name / f"{name}.mha", volume(OFFSETS[ch]))
    write(case / "VSD.Brain_3more.XX.O.OT.199" / "VSD.Brain_3more.XX.O.OT.199.mha", source_labels([0, 1, 2, 3, 4]))
    summary = convert_dataset(config=ConvertConfig(source="brats", input=tmp_path / "src", output=tmp_path / "out"))
    assert [c.case for c in summary.cases] == ["brats_2013_pat0001_1"]
    meta = json.loads(summary.dataset_json.read_text())
    assert meta["brainseg"]["generation"] == "2013-2015"
    assert meta["brainseg"]["label_mapping"] == {"0": 0, "1": 2, "2": 1, "3": 2, "4": 3}
    lab = read_image(tmp_path / "out" / "labelsTr" / "brats_2013_pat0001_1.nii.gz")
    np.testing.assert_array_equal(lab.array, source_labels([0, 2, 1, 2, 3]))


def test_brats2023_resection_cavity_listed_only_when_present(tmp_path: Path) -> None:
    names, label, *_ = GENERATIONS["2023+"]
    _write_case(tmp_path / "a" / "P", names, label, [0, 1, 2, 3])
    s = convert_dataset(config=ConvertConfig(source="brats", input=tmp_path / "a", output=tmp_path / "oa"))
    assert "resection cavity" not in s.labels
    _write_case(tmp_path / "b" / "P", names, label, [0, 1, 2, 3, 4])
    s = convert_dataset(config=ConvertConfig(source="brats", input=tmp_path / "b", output=tmp_path / "ob"))
    assert s.labels["resection cavity"] == 4
    assert s.label_voxels[4] == 3


def test_discover_layouts_and_test_cases(brats2017_source: Path) -> None:
    ds = discover(brats2017_source, SourceOptions())
    assert [c.case_id for c in ds.cases] == ["Brats18_A_1", "Brats18_B_1", "Brats18_T_1"]
    assert [c.has_label for c in ds.cases] == [True, True, False]
    assert all(c.problem is None for c in ds.cases)
    assert ds.label_map.name == "brats2017"


def test_cases_without_label_go_to_imagesTs(brats2017_source: Path, tmp_path: Path) -> None:
    s = convert_dataset(config=ConvertConfig(source="brats", input=brats2017_source, output=tmp_path / "out"))
    assert (s.num_training, s.num_test) == (2, 1)
    assert sorted(p.name for p in (tmp_path / "out" / "imagesTs").iterdir()) == [f"Brats18_T_1_{i:04d}.nii.gz" for i in range(4)]
    assert load_dataset(tmp_path / "out").test_cases == ("Brats18_T_1",)


def test_mixed_generations_are_refused(tmp_path: Path) -> None:
    _write_case(tmp_path / "src" / "A", *GENERATIONS["2017-2021"][:2], [0, 1])
    names, label, *_ = GENERATIONS["2023+"]
    _write_case(tmp_path / "src" / "B", {k: v.replace("P", "Q") for k, v in names.items()}, "Q-seg", [0, 1])
    with pytest.raises(InputError, match=r"several BraTS generations: P \(2017-2021\), Q \(2023\+\)"):
        discover(tmp_path / "src", SourceOptions())


def test_missing_channel_and_duplicates_are_problems(tmp_path: Path) -> None:
    names, label, *_ = GENERATIONS["2017-2021"]
    _write_case(tmp_path / "src" / "P", {k: v for k, v in names.items() if k != "T2"}, label, [0, 1])
    _write_case(tmp_path / "src" / "R", {k: v.replace("P", "R") for k, v in names.items()}, "R_seg", [0, 1])
    write(tmp_path / "src" / "R" / "R_t1 (2).nii.gz", volume(0))
    ds = discover(tmp_path / "src", SourceOptions())
    problems = {c.case_id: c.problem for c in ds.cases}
    assert problems["P"] == "case P: missing channel(s) T2 (found T1, T1c, FLAIR and a label)"
    assert problems["R"].startswith("case R: several files for T1: ")


def test_no_brats_files(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="no BraTS files found.*use source 'nifti'"):
        discover(tmp_path, SourceOptions())


def test_folder_of_links_to_case_folders_converts(tmp_path: Path) -> None:
    """A selection of cases is often a folder of symbolic links to case folders; a link cycle must not loop."""
    names, label, src, canonical, ending = GENERATIONS["2017-2021"]
    _write_case(tmp_path / "all" / "P", names, label, src, ending=ending)
    selection = tmp_path / "selection"
    selection.mkdir()
    (selection / "P").symlink_to(tmp_path / "all" / "P", target_is_directory=True)
    (selection / "P" / "loop").symlink_to(selection, target_is_directory=True)  # cycle inside the source
    summary = convert_dataset(config=ConvertConfig(source="brats", input=selection, output=tmp_path / "out"))
    assert load_dataset(tmp_path / "out").training_cases == ("P",)
    np.testing.assert_array_equal(read_case(load_dataset(tmp_path / "out"), "P")[1].array, source_labels(canonical))
    assert summary.dataset_json.is_file()
