"""``convert`` and ``predict`` killed with SIGKILL part-way, then run again (issue #20's fault suite).

Each test starts the command in a child process on real BraTS 2018 cases, kills it once its first
output file is in place, and checks that: every file under a final name is whole (it loads), the
inputs are byte-identical, and a second run of the same command finishes the job with the same
result as a run that was never interrupted. (``pretrain``'s kill test is in ``test_pretrain.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference.predict_fixtures import random_checkpoint

REPO = Path(__file__).resolve().parents[2]
CASES = ("Brats18_2013_20_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA01_201_1")
BRATS_LABELS = {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from brainseg_cli.cli.main import main; main()", "--quiet", "--threads", "1", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _kill_after_first(command: list[str], watched: Path, pattern: str) -> list[Path]:
    """Run ``command``, SIGKILL it as soon as a file matching ``pattern`` is in ``watched``; return those files."""
    proc = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not (watched.is_dir() and _final(watched, pattern)):
            time.sleep(0.01)
        assert proc.poll() is None, "the command ended before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _final(watched, pattern)


def _final(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` under a final name (not a hidden ``.tmp-`` temporary)."""
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))


def _whole_images(folder: Path) -> dict[str, np.ndarray]:
    """Every ``.nii.gz`` under a final name in ``folder``, read in full (a truncated file raises)."""
    return {p.name: np.asarray(nib.load(p).dataobj) for p in _final(folder, "*.nii.gz")}


@pytest.fixture(scope="module")
def brats_source(shared_data, tmp_path_factory) -> Path:
    """A BraTS folder of three real cases: links to the files of ``../shared/data`` (read in place)."""
    root = tmp_path_factory.mktemp("brats_source")
    for case in CASES:
        (root / case).mkdir()
        for file in (shared_data / "brats2018_deepbrainseg" / case).iterdir():
            (root / case / file.name).symlink_to(file)
    return root


def test_convert_killed_then_rerun_matches_an_uninterrupted_run(brats_source, tmp_path):
    before = _digests(brats_source)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command("convert", "brats", str(brats_source), str(straight), "--workers", "1"), check=True,
                   env=_env(), cwd=REPO, capture_output=True)

    command = _command("convert", "brats", str(brats_source), str(killed), "--workers", "1")
    first = _kill_after_first(command, killed / "imagesTr", "*.nii.gz")
    assert first and len(first) < 4 * len(CASES)  # part of the images was written
    for folder in ("imagesTr", "labelsTr"):
        _whole_images(killed / folder)  # nothing partial under a final name
    assert not (killed / "dataset.json").exists()  # the dataset is not declared done

    again = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for folder in ("imagesTr", "labelsTr"):
        expected, got = _whole_images(straight / folder), _whole_images(killed / folder)
        assert sorted(got) == sorted(expected)
        assert sorted(p.name for p in (killed / folder).iterdir()) == sorted(expected)  # no temporary left
        for name, array in expected.items():
            np.testing.assert_array_equal(got[name], array, err_msg=name)
    ds_straight, ds_killed = (json.loads((d / "dataset.json").read_text()) for d in (straight, killed))
    assert ds_killed["numTraining"] == ds_straight["numTraining"] == len(CASES)
    assert ds_killed["labels"] == ds_straight["labels"] and ds_killed["channel_names"] == ds_straight["channel_names"]
    assert _digests(brats_source) == before


@pytest.fixture(scope="module")
def brats_images(brats_source, tmp_path_factory) -> Path:
    """The three cases converted (``imagesTr``: ``CASE_0000.nii.gz`` ... ``CASE_0003.nii.gz``)."""
    out = tmp_path_factory.mktemp("brats_converted") / "ds"
    subprocess.run(_command("convert", "brats", str(brats_source), str(out), "--workers", "1"), check=True,
                   env=_env(), cwd=REPO, capture_output=True)
    return out / "imagesTr"


def test_predict_killed_then_rerun_matches_an_uninterrupted_run(brats_images, tmp_path):
    # A small random network at 3 mm: a few seconds per case, so the kill lands between cases.
    model = random_checkpoint(tmp_path / "model.pt", channels=("T1", "T1c", "T2", "FLAIR"), labels=BRATS_LABELS,
                              target_spacing=(3.0, 3.0, 3.0), patch_size=(16, 16, 16))
    before = _digests(brats_images)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def command(out: Path) -> list[str]:
        return _command("predict", "--input", str(brats_images), "--output", str(out), "-m", str(model),
                        "--device", "cpu")

    subprocess.run(command(straight), check=True, env=_env(), cwd=REPO, capture_output=True)
    first = _kill_after_first(command(killed), killed, "*.nii.gz")
    assert first and len(first) < len(CASES)
    _whole_images(killed)  # nothing partial under a final name

    again = subprocess.run(command(killed), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    expected, got = _whole_images(straight), _whole_images(killed)
    assert sorted(got) == sorted(expected) == sorted(f"{c}.nii.gz" for c in CASES)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".tmp-")]
    rows = (killed / "predictions.csv").read_text().strip().splitlines()
    assert sorted(r.split(",")[0] for r in rows[1:]) == sorted(CASES)  # one row per case, none twice
    assert _digests(brats_images) == before
