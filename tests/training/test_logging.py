"""metrics.csv writing and resuming; TensorBoard event files."""

from __future__ import annotations

import csv

import pytest

from brainseg_cli.errors import InputError
from brainseg_cli.training.logging import MetricsLog, TensorBoardLog, metrics_columns


def test_columns_follow_design():
    assert metrics_columns(["WT", "TC", "ET"]) == ["epoch", "train_loss", "val_loss", "val_dice_WT", "val_dice_TC",
                                                   "val_dice_ET", "val_dice_mean", "lr", "seconds", "data_seconds"]


def test_rows_rewritten_and_truncated_on_resume(tmp_path):
    log = MetricsLog(tmp_path, ["a"])
    for epoch in range(3):
        log.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "lr": 0.01, "seconds": 1.5, "data_seconds": 0.1})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[1]["val_dice_a"] == "" and rows[1]["train_loss"] == "0.5"
    resumed = MetricsLog(tmp_path, ["a"])
    resumed.load_until(1)
    resumed.append({"epoch": 2, "train_loss": 9.0})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [("0", "1"), ("1", "0.5"), ("2", "9")]
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.csv"]
    with pytest.raises(InputError, match=r"metrics\.csv: columns .* differ from this run's"):
        MetricsLog(tmp_path, ["b"]).load_until(1)


def test_disabled_log_writes_nothing(tmp_path):
    MetricsLog(tmp_path, ["a"], enabled=False).append({"epoch": 0})
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLog(tmp_path / "tb")
    for epoch in range(3):
        tb.scalars({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_dice_WT": float("nan") if epoch < 2 else 0.7,
                    "lr": 0.01, "note": "text is skipped"}, step=epoch)
    tb.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/loss", "val/dice_WT"]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [(0, 1.0), (1, 0.5), (2, 0.333333)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/dice_WT")] == [(2, 0.7)]


def test_disabled_tensorboard_writes_nothing(tmp_path):
    tb = TensorBoardLog(tmp_path / "tb", enabled=False)
    tb.scalars({"train_loss": 1.0}, step=0)
    tb.close()
    assert not tb.active and not (tmp_path / "tb").exists()
