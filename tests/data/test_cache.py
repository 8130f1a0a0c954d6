"""The preprocessed cache (brainseg_cli.data.cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainseg_cli.data.cache import build_cache, foreground_coordinates, key_hash, open_cache
from brainseg_cli.data.fingerprint import compute_fingerprint
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.data.plan import PlanOverrides
from brainseg_cli.data.plan import make_plan as _make_plan
from brainseg_cli.data.preprocessing import PreprocessInfo, preprocess_case
from brainseg_cli.errors import InputError


def make_plan(**kwargs):
    """The plan as ``plan.json`` holds it (JSON data), which these tests read."""
    return _make_plan(**kwargs).to_dict()

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("cache") / "ds", n_cases=2, seed=5, shape=(32, 32, 20))
    info = load_dataset(root)
    fp = compute_fingerprint(info)
    plan = make_plan(fingerprint=fp, info=info, device="cpu", overrides=PlanOverrides(config="3d"))
    return info, fp, plan


def test_build_open_and_contents(dataset, tmp_path):
    info, _, plan = dataset
    calls = []
    cache = build_cache(info, plan, folder=tmp_path / "c", progress=lambda d, i, n: calls.append((i, n)))
    assert calls[-1] == (2, 2)
    assert cache.cases == info.training_cases
    case = cache.cases[0]
    data, seg = cache.load(case)
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and seg.dtype == np.uint8
    image, label = read_case(info, case)
    ref_data, ref_seg, ref_info = preprocess_case(image, plan, label=label)
    np.testing.assert_array_equal(np.asarray(data), ref_data)
    np.testing.assert_array_equal(np.asarray(seg), ref_seg)
    props = cache.properties(case)
    assert PreprocessInfo.from_dict(props["info"]) == ref_info
    assert props["shape"] == list(ref_data.shape)
    counts = np.bincount(ref_seg.ravel())
    assert props["label_voxels"] == {str(k): int(c) for k, c in enumerate(counts) if c}
    assert props["slice_foreground"] is None  # a 3-D plan
    fg = cache.foreground(case)
    assert set(fg) == {int(k) for k in np.unique(ref_seg) if k}
    for label_value, coords in fg.items():
        assert coords.shape[1] == 3
        assert np.all(ref_seg[tuple(coords.T)] == label_value)
    loaded, _ = cache.load(case, mmap=False)
    assert not isinstance(loaded, np.memmap)
    reopened = open_cache(tmp_path / "c", plan=plan)
    assert reopened.cases == cache.cases and reopened.key_hash == key_hash(plan)
    with pytest.raises(InputError, match="not in the preprocessed cache"):
        cache.load("nope")


def test_reuse_and_rebuild_on_plan_change(dataset, tmp_path):
    info, _, plan = dataset
    folder = tmp_path / "c"
    build_cache(info, plan, folder=folder)
    case = info.training_cases[0]
    stamp = (folder / f"{case}_data.npy").stat().st_mtime_ns
    build_cache(info, plan, folder=folder)
    assert (folder / f"{case}_data.npy").stat().st_mtime_ns == stamp  # reused
    changed = dict(plan, target_spacing=[2.0, 2.0, 2.0])
    assert key_hash(changed) != key_hash(plan)
    with pytest.raises(InputError, match="built for another plan"):
        open_cache(folder, plan=changed)
    cache = build_cache(info, changed, folder=folder)
    assert (folder / f"{case}_data.npy").stat().st_mtime_ns != stamp
    data, _ = cache.load(case)
    assert max(data.shape[1:]) <= 17
    # A batch size change does not touch preprocessing.
    assert key_hash(dict(changed, batch_size=7)) == key_hash(changed)


def test_interrupted_case_is_redone_and_workers_agree(dataset, tmp_path):
    info, _, plan = dataset
    one = build_cache(info, plan, folder=tmp_path / "one")
    case = info.training_cases[1]
    (tmp_path / "one" / f"{case}.json").unlink()  # as if killed before the case finished
    with pytest.raises(InputError, match="missing or stale"):
        open_cache(tmp_path / "one")
    rebuilt = build_cache(info, plan, folder=tmp_path / "one")
    assert rebuilt.cases == info.training_cases
    two = build_cache(info, plan, folder=tmp_path / "two", workers=2)
    for c in info.training_cases:
        np.testing.assert_array_equal(np.asarray(one.load(c)[0]), np.asarray(two.load(c)[0]))
        assert one.properties(c)["info"] == two.properties(c)["info"]
    assert json.loads((tmp_path / "two" / "index.json").read_text())["cases"] == list(info.training_cases)


def test_two_d_plan_stores_slice_foreground(dataset, tmp_path):
    info, fp, _ = dataset
    plan = make_plan(fingerprint=fp, info=info, device="cpu", overrides=PlanOverrides(config="2d"))
    cache = build_cache(info, plan, folder=tmp_path / "c")
    case = cache.cases[0]
    _, seg = cache.load(case)
    per_slice = cache.properties(case)["slice_foreground"]
    axis = plan["slice_axis"]
    assert len(per_slice) == seg.shape[axis]
    assert per_slice == [int(np.count_nonzero(np.take(seg, k, axis=axis))) for k in range(seg.shape[axis])]


def test_foreground_coordinates_sampling():
    seg = np.zeros((30, 30, 30), np.uint8)
    seg[:25] = 1
    seg[0, 0, :5] = 2
    rows = foreground_coordinates(seg, np.random.default_rng(0))
    assert rows.dtype == np.int32 and rows.shape[1] == 4
    ones = rows[rows[:, 0] == 1]
    assert len(ones) == 10000  # capped (1 % of 22500 is less)
    assert len(rows[rows[:, 0] == 2]) == 5
    assert foreground_coordinates(np.zeros((3, 3, 3), np.uint8), np.random.default_rng(0)).shape == (0, 4)


def test_not_a_cache(tmp_path):
    with pytest.raises(InputError, match="not a preprocessed cache"):
        open_cache(tmp_path)
