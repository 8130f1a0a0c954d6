"""Tiny synthetic source volumes for the converter tests (known voxels, known answers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg_cli.io import Image, write_image

SHAPE = (5, 4, 3)
SPACING = (1.0, 1.25, 2.5)
ORIGIN = (-10.0, 20.0, 5.5)
DIRECTION = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


def volume(value: float, *, dtype=np.int16) -> np.ndarray:
    """A (X, Y, Z) volume whose voxels encode the channel (``value``) and the position."""
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + value).astype(dtype)


def source_labels(values: Sequence[int], *, dtype=np.uint8) -> np.ndarray:
    """A (X, Y, Z) label volume using every value of ``values`` (the first is background)."""
    arr = np.zeros(SHAPE, dtype=dtype)
    flat = arr.reshape(-1)
    for i, v in enumerate(values):
        flat[i * 3:(i + 1) * 3] = v
    return arr


def image(array: np.ndarray, *, origin=ORIGIN) -> Image:
    return Image(array, SPACING, origin, DIRECTION)


def write(path: Path, array: np.ndarray, **kw) -> Path:
    write_image(image(array, **kw), path)
    return path


#: Channel -> constant offset used by the synthetic sources (so the output order can be checked).
OFFSETS = {"T1": 1000, "T1c": 2000, "T2": 3000, "FLAIR": 4000, "IR": 5000}
