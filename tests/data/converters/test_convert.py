"""convert_dataset: validation, skipping, output safety, resuming, parallel workers, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_synth import OFFSETS, source_labels, volume, write

from brainseg_cli.data import convert as convert_mod
from brainseg_cli.data.convert import ConvertConfig, convert_dataset, dataset_name, resolve_output
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.errors import ConfigError, GeometryError, InputError, RegistryError
from brainseg_cli.io import read_image


def _config(src: Path, out: Path, **kw) -> ConvertConfig:
    return ConvertConfig(source="brats", input=src, output=out, **kw)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_dataset_json_and_summary(brats2017_source: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    s = convert_dataset(config=_config(brats2017_source, tmp_path / "out"), progress=lambda *a: calls.append(a))
    assert calls[0] == ("Converting", 0, 3) and calls[-1] == ("Converting", 3, 3)
    meta = json.loads(s.dataset_json.read_text())
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}
    b = meta["brainseg"]
    assert b["source"] == "brats" and b["source_format"] == "BraTS 2017-2021 (NIfTI)"
    assert b["source_labels"]["4"] == "enhancing tumour"
    assert b["regions"] == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert b["spacing"] == {"source": "files", "min": [1.0, 1.25, 2.5], "max": [1.0, 1.25, 2.5]}
    assert b["tool_version"]
    # each canonical label: 3 voxels per labelled case (source 1 -> 2, 2 -> 1, 4 -> 3)
    assert s.label_voxels == {0: 2 * (60 - 9), 1: 6, 2: 6, 3: 6}
    assert s.spacing_range == ((1.0, 1.25, 2.5), (1.0, 1.25, 2.5))
    # no temporary or state files left behind
    assert not [f for f in _files(tmp_path / "out") if "/." in f or f.startswith(".")]


def test_geometry_is_kept(brats2017_source: Path, tmp_path: Path) -> None:
    convert_dataset(config=_config(brats2017_source, tmp_path / "out"))
    src = read_image(brats2017_source / "HGG" / "Brats18_A_1" / "Brats18_A_1_t2.nii.gz")
    for path in [tmp_path / "out" / "imagesTr" / "Brats18_A_1_0002.nii.gz", tmp_path / "out" / "labelsTr" / "Brats18_A_1.nii.gz"]:
        out = read_image(path)
        np.testing.assert_allclose(out.spacing, src.spacing, atol=1e-5)
        np.testing.assert_allclose(out.origin, src.origin, atol=1e-5)
        np.testing.assert_allclose(out.direction, src.direction, atol=1e-6)
    assert read_image(tmp_path / "out" / "imagesTr" / "Brats18_A_1_0002.nii.gz").array.dtype == np.int16
    assert read_image(tmp_path / "out" / "labelsTr" / "Brats18_A_1.nii.gz").array.dtype == np.uint8


def test_geometry_mismatch_stops_before_writing_the_case(brats2017_source: Path, tmp_path: Path) -> None:
    write(brats2017_source / "LGG" / "Brats18_B_1" / "Brats18_B_1_t2.nii.gz", volume(OFFSETS["T2"]), origin=(-10.0, 20.0, 5.6))
    with pytest.raises(GeometryError, match=r"case Brats18_B_1: T2 vs T1: grids differ: origin"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "out"))
    assert not list((tmp_path / "out").rglob("Brats18_B_1*"))
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_unexpected_label_values_name_case_and_values(brats2017_source: Path, tmp_path: Path) -> None:
    write(brats2017_source / "LGG" / "Brats18_B_1" / "Brats18_B_1_seg.nii.gz", source_labels([0, 1, 3, 7]))
    with pytest.raises(InputError, match=r"case Brats18_B_1: unexpected label values 3 \(3 voxels\), 7 \(3 voxels\)"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "out"))


def test_float_labels_integral_ok_fractional_error(brats2017_source: Path, tmp_path: Path) -> None:
    seg = brats2017_source / "LGG" / "Brats18_B_1" / "Brats18_B_1_seg.nii.gz"
    write(seg, source_labels([0, 1, 2, 4]).astype(np.float32))
    convert_dataset(config=_config(brats2017_source, tmp_path / "a"))
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "labelsTr" / "Brats18_B_1.nii.gz").array, source_labels([0, 2, 1, 3]))
    write(seg, source_labels([0, 1, 2, 4]).astype(np.float32) + np.float32(0.25))
    with pytest.raises(InputError, match=r"case Brats18_B_1: label has non-integer values"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "b"))


def test_skip_invalid(brats2017_source: Path, tmp_path: Path) -> None:
    write(brats2017_source / "LGG" / "Brats18_B_1" / "Brats18_B_1_seg.nii.gz", source_labels([0, 5]))
    (brats2017_source / "HGG" / "Brats18_T_1" / "Brats18_T_1_t2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case Brats18_T_1: missing channel\(s\) T2"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "strict"))
    assert not (tmp_path / "strict").exists()  # listing problems stop before anything is written
    s = convert_dataset(config=_config(brats2017_source, tmp_path / "out", skip_invalid=True))
    assert [c.case for c in s.cases] == ["Brats18_A_1"]
    assert dict(s.skipped).keys() == {"Brats18_B_1", "Brats18_T_1"}
    assert "unexpected label values 5" in dict(s.skipped)["Brats18_B_1"]
    meta = json.loads(s.dataset_json.read_text())
    assert [d["case"] for d in meta["brainseg"]["skipped"]] == ["Brats18_T_1", "Brats18_B_1"]
    assert load_dataset(tmp_path / "out").training_cases == ("Brats18_A_1",)


def test_output_inside_input_and_the_reverse(brats2017_source: Path) -> None:
    with pytest.raises(ConfigError, match="is inside INPUT"):
        convert_dataset(config=_config(brats2017_source, brats2017_source / "out"))
    with pytest.raises(ConfigError, match="is inside INPUT"):
        convert_dataset(config=_config(brats2017_source, brats2017_source))
    with pytest.raises(ConfigError, match="INPUT .* is inside OUTPUT"):
        convert_dataset(config=_config(brats2017_source, brats2017_source.parent, overwrite=True))


def test_existing_output(brats2017_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    convert_dataset(config=_config(brats2017_source, out))  # an empty folder is fine
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        convert_dataset(config=_config(brats2017_source, out))
    (out / "labelsTr" / "stale.nii.gz").write_bytes(b"x")
    s = convert_dataset(config=_config(brats2017_source, out, overwrite=True))
    assert not (out / "labelsTr" / "stale.nii.gz").exists() and s.num_training == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds 'notes.txt', which brainseg convert did not write"):
        convert_dataset(config=_config(brats2017_source, out, overwrite=True))
    assert (out / "notes.txt").exists() and (out / "dataset.json").exists()


@pytest.mark.fault
def test_interrupted_conversion_resumes(brats2017_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = convert_mod.convert_case
    calls: list[str] = []

    def interrupted(case, **kw):
        if case.case_id == "Brats18_B_1":
            raise KeyboardInterrupt
        calls.append(case.case_id)
        return real(case, **kw)

    monkeypatch.setattr(convert_mod, "convert_case", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(config=_config(brats2017_source, out))
    assert not (out / "dataset.json").exists()
    # only complete cases are visible
    assert _files(out / "imagesTr") == [f"Brats18_A_1_{i:04d}.nii.gz" for i in range(4)]
    assert _files(out / "labelsTr") == ["Brats18_A_1.nii.gz"]
    # a different conversion into the same folder is refused
    with pytest.raises(ConfigError, match="interrupted conversion with other options"):
        convert_dataset(config=_config(brats2017_source, out, skip_invalid=True))
    monkeypatch.setattr(convert_mod, "convert_case", lambda case, **kw: (calls.append(case.case_id), real(case, **kw))[1])
    s = convert_dataset(config=_config(brats2017_source, out))
    assert calls == ["Brats18_A_1", "Brats18_B_1", "Brats18_T_1"]  # A was not converted twice
    assert s.resumed == 1 and [c.case for c in s.cases] == ["Brats18_A_1", "Brats18_B_1", "Brats18_T_1"]
    assert s.label_voxels[1] == 6
    info = load_dataset(out)
    assert info.training_cases == ("Brats18_A_1", "Brats18_B_1")


def test_two_workers_give_the_same_dataset(brats2017_source: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    a = convert_dataset(config=_config(brats2017_source, tmp_path / "a", workers=1))
    b = convert_dataset(config=_config(brats2017_source, tmp_path / "b", workers=2))
    # This process converted beside the worker with one SimpleITK thread, and restored the setting.
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads
    assert a.cases == b.cases
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for f in _files(tmp_path / "a"):
        if f.endswith(".nii.gz"):
            np.testing.assert_array_equal(read_image(tmp_path / "a" / f).array, read_image(tmp_path / "b" / f).array)
    assert json.loads(a.dataset_json.read_text())["brainseg"]["input"] == json.loads(b.dataset_json.read_text())["brainseg"]["input"]


def test_two_workers_report_invalid_cases(brats2017_source: Path, tmp_path: Path) -> None:
    write(brats2017_source / "LGG" / "Brats18_B_1" / "Brats18_B_1_seg.nii.gz", source_labels([0, 9]))
    with pytest.raises(InputError, match="case Brats18_B_1: unexpected label values 9"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "a", workers=2))
    s = convert_dataset(config=_config(brats2017_source, tmp_path / "b", workers=2, skip_invalid=True))
    assert [c for c, _ in s.skipped] == ["Brats18_B_1"] and s.num_training == 1


def test_unknown_source_and_unused_options(brats2017_source: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"unknown source 'brat' \(did you mean 'brats'\?\); valid: brats, lgg, mrbrains18, msd, nifti"):
        convert_dataset(config=ConvertConfig(source="brat", input=brats2017_source, output=tmp_path / "o"))
    with pytest.raises(ConfigError, match="--spacing cannot be used with source 'brats'"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "o", spacing=(1.0, 1.0, 3.0)))
    with pytest.raises(ConfigError, match="--channel, --label-map cannot be used with source 'brats'"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "o", channel_patterns=(("T1", "*"),), label_map="msd"))
    with pytest.raises(ConfigError, match="--workers must be >= 1"):
        convert_dataset(config=_config(brats2017_source, tmp_path / "o", workers=0))
    assert not (tmp_path / "o").exists()


def test_names_and_default_outputs(tmp_path: Path) -> None:
    src = tmp_path / "Task01_Brain Tumour"
    cfg = ConvertConfig(source="msd", input=src)
    assert dataset_name(cfg) == "Brain_Tumour"
    assert resolve_output(cfg, cwd=tmp_path / "cwd", environ={}) == tmp_path / "cwd" / "Brain_Tumour_converted"
    cfg = ConvertConfig(source="msd", input=src, name="BraTS", nnunet_id=7)
    assert resolve_output(cfg, cwd=tmp_path, environ={}) == tmp_path / "Dataset007_BraTS"
    assert resolve_output(cfg, cwd=tmp_path, environ={"nnUNet_raw": "/raw"}) == Path("/raw/Dataset007_BraTS")
    cfg = ConvertConfig(source="msd", input=src, output=tmp_path / "raw", name="BraTS", nnunet_id=7)
    assert resolve_output(cfg, cwd=tmp_path, environ={"nnUNet_raw": "/raw"}) == tmp_path / "raw" / "Dataset007_BraTS"
    with pytest.raises(ConfigError, match="--name 'a b'"):
        dataset_name(ConvertConfig(source="msd", input=src, name="a b"))
    with pytest.raises(ConfigError, match="nnU-Net dataset ids are 1-999"):
        resolve_output(ConvertConfig(source="msd", input=src, nnunet_id=1000), cwd=tmp_path, environ={})


def test_nnunet_id_folder_and_collision(brats2017_source: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    s = convert_dataset(config=_config(brats2017_source, raw, nnunet_id=12, name="Glioma"))
    assert s.output == raw / "Dataset012_Glioma" and (raw / "Dataset012_Glioma" / "dataset.json").is_file()
    with pytest.raises(ConfigError, match=r"--nnunet-id 12 is already used by .*Dataset012_Glioma"):
        convert_dataset(config=_config(brats2017_source, raw, nnunet_id=12, name="Other"))


def test_default_output_in_current_folder(brats2017_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = convert_dataset(config=ConvertConfig(source="brats", input=brats2017_source))
    assert s.output.resolve() == (tmp_path / "src_converted").resolve()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnraw"))
    s = convert_dataset(config=ConvertConfig(source="brats", input=brats2017_source, nnunet_id=3))
    assert s.output == tmp_path / "nnraw" / "Dataset003_src"


@pytest.mark.parametrize("shape", [(70, 5, 3), (3, 4), (1, 1, 1)])
def test_fortran_copy(shape: tuple[int, ...]) -> None:
    a = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    out = convert_mod.fortran_copy(a, block=8)
    assert out.flags.f_contiguous
    np.testing.assert_array_equal(out, a)
    f = np.asfortranarray(a)
    assert convert_mod.fortran_copy(f) is f


@pytest.mark.fault
def test_a_full_disk_leaves_no_partial_file_under_a_final_name(brats2017_source: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #20: on a full disk convert left truncated and zero-byte files under final names."""
    import SimpleITK as sitk

    from brainseg_cli.errors import OutputError

    real = sitk.WriteImage

    def full_disk(img, path, *args):  # the disk fills while case B's label is written; ITK says nothing
        real(img, path, *args)
        if path.endswith("Brats18_B_1.nii.gz"):
            open(path, "wb").close()

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"cannot write .*Brats18_B_1\.nii\.gz: the written file is incomplete"):
        convert_dataset(config=_config(brats2017_source, out))
    assert _files(out / "imagesTr") == [f"Brats18_A_1_{i:04d}.nii.gz" for i in range(4)]
    assert _files(out / "labelsTr") == ["Brats18_A_1.nii.gz"]
    for image in (out / "imagesTr").iterdir():
        read_image(image)
    monkeypatch.setattr(sitk, "WriteImage", real)   # space freed: the re-run completes
    summary = convert_dataset(config=_config(brats2017_source, out))
    assert summary.resumed == 1 and load_dataset(out).training_cases == ("Brats18_A_1", "Brats18_B_1")
