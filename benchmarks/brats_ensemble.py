"""Held-out score of an ensemble: the seeds of each cross-validation fold predicting that fold's cases together.

The cross-validation (``brats_cv.py``) trains every fold once per seed. The models of one fold never saw
that fold's held-out cases, so their ensemble can be scored on them as honestly as each model alone (an
ensemble of the *folds* cannot: each fold's model trained on the other folds' cases). For every fold this
runs

    brainseg predict -m seed_0/run/best.pt -m seed_1/run/best.pt ... --tta   (probabilities averaged; each
        region grown only where every member decided to grow it, to the highest of their thresholds)
    brainseg evaluate --regions brats

on the fold's converted held-out cases, and writes ``OUT/results.json`` and ``OUT/results.md``: the
ensemble's mean WT/TC/ET Dice and HD95 over the 9 cases beside the single models' (each run's
``results.json`` ``scores``: after ``brats_redecide.py --update-results`` the re-decided ones, as in the README).

    python benchmarks/brats_ensemble.py CV_OUT -o OUT [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brats_cpu_20min import REGIONS, fmt, read_scores, run_step  # noqa: E402
from brats_cv import cv_folds, run_dir  # noqa: E402


def _mean(scores: dict, region: str, metric: str) -> float:
    return sum(scores[c][region][metric] for c in scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cv", type=Path, help="output folder of brats_cv.py (its brainseg/fold_K/seed_S runs)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the seeds that form each ensemble")
    args = parser.parse_args()
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    steps: list[dict] = []
    ensemble: dict = {}
    singles: dict[int, dict] = {seed: {} for seed in args.seeds}
    for k, held_out in enumerate(cv_folds()):
        runs = [run_dir(args.cv, "brainseg", k, seed) for seed in args.seeds]
        for seed, run in zip(args.seeds, runs):
            if not (run / "run" / "best.pt").is_file() or not (run / "results.json").is_file():
                sys.exit(f"error: {run} has no run/best.pt (run brats_cv.py --seeds {' '.join(map(str, args.seeds))})")
            singles[seed].update(json.loads((run / "results.json").read_text())["scores"])
        predictions = out / f"fold_{k}" / "predictions"
        cases_csv = out / f"fold_{k}" / "evaluation_cases.csv"
        if not cases_csv.is_file():  # a fold scored before (an interrupted run) is not predicted again
            models = [a for run in runs for a in ("--model", str(run / "run" / "best.pt"))]
            run_step(f"predict_fold_{k}", ["predict", *models, "--input",
                                            str(runs[0] / "brats18_heldout" / "imagesTr"), "--output",
                                            str(predictions), "--device", "cpu", "--tta"], logs, steps)
            run_step(f"evaluate_fold_{k}", ["evaluate", "--ref", str(runs[0] / "brats18_heldout"), "--pred",
                                             str(predictions), "--regions", "brats", "--metrics", "dice", "hd95",
                                             "-o", str(out / f"fold_{k}" / "evaluation.json"), "--csv",
                                             str(cases_csv)], logs, steps)
        scores = read_scores(cases_csv)
        missing = [c for c in held_out if set(scores.get(c, {})) != set(REGIONS)]
        if missing:
            sys.exit(f"error: {cases_csv} lacks WT/TC/ET rows for {', '.join(missing)}")
        ensemble.update(scores)

    def summary(scores: dict) -> dict:
        return {r: {m: _mean(scores, r, m) for m in ("dice", "hd95")} for r in REGIONS}

    record = {
        "protocol": {"cv": str(args.cv.resolve()), "seeds": args.seeds,
                     "command": "brainseg predict -m seed_S/run/best.pt (one per seed) --tta; evaluate --regions brats"},
        "ensemble": {"mean": summary(ensemble), "scores": ensemble},
        "single": {str(seed): {"mean": summary(s), "scores": s} for seed, s in singles.items()},
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    rows = [("ensemble of seeds " + "+".join(map(str, args.seeds)), record["ensemble"]["mean"])]
    rows += [(f"seed {seed} alone", record["single"][str(seed)]["mean"]) for seed in args.seeds]
    lines = [f"# Seed ensembles per fold, held-out mean over {len(ensemble)} cases", "",
             "| model | " + " | ".join(f"{r} Dice" for r in REGIONS) + " | " + " | ".join(f"{r} HD95" for r in REGIONS)
             + " |", "|---|" + "---|" * 6]
    for name, mean in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(mean[r]["dice"]) for r in REGIONS) + " | "
                     + " | ".join(fmt(mean[r]["hd95"], 1) for r in REGIONS) + " |")
    lines += ["", "| case | " + " | ".join(REGIONS) + " (ensemble) |", "|---|---|---|---|"]
    lines += [f"| {c} | " + " | ".join(fmt(ensemble[c][r]["dice"]) for r in REGIONS) + " |" for c in sorted(ensemble)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
