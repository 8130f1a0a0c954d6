"""``brainseg predict`` on the command line (synthetic cases, tiny checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference.predict_fixtures import cube_volume, random_checkpoint, write_dataset_folder
from typer.testing import CliRunner

from brainseg_cli.cli.main import app
from brainseg_cli.io import Image, read_image, write_image

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli_predict")
    ckpt = random_checkpoint(root / "model.pt", seed=4, patch_size=(16, 16, 16))
    image, _ = cube_volume(7, shape=(20, 20, 16))
    write_dataset_folder(root / "in", {"case1": Image(image, (1.0, 1.0, 1.5), (3.0, 4.0, 5.0))})
    return ckpt, root / "in"


def test_predict_writes_label_maps(setup, tmp_path):
    ckpt, src = setup
    res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "out"),
                              "--device", "cpu", "--batch-size", "4", "--overlap", "0.25"])
    assert res.exit_code == 0, res.output
    assert "predictions.csv" in res.stdout and "predicted" in res.stdout
    out = read_image(tmp_path / "out" / "case1.nii.gz")
    out.check_same_grid(read_image(src / "case1_0000.nii.gz"), "cli output")
    again = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert again.exit_code == 0 and "skipped" in again.stdout


def test_channel_order_option(setup, tmp_path):
    ckpt, src = setup
    outs = {}
    for name, extra in (("default", []), ("swapped", ["--channel-order", "FLAIR,T1"])):
        res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / name),
                                  "--device", "cpu", "--save-probabilities", *extra])
        assert res.exit_code == 0, res.output
        outs[name] = np.load(tmp_path / name / "case1_probabilities.npz")["probabilities"]
    assert not np.array_equal(outs["default"], outs["swapped"])
    res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "x"),
                              "--channel-order", "T1,XYZ"])
    assert res.exit_code == 2 and "error: unknown channel name 'XYZ'" in res.stderr


def test_errors_are_one_line(setup, tmp_path):
    ckpt, src = setup
    res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(src)])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("error: output folder") and len(res.stderr.strip().splitlines()) == 1
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    res = runner.invoke(app, ["predict", "-m", str(junk), "-i", str(src), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.stderr.startswith("error: checkpoint") and len(res.stderr.strip().splitlines()) == 1
    assert not (src / "predictions.csv").exists()


def test_region_threshold_option(setup, tmp_path):
    import json

    ckpt, src = setup   # a softmax checkpoint: one threshold for its regions makes no sense
    res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "a"), "--device", "cpu",
                              "--region-threshold", "0.3"])
    assert res.exit_code == 2 and "applies to region-based (sigmoid) checkpoints only" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    res = runner.invoke(app, ["predict", "-m", str(ckpt), "-i", str(src), "-o", str(tmp_path / "b"), "--device", "cpu",
                              "--region-threshold", "1.5"])
    assert res.exit_code == 2 and "--region-threshold: a region threshold must be a number in (0, 0.5], got 1.5" in res.stderr
    regions = {"WT": [1, 2], "TC": [2]}
    labels = {"background": 0, "edema": 1, "core": 2}
    region_ckpt = random_checkpoint(tmp_path / "regions.pt", seed=4, patch_size=(16, 16, 16), labels=labels,
                                    regions=regions, region_based=True)
    res = runner.invoke(app, ["predict", "-m", str(region_ckpt), "-i", str(src), "-o", str(tmp_path / "c"),
                              "--device", "cpu", "--region-threshold", "0.3"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "c" / "predict_config.json").read_text())
    assert config["region_threshold"] == 0.3 and config["region_thresholds"] == {"WT": 0.3, "TC": 0.3}


def test_skip_invalid_lists_failures(setup, tmp_path):
    ckpt, src = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in src.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    write_image(read_image(src / "case1_0000.nii.gz"), folder / "broken_0000.nii.gz")  # one channel only
    args = ["predict", "-m", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "o"), "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "case broken: 1 channel(s) but the model needs 2" in res.stderr
    res = runner.invoke(app, [*args, "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "failed: case broken" in res.stderr and (tmp_path / "o" / "case1.nii.gz").exists()


def test_help_lists_options():
    res = runner.invoke(app, ["predict", "--help"])
    assert res.exit_code == 0
    for option in ("--model", "--tta", "--lcc", "--overlap", "--batch-size", "--precision", "--save-probabilities",
                   "--device", "--overwrite", "--labels", "--channel-order", "--skip-invalid"):
        assert option in res.stdout
