"""BraTS -> MRBrainS18 2-D transfer: the published freeze comparison (from scratch vs three fine-tunings).

Protocol reproduced
-------------------
A 2-D U-Net is pretrained on BraTS (4 channels T1, T1c, T2, FLAIR; tumour labels) and specialised on
MRBrainS18 (3 channels T1, FLAIR, IR; tissue classes 0-10) with four strategies under an equal
budget (same epochs x iterations x batch):

- ``scratch``: the same architecture trained from random weights on the target;
- ``freeze encoder``: the whole encoder and the bottleneck frozen;
- ``freeze first3``: encoder stages 0-2 frozen;
- ``fine-tune all``: nothing frozen.

Settings of every strategy: Dice + cross-entropy (0.5 / 0.5), SGD lr 0.1, momentum 0.99
(Nesterov), polynomial decay, z-score normalisation, patch 192 x 160, batch 2 (the pretraining uses
the same except lr 0.01, nnU-Net's, as the protocol fixes only the fine-tuning). The
score is the mean Dice over the target's labels present in the evaluation reference, excluding a
chosen rare label (``--exclude-label``, default "white matter lesions"), computed on the original
grid of the evaluation data with the final weights (``last.pt``: no model selection on it) and no
post-processing.

Data here (``../shared/data``). The MRBrainS18-layout folder holds ONE subject (a real T1 with
simulated IR and FLAIR contrasts and automated labels), so that comparison is a *demonstration of
the protocol*: the volume is cut into its lower and upper half along the slice axis (24 + 24 axial
slices, geometry kept); the model trains on the lower half and is evaluated on the upper half.
The same comparison also runs on the 2-channel BraTS 2015 cases (FLAIR, T1c; 4 cases: fine-tune on
3, evaluate on 1), where the numbers mean more: there the target keeps the tumour labels and the
input layer goes from 4 to 2 channels.

``--quick`` (a few minutes on a 2-core CPU) runs on copies resampled to 2 mm in-plane (and 2 mm
between BraTS slices) with the patch halved to 96 x 80 (the same field of view), a narrower network
(8 base features) and a handful of steps: it checks that the protocol runs, its numbers are not
results. Without ``--quick`` the protocol's resolution and patch are used (a GPU run).

Writes ``results.csv`` and ``results.md`` (one table per target) to the output folder (``-o``,
default a temporary folder), plus every run folder.

Usage::

    python examples/transfer_brats_to_mrbrains.py --quick -o /tmp/transfer
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data"
STRATEGIES = (("scratch", None), ("freeze encoder", "encoder"), ("freeze first3", "first3"), ("fine-tune all", "none"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder [../shared/data]")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder [a new temporary folder]")
    parser.add_argument("--quick", action="store_true", help="2 mm copies, narrow network, few steps (minutes on a CPU)")
    parser.add_argument("--exclude-label", default="white matter lesions",
                        help="label left out of the MRBrainS18 mean Dice [white matter lesions]")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs [quick 10, full 50]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each strategy [quick 5, full 25]")
    parser.add_argument("--iterations", type=int, default=None, help="steps per epoch [quick 20, full 50]")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of every strategy (protocol) [0.1]")
    parser.add_argument("--pretrain-lr", type=float, default=0.01, help="SGD learning rate of the pretraining [0.01]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------- data
def link_tree(src: Path, dst: Path) -> Path:
    """Symbolic links to the files under ``src`` (the shared data stay read-only and uncopied)."""
    for f in sorted(src.rglob("*")):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(f, target)
    return dst


def convert_sources(data: Path, out: Path, *, brats18_cases: int | None) -> dict[str, Path]:
    """BraTS 2018, BraTS 2015 and the MRBrainS18-layout subject in the dataset layout."""
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset

    b18 = data / "brats2018_deepbrainseg"
    cases = sorted(p.name for p in b18.iterdir() if p.is_dir())[:brats18_cases]
    for case in cases:
        link_tree(b18 / case, out / "src" / "brats2018" / case)
    paths = {"brats2018": out / "brats2018", "brats2015": out / "brats2015", "mrbrains18": out / "mrbrains18"}
    convert_dataset(config=ConvertConfig(source="brats", input=out / "src" / "brats2018", output=paths["brats2018"],
                                         overwrite=True))
    convert_dataset(config=ConvertConfig(
        source="nifti", input=data / "brats2015_deepmedic", output=paths["brats2015"], overwrite=True,
        channel_patterns=(("FLAIR", "**/Flair*.nii.gz"), ("T1c", "**/T1c*.nii.gz")),
        label_pattern="**/OTMultiClass.nii.gz", label_map="brats2015"))
    convert_dataset(config=ConvertConfig(source="mrbrains18", input=data / "mrbrains18_from_voxelmorph",
                                         output=paths["mrbrains18"], overwrite=True))
    return paths


def _write_case(out: Path, case: str, image, label) -> None:
    from brainseg_cli.io import Image, write_image

    for c in range(image.array.shape[0]):
        write_image(Image(image.array[c], image.spacing, image.origin, image.direction),
                    out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
    write_image(label, out / "labelsTr" / f"{case}.nii.gz")


def resample_dataset(src: Path, dst: Path, *, spacing_at_least: tuple[float, float, float]) -> Path:
    """A copy of a dataset whose every axis is at least ``spacing_at_least`` mm (linear images,
    nearest labels; the box keeps its extent, so voxel centres move by half the spacing change)."""
    from brainseg_cli.data.layout import load_dataset, read_case, write_dataset_json
    from brainseg_cli.data.resampling import compute_new_shape, resample_images, resample_labels
    from brainseg_cli.io import Image

    info = load_dataset(src)
    for case in info.training_cases:
        image, label = read_case(info, case)
        new_spacing = tuple(max(s, t) for s, t in zip(image.spacing, spacing_at_least))
        shape = compute_new_shape(image.array.shape[1:], image.spacing, new_spacing)
        exact = tuple(s * n / m for s, n, m in zip(image.spacing, image.array.shape[1:], shape))
        shift = np.asarray(image.direction) @ ((np.asarray(exact) - np.asarray(image.spacing)) / 2.0)
        origin = tuple(np.asarray(image.origin) + shift)
        data = resample_images(image.array, shape, order=1)
        labels = resample_labels(label.array, shape).astype(np.uint8)
        _write_case(dst, case, Image(data, exact, origin, image.direction), Image(labels, exact, origin, image.direction))
    write_dataset_json(dst, channels=info.channels, labels=info.labels, num_training=len(info.training_cases),
                       brainseg={**info.extra, "resampled_from": str(src)})
    return dst


def split_into_halves(src: Path, case: str, dst: Path) -> Path:
    """A dataset of the lower and upper half of one case along its coarsest axis (geometry kept)."""
    from brainseg_cli.data.layout import load_dataset, read_case, write_dataset_json
    from brainseg_cli.io import Image

    info = load_dataset(src)
    image, label = read_case(info, case)
    axis = int(np.argmax(image.spacing))
    n = image.array.shape[1 + axis] // 2
    for part, (start, stop) in {"lower": (0, n), "upper": (n, image.array.shape[1 + axis])}.items():
        cut = [slice(None)] * 3
        cut[axis] = slice(start, stop)
        origin = tuple(np.asarray(image.origin) + np.asarray(image.direction)[:, axis] * image.spacing[axis] * start)
        _write_case(dst, f"{case}_{part}", Image(image.array[(slice(None), *cut)], image.spacing, origin, image.direction),
                    Image(label.array[tuple(cut)], label.spacing, origin, label.direction))
    write_dataset_json(dst, channels=info.channels, labels=info.labels, num_training=2,
                       brainseg={**info.extra, "halves_of": f"{src} case {case} along axis {axis}"})
    return dst


# ------------------------------------------------------------------------------------- scoring
def mean_dice(checkpoint: Path, dataset: Path, cases: list[str], *, exclude: str | None,
              device: str) -> tuple[float, dict[str, float]]:
    """Mean Dice over the cases (labels present in each reference, ``exclude`` left out), per-label means."""
    from brainseg_cli.data.layout import load_dataset, read_case
    from brainseg_cli.inference.predictor import Predictor
    from brainseg_cli.metrics import dice_per_label

    info = load_dataset(dataset)
    predictor = Predictor.from_checkpoints([checkpoint], device=device)
    per_label: dict[str, list[float]] = {}
    means = []
    for case in cases:
        image, label = read_case(info, case)
        pred = predictor.predict(image, case=case, lcc="off")[0]
        ref = label.array
        scored = {name: v for name, v in info.labels.items()
                  if v != 0 and name != exclude and np.any(ref == v)}
        dice = dice_per_label(pred, ref, scored.values())
        for name, v in scored.items():
            per_label.setdefault(name, []).append(dice[v])
        means.append(float(np.mean([dice[v] for v in scored.values()])))
    return float(np.mean(means)), {k: float(np.mean(v)) for k, v in per_label.items()}


# ------------------------------------------------------------------------------------- runs
def held_out_fold(dataset: Path, case: str) -> int:
    """The fold (of two) whose validation case is ``case``."""
    from brainseg_cli.data.layout import load_dataset
    from brainseg_cli.training.splits import kfold_splits

    cases = list(load_dataset(dataset).training_cases)
    return next(k for k, (_, val) in enumerate(kfold_splits(cases, folds=2)) if val == [case])


def compare(name: str, *, checkpoint: Path, target: Path, out: Path, train_config, plan_overrides: dict,
            exclude: str | None, device: str, log) -> list[dict]:
    """The four strategies on one target; one result row each."""
    from brainseg_cli.checkpoint import load_checkpoint
    from brainseg_cli.training.finetune import FinetuneConfig, finetune
    from brainseg_cli.training.pretrain import pretrain

    source = load_checkpoint(checkpoint)
    kwargs = {k: v for k, v in source["model"]["config"].items() if k not in ("spatial_dims", "in_channels", "num_classes")}
    rows = []
    for label, freeze in STRATEGIES:
        run = out / f"{name}-{label}".replace(" ", "-")
        start = time.perf_counter()
        if freeze is None:
            result = pretrain(dataset_dir=target, run_dir=run, train_config=train_config,
                              plan_overrides={**plan_overrides, "config": "2d", "model_config": kwargs,
                                              "normalization": "zscore"})
        else:
            result = finetune(dataset_dir=target, run_dir=run, train_config=train_config,
                              finetune_config=FinetuneConfig(checkpoint=checkpoint, freeze=freeze),
                              plan_overrides=plan_overrides)
        seconds = time.perf_counter() - start
        last = load_checkpoint(result.last_checkpoint)
        held_out = list(last["training"]["val_cases"])
        score, per_label = mean_dice(result.last_checkpoint, target, held_out, exclude=exclude, device=device)
        transfer = last["training"].get("transfer")
        if transfer:
            trainable = transfer["parameters"]["trainable"]
        else:  # scratch: every parameter trains
            from brainseg_cli.checkpoint import build_model_from_checkpoint

            trainable = sum(p.numel() for p in build_model_from_checkpoint(last).parameters())
        rows.append({"target": name, "strategy": label, "mean_dice": round(score, 4), "evaluated_on": " ".join(held_out),
                     "trainable_parameters": trainable, "seconds": round(seconds, 1),
                     **{f"dice {k}": round(v, 4) for k, v in per_label.items()}})
        log(f"{name:<12} {label:<15} mean Dice {score:.4f}  ({seconds:.0f} s)")
    return rows


def write_tables(rows: list[dict], out: Path, *, header: str) -> tuple[Path, Path]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = [header, ""]
    for target in dict.fromkeys(r["target"] for r in rows):
        part = [r for r in rows if r["target"] == target]
        labels = [c for c in columns if c.startswith("dice ") and any(c in r for r in part)]
        lines += [f"### {target}", "", "| strategy | mean Dice | " + " | ".join(c[5:] for c in labels)
                  + " | trainable params | seconds |", "|---" * (len(labels) + 4) + "|"]
        for r in part:
            cells = [f"{r[c]:.3f}" if c in r else "" for c in labels]
            lines.append(f"| {r['strategy']} | {r['mean_dice']:.3f} | " + " | ".join(cells)
                         + f" | {r['trainable_parameters']:,} | {r['seconds']:.0f} |")
        lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from brainseg_cli.training.config import TrainConfig
    from brainseg_cli.training.pretrain import pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = args.data.resolve()
    if not data.is_dir():
        print(f"error: data folder {data} not found (give --data)", file=sys.stderr)
        return 1
    out = args.output or Path(tempfile.mkdtemp(prefix="brainseg-transfer-"))
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    pre_epochs = args.pretrain_epochs or (10 if quick else 50)
    epochs = args.epochs or (5 if quick else 25)
    iterations = args.iterations or (20 if quick else 50)
    patch = [96, 80] if quick else [192, 160]
    width = {"base_features": 8} if quick else {}
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    log(f"output folder {out}")
    paths = convert_sources(data, out / "datasets", brats18_cases=4 if quick else None)
    if quick:
        paths = {name: resample_dataset(path, out / "datasets" / f"{name}-2mm", spacing_at_least=(2.0, 2.0, 2.0))
                 for name, path in paths.items()}
    halves = split_into_halves(paths["mrbrains18"], "1", out / "datasets" / "mrbrains18-halves")
    log("datasets converted" + (" and resampled to 2 mm" if quick else ""))

    settings = {"loss": "dice-ce", "optimizer": "sgd", "schedule": "poly", "device": args.device, "seed": args.seed,
                "workers": 0}
    source_run = out / "pretrain-brats2018"
    pretrained = pretrain(dataset_dir=paths["brats2018"], run_dir=source_run,
                          train_config=TrainConfig(epochs=pre_epochs, iterations_per_epoch=iterations, val_cases=1,
                                                   val_every=pre_epochs, lr=args.pretrain_lr, **settings),
                          plan_overrides={"config": "2d", "patch_size": patch, "batch_size": 2,
                                          "normalization": "zscore", "model_config": width})
    log(f"pretrained on BraTS 2018: validation Dice {pretrained.best_val_dice:.3f}")

    budget = {"epochs": epochs, "iterations_per_epoch": iterations, "val_every": epochs, "lr": args.lr, **settings}
    plan = {"patch_size": patch, "batch_size": 2}
    rows = compare("MRBrainS18", checkpoint=pretrained.last_checkpoint, target=halves, out=out, plan_overrides=plan,
                   train_config=TrainConfig(fold=held_out_fold(halves, "1_upper"), folds=2, **budget),
                   exclude=args.exclude_label, device=args.device, log=log)
    rows += compare("BraTS 2015", checkpoint=pretrained.last_checkpoint, target=paths["brats2015"], out=out,
                    plan_overrides=plan, train_config=TrainConfig(val_cases=1, **budget), exclude=None,
                    device=args.device, log=log)
    mode = ("--quick: 2 mm copies, 96 x 80 patches, 8 base features" if quick
            else "protocol resolution, 192 x 160 patches")
    header = (f"BraTS 2018 -> target, 2-D U-Net ({mode}); pretraining {pre_epochs} x {iterations} steps "
              f"(lr {args.pretrain_lr:g}), each "
              f"strategy {epochs} x {iterations} steps of batch 2; SGD lr {args.lr:g}, momentum 0.99, poly; "
              f"Dice + CE. MRBrainS18: ONE subject, trained on its lower half, scored on its upper half "
              f"(a demonstration of the protocol), mean Dice without '{args.exclude_label}'. BraTS 2015: "
              "fine-tuned on 3 cases, scored on 1.")
    csv_path, md_path = write_tables(rows, out, header=header)
    print(md_path.read_text(encoding="utf-8"))
    log(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
