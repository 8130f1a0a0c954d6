"""``brainseg demo``: option checks, the output folder rules, the case split and links (fast), and whole
runs (slow): the default demo's Dice, determinism for a seed, and ``--data`` on BraTS folders."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainseg_cli.cli.common import jsonable
from brainseg_cli.cli.main import app
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.data.phantom import write_phantom_brats, write_phantom_dataset
from brainseg_cli.demo import (
    MARKER,
    DemoConfig,
    check_data_folder,
    link_cases,
    link_dataset_cases,
    prepare_output,
    run_demo,
    split_cases_for_test,
)
from brainseg_cli.errors import ConfigError
from brainseg_cli.io import read_image

runner = CliRunner()

#: A demo small enough for tests: 4-stage network (32^3 patch), two optimiser steps per run.
SMALL = dict(source_cases=4, target_cases=4, test_cases=1, val_cases=1, shape=(32, 32, 32), patch_size=(32, 32, 32),
             base_features=4, pretrain_epochs=1, finetune_epochs=1, iterations=2)


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def _tree_digest(root: Path) -> str:
    """Names, sizes and contents of every file under ``root`` (to show an input is unchanged)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- fast
@pytest.mark.parametrize("changes, match", [
    ({"shape": (48, 48)}, "shape must be three sizes >= 16"),
    ({"shape": (48, 48, 8)}, "shape must be three sizes >= 16"),
    ({"patch_size": (32, 32, 20)}, r"patch_size must be three multiples of 8, got \(32, 32, 20\)"),
    ({"source_cases": 2}, "source_cases must be an integer >= 3, got 2"),
    ({"target_cases": 3, "val_cases": 3}, r"target_cases \(3\) must exceed val_cases \(3\)"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"iterations": 0}, "iterations must be an integer >= 1, got 0"),
    ({"data_spacing": 0.0}, "data_spacing must be a positive number of mm, got 0.0"),
    ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
])
def test_config_validation(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        DemoConfig(output_dir=tmp_path / "out", **changes)


def test_config_to_dict_is_json(tmp_path):
    config = DemoConfig(output_dir=tmp_path / "out", data=tmp_path, seed=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["seed"] == 3 and data["data"] == str(tmp_path) and data["shape"] == [48, 48, 40]


def test_cli_data_without_brats_cases(tmp_path):
    empty = tmp_path / "not_brats"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "-o", str(out), "--data", str(empty)])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data: ") and "no BraTS files found" in lines[0]
    assert not out.exists()


def test_cli_data_with_too_few_cases(tmp_path):
    data = write_phantom_brats(tmp_path / "brats", n_cases=3, seed=1, shape=(16, 16, 16))
    res = runner.invoke(app, ["demo", "-o", str(tmp_path / "out"), "--data", str(data)])
    assert res.exit_code == 1
    assert "3 labelled BraTS case(s); the demo needs at least 4" in res.output
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_foreign_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    res = runner.invoke(app, ["demo", "-o", str(out)])
    assert res.exit_code == 2
    assert "is not empty and holds no earlier demo" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_cli_help_lists_the_options():
    res = runner.invoke(app, ["demo", "--help"])
    assert res.exit_code == 0
    for option in ("--output", "--seed", "--data"):
        assert option in res.output


def test_prepare_output_replaces_a_previous_demo(tmp_path):
    out = tmp_path / "out"
    prepare_output(out)
    assert (out / MARKER).is_file()
    (out / "runs").mkdir()
    (out / "runs" / "old.txt").write_text("old")
    (out / "report.html").write_text("old")
    prepare_output(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    (out / "mine.txt").write_text("not the demo's")
    with pytest.raises(ConfigError, match="holds 'mine.txt', which brainseg demo did not write"):
        prepare_output(out)
    assert (out / "mine.txt").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        prepare_output(tmp_path / "file")


def test_split_cases_for_test_is_deterministic_and_disjoint():
    cases = [f"case_{i:02d}" for i in range(10)]
    train, test = split_cases_for_test(cases[::-1], n_test=3, seed=5)
    assert (train, test) == split_cases_for_test(cases, n_test=3, seed=5)
    assert len(test) == 3 and sorted(train + test) == cases and train == sorted(train) and test == sorted(test)
    assert len({tuple(split_cases_for_test(cases, n_test=3, seed=s)[1]) for s in range(6)}) > 1
    with pytest.raises(ConfigError, match="holding out 8 case"):
        split_cases_for_test(cases, n_test=8, seed=0)


def test_link_cases_keeps_the_source_and_converts(tmp_path):
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset

    base = tmp_path / "demo"
    data = write_phantom_brats(base / "all", n_cases=4, seed=2, shape=(16, 16, 16))
    outside = write_phantom_brats(tmp_path / "outside", n_cases=4, seed=2, shape=(16, 16, 16))
    before = _tree_digest(data)
    assert check_data_folder(data) == [f"Brats18_Phantom_00{i}_1" for i in range(1, 5)]
    link_cases(data, ["Brats18_Phantom_002_1", "Brats18_Phantom_004_1"], base / "part", base=base)
    link_cases(outside, ["Brats18_Phantom_001_1"], base / "ext", base=base)
    inner = base / "part" / "Brats18_Phantom_002_1" / "Brats18_Phantom_002_1_t1.nii.gz"
    assert inner.is_symlink() and not os.path.isabs(os.readlink(inner))
    outer = base / "ext" / "Brats18_Phantom_001_1" / "Brats18_Phantom_001_1_t1.nii.gz"
    assert outer.is_symlink() and os.path.isabs(os.readlink(outer))
    summary = convert_dataset(config=ConvertConfig(source="brats", input=base / "part", output=tmp_path / "ds"))
    assert [c.case for c in summary.cases] == ["Brats18_Phantom_002_1", "Brats18_Phantom_004_1"]
    assert _tree_digest(data) == before


def test_link_dataset_cases(tmp_path):
    base = tmp_path / "demo"
    root = write_phantom_dataset(base / "all", n_cases=4, seed=1, kind="tissue", shape=(16, 16, 16))
    link_dataset_cases(root, ["phantom_001", "phantom_003"], base / "subset", base=base)
    info = load_dataset(base / "subset")
    assert info.training_cases == ("phantom_001", "phantom_003")
    assert info.channels == ("T1", "FLAIR", "IR") and info.labels["white matter"] == 3
    meta = json.loads((base / "subset" / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["brainseg"]["subset_of"]["cases"] == ["phantom_001", "phantom_003"]
    assert load_dataset(root).training_cases == ("phantom_000", "phantom_001", "phantom_002", "phantom_003")


# ---------------------------------------------------------------------------------------------- slow
def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(read_image(p).array) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.slow
def test_default_demo(tmp_path, monkeypatch):
    """`brainseg demo` with its defaults: every output, and a meaningful Dice on held-out phantoms.

    One thread (``--threads 1``): CI shares its cores, and the result is deterministic per thread count.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # restored after the test (--threads sets them)
    out = tmp_path / "demo_output"
    res = runner.invoke(app, ["--threads", "1", "demo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"report:        {out / 'report.html'}" in res.output
    assert f"export:        {out / 'export' / 'tumour.onnx'} (ONNX Runtime labels equal PyTorch's on" in res.output
    for text in ("Tumour model", "Tissue model", "WT", "white matter", "finished in"):
        assert text in res.output
    for path in ("report.html", "tumour_report.html", "demo_summary.json", "runs/pretrain/best.pt",
                 "runs/finetune/best.pt", "runs/finetune/metrics.csv", "runs/finetune/transfer.json",
                 "evaluation/tumour_results.json", "evaluation/tissue_results.csv", "export/tumour.onnx"):
        assert (out / path).is_file(), path
    summary = json.loads((out / "demo_summary.json").read_text())
    tumour, tissue = summary["tumour"], summary["tissue"]
    assert tumour["dice"]["WT"] > 0.7, tumour
    assert tissue["mean_dice"] > 0.7, tissue
    assert set(tumour["dice"]) == {"edema", "non-enhancing tumour", "enhancing tumour", "WT", "TC", "ET"}
    assert set(tissue["dice"]) == {"CSF", "grey matter", "white matter"}
    # held-out cases were neither trained nor validated on
    assert not set(tumour["cases"]) & set(load_dataset(out / "datasets" / "tumour").training_cases)
    assert not set(tissue["cases"]) & set(load_dataset(out / "datasets" / "tissue").training_cases)
    assert len(tumour["cases"]) == len(tissue["cases"]) == 3
    # the exported tumour model predicts the first held-out case on ONNX Runtime as PyTorch does
    export = summary["export"]
    assert export["case"] == tumour["cases"][0] and Path(export["prediction"]).is_file()
    assert export["equal_voxels"] >= 0.999 and export["max_logit_difference"] < 1e-2
    transfer = json.loads((out / "runs" / "finetune" / "transfer.json").read_text())
    assert "first3" in json.dumps(transfer)
    html = (out / "report.html").read_text()
    assert "Training curves" in html and "phantom_" in html
    # a later run into the same folder replaces this one
    prepare_output(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


@pytest.mark.slow
def test_demo_is_deterministic_for_a_seed(tmp_path):
    first = run_demo(config=DemoConfig(output_dir=tmp_path / "a", seed=7, **SMALL))
    second = run_demo(config=DemoConfig(output_dir=tmp_path / "b", seed=7, **SMALL))
    assert first.tumour.dice == second.tumour.dice and first.tissue.dice == second.tissue.dice
    assert first.tissue.hd95 == second.tissue.hd95
    for name in ("tumour", "tissue"):
        a, b = _labels(tmp_path / "a" / "predictions" / name), _labels(tmp_path / "b" / "predictions" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    plan = json.loads((tmp_path / "a" / "runs" / "pretrain" / "plan.json").read_text())
    assert plan["model"]["config"]["base_features"] == 4 and plan["patch_size"] == [32, 32, 32]
    assert plan["batch_size"] == 2
    metrics = (tmp_path / "a" / "runs" / "finetune" / "metrics.csv").read_text().strip().splitlines()
    assert len(metrics) == 2  # header + one epoch (finetune_epochs=1)
    assert len(first.tissue.cases) == len(first.tumour.cases) == 1
    doc = jsonable(first)  # what demo --json prints as its result
    json.dumps(doc, allow_nan=False)
    assert doc["tumour"]["dice"] == {k: (None if math.isnan(v) else v) for k, v in first.tumour.dice.items()}
    assert doc["report"] == str(first.report) and set(doc["stage_seconds"]) == set(first.stage_seconds)


@pytest.mark.slow
def test_demo_with_data_folder(tmp_path):
    """--data: the folder's cases are split into training and held-out cases, trained at data_spacing."""
    data = write_phantom_brats(tmp_path / "brats", n_cases=6, seed=4, shape=(32, 32, 32))
    before = _tree_digest(data)
    config = DemoConfig(output_dir=tmp_path / "out2", data=data, data_spacing=2.0, data_test_cases=2, **SMALL)
    summary = run_demo(config=config)
    _, test = split_cases_for_test(check_data_folder(data), n_test=2, seed=0)
    assert summary.source == str(data) and summary.tumour.cases == tuple(test)
    plan = json.loads((tmp_path / "out2" / "runs" / "pretrain" / "plan.json").read_text())
    assert plan["target_spacing"] == [2.0, 2.0, 2.0]
    assert not (tmp_path / "out2" / "sources" / "tumour_phantoms").exists()
    assert _tree_digest(data) == before
    # predictions are on the held-out cases' own grid (1 mm, 32^3)
    pred = read_image(tmp_path / "out2" / "predictions" / "tumour" / f"{test[0]}.nii.gz")
    assert pred.spatial_shape == (32, 32, 32)


@pytest.mark.slow
def test_demo_on_real_brats(shared_data, tmp_path):
    """--data on real BraTS 2018 cases (a tiny budget: this checks the pipeline, not the Dice)."""
    data = shared_data / "brats2018_deepbrainseg"
    if not data.is_dir():
        pytest.skip(f"{data} not found")
    summary = run_demo(config=DemoConfig(output_dir=tmp_path / "out", data=data, data_test_cases=1,
                                         **{**SMALL, "shape": (48, 48, 40)}))
    assert len(summary.tumour.cases) == 1 and summary.tumour.cases[0].startswith("Brats18_")
    pred = read_image(tmp_path / "out" / "predictions" / "tumour" / f"{summary.tumour.cases[0]}.nii.gz")
    ref = read_image(tmp_path / "out" / "datasets" / "tumour_test" / "labelsTr" / f"{summary.tumour.cases[0]}.nii.gz")
    assert pred.spatial_shape == ref.spatial_shape == (240, 240, 155)
    assert np.allclose(pred.spacing, ref.spacing) and np.allclose(pred.origin, ref.origin)
    assert all(0.0 <= v <= 1.0 for v in summary.tumour.dice.values() if not np.isnan(v))
    assert (tmp_path / "out" / "report.html").is_file()
