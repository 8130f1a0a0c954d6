"""Steps/s, samples/s and data-wait share of a finished ``brainseg pretrain`` run, from its files.

    python benchmarks/run_throughput.py RUN_DIR

Epoch 0 is left out (it holds cuDNN's algorithm search and the data workers' start-up); the
epochs' ``seconds`` include validation, so the rates are a lower bound for training alone.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main() -> None:
    run = Path(sys.argv[1])
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        raise SystemExit(f"{run}: needs at least 2 epochs in metrics.csv, found {len(rows)}")
    steps = config["train_config"]["iterations_per_epoch"] * (len(rows) - 1)
    seconds = sum(float(r["seconds"]) for r in rows[1:])
    data = sum(float(r["data_seconds"]) for r in rows[1:])
    print(f"plan: patch {plan['patch_size']}, batch {plan['batch_size']}, budget {plan['budget']['kind']} "
          f"{plan['budget']['memory_gb']} GB (estimated {plan['budget']['estimated_memory_gb']} GB)")
    print(f"precision {config['runtime']['precision']}, augmentation {config['train_config']['augment']}: "
          f"{steps / seconds:.2f} steps/s, {steps * plan['batch_size'] / seconds:.1f} samples/s over epochs 1-{len(rows) - 1} "
          f"(validation included), waiting for data {100 * data / seconds:.1f} % of the time; "
          f"train loss by epoch {[round(float(r['train_loss']), 3) for r in rows]}")


if __name__ == "__main__":
    main()
