"""Make the end-of-training decisions again for finished 20-minute BraTS runs, and score them.

The decisions stored in a checkpoint at the end of training (keep-largest-component per label, then
the threshold each region grows to; :func:`brainseg_cli.training.decisions.decide_and_store`) depend only
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

    python benchmarks/brats_redecide.py RUN [RUN ...] -o OUT [--variants best.pt] [--update-results]

``--update-results`` then writes the re-decided ``best.pt`` scores into each run's ``results.json``
(keeping the first ones), for ``brats_cv.py --aggregate``.
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
    from brainseg_cli.training.decisions import decide_and_store
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
    decide_and_store(dest, model=build_model_from_checkpoint(ckpt), dataset=data, train_cases=config["train_cases"],
                     val_cases=config["val_cases"],
                     plan=plan, labels=labels, entities=entities, validations={},
                     precision=ckpt["training"].get("precision", "fp32"), device=torch.device("cpu"))


def update_results(path: Path, scores: dict, *, decided: str, source: Path) -> None:
    """Put re-decided ``best.pt`` scores into a run's ``results.json`` (see ``--update-results``)."""
    import json

    record = json.loads(path.read_text())
    others = record.setdefault("others", {})
    others.setdefault("best.pt as first decided", {"scores": record["scores"]})
    record["scores"] = {c: scores[c] for c in record["scores"]}
    record["mean"] = {r: {m: sum(record["scores"][c][r][m] for c in record["scores"]) / len(record["scores"])
                          for m in ("dice", "hd95")} for r in REGIONS}
    record["redecided"] = {"by": "benchmarks/brats_redecide.py --update-results", "output": str(source),
                           "decisions": decided, "when": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def mean_dice(table: dict, region: str) -> float:
    return sum(table[c][region]["dice"] for c in table) / len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="brats_cpu_20min.py output folders (or their seed_N)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (must not exist)")
    parser.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], default=[v[0] for v in VARIANTS],
                        help="which checkpoint variants to predict and score (default: all three)")
    parser.add_argument("--update-results", action="store_true",
                        help="write the re-decided best.pt scores into each RUN's results.json (the scores first "
                             "decided are kept there under others['best.pt as first decided']), so that "
                             "brats_cv.py --aggregate tabulates what the current code predicts with the trained weights")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if v[0] in args.variants]
    if args.update_results and "best.pt" not in args.variants:
        sys.exit("error: --update-results needs the best.pt variant")
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
        for label, checkpoint, extra in variants:
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
        if args.update_results:
            update_results(run.resolve() / "results.json", scores["best.pt"], decided=rows[-1][2]["best"],
                           source=folder)

    labels = [v[0] for v in variants]
    lines = ["# End-of-training decisions made again (benchmarks/brats_redecide.py)", "",
             "Mean Dice over the held-out cases (mirroring TTA), WT per case in brackets.", "",
             "| run | " + " | ".join(f"WT ({n})" for n in labels) + f" | TC ({labels[0]}) | ET ({labels[0]}) | decisions (best.pt) |",
             "|---|" + "---|" * (len(labels) + 3)]
    for run, scores, decided in rows:
        cells = []
        for n in labels:
            per_case = " / ".join(fmt(scores[n][c]["WT"]["dice"]) for c in sorted(scores[n]))
            cells.append(f"{fmt(mean_dice(scores[n], 'WT'))} ({per_case})")
        head = labels[0]
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {fmt(mean_dice(scores[head], 'TC'))} | "
                     f"{fmt(mean_dice(scores[head], 'ET'))} | {decided['best']} |")
    head = labels[0]
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(sum(mean_dice(s[n], 'WT') for _, s, _ in rows) / len(rows))}**" for n in labels) + " | "
        + " | ".join(fmt(sum(mean_dice(s[head], r) for _, s, _ in rows) / len(rows)) for r in REGIONS[1:])
        + " | |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
