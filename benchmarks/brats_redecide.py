"""Make the end-of-training decisions again for finished 20-minute BraTS runs, and score them.

The decisions stored in a checkpoint at the end of training (keep-largest-component per label, then
the threshold each region grows to; :func:`brainseg_cli.training.fit.decide_and_store`) depend only
on the trained weights and the validation case. This script makes them again, with the current
code, for runs of ``benchmarks/brats_cpu_20min.py``, so a change to the decision rules can be
measured on many runs without training them again:

1. for each RUN (a ``brats_cpu_20min.py`` output folder, or one of its ``seed_N`` folders), copy
   ``run/best.pt`` and ``run/last.pt`` to ``OUT/<n>_<name>/run`` (the originals are never written)
   and make the decisions there, predicting the validation case from the run's preprocessed cache;
2. ``brainseg predict --tta`` the run's held-out cases with each copy, and with the ``best.pt`` copy
   once more at ``--region-threshold 0.5`` (no growing: what the thresholds change);
3. ``brainseg evaluate --regions brats``; ``OUT/summary.md`` lists the mean Dice over the held-out
   cases for every run and the mean over the runs.

    python benchmarks/brats_redecide.py RUN [RUN ...] -o OUT
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brats_cpu_20min import REGIONS, checkpoint_decisions, fmt, read_scores, run_step  # noqa: E402

#: Scored variants: (label, checkpoint, extra predict options).
VARIANTS = (("best.pt", "best", []), ("last.pt", "last", []),
            ("best.pt, thresholds 0.5", "best", ["--region-threshold", "0.5"]))


def redecide(source: Path, dest: Path) -> None:
    """Copy the two checkpoints of the run folder ``source`` into ``dest`` and decide there."""
    import json

    import torch

    from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
    from brainseg_cli.data.cache import open_cache
    from brainseg_cli.data.datasets import CachedCases
    from brainseg_cli.training.fit import decide_and_store
    from brainseg_cli.training.validation import validation_entities

    plan = json.loads((source / "plan.json").read_text())
    config = json.loads((source / "config.json").read_text())
    dest.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        shutil.copy2(source / name, dest / name)
    data = CachedCases(open_cache(source / "preprocessed", plan=plan), plan)
    ckpt = load_checkpoint(dest / "best.pt")
    labels = {str(k): int(v) for k, v in plan["labels"].items()}
    regions = {str(k): [int(v) for v in vs] for k, vs in (plan.get("regions") or {}).items()}
    entities = validation_entities(labels=labels, regions=regions, region_based=bool(plan.get("region_based")))
    decide_and_store(dest, model=build_model_from_checkpoint(ckpt), dataset=data, val_cases=config["val_cases"],
                     plan=plan, labels=labels, entities=entities, validations={},
                     precision=ckpt["training"].get("precision", "fp32"), device=torch.device("cpu"))


def mean_dice(table: dict, region: str) -> float:
    return sum(table[c][region]["dice"] for c in table) / len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="brats_cpu_20min.py output folders (or their seed_N)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (must not exist)")
    args = parser.parse_args()
    if args.output.exists():
        sys.exit(f"error: output folder {args.output} exists")
    for run in args.runs:
        if not (run / "run" / "best.pt").is_file() or not (run / "brats18_heldout").is_dir():
            sys.exit(f"error: {run} is not a brats_cpu_20min.py run folder (no run/best.pt or brats18_heldout)")
    out = args.output.resolve()
    out.mkdir(parents=True)
    rows = []
    for i, run in enumerate(args.runs):
        name = f"{i}_{run.resolve().name}"
        folder = out / name
        logs = folder / "logs"
        print(f"[{time.strftime('%H:%M:%S')}] deciding {run / 'run'} -> {folder / 'run'}", flush=True)
        redecide(run.resolve() / "run", folder / "run")
        logs.mkdir()
        steps: list[dict] = []
        scores = {}
        for label, checkpoint, extra in VARIANTS:
            suffix = "_" + label.replace(".pt", "").replace(", thresholds ", "_t").replace(".", "")
            run_step(f"predict{suffix}", ["predict", "--model", str(folder / "run" / f"{checkpoint}.pt"), "--input",
                                          str(run.resolve() / "brats18_heldout" / "imagesTr"), "--output",
                                          str(folder / f"predictions{suffix}"), "--device", "cpu", "--tta", *extra],
                     logs, steps)
            run_step(f"evaluate{suffix}", ["evaluate", "--ref", str(run.resolve() / "brats18_heldout"), "--pred",
                                           str(folder / f"predictions{suffix}"), "--regions", "brats", "--metrics",
                                           "dice", "hd95", "-o", str(folder / f"evaluation{suffix}.json"), "--csv",
                                           str(folder / f"evaluation{suffix}_cases.csv")], logs, steps)
            scores[label] = read_scores(folder / f"evaluation{suffix}_cases.csv")
        rows.append((run, scores, {c: checkpoint_decisions(folder / "run" / f"{c}.pt") for c in ("best", "last")}))

    labels = [v[0] for v in VARIANTS]
    lines = ["# End-of-training decisions made again (benchmarks/brats_redecide.py)", "",
             "Mean Dice over the held-out cases (mirroring TTA), WT per case in brackets.", "",
             "| run | " + " | ".join(f"WT ({n})" for n in labels) + " | TC (best.pt) | ET (best.pt) | decisions (best.pt) |",
             "|---|" + "---|" * (len(labels) + 3)]
    for run, scores, decided in rows:
        cells = []
        for n in labels:
            per_case = " / ".join(fmt(scores[n][c]["WT"]["dice"]) for c in sorted(scores[n]))
            cells.append(f"{fmt(mean_dice(scores[n], 'WT'))} ({per_case})")
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {fmt(mean_dice(scores['best.pt'], 'TC'))} | "
                     f"{fmt(mean_dice(scores['best.pt'], 'ET'))} | {decided['best']} |")
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(sum(mean_dice(s[n], 'WT') for _, s, _ in rows) / len(rows))}**" for n in labels) + " | "
        + " | ".join(fmt(sum(mean_dice(s['best.pt'], r) for _, s, _ in rows) / len(rows)) for r in REGIONS[1:])
        + " | |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
