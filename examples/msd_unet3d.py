"""3-D U-Net on Decathlon-style BraTS (Medical Segmentation Decathlon Task01_BrainTumour).

Protocol reproduced (the 3-D U-Net of Cicek et al. 2016 trained as in the common Decathlon Task01
baselines):

- data: a Decathlon task folder (4-D NIfTI images FLAIR, T1w, T1gd, T2w; labels 1 edema,
  2 non-enhancing tumour, 3 enhancing tumour), converted with ``brainseg convert msd``;
- patch-based training on random sub-volumes (one third forced to contain tumour), model ``unet3d``
  (Cicek et al.: 32 base filters, 4 levels, BatchNorm), softmax over the three classes and background,
  soft Dice loss, batch 8, Adam;
- evaluation per class (edema, non-enhancing, enhancing) and per BraTS region (WT, TC, ET): Dice,
  sensitivity and specificity (docs/DEFINITIONS.md §3 definitions, empty policy ``brats``).

Cases are evaluated by K-fold cross-validation (``--folds``, default 2: the developer data hold two
cases). Each fold trains on the other folds, validates on its own fold (for the training curves only)
and predicts it with the *last* checkpoint, so the evaluated cases never choose the model.

Full protocol (default): 1 mm, 128^3 patches, 32 base filters, 100 epochs x 100 steps per fold (a GPU
job). ``--quick`` (a few minutes on two CPU cores): 3 mm, 32^3 patches, 4 base filters, 3 x 15 steps,
learning rate 1e-3.

Runs on ``../shared/data/msd_task01_from_brats2018/Task01_BrainTumour`` by default (``--data``); writes
``results.csv`` (one row per case and class/region, plus means) and ``results.md`` into ``-o OUT``
(default: a new temporary folder, printed).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _tables import write_tables  # noqa: E402 - examples/_tables.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "msd_task01_from_brats2018" / "Task01_BrainTumour"

PROTOCOL = "3-D U-Net on Decathlon-style BraTS (MSD Task01)"
METRICS = ("dice", "sensitivity", "specificity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Decathlon task folder (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: a new temporary one)")
    parser.add_argument("--quick", action="store_true", help="a few minutes on two CPU cores (coarse, tiny budget)")
    parser.add_argument("--folds", type=int, default=2, help="cross-validation folds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from brainseg_cli.data.convert import ConvertConfig, convert_dataset
    from brainseg_cli.data.layout import load_dataset
    from brainseg_cli.demo import link_dataset_cases
    from brainseg_cli.errors import BrainsegError
    from brainseg_cli.inference.predict import PredictConfig, predict_folder
    from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_folders
    from brainseg_cli.training.config import TrainConfig
    from brainseg_cli.training.pretrain import pretrain
    from brainseg_cli.training.splits import split_cases

    out = args.output or Path(tempfile.mkdtemp(prefix="msd_unet3d_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"output: {out}")
    if args.quick:
        spacing, patch, base, epochs, iterations, lr = 3.0, 32, 4, 3, 15, 1e-3
    else:
        spacing, patch, base, epochs, iterations, lr = 1.0, 128, 32, 100, 100, None
    batch = 8
    start = time.perf_counter()
    rows: list[dict] = []
    try:
        convert_dataset(config=ConvertConfig(source="msd", input=args.data, output=out / "dataset", name="MSD_Task01"))
        cases = list(load_dataset(out / "dataset").training_cases)
        for fold in range(args.folds):
            _, test = split_cases(cases, fold=fold, folds=args.folds)
            config = TrainConfig(epochs=epochs, iterations_per_epoch=iterations, optimizer="adam", lr=lr, loss="dice",
                                 fold=fold, folds=args.folds, seed=args.seed, deterministic=True, workers=0)
            overrides = {"config": "3d", "model": "unet3d", "model_config": {"base_filters": base},
                         "patch_size": (patch,) * 3, "batch_size": batch, "target_spacing": (spacing,) * 3}
            result = pretrain(dataset_dir=out / "dataset", run_dir=out / f"fold{fold}" / "run", train_config=config,
                              plan_overrides=overrides)
            test_ds = link_dataset_cases(out / "dataset", test, out / f"fold{fold}" / "test", base=out)
            predict_folder(config=PredictConfig(models=(result.last_checkpoint,), input=test_ds,
                                                output=out / f"fold{fold}" / "predictions"))
            evaluation = evaluate_folders(config=EvaluateConfig(
                ref=test_ds, pred=out / f"fold{fold}" / "predictions", metrics=METRICS, regions="dataset",
                output=out / f"fold{fold}" / "results.json"))
            for r in evaluation.rows:
                rows.append({"fold": fold, "case": r["case"], "label": r["label"],
                             **{m: float(r[m]) for m in METRICS}})
    except BrainsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.perf_counter() - start
    for label in dict.fromkeys(r["label"] for r in rows):
        sel = [r for r in rows if r["label"] == label]
        rows.append({"fold": "all", "case": "mean", "label": label,
                     **{m: float(np.nanmean([r[m] for r in sel])) for m in METRICS}})
    mode = "quick" if args.quick else "full"
    notes = [
        f"Protocol: {PROTOCOL}. Mode: **{mode}** (unet3d with {base} base filters, {patch}^3 patches at "
        f"{spacing:g} mm, batch {batch}, soft Dice loss, Adam lr {lr or 1e-4:g}, {epochs} epochs x {iterations} "
        f"steps per fold, {args.folds}-fold cross-validation, last checkpoint).",
        f"Data: {args.data.resolve()} ({len(cases)} cases); wall time {seconds:.0f} s.",
        "Per-case Dice, sensitivity and specificity per class and BraTS region (empty policy brats).",
    ]
    write_tables(out, rows, title=f"{PROTOCOL}: per-class metrics", notes=notes)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
