"""Real data, measured: train on 7 BraTS 2018 cases for a fixed CPU budget, score the 2 held out.

The whole pipeline runs through the ``brainseg`` CLI (one subprocess per step), on the 9 real
BraTS 2018 cases of ``../shared/data/brats2018_deepbrainseg`` (read in place, never copied):

1. ``brainseg convert brats`` on a folder of the 7 training cases (real case folders holding
   symlinks to the files), and again on one of the 2 held-out cases (a second dataset);
2. ``brainseg pretrain`` on the 7 (one of them validates, ``--val-cases 1``) with the tool's defaults
   (the plan it makes for a CPU: a 2-D U-Net, region-based WT/TC/ET sigmoid outputs because BraTS's
   regions nest, bf16 where the CPU has it, a moving average of the weights with decay 0.995) for
   ``--max-time MINUTES``. ``--epochs`` is only an upper bound: with a time budget the poly
   learning-rate schedule follows the clock (it is re-aimed after every epoch at the steps the
   budget still allows), validation every 2 epochs and after the last (pretrain's default with a time
   budget: a 2-D validation of one whole case costs about 10 training steps). ``--config``,
   ``--precision``, ``--slice-weighting``, ``--slice-context``, ``--aug-preset``, ``--loss``,
   ``--ema``, ``--batch-dice/--sample-dice`` and ``--options-file`` pass other values (only options given reach pretrain);
3. ``brainseg predict`` the held-out dataset's ``imagesTr`` with ``best.pt`` (``--checkpoint best``,
   the default: the epoch with the best validation Dice), with ``--tta`` (mirroring, as nnU-Net
   predicts by default; ``--no-tta`` to switch it off); then again with the other checkpoint
   (``last.pt``, the final weights), reported for comparison. Over eight runs ``best.pt`` scored
   higher on the held-out cases in six (mean WT 0.838 vs 0.824): with six training cases, all HGG,
   the final epochs fit them at the expense of the held-out LGG case; and the headline checkpoint
   once more with ``--region-threshold 0.5`` (no region growing: every region at 0.5 instead of the
   growing thresholds the run decided on its validation case), to show what that decision changes;
4. ``brainseg evaluate --regions brats --metrics dice hd95`` against the held-out labels;
5. ``results.md`` / ``results.csv`` / ``results.json`` in OUT: WT/TC/ET Dice and HD95 per case and mean (the headline
   checkpoint's; the other's and the 0.5-threshold means below), the decisions stored in each
   checkpoint (region thresholds, largest component), wall time of every step, training steps done,
   the plan used, and the load average at start and end (the machine is shared, so the load says
   how much of the 2 cores the run really had).

Split (fixed, not random): held out ``Brats18_CBICA_AQN_1`` (HGG, the smallest tumour of the 9)
and ``Brats18_TCIA13_623_1`` (the only LGG); the other 7 (all HGG) train.

    python benchmarks/brats_cpu_20min.py [--minutes 20] [--config 2d|3d] [--epochs N]
        [--slice-weighting uniform|foreground] [--precision auto|fp32|bf16] [--aug-preset default|brats]
        [--loss dice-ce|dice] [--batch-dice | --no-batch-dice] [--no-tta]
        [--checkpoint best|last] [--ema DECAY] [--seeds N [N ...]] [--held-out CASE [CASE ...]] [-o OUT]

``--held-out`` names other held-out cases (the rest of the 9 train), for a cross-validation over
the folder; the README's headline figures use the fixed split below.

Run-to-run spread is large (six runs gave WT 0.811-0.862 at 0.5, 0.845-0.867 with region
growing): judge a change by the mean of several seeds (``--seeds 0 1 2``, three runs one after the
other), not by one run.

Target (issue #5): whole-tumour Dice >= 0.85 and above a plain MONAI baseline at equal budget (a
MONAI 2-D U-Net reached WT 0.84 / TC 0.76 / ET 0.59 on other real BraTS 2018 cases; a MONAI 3-D
U-Net WT 0.81 / TC 0.73 / ET 0.57).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "brats2018_deepbrainseg"

#: Held-out cases: one HGG with a small tumour and the only LGG of the folder.
HELD_OUT: tuple[str, ...] = ("Brats18_CBICA_AQN_1", "Brats18_TCIA13_623_1")
#: Training cases (pretrain validates on one of them, chosen by ``--val-cases 1``).
TRAIN: tuple[str, ...] = (
    "Brats18_2013_11_1", "Brats18_2013_20_1", "Brats18_2013_3_1", "Brats18_CBICA_ABM_1",
    "Brats18_TCIA01_201_1", "Brats18_TCIA02_135_1", "Brats18_TCIA03_265_1",
)
#: The 9 cases of the folder.
CASES: tuple[str, ...] = tuple(sorted(HELD_OUT + TRAIN))
REGIONS = ("WT", "TC", "ET")
#: MONAI baselines quoted by issue #5 (other real BraTS 2018 cases, equal budget).
BASELINES = {"MONAI 2-D U-Net": (0.84, 0.76, 0.59), "MONAI 3-D U-Net": (0.81, 0.73, 0.57)}
#: Optimiser steps per epoch (pretrain's default, passed explicitly).
ITERATIONS = 50
#: ``--epochs`` default: more than a CPU fits in the budget, so the clock ends the run.
MAX_EPOCHS = 1000


def brainseg_command() -> list[str]:
    """The ``brainseg`` entry point of this interpreter's environment."""
    exe = Path(sys.executable).parent / "brainseg"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("brainseg")
    if found is None:
        sys.exit("error: the brainseg command is not installed in this environment")
    return [found]


def load() -> tuple[float, float, float]:
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def run_step(name: str, args: list[str], logs: Path, steps: list[dict]) -> None:
    """Run one CLI step, its output into ``logs/<name>.log``; record wall time and load."""
    cmd = brainseg_command() + args
    log_path = logs / f"{name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    load_before = load()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - t0
    steps.append({"step": name, "seconds": seconds, "load_before": load_before[0], "load_after": load()[0],
                  "command": " ".join(["brainseg"] + args)})
    print(f"    {seconds:.1f} s, exit {proc.returncode}, log {log_path}", flush=True)
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        sys.exit(f"error: step {name} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))


def link_cases(folder: Path, cases: tuple[str, ...], data: Path) -> Path:
    """A source folder of the given cases, made of symlinks (the data are read in place, never copied).

    Each case is a real folder holding symlinks to the case's files: ``brainseg convert`` walks the
    input with ``os.walk`` (symlinked *folders* are not followed), so links to whole case folders
    would be invisible to it.
    """
    for case in cases:
        source = (data / case).resolve()
        if not source.is_dir():
            sys.exit(f"error: case folder {source} is missing")
        target = folder / case
        target.mkdir(parents=True, exist_ok=True)
        for file in sorted(source.iterdir()):
            if file.is_file() and not (target / file.name).exists():
                (target / file.name).symlink_to(file)
    return folder


#: How results.md names the optimisers of a run's config.json.
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}


def read_training(run: Path) -> dict:
    """Plan, epochs, steps and validation Dice of a finished pretrain run folder."""
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "config.json").read_text())
    train_cfg = config.get("train_config", config)
    iterations = int(train_cfg.get("iterations_per_epoch", 50))
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_cols = [c for c in (rows[0].keys() if rows else []) if c == "val_dice_mean"]
    best = None
    if val_cols:
        scored = [(float(r["val_dice_mean"]), int(r["epoch"])) for r in rows if r.get("val_dice_mean")]
        best = max(scored) if scored else None
    return {
        "config": plan["config"], "model": plan["model"]["name"], "patch": plan["patch_size"],
        "batch": plan["batch_size"], "spacing": plan["target_spacing"],
        "base_features": plan["model"]["config"].get("base_features"),
        "epochs": len(rows), "iterations_per_epoch": iterations,
        "planned_steps": int(train_cfg.get("epochs", 0)) * iterations, "steps": len(rows) * iterations,
        "train_seconds": sum(float(r["seconds"]) for r in rows),
        "data_seconds": sum(float(r.get("data_seconds") or 0) for r in rows),
        "last_train_loss": float(rows[-1]["train_loss"]) if rows else math.nan,
        "last_lr": float(rows[-1]["lr"]) if rows else math.nan,
        "best_val_dice": best[0] if best else math.nan, "best_epoch": best[1] if best else None,
        "val_cases": config.get("val_cases"), "train_cases": config.get("train_cases"),
        "decisions": plan.get("decisions", {}),
        "region_based": plan.get("region_based", True),
        "optimizer": config.get("optimizer") or {"optimizer": "sgd", "schedule": "poly"},
        "batch_dice": bool((plan.get("loss") or {}).get("batch_dice", False)),
        "augment_preset": train_cfg.get("augment_preset", "default") if train_cfg.get("augment", True) else "off",
        "ema": train_cfg.get("ema"),
        "precision": (config.get("runtime") or {}).get("precision"),
        "decided": {name: checkpoint_decisions(run / f"{name}.pt") for name in ("best", "last")},
    }


def checkpoint_decisions(path: Path) -> str:
    """The region growing thresholds, minimum region volumes and largest-component decisions stored in a checkpoint, as text."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    thresholds = ckpt.get("region_thresholds") or {}
    lcc = [name for name, d in (ckpt.get("postprocessing") or {}).items() if d.get("largest_component")]
    cuts = " / ".join(f"{name} {value:g}" for name, value in thresholds.items()) or "0.5 (none stored)"
    minimums = " / ".join(f"{name} {value:g}" for name, value in (ckpt.get("region_min_volumes") or {}).items() if value)
    return (f"thresholds {cuts}; largest component of {', '.join(lcc) or 'nothing'}; "
            f"minimum volume (mm3) {minimums or 'none'}")


def read_scores(cases_csv: Path) -> dict[str, dict[str, dict[str, float]]]:
    """case -> region -> {"dice", "hd95"} from ``brainseg evaluate --csv``."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    with open(cases_csv, newline="") as f:
        for row in csv.DictReader(f):
            name = row.get("label") or row.get("structure") or row.get("name")
            if name not in REGIONS:
                continue
            scores.setdefault(row["case"], {})[name] = {"dice": float(row["dice"]), "hd95": float(row["hd95"])}
    return scores


def fmt(v: float, digits: int = 3) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def split_cases(held_out: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(held out, training cases)`` for ``--held-out``; exits with a one-line error on unknown or repeated
    cases, or when fewer than 2 would train."""
    unknown = sorted(set(held_out) - set(CASES))
    if unknown:
        sys.exit(f"error: --held-out names cases not in the folder: {', '.join(unknown)} (cases: {', '.join(CASES)})")
    if len(set(held_out)) != len(held_out) or len(held_out) > len(CASES) - 2:
        sys.exit(f"error: --held-out needs distinct cases and leaves at least 2 to train, got {held_out}")
    return tuple(held_out), tuple(c for c in CASES if c not in held_out)


def score_rows(scores: dict, mean: dict, cases: list[str]) -> list[str]:
    """Markdown table (header, a row per case, the bold mean) of WT/TC/ET Dice and HD95."""
    rows = ["| case | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        rows.append(f"| {c} | " + " | ".join(fmt(scores[c][r]["dice"]) for r in REGIONS) + " | "
                    + " | ".join(fmt(scores[c][r]["hd95"], 1) for r in REGIONS) + " |")
    rows.append("| **mean** | " + " | ".join(f"**{fmt(mean[r]['dice'])}**" for r in REGIONS) + " | "
                + " | ".join(fmt(mean[r]["hd95"], 1) for r in REGIONS) + " |")
    return rows


def write_results(out: Path, *, args: argparse.Namespace, seed: int, scores: dict, others: dict, training: dict,
                  steps: list[dict], load_start: tuple, load_end: tuple, total: float) -> str:
    """Write ``results.csv`` and ``results.md``; ``scores`` head them, ``others`` (name -> scores) follow."""
    cases = sorted(scores)

    def means(table: dict) -> dict:
        return {r: {m: sum(table[c][r][m] for c in cases) / len(cases) for m in ("dice", "hd95")} for r in REGIONS}

    mean = means(scores)

    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case"] + [f"{r}_{m}" for m in ("dice", "hd95") for r in REGIONS])
        for c in cases:
            w.writerow([c] + [f"{scores[c][r][m]:.4f}" for m in ("dice", "hd95") for r in REGIONS])
        w.writerow(["mean"] + [f"{mean[r][m]:.4f}" for m in ("dice", "hd95") for r in REGIONS])
        for name, table in others.items():
            other_mean = means(table)
            w.writerow([f"mean with {name}"] + [f"{other_mean[r][m]:.4f}" for m in ("dice", "hd95") for r in REGIONS])
        w.writerow([])
        w.writerow(["step", "seconds", "load_before", "load_after"])
        for s in steps:
            w.writerow([s["step"], f"{s['seconds']:.1f}", s["load_before"], s["load_after"]])
        w.writerow(["total", f"{total:.1f}", load_start[0], load_end[0]])
        w.writerow(["training_steps", training["steps"]])

    t = training
    lines = [
        f"# BraTS 2018, {args.minutes:g}-minute CPU budget ({t['config']}, seed {seed})",
        "",
        f"Trained on {len(args.train)} cases ({', '.join(args.train)}); validation case(s) inside them: "
        f"{', '.join(t['val_cases'] or [])}. Held out: {', '.join(args.held_out)}.",
        "",
        f"Plan: {t['config']} {t['model']} (base features {t['base_features']}), patch "
        f"{'x'.join(map(str, t['patch']))}, batch {t['batch']}, spacing {'x'.join(f'{s:g}' for s in t['spacing'])} mm, "
        f"{'region-based WT/TC/ET (sigmoid)' if t['region_based'] else 'softmax labels'}, "
        f"Dice {'over the batch' if t['batch_dice'] else 'per sample'}, "
        f"augmentation `{t['augment_preset']}`, "
        f"{'weights averaged (EMA decay ' + format(t['ema'], 'g') + ')' if t['ema'] else 'no weight averaging'}, "
        f"{t['epochs']} epochs x {t['iterations_per_epoch']} = "
        f"**{t['steps']} training steps** ({t['train_seconds'] / max(t['steps'], 1):.2f} s/step incl. validation; "
        f"data waits {t['data_seconds']:.0f} s); final lr {t['last_lr']:.2e}; best validation Dice "
        f"{fmt(t['best_val_dice'])} at epoch {t['best_epoch']}.",
        "",
        (f"Schedule: {OPTIMIZER_NAMES.get(t['optimizer']['optimizer'], t['optimizer']['optimizer'])} + "
         f"{t['optimizer']['schedule']} lr following the clock (--max-time {args.minutes:g}: re-aimed after every epoch at "
         f"the steps that still fit; --epochs {args.epochs} is only an upper bound of {t['planned_steps']} steps); "
         "the loop stops before an epoch that would not fit."),
        "",
        f"Decided on the validation case at the end of training (largest component, then region growing): "
        f"`best.pt` {t['decided']['best']}; "
        f"`last.pt` {t['decided']['last']}.",
        "",
        f"Predicted with `{args.checkpoint}.pt`{' and mirroring TTA' if args.tta else ''}:",
        "",
        *score_rows(scores, mean, cases),
    ]
    for name, table in others.items():
        other_mean = means(table)
        lines.append(f"| mean with {name} (for comparison) | "
                     + " | ".join(fmt(other_mean[r]["dice"]) for r in REGIONS) + " | "
                     + " | ".join(fmt(other_mean[r]["hd95"], 1) for r in REGIONS) + " |")
    for name, (wt, tc, et) in BASELINES.items():
        lines.append(f"| {name} (issue #5, other cases) | {wt:.2f} | {tc:.2f} | {et:.2f} | | | |")
    lines += [
        "",
        "HD95 in mm (`max` definition, MONAI's); BraTS empty policy (an empty prediction of a non-empty "
        "region scores Dice 0, HD95 = image diagonal).",
        "",
        "| step | wall time (s) | load before | load after |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['seconds']:.1f} | {s['load_before']} | {s['load_after']} |" for s in steps]
    lines += [
        f"| **total** | **{total:.1f}** | {load_start[0]} | {load_end[0]} |",
        "",
        f"Load average (1, 5, 15 min) at start {load_start}, at end {load_end}, on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}; shared with other work).",
        "",
        "Commands:",
        "",
        "```",
        *[s["command"] for s in steps],
        "```",
        "",
    ]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    record = {
        "seed": seed, "minutes": args.minutes, "train_cases": list(args.train), "held_out": list(args.held_out),
        "checkpoint": f"{args.checkpoint}.pt", "tta": bool(args.tta), "scores": scores, "mean": mean,
        "others": {name: {"scores": table, "mean": means(table)} for name, table in others.items()},
        "training": {k: v for k, v in training.items() if k != "decided"}, "decided": training["decided"],
        "steps": training["steps"], "seconds_per_step": training["train_seconds"] / max(training["steps"], 1),
        "wall": [{k: s[k] for k in ("step", "seconds", "load_before", "load_after", "command")} for s in steps],
        "total_seconds": total, "load_start": list(load_start), "load_end": list(load_end),
        "cpu_count": os.cpu_count(),
        "hd95": "mm, max of the two directed 95th percentiles (MONAI's); BraTS empty policy",
    }
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget (pretrain --max-time)")
    parser.add_argument("--config", choices=("2d", "3d"), default=None,
                        help="pretrain --config (default: the plan's, 2d on a CPU)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: a new temp folder)")
    parser.add_argument("--data", type=Path, default=DATA, help="the brats2018_deepbrainseg folder")
    parser.add_argument("--slice-weighting", choices=("uniform", "foreground"), default=None,
                        help="pretrain --slice-weighting for 2-D plans (default: pretrain's, uniform)")
    parser.add_argument("--ema", type=float, default=None, metavar="DECAY",
                        help="pretrain --ema (default: pretrain's, 0.995; 0 = no weight average)")
    parser.add_argument("--slice-context", type=int, default=None, metavar="K",
                        help="2-D: neighbouring slices on each side given as channels (pretrain --slice-context)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="pretrain --precision (default: pretrain's, auto: bf16 on CPUs with native bf16)")
    parser.add_argument("--aug-preset", choices=("default", "brats"), default=None,
                        help="pretrain --aug-preset (default: pretrain's, default)")
    parser.add_argument("--batch-dice", action=argparse.BooleanOptionalAction, default=None,
                        help="pretrain --batch-dice / --sample-dice (default: the plan's, per sample)")
    parser.add_argument("--loss", choices=("dice-ce", "dice"), default=None,
                        help="pretrain --loss (default: pretrain's, dice-ce: Dice + BCE for the regions)")
    parser.add_argument("--options-file", type=Path, default=None, metavar="FILE",
                        help="pretrain --options-file (JSON/TOML): options without a flag here, e.g. "
                             '{"model_config": {"base_features": 32}}')
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="predict with mirroring test-time augmentation (default on, as nnU-Net predicts)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="the checkpoint whose scores head the results (default best, the best validation "
                             "epoch; last: the final weights); the other is scored too, for comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="N",
                        help="pretrain --seed of each run (default 0, pretrain's default); with several, one run "
                             "per seed in OUT/seed_N and their mean in OUT/summary.md")
    parser.add_argument("--epochs", type=int, default=MAX_EPOCHS,
                        help=f"pretrain --epochs, an upper bound (default {MAX_EPOCHS}): the learning-rate "
                             "schedule follows --minutes")
    parser.add_argument("--held-out", nargs="+", default=list(HELD_OUT), metavar="CASE",
                        help="held-out cases (default: the fixed split); the other cases of the 9 train")
    args = parser.parse_args()
    args.held_out, args.train = split_cases(args.held_out)

    out = args.output or Path(tempfile.mkdtemp(prefix="brats_cpu_"))
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    if any(out.iterdir()):
        sys.exit(f"error: output folder {out} is not empty")
    if len(args.seeds) != len(set(args.seeds)):
        sys.exit(f"error: --seeds repeats a seed: {args.seeds}")
    print(f"output folder: {out}", flush=True)
    print(f"training cases: {', '.join(args.train)}\nheld-out cases: {', '.join(args.held_out)}", flush=True)
    if len(args.seeds) == 1:
        run_once(args, args.seeds[0], out)
        return
    runs = {}
    for seed in args.seeds:
        (out / f"seed_{seed}").mkdir()
        runs[seed] = run_once(args, seed, out / f"seed_{seed}")
    text = write_summary(out, args=args, runs=runs)
    print()
    print(text)


def run_once(args: argparse.Namespace, seed: int, out: Path) -> dict[str, dict]:
    """Convert, train with ``seed``, predict and evaluate into the empty folder ``out``.

    Returns:
        checkpoint file name (headline first) -> case -> region -> {"dice", "hd95"}.
    """
    logs = out / "logs"
    logs.mkdir()

    load_start = load()
    t_start = time.perf_counter()
    steps: list[dict] = []

    train_src = link_cases(out / "source_train", args.train, args.data)
    test_src = link_cases(out / "source_heldout", args.held_out, args.data)
    run_step("convert_train", ["convert", "brats", str(train_src), str(out / "brats18_train"), "--name", "brats18_train"],
             logs, steps)
    run_step("convert_heldout", ["convert", "brats", str(test_src), str(out / "brats18_heldout"),
                                 "--name", "brats18_heldout"], logs, steps)

    pretrain = ["pretrain", str(out / "brats18_train"), "-o", str(out / "run"), "--max-time", f"{args.minutes:g}",
                "--val-cases", "1", "--device", "cpu", "--iterations", str(ITERATIONS),
                "--epochs", str(args.epochs), "--seed", str(seed)]
    given = {"--config": args.config, "--precision": args.precision, "--aug-preset": args.aug_preset,
             "--loss": args.loss, "--slice-weighting": args.slice_weighting, "--slice-context": args.slice_context,
             "--ema": None if args.ema is None else f"{args.ema:g}",
             "--options-file": None if args.options_file is None else args.options_file.resolve()}
    pretrain += [str(v) for option, value in given.items() if value is not None for v in (option, value)]
    if args.batch_dice is not None:
        pretrain += ["--batch-dice" if args.batch_dice else "--sample-dice"]
    run_step("pretrain", pretrain, logs, steps)
    training = read_training(out / "run")
    checkpoints = [args.checkpoint, "best" if args.checkpoint == "last" else "last"]
    # (checkpoint, output suffix, extra predict options): the headline, the other checkpoint, and the
    # headline with every region at 0.5 (what the validation-decided thresholds change)
    # (a softmax run, ``--regions none``, has no region thresholds: no third variant)
    region_based = training["region_based"]
    variants = [(checkpoints[0], "", []), (checkpoints[1], f"_{checkpoints[1]}", [])]
    if region_based:
        variants.append((checkpoints[0], "_t05", ["--region-threshold", "0.5"]))
    for name, suffix, extra in variants:
        run_step(f"predict{suffix}", ["predict", "--model", str(out / "run" / f"{name}.pt"), "--input",
                                      str(out / "brats18_heldout" / "imagesTr"), "--output",
                                      str(out / f"predictions{suffix}"), "--device", "cpu"]
                 + (["--tta"] if args.tta else []) + extra, logs, steps)
        run_step(f"evaluate{suffix}", ["evaluate", "--ref", str(out / "brats18_heldout"), "--pred",
                                       str(out / f"predictions{suffix}"), "--regions", "brats", "--metrics", "dice",
                                       "hd95", "-o", str(out / f"evaluation{suffix}.json"),
                                       "--csv", str(out / f"evaluation{suffix}_cases.csv")], logs, steps)
    total = time.perf_counter() - t_start
    load_end = load()

    scores = read_scores(out / "evaluation_cases.csv")
    other = read_scores(out / f"evaluation_{checkpoints[1]}_cases.csv")
    tables = {"evaluation_cases.csv": scores, f"evaluation_{checkpoints[1]}_cases.csv": other}
    others = {f"{checkpoints[1]}.pt": other}
    half = f"{checkpoints[0]}.pt, thresholds 0.5"
    if region_based:
        others[half] = tables["evaluation_t05_cases.csv"] = read_scores(out / "evaluation_t05_cases.csv")
    for name, table in tables.items():
        missing = [c for c in args.held_out if set(table.get(c, {})) != set(REGIONS)]
        if missing:
            sys.exit(f"error: {out / name} lacks WT/TC/ET rows for {', '.join(missing)}")
    text = write_results(out, args=args, seed=seed, scores=scores, others=others,
                         training=training, steps=steps, load_start=load_start, load_end=load_end, total=total)
    print()
    print(text)
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}")
    return {f"{checkpoints[0]}.pt": scores, **others}


def write_summary(out: Path, *, args: argparse.Namespace, runs: dict[int, dict[str, dict]]) -> str:
    """``summary.md``: mean Dice over the held-out cases per seed and checkpoint, and over the seeds."""

    def mean_dice(table: dict, region: str) -> float:
        return sum(table[c][region]["dice"] for c in table) / len(table)

    names = list(next(iter(runs.values())))
    config = args.config or "the plan's config"
    lines = [f"# BraTS 2018, {args.minutes:g}-minute CPU budget ({config}), {len(runs)} seeds", "",
             "Mean Dice over the held-out cases; each seed's `seed_N/results.md` has the details.", "",
             "| seed | " + " | ".join(f"{r} ({n})" for n in names for r in REGIONS) + " |",
             "|---|" + "---|" * (len(names) * len(REGIONS))]
    for seed, tables in runs.items():
        lines.append(f"| {seed} | " + " | ".join(fmt(mean_dice(tables[n], r)) for n in names for r in REGIONS) + " |")
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(sum(mean_dice(t[n], r) for t in runs.values()) / len(runs))}**" for n in names for r in REGIONS)
        + " |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
