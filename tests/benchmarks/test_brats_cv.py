"""The cross-validation protocol of ``benchmarks/brats_cv.py``: folds, aggregation, the README table."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("brats_cv", REPO / "benchmarks" / "brats_cv.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("brats_cv", module)
    spec.loader.exec_module(module)
    return module


cv = _load()


def test_folds_are_deterministic_disjoint_and_cover_every_case():
    folds = cv.cv_folds()
    assert [len(f) for f in folds] == [3, 3, 3]
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted(cv.CASES) and len(set(flat)) == 9
    assert cv.cv_folds() == folds
    assert cv.cv_folds(tuple(reversed(cv.CASES))) == folds          # the order cases are listed in does not matter
    from brainseg_cli.training.splits import split_cases

    # the same folds as `brainseg pretrain --fold K --folds 3`
    for k, held in enumerate(folds):
        assert split_cases(list(cv.CASES), fold=k, folds=3)[1] == held
    assert [len(f) for f in cv.cv_folds(folds=4)] == [3, 2, 2, 2]


def _write_run(out: Path, system: str, fold: int, held: list[str], dice: dict[str, float], steps: int) -> None:
    target = cv.run_dir(out, system, fold, 0)
    target.mkdir(parents=True)
    scores = {c: {r: {"dice": dice[r] - 0.01 * i, "hd95": 10.0 + i} for r in cv.REGIONS} for i, c in enumerate(held)}
    (target / "results.json").write_text(json.dumps({
        "minutes": 20.0, "held_out": held, "scores": scores, "steps": steps, "seconds_per_step": 0.4,
        "load_start": [0.1, 0.2, 0.3], "load_end": [2.0, 2.0, 1.9]}))


def test_collect_tables_and_readme_block(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000 + k)
        _write_run(tmp_path, "monai", k, held, {"WT": 0.8, "TC": 0.7, "ET": 0.6}, 2000 + k)
    record = cv.collect(tmp_path, folds=folds, seed=0)
    # every case once; the mean over the 9 of (d, d - 0.01, d - 0.02) per fold
    assert set(record["systems"]["brainseg"]["scores"]) == set(cv.CASES)
    assert record["systems"]["brainseg"]["mean"]["WT"]["dice"] == pytest.approx(0.89)
    assert record["systems"]["monai"]["mean"]["ET"]["dice"] == pytest.approx(0.59)
    assert record["systems"]["monai"]["mean"]["TC"]["hd95"] == pytest.approx(11.0)
    assert [r["steps"] for r in record["systems"]["brainseg"]["runs"]] == [3000, 3001, 3002]
    assert record["protocol"]["minutes"] == 20.0 and record["protocol"]["folds"] == 3
    lines = cv.table(record)
    assert len(lines) == 2 + 3 * 2 + 2
    assert lines[-2].startswith("| **all 9 cases** | **brainseg** |") and "**0.890**" in lines[-2]
    assert "| fold 0: " in lines[2] and "| 3000 |" in lines[2]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{cv.BEGIN}\nold table\n{cv.END}\nafter\n")
    assert cv.write_readme(readme, record) is True
    text = readme.read_text()
    assert text.startswith("intro\n" + cv.BEGIN) and text.endswith(cv.END + "\nafter\n") and "old table" not in text
    assert "\n".join(lines) in text
    assert cv.write_readme(readme, record) is False                  # regenerating changes nothing
    cv.write_record(tmp_path, record)
    assert json.loads((tmp_path / "results.json").read_text())["systems"]["monai"]["mean"] == \
        record["systems"]["monai"]["mean"]
    assert "| Brats18_" in (tmp_path / "results.md").read_text()


def test_collect_refuses_missing_or_mismatched_runs(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds[:2]):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000)
    with pytest.raises(SystemExit, match=r"fold_2/seed_0/results.json is missing"):
        cv.collect(tmp_path, folds=folds, seed=0, systems=("brainseg",))
    _write_run(tmp_path, "brainseg", 2, folds[0], {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000)
    with pytest.raises(SystemExit, match=r"does not score fold 2's cases"):
        cv.collect(tmp_path, folds=folds, seed=0, systems=("brainseg",))


def test_nan_scores_are_left_out_of_means():
    scores = {"a": {r: {"dice": 0.5, "hd95": math.nan} for r in cv.REGIONS},
              "b": {r: {"dice": 0.7, "hd95": 4.0} for r in cv.REGIONS}}
    means = cv.region_means(scores, ["a", "b"])
    assert means["WT"]["dice"] == pytest.approx(0.6) and means["WT"]["hd95"] == 4.0


def test_the_readme_table_is_the_one_generated_from_the_results_file():
    if not cv.RESULTS.is_file():
        pytest.skip(f"{cv.RESULTS} not written yet")
    record = json.loads(cv.RESULTS.read_text())
    assert cv.readme_block(record) in (REPO / "README.md").read_text()
