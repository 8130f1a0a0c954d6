"""``--json`` on every command: one JSON document on stdout with the keys of docs/DEFINITIONS.md §8."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import tiny_trained_checkpoint
from typer.testing import CliRunner

from brainseg_cli import __version__
from brainseg_cli.cli.common import jsonable
from brainseg_cli.cli.main import app
from brainseg_cli.data.phantom import write_phantom_brats

runner = CliRunner()
ONE_THREAD = ["--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _document(args: list[str], command: str) -> dict:
    res = runner.invoke(app, [*ONE_THREAD, *args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # the whole of stdout is one document
    assert doc["command"] == command and doc["tool_version"] == __version__
    assert set(doc) <= {"command", "tool_version", "inputs", "result", "seconds"}
    return doc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return tiny_trained_checkpoint(tmp_path_factory.mktemp("json_ckpt"))


def test_convert_json(tmp_path):
    src = write_phantom_brats(tmp_path / "src", n_cases=2, seed=1, shape=(24, 24, 16))
    doc = _document(["convert", "brats", str(src), str(tmp_path / "out")], "convert")
    result = doc["result"]
    assert result["dataset_json"] == str(tmp_path / "out" / "dataset.json") and len(result["cases"]) == 2
    assert result["channels"] == ["T1", "T1c", "T2", "FLAIR"] and doc["inputs"]["source"] == "brats"
    assert doc["seconds"] > 0


def test_pretrain_json(tmp_path, trained):
    dataset = trained.parent.parent / "dataset"
    doc = _document(["pretrain", str(dataset), "-o", str(tmp_path / "run"), "--epochs", "1", "--iterations", "1",
                     "--patch-size", "16,16,16", "--batch-size", "1", "--workers", "0", "--device", "cpu",
                     "--val-cases", "1", "--regions", "none"], "pretrain")
    result = doc["result"]
    assert result["best_checkpoint"] == str(tmp_path / "run" / "best.pt") and result["epochs_completed"] == 1
    assert "step_losses" not in result and result["stop_reason"] == "epochs" and result["bundle"] is None
    assert doc["inputs"]["train_config"]["epochs"] == 1 and doc["inputs"]["plan_overrides"]["batch_size"] == 1


def test_predict_export_evaluate_visualize_json(tmp_path, trained):
    images = trained.parent.parent / "dataset" / "imagesTr"
    labels = trained.parent.parent / "dataset" / "labelsTr"
    doc = _document(["predict", "-i", str(images), "-o", str(tmp_path / "pred"), "-m", str(trained), "--device", "cpu"],
                    "predict")
    assert len(doc["result"]["predicted"]) == 4 and doc["result"]["failed"] == []
    assert set(doc["result"]["volumes"]) == set(doc["result"]["predicted"])
    assert doc["inputs"]["models"] == [str(trained)]

    doc = _document(["export", str(trained), "-o", str(tmp_path / "m.onnx")], "export")
    assert doc["result"]["format"] == "onnx" and doc["result"]["bytes"] == (tmp_path / "m.onnx").stat().st_size

    res = runner.invoke(app, ["evaluate", "--ref", str(labels), "--pred", str(tmp_path / "pred"), "--json", "-o",
                              str(tmp_path / "results.json")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]  # evaluate --json prints results.json

    doc = _document(["visualize", "curves", str(trained.parent), "-o", str(tmp_path / "curves")], "visualize curves")
    assert doc["result"]["written"] and all(Path(p).is_file() for p in doc["result"]["written"])
    doc = _document(["visualize", "metrics", str(tmp_path / "results.json"), "-o", str(tmp_path / "plots")],
                    "visualize metrics")
    assert all(Path(p).is_file() for p in doc["result"]["written"])


def test_jsonable_converts_what_summaries_hold():
    @dataclass(frozen=True)
    class Summary:
        path: Path
        values: tuple[float, ...]
        scalar: np.float32
        counts: dict[int, np.int64]
        hidden: list[float] = field(default_factory=list, repr=False)

    doc = jsonable(Summary(Path("/a/b"), (1.0, math.nan), np.float32(0.5), {3: np.int64(7)}, [1.0]))
    assert doc == {"path": "/a/b", "values": [1.0, None], "scalar": 0.5, "counts": {"3": 7}}
    json.dumps(doc, allow_nan=False)
