"""Fixtures for the metrics tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.metrics_data import BRATS_CASES, load_brats_canonical


@pytest.fixture(scope="session")
def brats_labels(shared_data: Path) -> dict[str, np.ndarray]:
    """Canonical, tumour-cropped BraTS 2018 label maps of two real cases."""
    return {case: load_brats_canonical(shared_data, case) for case in BRATS_CASES}
