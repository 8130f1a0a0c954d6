"""Training curves from ``RUN_DIR/metrics.csv`` (docs/DEFINITIONS.md §5): losses, validation Dice, learning rate.

``metrics.csv`` columns: ``epoch, train_loss, val_loss, val_dice_<label>..., val_dice_mean, lr,
seconds, data_seconds``; validation cells are empty in epochs without validation, so validation
curves join the epochs that have values.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.errors import InputError
from brainseg_cli.viz.plots import figure_png, new_figure, write_pngs

logger = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
#: File names written by :func:`write_curves`.
LOSS_PNG = "loss.png"
DICE_PNG = "dice.png"
LR_PNG = "lr.png"

_REQUIRED = ("epoch", "train_loss")


@dataclass(frozen=True)
class TrainingLog:
    """The numeric columns of a ``metrics.csv``.

    Attributes:
        path: the file read.
        columns: column name -> ``(n_epochs,)`` float array (empty cells are NaN).
        dice_labels: the ``<label>`` of every ``val_dice_<label>`` column except ``mean``, in file order.
    """

    path: Path
    columns: dict[str, np.ndarray]
    dice_labels: tuple[str, ...]

    @property
    def epochs(self) -> np.ndarray:
        """``(n_epochs,)`` epoch numbers."""
        return self.columns["epoch"]

    def has(self, column: str) -> bool:
        """True when ``column`` exists and holds at least one number."""
        values = self.columns.get(column)
        return values is not None and bool(np.any(np.isfinite(values)))


def _cell(text: str | None, *, path: Path, line: int, column: str) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: line {line}, column {column}: '{text}' is not a number") from None


def read_training_log(run_dir: str | Path) -> TrainingLog:
    """Read ``RUN_DIR/metrics.csv`` (or the CSV file itself).

    Args:
        run_dir: a training run folder, or its ``metrics.csv``.

    Returns:
        The :class:`TrainingLog`.

    Raises:
        InputError: the file is missing, has no rows, lacks ``epoch``/``train_loss``, or holds a
            non-numeric cell (names the line and column).
    """
    run_dir = Path(run_dir)
    path = run_dir if run_dir.is_file() else run_dir / METRICS_CSV
    if not path.is_file():
        raise InputError(f"{path}: training log not found (expected RUN_DIR/{METRICS_CSV})")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the training log: {exc}") from None
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)})")
    if not rows:
        raise InputError(f"{path}: no epochs logged yet")
    columns = {name: np.array([_cell(row.get(name), path=path, line=i + 2, column=name) for i, row in enumerate(rows)])
               for name in header}
    labels = tuple(c[len("val_dice_"):] for c in header if c.startswith("val_dice_") and c != "val_dice_mean")
    return TrainingLog(path=path, columns=columns, dice_labels=labels)


def _plot(ax, x: np.ndarray, y: np.ndarray, **kwargs) -> None:
    """Plot the finite points of ``y`` against ``x`` as one connected line with markers."""
    keep = np.isfinite(y)
    ax.plot(x[keep], y[keep], marker="o", markersize=3, **kwargs)


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_figure(log: TrainingLog) -> Any:
    """Training and validation loss per epoch.

    Returns:
        A matplotlib Figure whose lines are labelled ``"training loss"`` and ``"validation loss"``.
    """
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    _plot(ax, log.epochs, log.columns["train_loss"], label="training loss")
    if log.has("val_loss"):
        _plot(ax, log.epochs, log.columns["val_loss"], label="validation loss")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def dice_figure(log: TrainingLog) -> Any | None:
    """Validation Dice per label and the mean, per epoch.

    Returns:
        A matplotlib Figure with one line per label (labelled by name) and ``"mean"``, or None when no
        epoch was validated.
    """
    series = [(f"val_dice_{label}", label) for label in log.dice_labels] + [("val_dice_mean", "mean")]
    series = [(col, name) for col, name in series if log.has(col)]
    if not series:
        return None
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    for col, name in series:
        style = {"linewidth": 2.5, "color": "black"} if name == "mean" else {}
        _plot(ax, log.epochs, log.columns[col], label=name, **style)
    ax.set_ylim(0, 1.02)
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.set_title("Validation Dice", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def lr_figure(log: TrainingLog) -> Any | None:
    """Learning rate per epoch (log scale when all values are positive); None without an ``lr`` column."""
    if not log.has("lr"):
        return None
    lr = log.columns["lr"]
    fig = new_figure(7.0, 3.0)
    ax = fig.add_subplot()
    _plot(ax, log.epochs, lr, color="tab:purple")
    finite = lr[np.isfinite(lr)]
    if finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def curve_figures(log: TrainingLog) -> dict[str, bytes]:
    """All training-curve figures the log allows: file name -> PNG bytes."""
    out = {LOSS_PNG: figure_png(loss_figure(log))}
    for name, make in ((DICE_PNG, dice_figure), (LR_PNG, lr_figure)):
        fig = make(log)
        if fig is None:
            logger.info("%s: no values for %s; not drawn", log.path, name)
        else:
            out[name] = figure_png(fig)
    return out


def write_curves(*, run_dir: Path, out_dir: Path) -> list[Path]:
    """Write the training curves of a run into ``out_dir`` (each file atomically).

    Files: :data:`LOSS_PNG` always, :data:`DICE_PNG` when some epoch was validated, :data:`LR_PNG`
    when the log has learning rates.

    Args:
        run_dir: the training run folder (holding ``metrics.csv``), or the CSV file.
        out_dir: output folder (created if missing).

    Returns:
        The written paths.
    """
    written = write_pngs(curve_figures(read_training_log(run_dir)), out_dir)
    logger.info("wrote %d training curve(s) to %s", len(written), out_dir)
    return written
