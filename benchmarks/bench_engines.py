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
``predict_prepared``, is timed: best of ``--repeats`` rounds, wall clock and process CPU time; each round
runs every engine once, in a rotating order, after one untimed run of it, so that a slower minute of the
machine lands on all engines alike and none is timed right after another engine's threads ran). Every engine
runs the same windows, as many per network call as ``predict`` runs it with (its default,
:data:`brainseg_cli.inference.engines.WINDOW_BATCH`: 8 on OpenVINO, else 2) unless ``--window-batch``
sets one number for all. Agreement with torch fp32: the share of voxels with the same label and the
Dice of every label present.

Target (issue #21): the best export engine >= 1.5x faster than torch eager fp32, with labels equal on
>= 99.9 % of the voxels and Dice >= 0.999 per label.

    python benchmarks/bench_engines.py [--case Brats18_TCIA13_623_1] [--repeats 3] [--threads N]
        [--checkpoint-2d best.pt] [--checkpoint-3d best.pt] [--train-steps 40] [--window-batch N] [-o results.json]
    python benchmarks/bench_engines.py --readme benchmarks/results/NAME.json [README.md]

``torch bf16`` is timed only on a CPU with native bf16 (AVX512-BF16 or AMX; ``--bf16`` times it anyway):
elsewhere ``predict --precision auto`` never picks it. The README's tables are generated from the results
files: ``benchmarks/results/NAME.json`` fills the block between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` (``bench_engines.json``: the headline table; ``bench_engines_fp32.json``: a CPU
without native bf16); a test checks that the README matches every results file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from readme_tables import machine, markers, read_results, write_block  # noqa: E402

from brainseg_cli.data.convert import ConvertConfig, convert_dataset  # noqa: E402
from brainseg_cli.data.layout import load_dataset, read_case  # noqa: E402
from brainseg_cli.inference.predictor import Predictor  # noqa: E402
from brainseg_cli.inference.sliding_window import window_starts  # noqa: E402
from brainseg_cli.training.config import TrainConfig  # noqa: E402
from brainseg_cli.training.pretrain import pretrain  # noqa: E402

DATA = REPO / ".." / "shared" / "data" / "brats2018_deepbrainseg"
TRAIN_CASES = ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1")
RESULTS = REPO / "benchmarks" / "results" / "bench_engines.json"
BEGIN, END = markers(RESULTS)
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


def time_engines(checkpoint: Path, image, case: str, engines: list[tuple[str, str, str]], *, repeats: int,
                 window_batch: int | None = None) -> tuple[float, list[tuple[float, float, np.ndarray, int]]]:
    """Time every engine on one case, interleaved: each round runs every engine once, the order rotating.

    Interleaving gives every engine the same machine state (a slower minute lands on all of them, not
    on whichever ran then); each turn starts with an untimed run, so that no engine is timed while the
    previous engine's worker threads may still spin (``predict`` runs one engine).

    Returns:
        The case's network work in GFLOP (:func:`case_gflop`, counted on the first engine, torch) and,
        per engine in ``engines`` order: best wall seconds, best CPU seconds, the label map and the
        windows per network call.
    """
    options = {} if window_batch is None else {"batch_size": window_batch}
    runs = []
    for _, engine, precision in engines:
        predictor = Predictor.from_checkpoints([checkpoint], device="cpu", engine=engine, precision=precision, **options)
        prepared = predictor.prepare(image, case=case)
        probs = predictor.predict_prepared(prepared)  # warm-up (ONNX Runtime plans its kernels on the first call)
        runs.append((predictor, prepared, predictor.labels_from_probabilities(probs)))
    gflop = case_gflop(*runs[0][:2])
    best_wall, best_cpu = [float("inf")] * len(runs), [float("inf")] * len(runs)
    for round_ in range(repeats):
        for k in range(len(runs)):
            i = (k + round_) % len(runs)
            predictor, prepared, _ = runs[i]
            predictor.predict_prepared(prepared)  # untimed: the previous engine's threads may still be busy
            wall, cpu = time.perf_counter(), cpu_seconds()
            predictor.predict_prepared(prepared)
            best_wall[i] = min(best_wall[i], time.perf_counter() - wall)
            best_cpu[i] = min(best_cpu[i], cpu_seconds() - cpu)
    return gflop, [(w, c, labels, predictor.batch_size) for w, c, (predictor, _, labels) in zip(best_wall, best_cpu, runs)]


def case_gflop(predictor: Predictor, prepared) -> float:
    """Network work of one case in GFLOP (a multiply-add counts 2): FLOPs of one window x windows of the case.

    Counted on the torch network (``torch.utils.flop_counter``), for the case's windows at the
    predictor's overlap; dividing by an engine's seconds gives the rate it reached on this CPU.
    """
    from torch.utils.flop_counter import FlopCounterMode

    (members, data, _), = prepared.groups
    member = members[0]
    plan = member.plan
    spatial = list(data.shape[1:])
    slices = 1
    if plan.two_d:
        slices = spatial.pop(plan.slice_axis)
    padded = [max(s, p) for s, p in zip(spatial, plan.patch_size)]
    windows = slices * int(np.prod([len(a) for a in window_starts(padded, plan.patch_size, overlap=predictor.overlap)]))
    channels = data.shape[0] * (2 * plan.slice_context + 1 if plan.two_d else 1)
    window = torch.zeros((1, channels, *plan.patch_size))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        member.network.eval()(window)
    return counter.get_total_flops() * windows / 1e9


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    dice = {}
    for value in np.unique(np.concatenate([np.unique(reference), np.unique(other)])):
        if value == 0:
            continue
        a, b = reference == value, other == value
        dice[int(value)] = float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    return {"equal_voxels": float((reference == other).mean()), "dice": dice}


def readme_block(record: dict, results: Path = RESULTS) -> str:
    """The README's engine table from a results record, between the markers of its results file.

    A record that names the CPU model (``machine.cpu``) gets a first line saying which CPU it ran on
    and whether torch bf16 was left out for want of native bf16.
    """
    begin, end = markers(results)
    lines = [begin]
    cpu = (record.get("machine") or {}).get("cpu")
    if cpu:
        engines = {r["engine"] for r in record["rows"]}
        native = record["machine"].get("native_bf16")
        lines += [f"{cpu}, {record['machine'].get('cpu_count')} cores, {record.get('threads')} threads, "
                  f"best of {record.get('repeats')} rounds; native bf16: {'yes' if native else 'no'}"
                  + ("" if "torch bf16" in engines else " (torch bf16 not timed: `predict --precision auto` "
                     "keeps fp32 on this CPU)") + ".", ""]
    lines += ["| network | engine | windows per call | seconds | GFLOP/s | speed-up vs torch fp32 | equal voxels "
             "| min Dice per label |", "|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        a = r.get("agreement")
        rate = r.get("gflop_per_s")
        lines.append(f"| {r['network']} | {r['engine']} | {r['window_batch']} | {r['seconds']:.2f} | "
                     f"{'' if rate is None else format(rate, '.0f')} | {r['speedup']:.2f}x | "
                     f"{'' if a is None else format(a['equal_voxels'] * 100, '.3f') + ' %'} | "
                     f"{'' if a is None or not a['dice'] else format(min(a['dice'].values()), '.4f')} |")
    return "\n".join([*lines, end])


def write_readme(readme: Path, record: dict, results: Path = RESULTS) -> bool:
    """Replace the block of ``results``' markers in ``readme``; True when the file changed."""
    return write_block(readme, *markers(results), readme_block(record, results))


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
    parser.add_argument("--bf16", action="store_true",
                        help="time torch bf16 even on a CPU without native bf16 (default: only where it has it)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--readme", nargs="+", type=Path, default=None, metavar="RESULTS.json [README.md]",
                        help="only write the README table from a results file (default README: the repository's)")
    args = parser.parse_args()
    if args.readme:
        results, *readmes = args.readme
        record = read_results(results)
        for readme in readmes or [REPO / "README.md"]:
            print(f"{readme}: {'updated' if write_readme(readme, record, results) else 'unchanged'}")
        return
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
        here = machine()
        available = [e for e in ENGINES if (e[1] != "openvino" or importlib.util.find_spec("openvino") is not None)
                     and (e[2] != "bf16" or here["native_bf16"] or args.bf16)]
        for name, checkpoint in checkpoints.items():
            gflop, timed = time_engines(checkpoint, image, args.case, available, repeats=args.repeats,
                                        window_batch=args.window_batch)
            base, _, reference, _ = timed[0]
            for (engine_name, _, _), (wall, cpu, labels, window_batch) in zip(available, timed):
                row = {"network": name, "engine": engine_name, "window_batch": window_batch, "seconds": wall,
                       "cpu_seconds": cpu, "gflop": gflop, "gflop_per_s": gflop / wall}
                if labels is not reference:
                    row["agreement"] = agreement(reference, labels)
                row["speedup"] = base / wall
                rows.append(row)
                print(json.dumps(row), flush=True)
    record = {"case": args.case, "threads": torch.get_num_threads(), "window_batch": args.window_batch,
              "repeats": args.repeats, "machine": here,
              "torch": torch.__version__, "rows": rows}
    print()
    print(readme_block(record, args.output or RESULTS))
    if args.output:
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
