"""Run logs: ``metrics.csv`` (one row per epoch, docs/DEFINITIONS.md §5) and TensorBoard event files.

``metrics.csv`` columns, in this order::

    epoch, train_loss, val_loss, val_dice_<name>..., val_dice_mean, lr, seconds, data_seconds

``<name>`` are the foreground label names (softmax models) or the region names (region-based
models), in the model's output order. Validation columns are empty in epochs without validation.
``seconds`` is the epoch's wall-clock time (training and validation), ``data_seconds`` the part of it
spent waiting for training batches, ``lr`` the learning rate of the first parameter group at the
end of the epoch. The file is rewritten atomically after every epoch, so a crash never leaves a
half-written row; on ``--resume`` the rows after the resumed epoch are dropped.

TensorBoard event files (``RUN_DIR/tensorboard``) carry the same numbers, written through
:mod:`torch.utils.tensorboard` (tags ``train/loss``, ``val/dice_<name>``, ``lr``, ...; step =
epoch). A resumed run marks its first epoch as a purge step, so TensorBoard drops the events that
the interrupted run wrote for the epochs that run again.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainseg_cli.errors import InputError
from brainseg_cli.io.atomic import atomic_write

METRICS_FILE = "metrics.csv"


def metrics_columns(names: Sequence[str]) -> list[str]:
    """The ``metrics.csv`` header for validation entities ``names``."""
    return ["epoch", "train_loss", "val_loss", *[f"val_dice_{n}" for n in names], "val_dice_mean", "lr",
            "seconds", "data_seconds"]


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsLog:
    """The rows of ``RUN_DIR/metrics.csv``, kept in memory and rewritten atomically per epoch.

    Args:
        run_dir: the run folder.
        names: validation entity names (``val_dice_<name>`` columns).
        enabled: False on non-zero DDP ranks (nothing is written).
    """

    def __init__(self, run_dir: Path, names: Sequence[str], *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.columns = metrics_columns(names)
        self.rows: list[dict[str, str]] = []
        self.enabled = enabled

    def load_until(self, epoch: int) -> None:
        """Keep the rows of an existing file up to and including ``epoch`` (for ``--resume``).

        Raises:
            InputError: the existing file's header differs from this run's columns.
        """
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != self.columns:
                raise InputError(f"{self.path}: columns {reader.fieldnames} differ from this run's {self.columns}")
            self.rows = [row for row in reader if row["epoch"] and int(row["epoch"]) <= epoch]

    def append(self, values: Mapping[str, Any]) -> None:
        """Add one epoch's row (missing columns are left empty) and rewrite the file."""
        row = {col: _format(values.get(col)) for col in self.columns}
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        """Write all rows atomically (no-op when disabled)."""
        if not self.enabled:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(self.path) as tmp:
            tmp.write_text(buffer.getvalue(), encoding="utf-8")


class TensorBoardLog:
    """Scalars to TensorBoard event files.

    Args:
        log_dir: the event-file folder (``RUN_DIR/tensorboard``).
        enabled: False on non-zero DDP ranks (nothing is written).
        purge_step: on ``--resume``, the first epoch that runs again: TensorBoard discards the
            events an earlier file holds from this step on.
    """

    def __init__(self, log_dir: Path, *, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        """True when event files are being written."""
        return self.writer is not None

    def scalars(self, values: Mapping[str, Any], *, step: int) -> None:
        """Write the numeric values of one epoch's row (tags ``train/loss``, ``val/dice_WT``, ...)."""
        if self.writer is None:
            return
        for key, value in values.items():
            if key == "epoch" or value is None or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            tag = key.replace("train_", "train/").replace("val_", "val/", 1)
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
