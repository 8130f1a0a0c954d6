"""Benchmark: the inference engines on one real BraTS case, in one process, same windows, same weights.

For the default CPU plan's network (2-D U-Net, 16 base features, region-based WT/TC/ET outputs) and a
3-D network (``--config 3d``: the 3-D CPU plan), each trained briefly by ``brainseg pretrain`` on real
BraTS 2018 cases of ``../shared/data/brats2018_deepbrainseg`` (read in place) unless ``--checkpoint-2d``
/ ``--checkpoint-3d`` name trained ones, one held-out case is predicted by:

* ``torch fp32``: PyTorch eager (``predict --engine torch``, the default),
* ``torch bf16``: PyTorch eager under bf16 autocast (``--precision bf16``),
* ``onnxruntime``: the network exported to ONNX and run by ONNX Runtime (``--engine onnxruntime``),
* ``openvino``: the same graph compiled by OpenVINO for the CPU in fp32 (``--engine openvino``; skipped
  when ``openvino`` is not installed),

all through :class:`brainseg_cli.inference.predictor.Predictor` (the same preprocessing, sliding
window, Gaussian weighting and post-processing; the case is prepared once and only the network part,
``predict_prepared``, is timed: best of ``--repeats``, wall clock and process CPU time). Every engine
runs the same windows, as many per network call as ``predict`` runs it with (its default,
:data:`brainseg_cli.inference.engines.WINDOW_BATCH`: 8 on OpenVINO, else 2) unless ``--window-batch``
sets one number for all. Agreement with torch fp32: the share of voxels with the same label and the
Dice of every label present.

Target (issue #21): the best export engine >= 1.5x faster than torch eager fp32, with labels equal on
>= 99.9 % of the voxels and Dice >= 0.999 per label.

    python benchmarks/bench_engines.py [--case Brats18_TCIA13_623_1] [--repeats 3] [--threads N]
        [--checkpoint-2d best.pt] [--checkpoint-3d best.pt] [--train-steps 40] [--window-batch N] [-o results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from brainseg_cli.data.convert import ConvertConfig, convert_dataset  # noqa: E402
from brainseg_cli.data.layout import load_dataset, read_case  # noqa: E402
from brainseg_cli.inference.predictor import Predictor  # noqa: E402
from brainseg_cli.training.config import TrainConfig  # noqa: E402
from brainseg_cli.training.pretrain import pretrain  # noqa: E402

DATA = REPO / ".." / "shared" / "data" / "brats2018_deepbrainseg"
TRAIN_CASES = ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1")
ENGINES = (("torch fp32", "torch", "fp32"), ("torch bf16", "torch", "bf16"), ("onnxruntime", "onnxruntime", "fp32"),
           ("openvino", "openvino", "fp32"))


def link_cases(cases: list[str], target: Path) -> Path:
    for case in cases:
        (target / case).mkdir(parents=True)
        for file in (DATA / case).iterdir():
            (target / case / file.name).symlink_to(file.resolve())
    return target


def train(dataset: Path, run: Path, *, config: str, steps: int) -> Path:
    """A briefly trained checkpoint of the plan ``pretrain`` makes for ``config`` on this CPU."""
    epochs = 2
    result = pretrain(dataset_dir=dataset, run_dir=run, plan_overrides={"config": config},
                      train_config=TrainConfig(epochs=epochs, iterations_per_epoch=max(1, steps // epochs), workers=0,
                                               device="cpu", val_cases=1, seed=0))
    return result.best_checkpoint


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def time_engine(checkpoint: Path, image, case: str, *, engine: str, precision: str, repeats: int,
                window_batch: int | None = None):
    options = {} if window_batch is None else {"batch_size": window_batch}
    predictor = Predictor.from_checkpoints([checkpoint], device="cpu", engine=engine, precision=precision, **options)
    prepared = predictor.prepare(image, case=case)
    predictor.predict_prepared(prepared)  # warm-up (ONNX Runtime plans its kernels on the first call)
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        probs = predictor.predict_prepared(prepared)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, cpu_seconds() - cpu)
    return best_wall, best_cpu, predictor.labels_from_probabilities(probs), predictor.batch_size


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    dice = {}
    for value in np.unique(np.concatenate([np.unique(reference), np.unique(other)])):
        if value == 0:
            continue
        a, b = reference == value, other == value
        dice[int(value)] = float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    return {"equal_voxels": float((reference == other).mean()), "dice": dice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="Brats18_TCIA13_623_1", help="the held-out case predicted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all)")
    parser.add_argument("--checkpoint-2d", type=Path, default=None)
    parser.add_argument("--checkpoint-3d", type=Path, default=None)
    parser.add_argument("--train-steps", type=int, default=40, help="steps of the brief training (no checkpoint given)")
    parser.add_argument("--window-batch", type=int, default=None, metavar="N",
                        help="windows per network call for every engine (predict --batch-size; default: predict's)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp:
        tmp = Path(tmp)
        convert_dataset(config=ConvertConfig(source="brats", input=link_cases([args.case], tmp / "src"),
                                             output=tmp / "brats"))
        checkpoints = {"2-D (default CPU plan)": args.checkpoint_2d, "3-D (--config 3d)": args.checkpoint_3d}
        if None in checkpoints.values():
            convert_dataset(config=ConvertConfig(source="brats", input=link_cases(list(TRAIN_CASES), tmp / "src_train"),
                                                 output=tmp / "train"))
        for i, (name, given) in enumerate(checkpoints.items()):
            if given is None:
                checkpoints[name] = train(tmp / "train", tmp / f"run_{i}", config="2d" if i == 0 else "3d",
                                          steps=args.train_steps)
        info = load_dataset(tmp / "brats")
        image, _ = read_case(info, args.case)
        rows = []
        for name, checkpoint in checkpoints.items():
            reference = None
            for engine_name, engine, precision in ENGINES:
                if engine == "openvino" and importlib.util.find_spec("openvino") is None:
                    continue
                wall, cpu, labels, window_batch = time_engine(checkpoint, image, args.case, engine=engine, precision=precision,
                                                repeats=args.repeats, window_batch=args.window_batch)
                row = {"network": name, "engine": engine_name, "window_batch": window_batch, "seconds": wall,
                       "cpu_seconds": cpu}
                if reference is None:
                    reference, base = labels, wall
                else:
                    row["agreement"] = agreement(reference, labels)
                row["speedup"] = base / wall
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| network | engine | windows per call | seconds | speed-up vs torch fp32 | equal voxels | min Dice per label |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a = r.get("agreement")
        print(f"| {r['network']} | {r['engine']} | {r['window_batch']} | {r['seconds']:.2f} | {r['speedup']:.2f}x | "
              f"{'' if a is None else format(a['equal_voxels'] * 100, '.3f') + ' %'} | "
              f"{'' if a is None or not a['dice'] else format(min(a['dice'].values()), '.4f')} |")
    if args.output:
        args.output.write_text(json.dumps({"case": args.case, "threads": torch.get_num_threads(),
                                           "window_batch": args.window_batch,
                                           "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor()},
                                           "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
