"""``brainseg finetune`` on the command line: every option reaches the library, architecture options are
refused, usage errors exit 2, and an end-to-end run on phantoms from the shared briefly trained checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import tiny_trained_checkpoint
from typer.testing import CliRunner

from brainseg_cli.checkpoint import load_checkpoint
from brainseg_cli.cli.main import app
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.training.fit import TrainResult

runner = CliRunner()


def invoke(args: list[str]):
    """Run ``brainseg --threads 1 ...`` (one torch thread: a busy 2-core machine made two many times slower)."""
    return runner.invoke(app, ["--threads", "1", *args])


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """``--threads`` sets torch's thread count and OMP/MKL/OpenBLAS variables: undo both after each test."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        present = var in os.environ
        monkeypatch.setenv(var, os.environ.get(var, ""))  # registers the restore (or removal) at teardown
        if not present:
            monkeypatch.delenv(var)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ft") / "two", n_cases=3, seed=2, shape=(32, 32, 24),
                                 channels=("T1c", "FLAIR"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine made these tiny steps many times slower
    try:
        return tiny_trained_checkpoint(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Replace the library call by one that records its arguments."""
    calls: list[dict] = []

    def fake(**kwargs):
        calls.append(kwargs)
        return TrainResult(run_dir=tmp_path, best_checkpoint=tmp_path / "best.pt", last_checkpoint=tmp_path / "last.pt",
                           epochs_completed=3, best_epoch=1, best_val_dice=0.5, val_dice={"edema": 0.5},
                           postprocessing={}, stop_reason="epochs")

    monkeypatch.setattr("brainseg_cli.training.finetune.finetune", fake)
    return calls


def test_every_option_reaches_the_library(phantom, captured, tmp_path):
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"not read: the library is replaced")
    options = tmp_path / "opts.json"
    options.write_text(json.dumps({"patience": 4, "lr": 0.5}))
    args = ["finetune", str(phantom), "--from", str(ckpt), "-o", str(tmp_path / "run"), "--freeze", "first3",
            "--unfreeze-after", "2", "--encoder-lr-scale", "0.1", "--channel-map", "IR=T1,FLAIR=T2", "--train-cases", "4",
            "--select", "lesion-balanced", "--no-aug", "--aug-preset", "brats", "--epochs", "5", "--iterations", "7", "--val-every", "2",
            "--max-time", "1.5", "--lr", "0.1", "--optimizer", "sgd", "--schedule", "cosine", "--grad-clip", "3", "--ema", "0.99",
            "--loss", "dice", "--val-cases", "1", "--precision", "fp32", "--resume", "--deterministic", "--seed", "9",
            "--device", "cpu", "--workers", "0", "--nproc", "1", "--batch-size", "2", "--patch-size", "192x160",
            "--spacing", "1,1,3", "--memory-gb", "4", "--regions", "dataset", "--sample-dice", "--options-file", str(options)]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    (call,) = captured
    ft, tc = call["finetune_config"], call["train_config"]
    assert ft.checkpoint == ckpt and ft.freeze == "first3" and ft.unfreeze_after == 2 and ft.encoder_lr_scale == 0.1
    assert ft.channel_map == (("IR", "T1"), ("FLAIR", "T2")) and ft.train_cases == 4 and ft.select == "lesion-balanced"
    assert (tc.augment, tc.epochs, tc.iterations_per_epoch, tc.val_every, tc.max_time_min) == (False, 5, 7, 2, 1.5)
    assert tc.augment_preset == "brats" and tc.ema == 0.99
    assert (tc.lr, tc.optimizer, tc.schedule, tc.grad_clip, tc.loss, tc.val_cases) == (0.1, "sgd", "cosine", 3.0, "dice", 1)
    assert (tc.precision, tc.resume, tc.deterministic, tc.seed, tc.device, tc.workers, tc.nproc) == (
        "fp32", True, True, 9, "cpu", 0, 1)
    assert tc.patience == 4  # from the options file; --lr overrides the file's
    assert call["plan_overrides"] == {"batch_size": 2, "patch_size": [192, 160], "target_spacing": [1.0, 1.0, 3.0],
                                      "memory_gb": 4.0, "regions": "dataset", "batch_dice": False}
    assert Path(call["dataset_dir"]) == phantom and Path(call["run_dir"]) == tmp_path / "run"
    assert "mean validation Dice 0.5000" in res.output and str(tmp_path / "best.pt") in res.output


def test_defaults(phantom, captured, tmp_path):
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"x")
    res = invoke(["finetune", str(phantom), "--from", str(ckpt), "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ft = captured[0]["finetune_config"]
    assert (ft.freeze, ft.unfreeze_after, ft.encoder_lr_scale, ft.channel_map, ft.train_cases, ft.select) == (
        "none", None, 1.0, (), None, "random")
    assert captured[0]["plan_overrides"] == {}


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "unetr"], "--model unetr: fine-tuning keeps the architecture of the checkpoint"),
    (["--config", "2d"], "--config 2d: fine-tuning keeps the architecture of the checkpoint"),
    (["--channel-map", "IR"], "--channel-map item 'IR' must be TARGET=SOURCE"),
    (["--freeze", "decoder"], "unknown freeze preset 'decoder'"),
    (["--unfreeze-after", "2"], "--unfreeze-after 2 needs a freeze preset"),
    (["--encoder-lr-scale", "0"], "encoder_lr_scale must be a positive number"),
    (["--patch-size", "12,a"], "--patch-size '12,a': expected integers"),
])
def test_usage_errors_exit_2(phantom, captured, tmp_path, extra, message):
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"x")
    res = invoke(["finetune", str(phantom), "--from", str(ckpt), "-o", str(tmp_path / "run"), *extra])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not captured


def test_architecture_in_an_options_file_is_refused_by_the_library(phantom, tiny, tmp_path):
    options = tmp_path / "opts.json"
    options.write_text(json.dumps({"model_config": {"base_features": 32}}))
    res = invoke(["finetune", str(phantom), "--from", str(tiny), "-o", str(tmp_path / "run"),
                                 "--options-file", str(options)])
    assert res.exit_code == 2
    assert "option 'model_config' cannot be set when fine-tuning" in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()


def test_end_to_end(phantom, tiny, tmp_path):
    run = tmp_path / "run"
    res = invoke(["finetune", str(phantom), "--from", str(tiny), "-o", str(run), "--freeze", "encoder",
                                 "--unfreeze-after", "1", "--epochs", "2", "--iterations", "2", "--patch-size",
                                 "16,16,16", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--val-cases",
                                 "1", "--no-aug", "--seed", "3"])
    assert res.exit_code == 0, res.output
    output = " ".join(res.output.split())
    assert "freeze encoder, released at epoch 1" in output and "encoder.0" in output
    assert "input channels: T1c <- T1c; FLAIR <- FLAIR (first-layer filters x2)" in output
    assert str(run / "best.pt") in res.output
    for name in ("plan.json", "transfer.json", "config.json", "metrics.csv", "best.pt", "last.pt"):
        assert (run / name).exists(), name
    last = load_checkpoint(run / "last.pt")
    assert last["channels"] == ["T1c", "FLAIR"] and last["training"]["seed"] == 3
    assert last["training"]["augmentation"] is None
    assert last["training"]["transfer"] == json.loads((run / "transfer.json").read_text())
    assert last["plan"]["patch_size"] == [16, 16, 16]
    # the same run folder again without --resume is refused (exit 2)
    again = invoke(["finetune", str(phantom), "--from", str(tiny), "-o", str(run), "--device", "cpu"])
    assert again.exit_code == 2 and "is not empty" in again.output
