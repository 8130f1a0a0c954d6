"""Data-parallel 3-D training: ``torchrun`` on 2 processes matches the single-process run.

Protocol reproduced (PyTorch DistributedDataParallel as used by nnU-Net v2 and MONAI for multi-GPU
training): the same 3-D patch training on a Decathlon-style BraTS dataset (``convert msd``; fold 0
of a 2-fold split) is run

1. in one process (``brainseg pretrain``), and
2. launched with ``torchrun --standalone --nproc-per-node 2`` (``python -m torch.distributed.run``),
   each process drawing half of every global batch (gloo on CPUs, NCCL on GPUs; gradients averaged).

brainseg draws sample ``j`` of step ``t`` from its own generator seeded by ``(seed, t, j)`` and rank
``r`` of ``W`` takes samples ``r, r + W, ...``, so both runs see exactly the same global batches; with
deterministic algorithms the per-epoch training losses, the validation Dice and the final weights
agree up to floating-point summation order. The check: relative loss difference <= 1e-3 per epoch.
The network is ``unet`` (InstanceNorm, per sample): BatchNorm statistics would be per process under
DDP (brainseg does not convert to SyncBatchNorm), so a BatchNorm network (``unet3d``) matches only
approximately (``--model unet3d`` shows it).

Scaling (throughput for 1, 2, ... GPUs) is measured and plotted (``scaling.png``) only where at least
two CUDA devices are available; on CPUs the table says so.

Runs on ``../shared/data/msd_task01_from_brats2018/Task01_BrainTumour`` by default (``--data``).
``--quick`` (a few minutes on two CPU cores): 3 mm, 32^3 patches, 8 base features, batch 8,
2 epochs x 10 steps. Default: 1 mm, 128^3 patches, 32 base features, batch 8, 5 epochs x 50 steps.
Writes ``results.csv`` and ``results.md`` into ``-o OUT`` (default: a new temporary folder, printed).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _tables import write_tables  # noqa: E402 - examples/_tables.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "msd_task01_from_brats2018" / "Task01_BrainTumour"

PROTOCOL = "Data-parallel 3-D training (torchrun, 2 processes vs 1)"
TOLERANCE = 1e-3


def budget(quick: bool) -> tuple[int, int, int, int, int]:
    """``(spacing mm, patch, base features, epochs, iterations per epoch)``."""
    return (3, 32, 8, 2, 10) if quick else (1, 128, 32, 5, 50)


def pretrain_args(dataset: Path, run_dir: Path, *, quick: bool, model: str, seed: int, device: str) -> list[str]:
    """The ``brainseg pretrain`` arguments shared by every run."""
    spacing, patch, base, epochs, iterations = budget(quick)
    key = "base_features" if model == "unet" else "base_filters"
    options = run_dir.parent / f"{run_dir.name}_options.json"
    options.write_text(f'{{"model_config": {{"{key}": {base}}}}}\n', encoding="utf-8")
    return ["pretrain", str(dataset), "-o", str(run_dir), "--config", "3d", "--model", model,
            "--spacing", f"{spacing},{spacing},{spacing}", "--patch-size", f"{patch},{patch},{patch}",
            "--batch-size", "8", "--epochs", str(epochs), "--iterations", str(iterations), "--fold", "0",
            "--folds", "2", "--deterministic", "--seed", str(seed), "--workers", "0", "--device", device,
            "--options-file", str(options)]


def run(cmd: list[str], *, env: dict[str, str]) -> float:
    """Run a command, fail loudly with its output, return its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the weights of two checkpoints (relative to the largest weight)."""
    from brainseg_cli.checkpoint import load_checkpoint

    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())
    scale = max(float(sa[k].double().abs().max()) for k in sa if sa[k].is_floating_point())
    return diff / scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Decathlon task folder (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="a few minutes on two CPU cores")
    parser.add_argument("--model", choices=("unet", "unet3d"), default="unet", help="network (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from brainseg_cli.data.convert import ConvertConfig, convert_dataset
    from brainseg_cli.errors import BrainsegError

    out = args.output or Path(tempfile.mkdtemp(prefix="ddp_3d_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"output: {out}")
    try:
        convert_dataset(config=ConvertConfig(source="msd", input=args.data, output=out / "dataset", name="MSD_Task01"))
    except BrainsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cores = os.cpu_count() or 1
    cli = [sys.executable, "-m", "brainseg_cli.cli.main", "--quiet"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "brainseg_cli.cli.main", "--quiet"]
    common = dict(quick=args.quick, model=args.model, seed=args.seed, device="cpu")
    # one thread per process: on shared CPU cores more threads than free cores slow PyTorch down many-fold
    seconds = {
        "single": run([*cli, "--threads", "1", *pretrain_args(out / "dataset", out / "single", **common)], env=env),
        "torchrun-2": run([*torchrun, "--threads", "1",
                           *pretrain_args(out / "dataset", out / "torchrun2", **common)], env=env),
    }
    one, two = read_metrics(out / "single"), read_metrics(out / "torchrun2")
    steps = budget(args.quick)[4] * len(one)
    rows = []
    worst = 0.0
    for name, metrics, folder in (("single", one, "single"), ("torchrun-2", two, "torchrun2")):
        rel = max(abs(b["train_loss"] - a["train_loss"]) / abs(a["train_loss"]) for a, b in zip(one, metrics))
        worst = max(worst, rel)
        rows.append({"run": name, "device": "cpu", "processes": 1 if name == "single" else 2,
                     "seconds": round(seconds[name], 1), "steps_per_s": round(steps / seconds[name], 3),
                     "final_train_loss": metrics[-1]["train_loss"], "val_dice_mean": metrics[-1]["val_dice_mean"],
                     "max_rel_loss_diff": rel,
                     "max_rel_weight_diff": max_weight_difference(out / "single" / "last.pt", out / folder / "last.pt")})
    matches = len(one) == len(two) and worst <= TOLERANCE
    notes = [f"Protocol: {PROTOCOL}. Mode: **{'quick' if args.quick else 'full'}**; model {args.model}; "
             f"{len(one)} epochs, {steps} steps; one CPU thread per process ({cores} cores here).",
             f"Matches the single-process run (per-epoch training loss within {TOLERANCE:g} relative): "
             f"**{'yes' if matches else 'no'}** (largest difference {worst:.2e}).",
             "CPU wall times compare one process on one core with two processes on two cores sharing the machine; "
             "they are no GPU scaling measure."]

    gpus = torch.cuda.device_count()
    if gpus >= 2:
        counts = [n for n in (1, 2, 4, 8) if n <= gpus]
        speeds = []
        for n in counts:
            launch = cli if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node", str(n), "-m", "brainseg_cli.cli.main", "--quiet"]
            wall = run([*launch, *pretrain_args(out / "dataset", out / f"gpu{n}",
                                                **{**common, "device": "cuda"})], env=env)
            speeds.append(steps / wall)
            rows.append({"run": f"gpu-{n}", "device": "cuda", "processes": n, "seconds": round(wall, 1),
                         "steps_per_s": round(steps / wall, 3),
                         "final_train_loss": read_metrics(out / f"gpu{n}")[-1]["train_loss"],
                         "val_dice_mean": read_metrics(out / f"gpu{n}")[-1]["val_dice_mean"],
                         "max_rel_loss_diff": float("nan"), "max_rel_weight_diff": float("nan")})
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(counts, [s / speeds[0] for s in speeds], "o-", label="measured")
        ax.plot(counts, counts, "--", color="grey", label="linear")
        ax.set_xlabel("GPUs (processes)")
        ax.set_ylabel("speed-up (steps/s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=100)
        notes.append(f"Scaling on {gpus} GPUs: see scaling.png (speed-up "
                     + ", ".join(f"{n}: {s / speeds[0]:.2f}x" for n, s in zip(counts, speeds)) + ").")
    else:
        notes.append(f"Scaling figure: not produced ({gpus} CUDA device(s) here; it needs at least 2).")
    write_tables(out, rows, title=f"{PROTOCOL}", notes=notes, float_format=".6g")
    print((out / "results.md").read_text())
    return 0 if matches or args.model != "unet" else 1


if __name__ == "__main__":
    raise SystemExit(main())
