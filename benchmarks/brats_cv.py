"""Cross-validated BraTS protocol: brainseg and a plain MONAI 2-D U-Net on the same folds, minutes and machine.

Every one of the 9 real BraTS 2018 cases of ``../shared/data/brats2018_deepbrainseg`` (read in place)
is predicted once, by a model that never saw it:

1. The folds are the case-level K-fold split of ``brainseg pretrain --fold K --folds N``
   (:func:`brainseg_cli.training.splits.kfold_splits`: sorted case names shuffled with a fixed seed,
   3 folds of 3 by default), so they are the same whatever the training seed.
2. Per fold, **brainseg** runs through its CLI (``brats_cpu_20min.py --held-out <fold>``: ``convert``,
   ``pretrain`` on the other cases, one of which validates the decisions made at the end of training,
   ``predict``, ``evaluate``), with the tool's defaults (:data:`BRAINSEG_OPTIONS` adds none), for ``--minutes`` of
   wall clock;
3. the same fold, minutes and seed for the **plain MONAI 2-D U-Net** of ``monai_baseline_20min.py``
   (trains on all the fold's training cases, final weights);
4. both are scored with the project's metric code (WT/TC/ET Dice and HD95, BraTS empty policy) and
   written to ``OUT/results.json`` and ``OUT/results.md``: per fold, per case and the mean over all
   cases, for both systems, with each run's training steps and the load average around it (the runs
   are timed: anything else on the 2 cores lowers their step count).

Each run lives in ``OUT/<system>/fold_<K>/seed_<S>``; a run whose ``results.json`` exists is not run
again, so an interrupted cross-validation continues where it stopped.

    python benchmarks/brats_cv.py -o OUT [--folds 3] [--seeds 0 1] [--minutes 20] [--systems brainseg monai]
        [--only-fold K ...] [--label TEXT] [-- EXTRA brats_cpu_20min.py OPTIONS]
    python benchmarks/brats_cv.py --aggregate OUT [--seeds 0 1] [--label TEXT]  # tables from finished runs only
    python benchmarks/brats_cv.py --readme RESULTS.json [README.md]     # the README table from a results file

The README's cross-validation tables are generated from the results files by the last form: a file
``benchmarks/results/NAME.json`` fills the block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
(``brats_cv.json``: the headline table; ``brats_cv_fp32.json``: the same protocol on a CPU without
native bf16); a test checks that the README matches every results file.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from brats_cpu_20min import CASES, DATA, REGIONS, REPO, fmt, load  # noqa: E402
from readme_tables import machine, markers, read_results, write_block  # noqa: E402

sys.path.insert(0, str(REPO))
from brainseg_cli.training.splits import kfold_splits  # noqa: E402

#: The systems compared, in table order.
SYSTEMS = ("brainseg", "monai")
#: Their names in tables.
SYSTEM_NAMES = {"brainseg": "brainseg", "monai": "MONAI 2-D U-Net"}
#: Options of ``brats_cpu_20min.py`` for brainseg's runs (beyond ``--held-out``, ``--seeds``, ``--minutes``):
#: the tool's own precision choice (``auto``), region-based WT/TC/ET training with the weight average.
BRAINSEG_OPTIONS: tuple[str, ...] = ()
DEFAULT_FOLDS = 3
RESULTS = HERE / "results" / "brats_cv.json"
#: ``benchmarks/brats_ensemble.py``'s results, whose line the README block adds when the file exists.
ENSEMBLE_RESULTS = HERE / "results" / "brats_ensemble.json"
BEGIN = "<!-- brats_cv:begin -->"
END = "<!-- brats_cv:end -->"
#: Wording of ``pretrain --precision auto`` in the README block.
AUTO_PRECISION = "bf16 autocast where the CPU has native bf16, else fp32"


def run_precision(res: dict, run: Path) -> str | None:
    """The precision a brainseg run trained in: its results' ``training.precision``, else (results written
    before that key) its run folder's ``config.json``; None for MONAI runs or when neither says."""
    precision = (res.get("training") or {}).get("precision")
    config = run / "run" / "config.json"
    if precision is None and config.is_file():
        precision = (json.loads(config.read_text()).get("runtime") or {}).get("precision")
    return precision


def cv_folds(cases: tuple[str, ...] | list[str] = CASES, folds: int = DEFAULT_FOLDS) -> list[list[str]]:
    """The held-out cases of each fold: ``pretrain --fold K --folds N``'s validation cases.

    Every case is held out in exactly one fold; deterministic (independent of any training seed).
    """
    return [val for _, val in kfold_splits(list(cases), folds=folds)]


def run_dir(out: Path, system: str, fold: int, seed: int) -> Path:
    return out / system / f"fold_{fold}" / f"seed_{seed}"


def run_fold(system: str, *, fold: int, held_out: list[str], seed: int, minutes: float, out: Path,
             extra: list[str]) -> None:
    """Run one system on one fold into ``run_dir(...)`` (skipped when its ``results.json`` exists)."""
    target = run_dir(out, system, fold, seed)
    if (target / "results.json").is_file():
        print(f"[{time.strftime('%H:%M:%S')}] {system} fold {fold}: done before ({target})", flush=True)
        return
    if target.exists() and any(target.iterdir()):
        sys.exit(f"error: {target} holds an unfinished run (no results.json); remove it to run that fold again")
    if system == "brainseg":
        cmd = [sys.executable, str(HERE / "brats_cpu_20min.py"), "-o", str(target), "--seeds", str(seed),
               "--minutes", f"{minutes:g}", "--held-out", *held_out, *BRAINSEG_OPTIONS, *extra]
    else:  # the MONAI script writes OUT/seed_S into an empty OUT: run it in a scratch folder, move seed_S up
        scratch = target.parent / f"_run_seed_{seed}"
        if scratch.exists():
            sys.exit(f"error: {scratch} is left from an interrupted run; remove it to run that fold again")
        cmd = [sys.executable, str(HERE / "monai_baseline_20min.py"), "-o", str(scratch), "--seeds", str(seed),
               "--minutes", f"{minutes:g}", "--held-out", *held_out]
    log = out / system / f"fold_{fold}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {system} fold {fold} (held out {', '.join(held_out)}): log {log}", flush=True)
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if system == "monai" and proc.returncode == 0:
        if target.exists():
            target.rmdir()
        (scratch / f"seed_{seed}").rename(target)
        scratch.rmdir()
    if proc.returncode != 0 or not (target / "results.json").is_file():
        tail = "\n".join(log.read_text().splitlines()[-20:])
        sys.exit(f"error: {system} fold {fold} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def region_means(scores: dict[str, dict[str, dict[str, float]]], cases: list[str]) -> dict[str, dict[str, float]]:
    """``{region: {"dice", "hd95"}}``: the mean over ``cases`` of ``scores[case][region][metric]``."""
    return {r: {m: _mean([scores[c][r][m] for c in cases]) for m in ("dice", "hd95")} for r in REGIONS}


def _fold_runs(out: Path, system: str, folds: list[list[str]], seed: int) -> list[dict] | None:
    """The ``results.json`` of every fold of one system and seed; None when a fold has none yet.

    Raises:
        SystemExit: a run does not score its fold's cases.
    """
    results = []
    for k, held in enumerate(folds):
        path = run_dir(out, system, k, seed) / "results.json"
        if not path.is_file():
            return None
        res = json.loads(path.read_text())
        missing = sorted(set(held) - set(res["scores"]))
        if missing or sorted(res.get("held_out", held)) != sorted(held):
            sys.exit(f"error: {path} does not score fold {k}'s cases {held} (held out there: {res.get('held_out')})")
        results.append(res)
    return results


def _scores(table: dict, cases: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    return {c: {r: {m: float(table[c][r][m]) for m in ("dice", "hd95")} for r in REGIONS} for c in cases}


def _seed_mean(by_seed: dict[str, dict], key: str = "scores") -> dict[str, dict[str, dict[str, float]]]:
    """Per case and region, the mean over the seeds of ``by_seed[seed][key]``."""
    tables = [entry[key] for entry in by_seed.values()]
    return {c: {r: {m: _mean([t[c][r][m] for t in tables]) for m in ("dice", "hd95")} for r in REGIONS}
            for c in tables[0]}


def collect(out: Path, *, folds: list[list[str]], seeds: list[int], systems: tuple[str, ...] = SYSTEMS,
            label: str = "") -> dict:
    """The cross-validation record from the finished runs in ``out`` (see the module docstring).

    Each system is aggregated over those of ``seeds`` whose folds have all finished (at least one):
    per seed the scores of every case and their mean; over the seeds the mean per case and region,
    the mean of the seed means and their range (``spread``). brainseg's runs also score their other
    checkpoint and fixed 0.5 thresholds (``variants``), which shows what the decisions made on the
    validation case do on the held-out cases.

    Raises:
        SystemExit: a system has no seed with every fold finished, or a run does not score its fold.
    """
    record: dict = {
        "format_version": 2,
        "protocol": {
            "data": "../shared/data/brats2018_deepbrainseg", "cases": list(CASES), "folds": len(folds),
            "seeds": sorted(seeds),
            "split": "brainseg pretrain --fold K --folds N (kfold_splits: sorted cases shuffled with seed 12345)",
            "brainseg": "python benchmarks/brats_cpu_20min.py --held-out FOLD --seeds SEED " + " ".join(BRAINSEG_OPTIONS),
            "monai": "python benchmarks/monai_baseline_20min.py --held-out FOLD --seeds SEED",
            "hd95": "mm, max of the two directed 95th percentiles (MONAI's); BraTS empty policy",
            "label": label,
        },
        "folds": [{"fold": k, "held_out": list(h)} for k, h in enumerate(folds)],
        "systems": {},
        "machine": machine(),
    }
    cases = [c for held in folds for c in held]
    minutes = set()
    for system in systems:
        by_seed: dict[str, dict] = {}
        for seed in sorted(seeds):
            results = _fold_runs(out, system, folds, seed)
            if results is None:
                continue
            scores, runs, variants = {}, [], {}
            for k, (held, res) in enumerate(zip(folds, results)):
                minutes.add(float(res["minutes"]))
                scores.update(_scores(res["scores"], held))
                runs.append({"fold": k, "steps": int(res["steps"]), "seconds_per_step": float(res["seconds_per_step"]),
                             "load_start": res.get("load_start"), "load_end": res.get("load_end"),
                             "mean": region_means(_scores(res["scores"], held), held)})
                precision = run_precision(res, run_dir(out, system, k, seed)) if system == "brainseg" else None
                if precision is not None:
                    runs[-1]["precision"] = precision
                for name, other in (res.get("others") or {}).items():
                    variants.setdefault(name, {}).update(_scores(other["scores"], held))
            entry = {"runs": runs, "scores": scores, "mean": region_means(scores, cases)}
            complete = {n: v for n, v in variants.items() if set(v) == set(cases)}
            if complete:
                entry["variants"] = {n: {"scores": v, "mean": region_means(v, cases)} for n, v in complete.items()}
            by_seed[str(seed)] = entry
        if not by_seed:
            sys.exit(f"error: {system} has no seed of {sorted(seeds)} with every fold finished in {out}: run "
                     f"`python benchmarks/brats_cv.py -o {out} --seeds ...` to finish the folds")
        scores = _seed_mean(by_seed)
        seed_means = [entry["mean"] for entry in by_seed.values()]
        summary = {
            "name": SYSTEM_NAMES[system], "seeds": [int(s) for s in by_seed], "by_seed": by_seed, "scores": scores,
            "mean": {r: {m: _mean([sm[r][m] for sm in seed_means]) for m in ("dice", "hd95")} for r in REGIONS},
            "spread": {r: [min(sm[r]["dice"] for sm in seed_means), max(sm[r]["dice"] for sm in seed_means)]
                       for r in REGIONS},
        }
        names = set.intersection(*(set(e.get("variants", {})) for e in by_seed.values()))
        if names:
            summary["variants"] = {n: {r: {m: _mean([e["variants"][n]["mean"][r][m] for e in by_seed.values()])
                                           for m in ("dice", "hd95")} for r in REGIONS} for n in sorted(names)}
        record["systems"][system] = summary
    if len(minutes) > 1:
        sys.exit(f"error: the runs in {out} trained for different budgets: {sorted(minutes)} minutes")
    record["protocol"]["minutes"] = minutes.pop() if minutes else None
    return record


def _fold_mean(summary: dict, fold: int) -> dict[str, dict[str, float]]:
    """A system's mean over one fold's cases, averaged over its seeds."""
    means = [entry["runs"][fold]["mean"] for entry in summary["by_seed"].values()]
    return {r: {m: _mean([fm[r][m] for fm in means]) for m in ("dice", "hd95")} for r in REGIONS}


def table(record: dict) -> list[str]:
    """The Markdown table of a record: per fold and over all cases, each system, Dice and HD95 per region.

    With several seeds a cell is the mean over the seeds and the overall Dice gives the range of the
    seeds' means in brackets.
    """
    systems = list(record["systems"])
    lines = ["| held out | system | seeds | steps | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fold in record["folds"]:
        k = fold["fold"]
        cases = ", ".join(c.removeprefix("Brats18_") for c in fold["held_out"])
        for system in systems:
            summary = record["systems"][system]
            m = _fold_mean(summary, k)
            steps = " / ".join(str(e["runs"][k]["steps"]) for e in summary["by_seed"].values())
            lines.append(f"| fold {k}: {cases} | {summary['name']} | {', '.join(map(str, summary['seeds']))} | {steps} | "
                         + " | ".join(fmt(m[r]["dice"]) for r in REGIONS) + " | "
                         + " | ".join(fmt(m[r]["hd95"], 1) for r in REGIONS) + " |")
    n = sum(len(f["held_out"]) for f in record["folds"])
    for system in systems:
        summary = record["systems"][system]
        m = summary["mean"]

        def cell(r: str, summary: dict = summary, m: dict = m) -> str:
            low, high = summary["spread"][r]
            return f"**{fmt(m[r]['dice'])}**" + (f" ({fmt(low)}-{fmt(high)})" if len(summary["seeds"]) > 1 else "")

        lines.append(f"| **all {n} cases** | **{summary['name']}** | {', '.join(map(str, summary['seeds']))} | | "
                     + " | ".join(cell(r) for r in REGIONS) + " | "
                     + " | ".join(fmt(m[r]["hd95"], 1) for r in REGIONS) + " |")
    return lines


#: How the README names the variants each brainseg run scores beside its headline.
VARIANT_NAMES = {"last.pt": "`last.pt` (the final weights, with the decisions made for them)",
                 "best.pt, thresholds 0.5": "`best.pt` with every region at 0.5 (no region growing)",
                 "best.pt as first decided": "`best.pt` with region growing unbounded in distance"}


def variant_lines(record: dict) -> list[str]:
    """One sentence on the decisions made on the validation case: brainseg's headline against its variants."""
    summary = record["systems"].get("brainseg")
    if not summary or not summary.get("variants"):
        return []
    m = summary["mean"]
    parts = [f"{VARIANT_NAMES.get(name, name)}: " + " / ".join(fmt(v[r]["dice"]) for r in REGIONS)
             for name, v in summary["variants"].items()]
    return [f"Decisions on unseen cases (brainseg, mean Dice WT / TC / ET over the {len(summary['scores'])} cases and "
            f"the seeds): `best.pt` with the thresholds and largest-component choices its validation case decided "
            + " / ".join(fmt(m[r]["dice"]) for r in REGIONS) + "; " + "; ".join(parts) + "."]


def case_table(record: dict) -> list[str]:
    """Per-case Dice of every system (WT / TC / ET)."""
    systems = list(record["systems"])
    lines = ["| case | fold | " + " | ".join(f"{record['systems'][s]['name']} WT / TC / ET" for s in systems) + " |",
             "|---|---|" + "---|" * len(systems)]
    for fold in record["folds"]:
        for c in fold["held_out"]:
            cells = [" / ".join(fmt(record["systems"][s]["scores"][c][r]["dice"]) for r in REGIONS) for s in systems]
            lines.append(f"| {c} | {fold['fold']} | " + " | ".join(cells) + " |")
    return lines


def ensemble_line(ensemble: dict) -> str:
    """The README line of ``benchmarks/brats_ensemble.py``'s results: the seed ensemble beside its members."""
    def dice(mean: dict) -> str:
        return " / ".join(fmt(mean[r]["dice"]) for r in REGIONS)

    seeds = ensemble["protocol"]["seeds"]
    alone = "; ".join(f"seed {s} alone {dice(ensemble['single'][str(s)]['mean'])}" for s in seeds)
    return (f"Ensemble of seeds {' + '.join(map(str, seeds))} (each fold's models predicting its held-out cases "
            f"together, `python benchmarks/brats_ensemble.py OUT -o ENS`): WT / TC / ET "
            f"{dice(ensemble['ensemble']['mean'])}; {alone}.")


def ensemble_matches(record: dict, ensemble: dict) -> bool:
    """Whether ``ensemble``'s members are the record's brainseg models: each member seed's held-out Dice
    per case equals the record's for that seed (an ensemble of an earlier recipe's runs does not)."""
    by_seed = record["systems"].get("brainseg", {}).get("by_seed", {})
    for seed, single in ensemble.get("single", {}).items():
        scores = by_seed.get(seed, {}).get("scores")
        if scores is None or set(scores) != set(single["scores"]):
            return False
        if any(abs(scores[c][r]["dice"] - single["scores"][c][r]["dice"]) > 1e-9 for c in scores for r in REGIONS):
            return False
    return bool(ensemble.get("single"))


def machine_words(record: dict) -> str:
    """``"a 2-core AMD EPYC CPU without native bf16"``, or ``"this 2-core CPU"`` for records written
    before the CPU model was stored."""
    m = record.get("machine") or {}
    if not m.get("cpu"):
        return f"this {m.get('cpu_count', 2)}-core CPU"
    bf16 = "with native bf16" if m.get("native_bf16") else "without native bf16 (no AVX512-BF16/AMX)"
    return f"a {m['cpu_count']}-core {m['cpu']} CPU {bf16}"


def precision_words(record: dict) -> str:
    """How brainseg's runs trained: ``--precision auto`` and, where the runs say, what it chose."""
    chosen = sorted({run["precision"] for e in record["systems"].get("brainseg", {}).get("by_seed", {}).values()
                     for run in e["runs"] if run.get("precision")})
    return AUTO_PRECISION + (f" (here: {' and '.join(chosen)})" if chosen else "")


def readme_block(record: dict, ensemble: dict | None = None, results: Path = RESULTS) -> str:
    """What the README shows between the markers of ``results`` (:func:`markers`): the command, the
    conditions, the table and (given ``benchmarks/brats_ensemble.py``'s results of the same models,
    :func:`ensemble_matches`) the seed ensemble's line."""
    p = record["protocol"]
    begin, end = markers(results)
    loads = [run["load_start"][0] for s in record["systems"].values() for e in s["by_seed"].values()
             for run in e["runs"] if run.get("load_start")]
    lines = [
        begin,
        f"{p['folds']}-fold cross-validation over the {len(p['cases'])} cases, {p['minutes']:g} minutes of training per "
        f"fold and system on {machine_words(record)}, seeds {', '.join(map(str, p['seeds']))} (`python "
        f"benchmarks/brats_cv.py -o OUT --seeds {' '.join(map(str, p['seeds']))}`; table: `python benchmarks/brats_cv.py "
        f"--readme benchmarks/results/{results.name}`). "
        "brainseg: `pretrain` with its defaults (the CPU plan: a 2-D U-Net with region-based WT/TC/ET outputs, "
        f"{precision_words(record)}, a moving average of the weights; region growing and largest-component "
        "decided on one validation case of each fold's training cases), "
        "`predict --tta`; MONAI: the plain 2-D U-Net of `benchmarks/monai_baseline_20min.py` (channels 32-512, "
        "DiceCE, Adam, final weights). Mean Dice and HD95 (mm) over each fold's held-out cases"
        + (f"; load average at the start of the runs {min(loads):g}-{max(loads):g}" if loads else "") + ".",
        "",
        *table(record),
    ]
    decisions = variant_lines(record)
    if decisions:
        lines += ["", *decisions]
    if ensemble is not None and ensemble_matches(record, ensemble):
        lines += ["", ensemble_line(ensemble)]
    if p.get("label"):
        lines += ["", p["label"]]
    lines.append(end)
    return "\n".join(lines)


def read_ensemble(path: Path = ENSEMBLE_RESULTS) -> dict | None:
    """``benchmarks/brats_ensemble.py``'s results, or None when not written."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_readme(readme: Path, record: dict, results: Path = RESULTS) -> bool:
    """Replace the block between ``results``' markers in ``readme``; True when the file changed."""
    return write_block(readme, *markers(results), readme_block(record, read_ensemble(), results))


def write_record(out: Path, record: dict) -> None:
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    p = record["protocol"]
    md = [f"# BraTS 2018 cross-validation: {p['folds']} folds, {p['minutes']:g} minutes per fold and system, "
          f"seeds {', '.join(map(str, p['seeds']))}", "", readme_block(record).replace(BEGIN + "\n", "").replace("\n" + END, ""), "",
          "Per case (Dice):", "", *case_table(record), ""]
    (out / "results.md").write_text("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="output folder of the runs and the results")
    parser.add_argument("--aggregate", type=Path, metavar="OUT", help="only collect finished runs in OUT into results")
    parser.add_argument("--readme", nargs="+", type=Path, metavar=("RESULTS.json", "README.md"),
                        help="write the README block from a results file (default README: the repository's)")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"number of folds (default {DEFAULT_FOLDS})")
    parser.add_argument("--only-fold", type=int, nargs="+", metavar="K", help="run only these folds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                        help="training seeds: every fold and system runs once per seed (default 0); the results "
                             "give the mean over the seeds and the range of their means")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per fold and system")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="systems to run")
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. the machine's state)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    if args.readme:
        results = args.readme[0]
        readme = args.readme[1] if len(args.readme) > 1 else REPO / "README.md"
        changed = write_readme(readme, read_results(results), results)
        print(f"{readme}: {'updated' if changed else 'already up to date'}")
        return
    folds = cv_folds(CASES, args.folds)
    if args.aggregate:
        record = collect(args.aggregate, folds=folds, seeds=args.seeds, systems=tuple(args.systems), label=args.label)
        write_record(args.aggregate, record)
        print((args.aggregate / "results.md").read_text())
        return
    if args.output is None:
        parser.error("-o OUT is required to run the folds")
    if not args.minutes > 0:
        sys.exit(f"error: --minutes must be positive, got {args.minutes:g}")
    missing = [c for c in CASES if not (DATA / c).is_dir()]
    if missing:
        sys.exit(f"error: case folders missing in {DATA.resolve()}: {', '.join(missing)}")
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = args.only_fold if args.only_fold is not None else range(len(folds))
    bad = [k for k in todo if not 0 <= k < len(folds)]
    if bad:
        sys.exit(f"error: --only-fold {bad}: folds are 0..{len(folds) - 1}")
    print("folds: " + "; ".join(f"{k}: {', '.join(h)}" for k, h in enumerate(folds)), flush=True)
    for seed in args.seeds:
        for k in todo:
            for system in args.systems:
                run_fold(system, fold=k, held_out=folds[k], seed=seed, minutes=args.minutes, out=out, extra=extra)
    if args.only_fold is None:
        record = collect(out, folds=folds, seeds=args.seeds, systems=tuple(args.systems), label=args.label)
        write_record(out, record)
        print((out / "results.md").read_text())
    print(f"load now {load()}")


if __name__ == "__main__":
    main()
