"""Fixtures for the converter tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_synth import OFFSETS, source_labels, volume, write


@pytest.fixture
def brats2017_source(tmp_path: Path) -> Path:
    """Two labelled BraTS 2017-2021 cases (HGG/ LGG/ folders) and one without a label."""
    root = tmp_path / "src"
    names = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}
    for sub, case in (("HGG", "Brats18_A_1"), ("LGG", "Brats18_B_1"), ("HGG", "Brats18_T_1")):
        for ch, suffix in names.items():
            write(root / sub / case / f"{case}_{suffix}.nii.gz", volume(OFFSETS[ch]))
        if case != "Brats18_T_1":
            write(root / sub / case / f"{case}_seg.nii.gz", source_labels([0, 1, 2, 4]))
    (root / "HGG" / "Brats18_A_1" / "mask.nii.gz").write_bytes(b"not read")
    (root / "README.txt").write_text("ignored")
    return root
