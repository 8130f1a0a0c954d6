"""Small-sample fine-tuning study: a pretrained 3-D model fine-tuned on N target cases.

Protocol reproduced
-------------------
A 3-D network pretrained on a source dataset is fine-tuned on N training cases of a target dataset,
the N cases chosen *lesion-balanced* (sorted by lesion volume, cut into N quantile strata, one case
drawn from each: ``finetune --train-cases N --select lesion-balanced``), for every cell of the grid

- N in {2, 4} training cases,
- with and without data augmentation,
- partial fine-tuning (``--freeze encoder``: decoder and head train) vs full fine-tuning
  (``--freeze none``),

under an equal budget per cell (same epochs x iterations x batch), and scored with Dice and HD95
(docs/DEFINITIONS.md §3: ``max`` mode, ``brats`` empty policy) of the BraTS regions WT, TC and ET on fixed
held-out cases, with the final weights (``last.pt``) and no post-processing, on each case's own grid.

Data here (``../shared/data``): the source is the 2-channel BraTS 2015 set (FLAIR, T1c; 4 cases),
the target the BraTS 2018 developer cases (9 cases, T1, T1c, T2, FLAIR): the input layer goes from
2 to 4 channels (T1 and T2 start from the mean of the pretrained filters). Three target cases are
held out for scoring; the N training cases are drawn from the other six.

Models: ``--quick`` runs ``ratlesnet`` and ``unet3d`` (narrowed: 8 filters) on copies resampled to
4 mm with 32^3 patches and a few steps, a CPU demonstration of the protocol (minutes; the numbers
are not results). The full run adds ``unet`` (the planner's dynamic nnU-Net topology) and ``unetr``
(``small`` preset), at 2 mm with 64^3 patches and the models' default widths: a GPU job. Each
cell's wall-clock time on this machine is in the table.

Writes ``results.csv`` and ``results.md`` to the output folder (``-o``, default a temporary folder).

Usage::

    python examples/small_sample_finetune.py --quick -o /tmp/small-sample
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_brats_to_mrbrains import link_tree, resample_dataset  # noqa: E402  (the sibling example)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data"
QUICK_MODELS = {"ratlesnet": {"filters": 8}, "unet3d": {"base_filters": 8}}
FULL_MODELS = {"ratlesnet": {}, "unet3d": {}, "unet": {}, "unetr": {"preset": "small"}}
HELD_OUT = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder [../shared/data]")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder [a new temporary folder]")
    parser.add_argument("--quick", action="store_true", help="ratlesnet and unet3d at 4 mm, few steps (CPU minutes)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="[quick 4, full 50]")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs per cell [quick 3, full 25]")
    parser.add_argument("--iterations", type=int, default=None, help="steps per epoch [quick 10, full 50]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and of the case selection [0]")
    return parser.parse_args(argv)


def convert(data: Path, out: Path) -> dict[str, Path]:
    """BraTS 2015 (source) and the BraTS 2018 developer cases (target) in the dataset layout."""
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset

    b18 = data / "brats2018_deepbrainseg"
    for case in sorted(p.name for p in b18.iterdir() if p.is_dir()):
        link_tree(b18 / case, out / "src" / "brats2018" / case)
    convert_dataset(config=ConvertConfig(
        source="nifti", input=data / "brats2015_deepmedic", output=out / "brats2015", overwrite=True,
        channel_patterns=(("FLAIR", "**/Flair*.nii.gz"), ("T1c", "**/T1c*.nii.gz")),
        label_pattern="**/OTMultiClass.nii.gz", label_map="brats2015"))
    convert_dataset(config=ConvertConfig(source="brats", input=out / "src" / "brats2018", output=out / "brats2018",
                                         overwrite=True))
    return {"source": out / "brats2015", "target": out / "brats2018"}


def score(checkpoint: Path, dataset: Path, cases: list[str], *, device: str) -> dict[str, float]:
    """Mean Dice and HD95 (mm) over the held-out cases and the regions WT, TC, ET."""
    from brainseg_cli.data.layout import load_dataset, read_case
    from brainseg_cli.inference.predictor import Predictor
    from brainseg_cli.metrics import EvaluateConfig, evaluate_case

    info = load_dataset(dataset)
    predictor = Predictor.from_checkpoints([checkpoint], device=device)
    rows = []
    for case in cases:
        image, label = read_case(info, case)
        pred = predictor.predict(image, case=case, lcc="off")[0]
        rows += evaluate_case(pred, label.array, spacing=label.spacing, labels={}, regions=info.regions,
                              config=EvaluateConfig(metrics=("dice", "hd95")))
    out = {"dice": float(np.mean([r["dice"] for r in rows])), "hd95": float(np.mean([r["hd95"] for r in rows]))}
    for region in info.regions:
        out[f"dice {region}"] = float(np.mean([r["dice"] for r in rows if r["label"] == region]))
    return out


def write_tables(rows: list[dict], out: Path, *, header: str) -> tuple[Path, Path]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = [header, "", "| model | N | augmentation | fine-tuning | Dice | Dice WT | Dice TC | Dice ET | HD95 (mm) "
             "| training cases | seconds |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {r['augmentation']} | {r['fine_tuning']} | {r['dice']:.3f} | "
                     f"{r['dice WT']:.3f} | {r['dice TC']:.3f} | {r['dice ET']:.3f} | {r['hd95']:.1f} | "
                     f"{r['training_cases']} | {r['seconds']:.0f} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from brainseg_cli.checkpoint import load_checkpoint
    from brainseg_cli.training.config import TrainConfig
    from brainseg_cli.training.finetune import FinetuneConfig, finetune
    from brainseg_cli.training.pretrain import pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = args.data.resolve()
    if not data.is_dir():
        print(f"error: data folder {data} not found (give --data)", file=sys.stderr)
        return 1
    out = args.output or Path(tempfile.mkdtemp(prefix="brainseg-small-sample-"))
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    models = QUICK_MODELS if quick else FULL_MODELS
    spacing = 4.0 if quick else 2.0
    patch = [32, 32, 32] if quick else [64, 64, 64]
    pre_epochs = args.pretrain_epochs or (4 if quick else 50)
    epochs = args.epochs or (3 if quick else 25)
    iterations = args.iterations or (10 if quick else 50)
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    log(f"output folder {out}")
    paths = convert(data, out / "datasets")
    paths = {k: resample_dataset(v, out / "datasets" / f"{k}-{spacing:g}mm", spacing_at_least=(spacing,) * 3)
             for k, v in paths.items()}
    log(f"datasets converted and resampled to {spacing:g} mm")
    common = {"device": args.device, "seed": args.seed, "workers": 0, "loss": "dice-ce"}
    plan = {"patch_size": patch, "batch_size": 2, "target_spacing": [spacing] * 3}
    rows = []
    for model, config in models.items():
        start = time.perf_counter()
        source = pretrain(dataset_dir=paths["source"], run_dir=out / f"pretrain-{model}",
                          train_config=TrainConfig(epochs=pre_epochs, iterations_per_epoch=iterations, val_cases=1,
                                                   val_every=pre_epochs, **common),
                          plan_overrides={**plan, "model": model, "model_config": config})
        log(f"{model}: pretrained on BraTS 2015 in {time.perf_counter() - start:.0f} s "
            f"(validation Dice {source.best_val_dice:.3f})")
        for n in (2, 4):
            for augment in (True, False):
                for freeze, kind in (("encoder", "partial"), ("none", "full")):
                    run = out / f"{model}-n{n}-{'aug' if augment else 'noaug'}-{kind}"
                    start = time.perf_counter()
                    result = finetune(
                        dataset_dir=paths["target"], run_dir=run,
                        finetune_config=FinetuneConfig(checkpoint=source.last_checkpoint, freeze=freeze,
                                                       train_cases=n, select="lesion-balanced"),
                        train_config=TrainConfig(epochs=epochs, iterations_per_epoch=iterations, val_cases=HELD_OUT,
                                                 val_every=epochs, augment=augment, **common),
                        plan_overrides=plan)
                    seconds = time.perf_counter() - start
                    last = load_checkpoint(result.last_checkpoint)
                    held_out = list(last["training"]["val_cases"])
                    scores = score(result.last_checkpoint, paths["target"], held_out, device=args.device)
                    rows.append({"model": model, "n": n, "augmentation": "on" if augment else "off",
                                 "fine_tuning": f"{kind} (freeze {freeze})", **{k: round(v, 4) for k, v in scores.items()},
                                 "training_cases": " ".join(last["training"]["train_cases"]),
                                 "held_out": " ".join(held_out), "seconds": round(seconds, 1)})
                    log(f"{model:<10} N={n} aug {'on ' if augment else 'off'} {kind:<7} Dice {scores['dice']:.3f} "
                        f"HD95 {scores['hd95']:.1f} mm ({seconds:.0f} s)")
    header = (f"Small-sample fine-tuning, BraTS 2015 (2 channels) -> BraTS 2018 (4 channels), "
              f"{'--quick: ' if quick else ''}{spacing:g} mm, patch {'x'.join(map(str, patch))}, pretraining "
              f"{pre_epochs} x {iterations} steps, each cell {epochs} x {iterations} steps of batch 2 (SGD, poly, "
              f"Dice + CE); lesion-balanced training cases; Dice and HD95 of WT/TC/ET on {HELD_OUT} held-out cases"
              + (" (a CPU demonstration: the numbers are not results)" if quick else "") + ".")
    csv_path, md_path = write_tables(rows, out, header=header)
    print(md_path.read_text(encoding="utf-8"))
    log(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
