"""``brainseg visualize`` end to end on real data (Kaggle-LGG slices of real BraTS 2018 scans).

Predictions are the reference masks moved by a few pixels (and one slice emptied); the training
run is a tiny network briefly trained on the same slices, logged with the project's MetricsLog.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from brainseg_cli.cli.main import app

runner = CliRunner()
LGG_LABEL = "FLAIR abnormality"


def invoke(*args: str):
    return runner.invoke(app, ["visualize", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def lgg(shared_data, tmp_path_factory) -> dict:
    """Two real Kaggle-LGG patients, perturbed predictions, a results.json and a training run."""
    from brainseg_cli.io.slices import list_lgg_patients, read_lgg_patient, write_lgg_masks

    root = shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    tmp = tmp_path_factory.mktemp("lgg")
    patients = [read_lgg_patient(folder) for folder in list_lgg_patients(root)[:2]]
    rows = []
    for i, patient in enumerate(patients):
        ref = np.asarray(patient.mask.array).astype(bool)
        pred = np.roll(ref, 4 + 2 * i, axis=0)
        pred[..., int(np.argmax(ref.sum(axis=(0, 1))))] = False  # miss the largest slice entirely
        write_lgg_masks(tmp / "pred" / patient.patient, patient=patient.patient, mask=pred.astype(np.uint8),
                        slice_numbers=patient.slice_numbers)
        rows.append({"case": patient.patient, "label": LGG_LABEL, "dice": dice(pred, ref),
                     "hd95": hd95(pred, ref, patient.image.spacing)})
    results = {"format_version": 1, "tool_version": "test", "definitions": {"hd95": "max"}, "empty_policy": "brats",
               "cases": rows, "summary": {}, "missing": [], "extra": []}
    (tmp / "results.json").write_text(json.dumps(results))
    train_tiny_model(patients, tmp / "run")
    return {"root": root, "pred": tmp / "pred", "results": tmp / "results.json", "run": tmp / "run",
            "patients": [p.patient for p in patients], "rows": rows, "tmp": tmp}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(2 * np.count_nonzero(pred & ref) / (np.count_nonzero(pred) + np.count_nonzero(ref)))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """docs/DEFINITIONS.md §3 HD95 (max of the directed 95th percentiles between cross-eroded surfaces)."""
    from scipy import ndimage

    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)  # the border voxels stay surface
    pred, ref = pred[box], ref[box]
    cross = ndimage.generate_binary_structure(3, 1)
    surf = [m ^ ndimage.binary_erosion(m, cross, border_value=0) for m in (pred, ref)]
    d_to_ref = ndimage.distance_transform_edt(~surf[1], sampling=spacing)[surf[0]]
    d_to_pred = ndimage.distance_transform_edt(~surf[0], sampling=spacing)[surf[1]]
    return float(max(np.percentile(d_to_ref, 95), np.percentile(d_to_pred, 95)))


def train_tiny_model(patients, run_dir: Path, epochs: int = 12) -> None:
    """Train a 3-layer CNN on 32 x 32 slices of patient 0, validate on patient 1; log metrics.csv."""
    import time

    import torch

    from brainseg_cli.training.logging import MetricsLog

    def tensors(patient):
        image = np.asarray(patient.image.array)[:, ::8, ::8, :].astype(np.float32) / 255.0  # (3, 32, 32, Z)
        mask = np.asarray(patient.mask.array)[::8, ::8, :].astype(np.int64)
        return torch.from_numpy(np.moveaxis(image, -1, 0).copy()), torch.from_numpy(np.moveaxis(mask, -1, 0).copy())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    try:
        torch.manual_seed(0)
        (x_train, y_train), (x_val, y_val) = tensors(patients[0]), tensors(patients[1])
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 60.0]))  # ~1.5 % foreground
        log = MetricsLog(run_dir, [LGG_LABEL])
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            optimizer.zero_grad()
            loss = loss_fn(model(x_train), y_train)
            loss.backward()
            optimizer.step()
            scheduler.step()
            row = {"epoch": epoch, "train_loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                   "data_seconds": 0.0}
            if epoch % 2 == 0:
                model.eval()
                with torch.no_grad():
                    logits = model(x_val)
                pred, truth = logits.argmax(1).numpy().astype(bool), y_val.numpy().astype(bool)
                d = 2 * np.count_nonzero(pred & truth) / max(1, np.count_nonzero(pred) + np.count_nonzero(truth))
                row.update({"val_loss": float(loss_fn(logits, y_val)), f"val_dice_{LGG_LABEL}": d, "val_dice_mean": d})
            row["seconds"] = time.perf_counter() - start
            log.append(row)
    finally:
        torch.set_num_threads(threads)


def test_overlays_on_real_lgg(lgg, tmp_path):
    out = tmp_path / "overlays"
    result = invoke("overlays", "--images", lgg["root"], "--pred", lgg["pred"], "--ref", lgg["root"], "-o", out,
                    "--slices", "2")
    assert result.exit_code == 0, result.output
    assert f"wrote 2 overlay(s) to {out}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{p}.png" for p in lgg["patients"]]
    png = np.asarray(PILImage.open(out / f"{lgg['patients'][0]}.png").convert("RGB"))
    assert np.all(png == (255, 0, 0), axis=2).sum() > 100 and np.all(png == (0, 255, 0), axis=2).sum() > 100


def test_overlays_views_channel_and_no_reference(lgg, tmp_path):
    out = tmp_path / "overlays"
    result = invoke("overlays", "--images", lgg["root"], "--pred", lgg["pred"], "-o", out, "--channel", "T1c",
                    "--views", "axial,coronal", "--slices", "1")
    assert result.exit_code == 0, result.output
    png = np.asarray(PILImage.open(out / f"{lgg['patients'][1]}.png").convert("RGB"))
    assert not np.all(png == (0, 255, 0), axis=2).any()  # no reference given
    single = tmp_path / "single"
    invoke("overlays", "--images", lgg["root"], "--pred", lgg["pred"], "-o", single, "--slices", "1")
    # the coronal row makes the image taller than the axial-only default for slice stacks
    assert png.shape[0] > np.asarray(PILImage.open(single / f"{lgg['patients'][1]}.png")).shape[0] + 50


def test_metrics_on_real_results(lgg, tmp_path):
    result = invoke("metrics", lgg["results"], "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["dice_boxplot.png", "dice_per_case.png",
                                                                  "hd95_distribution.png"]
    assert all(0.2 < row["dice"] < 0.99 and row["hd95"] > 1 for row in lgg["rows"])


def test_curves_of_a_briefly_trained_model(lgg, tmp_path):
    from brainseg_cli.viz.curves import read_training_log

    header = (lgg["run"] / "metrics.csv").read_text().splitlines()[0]
    assert header == f"epoch,train_loss,val_loss,val_dice_{LGG_LABEL},val_dice_mean,lr,seconds,data_seconds"
    log = read_training_log(lgg["run"])
    assert log.dice_labels == (LGG_LABEL,)
    assert np.nanmax(log.columns[f"val_dice_{LGG_LABEL}"]) > 0.1  # the model did learn something
    result = invoke("curves", lgg["run"], "-o", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["dice.png", "loss.png", "lr.png"]


def test_report_on_real_data(lgg, tmp_path):
    out = tmp_path / "report.html"
    result = invoke("report", "--images", lgg["root"], "--pred", lgg["pred"], "--ref", lgg["root"],
                    "--results", lgg["results"], "--run", lgg["run"], "-o", out, "--slices", "1")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    for patient in lgg["patients"]:
        assert f'<a href="#case-{patient}">{patient}</a>' in page and f'id="case-{patient}"' in page
    assert page.count("data:image/png;base64,") == 2 + 3 + 3
    assert "http://" not in page and "https://" not in page


@pytest.mark.parametrize("args, message", [
    (["--views", "axial,top"], "unknown view 'top'"),
    (["--slices", "0"], "error: --slices: "),
    (["--channel", "T2"], "--channel 'T2' is not a channel"),
])
def test_usage_errors_exit_2(lgg, tmp_path, args, message):
    result = invoke("overlays", "--images", lgg["root"], "--pred", lgg["pred"], "-o", tmp_path / "o", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_runtime_errors_exit_1_with_one_line(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("[1, 2]")
    result = invoke("metrics", bad, "-o", tmp_path / "m")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {bad}: not a brainseg results file (no 'cases' list)"
    result = invoke("curves", tmp_path, "-o", tmp_path / "c")
    assert result.exit_code == 1 and "training log not found" in result.output


def test_missing_input_path_is_a_usage_error(tmp_path):
    result = invoke("overlays", "--images", tmp_path / "nope", "--pred", tmp_path, "-o", tmp_path / "o")
    assert result.exit_code == 2 and "error: --images: dir" in result.output


def test_help_lists_the_four_subcommands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("overlays", "metrics", "curves", "report"):
        assert name in result.stdout
