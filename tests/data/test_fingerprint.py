"""Dataset fingerprint (brainseg_cli.data.fingerprint)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from brainseg_cli.data.fingerprint import compute_fingerprint, fingerprint_hash
from brainseg_cli.data.layout import load_dataset, write_dataset_json
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.errors import InputError
from brainseg_cli.io import Image, write_image


@pytest.fixture(scope="module")
def phantom_info(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("fp") / "ds", n_cases=2, seed=3, shape=(32, 32, 24),
                                 spacing=(1.0, 1.0, 1.5))
    return load_dataset(root)


def test_phantom_fingerprint(phantom_info):
    calls = []
    fp = compute_fingerprint(phantom_info, progress=lambda d, i, n: calls.append((d, i, n)))
    assert calls[-1] == ("fingerprint", 2, 2)
    assert fp["num_cases"] == 2 and fp["orientation"] == "LPS"
    assert fp["spacing_median"] == [1.0, 1.0, 1.5]
    assert fp["channels"] == list(phantom_info.channels)
    for case in fp["cases"]:
        assert case["shape"] == [32, 32, 24]
        assert case["backgrounds"] == [0.0] * len(phantom_info.channels)
        assert all(c <= s for c, s in zip(case["cropped_shape"], case["shape"]))
        assert 0.2 < case["brain_fraction"] < 0.9
    assert all(c < 32 for c in fp["shape_median"][:2])
    freq = fp["label_frequencies"]
    assert set(freq) == set(phantom_info.labels)
    assert sum(f["voxel_fraction"] for f in freq.values()) == pytest.approx(1.0)
    assert sum(f["brain_fraction"] for f in freq.values()) == pytest.approx(1.0, abs=0.02)
    assert freq["background"]["case_fraction"] == 1.0
    for stats in fp["intensity"]:
        assert stats["min"] <= stats["p00_5"] <= stats["p10"] <= stats["median"] <= stats["p99"] <= stats["max"]
        assert stats["std"] > 0 and not stats["eight_bit"]
    # JSON-able and stably hashed.
    again = json.loads(json.dumps(fp))
    assert fingerprint_hash(again) == fp["hash"]


def test_parallel_workers_give_the_same_fingerprint(phantom_info):
    assert compute_fingerprint(phantom_info, workers=2) == compute_fingerprint(phantom_info, workers=1)


def test_majority_orientation_and_reoriented_spacing(tmp_path):
    root = tmp_path / "ds"
    shape = (12, 10, 8)
    rng = np.random.default_rng(0)
    directions = {"a": np.eye(3), "b": np.eye(3), "c": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}
    for case, direction in directions.items():
        arr = np.zeros(shape, np.float32)
        arr[2:10, 2:8, 1:7] = rng.uniform(1, 255, (8, 6, 6)).round()
        spacing = (1.0, 2.0, 3.0) if case != "c" else (2.0, 1.0, 3.0)  # same world spacing
        write_image(Image(arr, spacing, None, direction), root / "imagesTr" / f"{case}_0000.nii.gz")
        lab = np.zeros(shape, np.uint8)
        lab[4:6, 4:6, 3:5] = 1
        write_image(Image(lab, spacing, None, direction), root / "labelsTr" / f"{case}.nii.gz")
    write_dataset_json(root, channels=["T1"], labels={"background": 0, "lesion": 1}, num_training=3, brainseg={})
    fp = compute_fingerprint(load_dataset(root))
    assert fp["orientation"] == "LPS"
    assert [c["orientation"] for c in fp["cases"]] == ["LPS", "LPS", "PLS"]
    assert fp["spacing_median"] == [1.0, 2.0, 3.0]
    assert fp["intensity"][0]["eight_bit"] and fp["intensity"][0]["integer_valued"]
    assert fp["label_frequencies"]["lesion"]["case_fraction"] == 1.0


def test_no_cases_is_an_error(phantom_info):
    with pytest.raises(InputError, match="no training cases to fingerprint"):
        compute_fingerprint(phantom_info, cases=[])


def test_deepmedic_negative_background(shared_data, tmp_path):
    """Real BraTS 2015 DeepMedic case (z-scored, negative constant background) as a dataset."""
    folder = shared_data / "brats2015_deepmedic" / "validation" / "brats_2013_pat0003_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    root = tmp_path / "dm"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    os.symlink(folder / "Flair_subtrMeanDivStd.nii.gz", root / "imagesTr" / "pat3_0000.nii.gz")
    os.symlink(folder / "T1c_subtrMeanDivStd.nii.gz", root / "imagesTr" / "pat3_0001.nii.gz")
    os.symlink(folder / "brainmask.nii.gz", root / "labelsTr" / "pat3.nii.gz")  # 0/1: a valid label map
    write_dataset_json(root, channels=["FLAIR", "T1c"], labels={"background": 0, "brain": 1}, num_training=1,
                       brainseg={})
    fp = compute_fingerprint(load_dataset(root))
    case = fp["cases"][0]
    assert all(bg < -1.0 for bg in case["backgrounds"])
    # The brain found from the border equals the shipped brain mask: its label fraction.
    assert case["brain_fraction"] == pytest.approx(fp["label_frequencies"]["brain"]["voxel_fraction"], rel=0.02)
    assert fp["label_frequencies"]["brain"]["brain_fraction"] > 0.98
    assert abs(fp["intensity"][0]["mean"]) < 0.2  # z-scored inside the brain by DeepMedic
