"""The cross-validation protocol of ``benchmarks/brats_cv.py``: folds, aggregation, the README table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers.benchmarks import load_benchmark

REPO = Path(__file__).resolve().parents[2]

cv = load_benchmark("brats_cv")


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


def _write_run(out: Path, system: str, fold: int, held: list[str], dice: dict[str, float], steps: int,
               seed: int = 0, others: dict[str, float] | None = None) -> None:
    target = cv.run_dir(out, system, fold, seed)
    target.mkdir(parents=True)

    def scores(d: dict[str, float]) -> dict:
        return {c: {r: {"dice": d[r] - 0.01 * i, "hd95": 10.0 + i} for r in cv.REGIONS} for i, c in enumerate(held)}

    record = {"minutes": 20.0, "held_out": held, "scores": scores(dice), "steps": steps, "seconds_per_step": 0.4,
              "load_start": [0.1, 0.2, 0.3], "load_end": [2.0, 2.0, 1.9]}
    if others:
        record["others"] = {"last.pt": {"scores": scores({r: dice[r] - d for r, d in others.items()})}}
    (target / "results.json").write_text(json.dumps(record))


def test_collect_tables_and_readme_block(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000 + k)
        _write_run(tmp_path, "monai", k, held, {"WT": 0.8, "TC": 0.7, "ET": 0.6}, 2000 + k)
    record = cv.collect(tmp_path, folds=folds, seeds=[0])
    # every case once; the mean over the 9 of (d, d - 0.01, d - 0.02) per fold
    assert set(record["systems"]["brainseg"]["scores"]) == set(cv.CASES)
    assert record["systems"]["brainseg"]["mean"]["WT"]["dice"] == pytest.approx(0.89)
    assert record["systems"]["monai"]["mean"]["ET"]["dice"] == pytest.approx(0.59)
    assert record["systems"]["monai"]["mean"]["TC"]["hd95"] == pytest.approx(11.0)
    assert [r["steps"] for r in record["systems"]["brainseg"]["by_seed"]["0"]["runs"]] == [3000, 3001, 3002]
    assert record["protocol"]["minutes"] == 20.0 and record["protocol"]["folds"] == 3
    lines = cv.table(record)
    assert len(lines) == 2 + 3 * 2 + 2
    assert lines[-2].startswith("| **all 9 cases** | **brainseg** | 0 |") and "**0.890** |" in lines[-2]
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


def test_seeds_are_averaged_with_their_range_and_variants_are_kept(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000, seed=0,
                   others={"WT": 0.0, "TC": 0.1, "ET": 0.1})
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.8, "TC": 0.6, "ET": 0.7}, 2800, seed=1,
                   others={"WT": 0.0, "TC": 0.1, "ET": 0.1})
        _write_run(tmp_path, "monai", k, held, {"WT": 0.8, "TC": 0.7, "ET": 0.6}, 2000, seed=0)
    record = cv.collect(tmp_path, folds=folds, seeds=[0, 1])
    brainseg, monai = record["systems"]["brainseg"], record["systems"]["monai"]
    assert brainseg["seeds"] == [0, 1] and monai["seeds"] == [0]          # MONAI has run seed 0 only
    assert brainseg["mean"]["WT"]["dice"] == pytest.approx(0.84) and brainseg["mean"]["TC"]["dice"] == pytest.approx(0.69)
    assert brainseg["spread"]["TC"] == pytest.approx([0.59, 0.79]) and brainseg["spread"]["ET"] == pytest.approx([0.69, 0.69])
    case = cv.CASES[0]
    assert brainseg["scores"][case]["WT"]["dice"] == pytest.approx(
        (brainseg["by_seed"]["0"]["scores"][case]["WT"]["dice"] + brainseg["by_seed"]["1"]["scores"][case]["WT"]["dice"]) / 2)
    assert brainseg["variants"]["last.pt"]["TC"]["dice"] == pytest.approx(0.59) and "variants" not in monai
    lines = cv.table(record)
    assert lines[-2].startswith("| **all 9 cases** | **brainseg** | 0, 1 | |") and "**0.690** (0.590-0.790)" in lines[-2]
    assert "| 3000 / 2800 |" in lines[2]
    block = cv.readme_block(record)
    assert "seeds 0, 1" in block and "--seeds 0 1" in block
    # an ensemble line appears only when its members are the table's models
    singles = {seed: {"mean": {}, "scores": brainseg["by_seed"][seed]["scores"]} for seed in ("0", "1")}
    ensemble = {"protocol": {"seeds": [0, 1]}, "single": singles,
                "ensemble": {"mean": {r: {"dice": 0.7, "hd95": 1.0} for r in cv.REGIONS}}}
    for seed in ("0", "1"):
        singles[seed]["mean"] = {r: {"dice": 0.6, "hd95": 1.0} for r in cv.REGIONS}
    assert cv.ensemble_matches(record, ensemble) and "Ensemble of seeds 0 + 1" in cv.readme_block(record, ensemble)
    other = json.loads(json.dumps(ensemble))
    other["single"]["1"]["scores"][case]["WT"]["dice"] += 0.1
    assert not cv.ensemble_matches(record, other) and "Ensemble" not in cv.readme_block(record, other)
    assert "the final weights, with the decisions made for them): 0.840 / 0.590 / 0.590" in block


def test_collect_refuses_missing_or_mismatched_runs(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds[:2]):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000)
    with pytest.raises(SystemExit, match=r"brainseg has no seed of \[0\] with every fold finished"):
        cv.collect(tmp_path, folds=folds, seeds=[0], systems=("brainseg",))
    _write_run(tmp_path, "brainseg", 2, folds[0], {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000)
    with pytest.raises(SystemExit, match=r"does not score fold 2's cases"):
        cv.collect(tmp_path, folds=folds, seeds=[0], systems=("brainseg",))


def test_nan_scores_are_left_out_of_means():
    scores = {"a": {r: {"dice": 0.5, "hd95": math.nan} for r in cv.REGIONS},
              "b": {r: {"dice": 0.7, "hd95": 4.0} for r in cv.REGIONS}}
    means = cv.region_means(scores, ["a", "b"])
    assert means["WT"]["dice"] == pytest.approx(0.6) and means["WT"]["hd95"] == 4.0


def test_each_results_file_fills_its_own_block_and_says_machine_and_precision(tmp_path):
    folds = cv.cv_folds()
    for k, held in enumerate(folds):
        _write_run(tmp_path, "brainseg", k, held, {"WT": 0.9, "TC": 0.8, "ET": 0.7}, 3000)
        run = cv.run_dir(tmp_path, "brainseg", k, 0) / "run"
        run.mkdir()                                    # results written before training.precision: the run's config
        (run / "config.json").write_text(json.dumps({"runtime": {"precision": "fp32"}}))
        _write_run(tmp_path, "monai", k, held, {"WT": 0.8, "TC": 0.7, "ET": 0.6}, 2000)
    record = cv.collect(tmp_path, folds=folds, seeds=[0])
    assert [r["precision"] for r in record["systems"]["brainseg"]["by_seed"]["0"]["runs"]] == ["fp32"] * 3
    assert all("precision" not in r for r in record["systems"]["monai"]["by_seed"]["0"]["runs"])
    record["machine"] = {"cpu_count": 2, "processor": "x86_64", "cpu": "AMD EPYC", "native_bf16": False}
    fp32 = tmp_path / "brats_cv_fp32.json"
    assert cv.markers(fp32) == ("<!-- brats_cv_fp32:begin -->", "<!-- brats_cv_fp32:end -->")
    block = cv.readme_block(record, results=fp32)
    assert block.startswith("<!-- brats_cv_fp32:begin -->\n") and block.endswith("\n<!-- brats_cv_fp32:end -->")
    assert "on a 2-core AMD EPYC CPU without native bf16" in block
    assert "--readme benchmarks/results/brats_cv_fp32.json" in block and "else fp32 (here: fp32)" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"{cv.BEGIN}\nheadline\n{cv.END}\nmiddle\n<!-- brats_cv_fp32:begin -->\nold\n"
                      "<!-- brats_cv_fp32:end -->\n")
    assert cv.write_readme(readme, record, fp32) is True
    text = readme.read_text()
    assert text.startswith(f"{cv.BEGIN}\nheadline\n{cv.END}\nmiddle\n") and "\nold\n" not in text and block in text
    # a record without the CPU model (written before it was stored) keeps the older wording
    del record["machine"]["cpu"]
    assert "on this 2-core CPU" in cv.readme_block(record)
    with pytest.raises(SystemExit, match="has no <!-- other:begin -->"):
        cv.write_readme(readme, record, tmp_path / "other.json")


@pytest.mark.parametrize("results", sorted((REPO / "benchmarks" / "results").glob("brats_cv*.json")), ids=lambda p: p.name)
def test_the_readme_tables_are_the_ones_generated_from_the_results_files(results):
    record = json.loads(results.read_text())
    assert cv.readme_block(record, cv.read_ensemble(), results) in (REPO / "README.md").read_text()


def test_the_headline_results_file_exists():
    assert cv.RESULTS.is_file()
