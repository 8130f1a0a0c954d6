"""Fixtures for the visualisation tests (helpers live in ``viz_helpers``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from viz_helpers import noise_image, write_flat_case, write_tiny_dataset


@pytest.fixture
def square_case(tmp_path: Path) -> dict[str, Any]:
    """A 40 x 50 x 12 case at 1 mm: reference square X 10-19, Y 15-24, Z 3-6; prediction shifted +2 in X."""
    shape = (40, 50, 12)
    ref = np.zeros(shape, np.uint8)
    ref[10:20, 15:25, 3:7] = 1
    pred = np.zeros(shape, np.uint8)
    pred[12:22, 15:25, 3:7] = 1
    paths = write_flat_case(tmp_path, "square", image=noise_image(shape), pred=pred, ref=ref)
    return {"paths": paths, "ref": ref, "pred": pred, "shape": shape}


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> dict[str, Path]:
    """:func:`viz_helpers.write_tiny_dataset` in ``tmp_path/ds``."""
    return write_tiny_dataset(tmp_path / "ds")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary; skips when it is not installed (``scripts/ensure_chromium.sh`` installs it)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (run scripts/ensure_chromium.sh; `make test` does)")
