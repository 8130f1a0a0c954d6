"""Plain MONAI baseline, measured: a 2-D U-Net trained for a fixed CPU budget on the same BraTS 2018 split.

The "plain MONAI baseline at equal budget" of issue #5, run on the same machine, the same 9 real
BraTS 2018 cases of ``../shared/data/brats2018_deepbrainseg`` (read in place with nibabel, never
copied) and the same split as ``brats_cpu_20min.py`` (its ``CASES`` / ``HELD_OUT`` are imported,
and ``--held-out`` works the same way), so that its scores can be set beside ``brainseg``'s. No
``brainseg`` code trains or predicts here; only the project's metric functions score.

1. Preprocessing (before the clock starts, not counted in the budget): per case the 4 modalities
   are stacked in the order flair, t1, t1ce, t2 -> ``(4, 240, 240, 155)`` float32, each channel
   z-scored over its own non-zero voxels (background stays 0); the case is cropped to the bounding
   box of its non-zero voxels (union over the channels) along the axial axis, and in-plane to a
   fixed ``SIZE`` x ``SIZE`` window (192 x 192 by default, ``--size``) centred on that bounding box
   and shifted to lie inside the image. This equals cropping to the bounding box and zero-padding to
   192 x 192 (everything outside the box is 0), or centre-cropping a box that is larger than 192
   (the bounding box of each case is written in the results). Labels 0, 1, 2, 4 -> 0, 1, 2, 3.
2. Model: ``monai.networks.nets.UNet(spatial_dims=2, in_channels=4, out_channels=4,
   channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2, norm="instance")``,
   the defaults of MONAI's BraTS tutorials carried over to 2-D; loss ``DiceCELoss(to_onehot_y=True,
   softmax=True)`` (softmax over background, necrosis/non-enhancing, oedema, enhancing); optimiser
   ``Adam(lr=1e-4, weight_decay=1e-5)``, no scheduler; fp32; torch's default thread count (not
   changed here).
3. Sampling: every batch (``--batch-size``, default 8) draws axial slices with replacement from all
   the slices of all the training cases, a slice with probability proportional to
   ``1 + w * (it holds a tumour voxel)``, ``w = max(0, n_empty / n_tumour - 1)`` counted over the
   pooled training slices, so that in expectation exactly half of the sampled slices hold tumour
   (when fewer than half do in the data). Each sampled slice is flipped along each in-plane axis with
   probability 0.5 (image and label alike). ``monai.utils.set_determinism(seed)`` seeds torch, and a
   ``numpy.random.Generator(seed)`` draws the slices and flips.
4. Training: on ALL the non-held-out cases (7 by default), no validation case, the final weights are
   used. This is generous to the baseline: it trains on one case more than ``brainseg``, which
   validates on one of its 7. The loop starts a new step while less than ``--minutes`` of wall clock
   have passed since the first (the clock is read after every step); default 20.
5. Prediction: every axial slice of each held-out case's crop (batches of slices, eval mode,
   ``torch.no_grad()``), argmax, pasted back into the full 240 x 240 x 155 grid (0 outside the
   crop), 3 -> 4. No test-time augmentation, no post-processing.
6. Scores: WT = {1, 2, 4}, TC = {1, 4}, ET = {4} Dice with ``brainseg_cli.metrics.overlap.dice`` and
   HD95 with ``brainseg_cli.metrics.surface.surface_distances(...).hd95("max")`` (empty masks:
   ``brainseg_cli.metrics.empty.empty_distance_value``, BraTS policy), the code behind
   ``brainseg evaluate --regions brats --metrics dice hd95``, so the numbers are comparable with
   ``brats_cpu_20min.py``'s.
7. ``OUT/seed_N/results.md`` and ``results.json`` per seed (and ``OUT/summary.md`` with several).

    python benchmarks/monai_baseline_20min.py [--minutes 20] [--batch-size 8] [--size 192]
        [--seeds N [N ...]] [--held-out CASE [CASE ...]] [--data DIR] [-o OUT]

As with ``brats_cpu_20min.py``, one run says little; compare means over several seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brats_cpu_20min import BASELINES, CASES, DATA, HELD_OUT, REGIONS, REPO, fmt, load, score_rows, split_cases  # noqa: E402

sys.path.insert(0, str(REPO))

MODALITIES = ("flair", "t1", "t1ce", "t2")
#: Region -> BraTS label values.
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
#: Network class index -> BraTS label value.
CLASS_TO_LABEL = np.array([0, 1, 2, 4], dtype=np.uint8)
DEFAULT_SIZE = 192
DEFAULT_BATCH = 8
LR = 1e-4
WEIGHT_DECAY = 1e-5
#: Slices per forward pass when predicting.
PREDICT_BATCH = 16
MODEL_TEXT = ('monai.networks.nets.UNet(spatial_dims=2, in_channels=4, out_channels=4, channels=(32, 64, 128, 256, 512), '
              'strides=(2, 2, 2, 2), num_res_units=2, norm="instance")')


def load_case(data: Path, case: str, size: int) -> dict:
    """Read, normalise and crop one case (see the module docstring, step 1)."""
    import nibabel as nib

    folder = data / case
    channels = []
    for m in MODALITIES:
        x = np.asarray(nib.load(str(folder / f"{case}_{m}.nii.gz")).dataobj, dtype=np.float32)
        nz = x != 0
        if nz.any():
            v = x[nz]
            x = np.where(nz, (x - v.mean()) / max(float(v.std()), 1e-8), 0.0).astype(np.float32)
        channels.append(x)
    image = np.stack(channels)  # (4, X, Y, Z)
    seg_img = nib.load(str(folder / f"{case}_seg.nii.gz"))
    seg = np.asarray(seg_img.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in seg_img.header.get_zooms()[:3])
    if set(np.unique(seg).tolist()) - {0, 1, 2, 4}:
        sys.exit(f"error: {case}: labels {sorted(np.unique(seg).tolist())} are not a subset of 0, 1, 2, 4")
    shape = seg.shape
    if image.shape[1:] != shape:
        sys.exit(f"error: {case}: image shape {image.shape[1:]} differs from label shape {shape}")
    if min(shape[:2]) < size:
        sys.exit(f"error: {case}: in-plane size {shape[:2]} is smaller than --size {size}")
    nonzero = np.any(image != 0, axis=0)
    coords = np.argwhere(nonzero)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    window = []
    for axis in (0, 1):
        centre = (int(lo[axis]) + int(hi[axis])) // 2
        start = min(max(centre - size // 2, 0), shape[axis] - size)
        window.append((start, start + size))
    window.append((int(lo[2]), int(hi[2])))
    box = tuple(slice(a, b) for a, b in window)
    labels = seg[box].copy()
    labels[labels == 4] = 3
    return {
        "case": case, "image": np.ascontiguousarray(image[(slice(None),) + box]), "labels": labels,
        "seg": seg, "shape": shape, "spacing": spacing, "window": window,
        "bbox": [[int(a), int(b)] for a, b in zip(lo, hi)],
    }


def build_model():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=4, out_channels=4, channels=(32, 64, 128, 256, 512),
                strides=(2, 2, 2, 2), num_res_units=2, norm="instance")


def slice_table(train: list[dict]) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(case index, slice index) of every training slice, their sampling probabilities, w, tumour share."""
    index, tumour = [], []
    for ci, c in enumerate(train):
        has = np.any(c["labels"] > 0, axis=(0, 1))
        index += [(ci, z) for z in range(c["labels"].shape[2])]
        tumour += has.tolist()
    tumour_arr = np.asarray(tumour, dtype=bool)
    n_t, n_e = int(tumour_arr.sum()), int((~tumour_arr).sum())
    w = max(0.0, n_e / n_t - 1.0) if n_t else 0.0
    p = 1.0 + w * tumour_arr
    p /= p.sum()
    return np.asarray(index), p, w, float(p[tumour_arr].sum())


def train(args: argparse.Namespace, seed: int, cases: list[dict]) -> dict:
    """Train a fresh model for ``args.minutes``; return it with the training record."""
    import torch
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    rng = np.random.default_rng(seed)
    model = build_model()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    index, p, w, share = slice_table(cases)
    budget = args.minutes * 60.0
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget:
        picks = index[rng.choice(len(index), size=args.batch_size, p=p)]
        xs, ys = [], []
        for ci, z in picks:
            x, y = cases[ci]["image"][:, :, :, z], cases[ci]["labels"][:, :, z]
            if rng.random() < 0.5:
                x, y = x[:, ::-1, :], y[::-1, :]
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        xb = torch.from_numpy(np.stack(xs))
        yb = torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.item()))
        if len(losses) % 50 == 0:
            print(f"    step {len(losses)}: loss {np.mean(losses[-50:]):.4f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    return {"model": model, "steps": len(losses), "seconds": seconds, "losses": losses, "w": w,
            "tumour_share": share, "n_slices": len(index)}


def predict(model, case: dict) -> np.ndarray:
    """Labels 0, 1, 2, 4 of one case in its full grid (0 outside the crop)."""
    import torch

    model.eval()
    image = case["image"]
    depth = image.shape[3]
    classes = np.zeros(image.shape[1:], dtype=np.uint8)
    with torch.no_grad():
        for z0 in range(0, depth, PREDICT_BATCH):
            z1 = min(z0 + PREDICT_BATCH, depth)
            xb = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image[:, :, :, z0:z1], 3, 0)))
            classes[:, :, z0:z1] = np.moveaxis(model(xb).argmax(dim=1).numpy().astype(np.uint8), 0, 2)
    full = np.zeros(case["shape"], dtype=np.uint8)
    full[tuple(slice(a, b) for a, b in case["window"])] = CLASS_TO_LABEL[classes]
    return full


def score(pred: np.ndarray, case: dict) -> dict[str, dict[str, float]]:
    """region -> {"dice", "hd95"} with the project's metric functions (BraTS empty policy, HD95 ``max``)."""
    from brainseg_cli.metrics.empty import empty_distance_value, image_diagonal
    from brainseg_cli.metrics.overlap import dice
    from brainseg_cli.metrics.surface import surface_distances

    out = {}
    diagonal = image_diagonal(case["shape"], case["spacing"])
    for region in REGIONS:
        p = np.isin(pred, REGION_LABELS[region])
        g = np.isin(case["seg"], REGION_LABELS[region])
        d = surface_distances(p, g, spacing=case["spacing"]) if p.any() and g.any() else None
        hd95 = (d.hd95("max") if d is not None else
                empty_distance_value(policy="brats", ref_empty=not g.any(), pred_empty=not p.any(), diagonal=diagonal))
        out[region] = {"dice": float(dice(p, g)), "hd95": float(hd95)}
    return out


def run_once(args: argparse.Namespace, seed: int, out: Path, train_cases: list[dict], held: list[dict],
             prep: dict) -> dict:
    import torch

    load_start = load()
    t_start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: training for {args.minutes:g} min", flush=True)
    t = train(args, seed, train_cases)
    t_pred = time.perf_counter()
    scores = {}
    for c in held:
        scores[c["case"]] = score(predict(t["model"], c), c)
    predict_seconds = time.perf_counter() - t_pred
    load_end = load()
    total = time.perf_counter() - t_start
    names = sorted(scores)
    mean = {r: {m: sum(scores[c][r][m] for c in names) / len(names) for m in ("dice", "hd95")} for r in REGIONS}
    s_per_step = t["seconds"] / max(t["steps"], 1)
    last = t["losses"][-50:]
    record = {
        "command": args.command, "seed": seed, "minutes": args.minutes, "train_cases": list(args.train),
        "held_out": list(args.held_out), "model": MODEL_TEXT, "loss": "DiceCELoss(to_onehot_y=True, softmax=True)",
        "optimiser": f"Adam(lr={LR:g}, weight_decay={WEIGHT_DECAY:g}), no scheduler", "batch_size": args.batch_size,
        "crop_in_plane": args.size, "modalities": list(MODALITIES), "torch_threads": torch.get_num_threads(),
        "sampling": {"rule": "p(slice) ~ 1 + w * (slice holds tumour), w = max(0, n_empty / n_tumour - 1)",
                     "w": t["w"], "expected_tumour_share": t["tumour_share"], "training_slices": t["n_slices"]},
        "steps": t["steps"], "train_seconds": t["seconds"], "seconds_per_step": s_per_step,
        "final_loss_mean_last_50": float(np.mean(last)) if last else math.nan,
        "predict_seconds": predict_seconds, "preprocess_seconds": prep["seconds"], "total_seconds": total,
        "load_start": list(load_start), "load_end": list(load_end), "load_before_preprocessing": list(prep["load"]),
        "cpu_count": os.cpu_count(), "bboxes": {c["case"]: c["bbox"] for c in train_cases + held},
        "scores": scores, "mean": mean,
        "hd95": "mm, max of the two directed 95th percentiles (MONAI's); BraTS empty policy",
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")

    lines = [
        f"# Plain MONAI 2-D U-Net baseline, BraTS 2018, {args.minutes:g}-minute CPU budget (seed {seed})",
        "",
        f"Trained on {len(args.train)} cases ({', '.join(args.train)}), no validation case, final weights. "
        f"Held out: {', '.join(args.held_out)}.",
        "",
        f"What it is: the plain baseline of issue #5, MONAI-tutorial style: `{MODEL_TEXT}` (MONAI's BraTS-tutorial "
        f"defaults in 2-D), `DiceCELoss(to_onehot_y=True, softmax=True)` over 4 classes, Adam lr {LR:g}, weight "
        f"decay {WEIGHT_DECAY:g}, no scheduler, fp32, batch {args.batch_size} axial slices of {args.size} x "
        f"{args.size} (bounding box of the non-zero voxels, window centred on it), flair/t1/t1ce/t2 z-scored over "
        "non-zero voxels, random flips of both in-plane axes (p 0.5 each); no TTA, no post-processing. It trains "
        "on one case more than `brainseg` (which validates on one of its 7): generous to the baseline.",
        "",
        f"Sampling: p(slice) ~ 1 + w * (slice holds tumour), w = max(0, n_empty / n_tumour - 1) = {t['w']:.3f} over "
        f"{t['n_slices']} training slices: expected share of tumour slices {t['tumour_share']:.2f}.",
        "",
        f"**{t['steps']} training steps** in {t['seconds']:.1f} s (**{s_per_step:.2f} s/step**); mean loss of the "
        f"last {len(last)} steps {fmt(record['final_loss_mean_last_50'], 4)}. Preprocessing (not in the budget) "
        f"{prep['seconds']:.1f} s; prediction + scoring {predict_seconds:.1f} s; torch threads "
        f"{torch.get_num_threads()} (torch's default, not changed).",
        "",
        *score_rows(scores, mean, names),
    ]
    for name, (wt, tc, et) in BASELINES.items():
        lines.append(f"| {name} (issue #5, other cases) | {wt:.2f} | {tc:.2f} | {et:.2f} | | | |")
    lines += [
        "",
        "Dice and HD95 with `brainseg_cli.metrics` (the code of `brainseg evaluate --regions brats --metrics dice "
        "hd95`): HD95 in mm (`max` definition, MONAI's); BraTS empty policy (an empty prediction of a non-empty "
        "region scores Dice 0, HD95 = image diagonal).",
        "",
        f"Load average (1, 5, 15 min) before preprocessing {prep['load']}, at start of training {load_start}, at end "
        f"{load_end}, on {os.cpu_count()} cores ({platform.processor() or platform.machine()}; shared with other work).",
        "",
        "Bounding boxes of the non-zero voxels ([start, stop) per axis): "
        + "; ".join(f"{c['case']} {c['bbox']}" for c in train_cases + held) + ".",
        "",
        "Command:",
        "",
        "```",
        args.command,
        "```",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    print(f"seed {seed}: {t['steps']} steps, {s_per_step:.2f} s/step, held-out mean Dice WT {fmt(mean['WT']['dice'])} "
          f"TC {fmt(mean['TC']['dice'])} ET {fmt(mean['ET']['dice'])}; {out / 'results.md'}", flush=True)
    return scores


def write_summary(out: Path, args: argparse.Namespace, runs: dict[int, dict]) -> None:
    def mean_dice(table: dict, region: str) -> float:
        return sum(table[c][region]["dice"] for c in table) / len(table)

    lines = [f"# Plain MONAI 2-D U-Net baseline, {args.minutes:g}-minute CPU budget, {len(runs)} seeds", "",
             "Mean Dice over the held-out cases; `seed_N/results.md` has the details.", "",
             "| seed | WT | TC | ET |", "|---|---|---|---|"]
    for seed, table in runs.items():
        lines.append(f"| {seed} | " + " | ".join(fmt(mean_dice(table, r)) for r in REGIONS) + " |")
    lines.append("| **mean** | " + " | ".join(
        f"**{fmt(sum(mean_dice(t, r) for t in runs.values()) / len(runs))}**" for r in REGIONS) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget in minutes of wall clock")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: a new temp folder)")
    parser.add_argument("--data", type=Path, default=DATA, help="the brats2018_deepbrainseg folder")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"slices per step (default {DEFAULT_BATCH})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"in-plane crop, a multiple of 16 (default {DEFAULT_SIZE})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="N",
                        help="one run per seed, in OUT/seed_N (default 0); with several, their mean in OUT/summary.md")
    parser.add_argument("--held-out", nargs="+", default=list(HELD_OUT), metavar="CASE",
                        help="held-out cases (default: the fixed split of brats_cpu_20min.py); the other cases of the 9 train")
    args = parser.parse_args()
    args.held_out, args.train = split_cases(args.held_out)
    if len(args.seeds) != len(set(args.seeds)):
        sys.exit(f"error: --seeds repeats a seed: {args.seeds}")
    if not args.minutes > 0:
        sys.exit(f"error: --minutes must be positive, got {args.minutes:g}")
    if args.batch_size < 1:
        sys.exit(f"error: --batch-size must be at least 1, got {args.batch_size}")
    if args.size < 16 or args.size % 16:
        sys.exit(f"error: --size must be a positive multiple of 16, got {args.size}")
    missing = [c for c in CASES if not (args.data / c).is_dir()]
    if missing:
        sys.exit(f"error: case folders missing in {args.data.resolve()}: {', '.join(missing)}")
    args.command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/monai_baseline_20min.py"] + sys.argv[1:])
    if args.output is not None and args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        sys.exit(f"error: output folder {args.output.resolve()} is not empty")

    out = args.output or Path(tempfile.mkdtemp(prefix="monai_baseline_"))
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    print(f"output folder: {out}", flush=True)
    print(f"training cases: {', '.join(args.train)}\nheld-out cases: {', '.join(args.held_out)}", flush=True)

    prep_load = load()
    t0 = time.perf_counter()
    train_cases = [load_case(args.data, c, args.size) for c in args.train]
    held = [load_case(args.data, c, args.size) for c in args.held_out]
    prep = {"seconds": time.perf_counter() - t0, "load": prep_load}
    print(f"preprocessed {len(train_cases) + len(held)} cases in {prep['seconds']:.1f} s (crop {args.size} x "
          f"{args.size} in-plane)", flush=True)
    for c in train_cases + held:
        over = [hi - lo for lo, hi in c["bbox"][:2] if hi - lo > args.size]
        if over:
            print(f"    note: {c['case']}: bounding box {c['bbox']} is wider than {args.size}: centre-cropped", flush=True)

    runs = {}
    for seed in args.seeds:
        (out / f"seed_{seed}").mkdir()
        runs[seed] = run_once(args, seed, out / f"seed_{seed}", train_cases, held, prep)
    if len(runs) > 1:
        write_summary(out, args, runs)
        print(f"summary: {out / 'summary.md'}")


if __name__ == "__main__":
    main()
