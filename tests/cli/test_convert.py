"""``brainseg convert`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from brainseg_cli.cli.main import app
from brainseg_cli.io import Image, read_image, write_image

runner = CliRunner()


def _brats(root: Path, cases=("P1", "P2")) -> Path:
    for case in cases:
        for i, suffix in enumerate(("t1", "t1ce", "t2", "flair")):
            write_image(Image(np.full((4, 3, 2), i, np.int16), (1.0, 1.0, 1.0)), root / case / f"{case}_{suffix}.nii.gz")
        seg = np.zeros((4, 3, 2), np.uint8)
        seg[0, 0, :] = (1, 4)
        write_image(Image(seg, (1.0, 1.0, 1.0)), root / case / f"{case}_seg.nii.gz")
    return root


def test_convert_prints_summary_and_dataset_json(tmp_path: Path) -> None:
    src = _brats(tmp_path / "src")
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "out"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "2 training, 0 test" in res.output
    assert "0000 T1, 0001 T1c, 0002 T2, 0003 FLAIR" in res.output
    assert "enhancing tumour: 2 voxels" in res.output
    assert res.output.strip().splitlines()[-1] == str(tmp_path / "out" / "dataset.json")


def test_convert_nnunet_id_and_name(tmp_path: Path) -> None:
    src = _brats(tmp_path / "src")
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "raw"), "--nnunet-id", "5", "--name", "Glioma"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "raw" / "Dataset005_Glioma" / "dataset.json").is_file()


def test_convert_errors_and_exit_codes(tmp_path: Path) -> None:
    src = _brats(tmp_path / "src")
    res = runner.invoke(app, ["convert", "brats", str(src), str(src / "inner")])
    assert res.exit_code == 2 and "error: OUTPUT" in res.output and "is inside INPUT" in res.output
    write_image(Image(np.full((4, 3, 2), 9, np.uint8), (1.0, 1.0, 1.0)), src / "P2" / "P2_seg.nii.gz")
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "error: case P2: unexpected label values 9 (24 voxels)" in res.output
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "out2"), "--skip-invalid"])
    assert res.exit_code == 0 and "skipped" in res.output and "1 training" in res.output
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "out2")])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "out2"), "--overwrite", "--skip-invalid"])
    assert res.exit_code == 0
    res = runner.invoke(app, ["convert", "brat", str(src)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["convert", "brats", str(src), str(tmp_path / "o3"), "--spacing", "1,1,3"])
    assert res.exit_code == 2 and "--spacing cannot be used with source 'brats'" in res.output


def test_convert_nifti_channels_and_label_map(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    for case in ("a", "b"):
        write_image(Image(np.ones((4, 3, 2), np.float32), (1.0, 1.0, 1.0)), src / f"{case}_Flair.nii.gz")
        seg = np.zeros((4, 3, 2), np.float32)
        seg[0, 0] = (1, 4)
        write_image(Image(seg, (1.0, 1.0, 1.0)), src / f"{case}_OT.nii.gz")
    res = runner.invoke(app, ["convert", "nifti", str(src), str(tmp_path / "out"), "--channel", "FLAIR=*_Flair.nii.gz",
                              "--label", "*_OT.nii.gz", "--label-map", "brats2015"])
    assert res.exit_code == 0, res.output
    lab = read_image(tmp_path / "out" / "labelsTr" / "a.nii.gz").array
    assert lab[0, 0].tolist() == [2, 3]
    res = runner.invoke(app, ["convert", "nifti", str(src), str(tmp_path / "o2"), "--channel", "FLAIR"])
    assert res.exit_code == 2 and "expected NAME=GLOB" in res.output
    res = runner.invoke(app, ["convert", "nifti", str(src), str(tmp_path / "o2"), "--channel", "FLAIR=*_Flair.nii.gz",
                              "--label", "*_OT.nii.gz"])
    assert res.exit_code == 2 and "--label needs --label-map" in res.output


@pytest.mark.parametrize(("value", "ok"), [("1,1,3", True), ("0.5x0.5x3", True), ("1,1", False), ("a,b,c", False), ("1,-1,2", False)])
def test_convert_lgg_spacing(tmp_path: Path, value: str, ok: bool) -> None:
    folder = tmp_path / "kaggle_3m" / "TCGA_X_1_2"
    folder.mkdir(parents=True)
    for n in (1, 2):
        tifffile.imwrite(folder / f"TCGA_X_1_2_{n}.tif", np.zeros((4, 4, 3), np.uint8))
        tifffile.imwrite(folder / f"TCGA_X_1_2_{n}_mask.tif", np.full((4, 4), 255, np.uint8))
    res = runner.invoke(app, ["convert", "lgg", str(tmp_path / "kaggle_3m"), str(tmp_path / "out"), "--spacing", value])
    if ok:
        assert res.exit_code == 0, res.output
        expected = [float(v) for v in value.replace("x", ",").split(",")]
        assert json.loads((tmp_path / "out" / "dataset.json").read_text())["brainseg"]["spacing"]["value"] == expected
    else:
        assert res.exit_code == 2 and "--spacing" in res.output
