"""Benchmark: ``brainseg evaluate``'s per-case metrics against MONAI and medpy, one BraTS case, one core.

Task (issue #8): starting from the two label arrays in memory (a real BraTS 2018 reference in
canonical labels and a realistic wrong prediction), produce Dice and HD95 for the 3 labels and the
3 BraTS regions (WT, TC, ET).

- brainseg: ``evaluate_case(pred, ref, spacing=..., labels=..., regions=BRATS_REGIONS, config)``.
- MONAI, the way its users do it: one-hot the labels (``monai.networks.utils.one_hot``), build the
  region channels, then ``DiceMetric(ignore_empty=False)`` and
  ``HausdorffDistanceMetric(percentile=95)`` on labels (background excluded) and regions.
- medpy: per structure, build the masks, then ``dc`` and ``hd95``.

Everything runs in this one process with one thread (torch and BLAS limited to 1). Times are CPU
seconds of this process (``time.process_time``): the development machine is shared, and for
single-threaded code CPU time is the clock that other processes disturb least. Prints, per kind of
prediction, the median time of each tool, the ratio MONAI / brainseg, and the largest difference
of the values (HD95 against MONAI's float32 result). Then times :func:`evaluate_folders` (wall
clock, median of ``--repeats``) over all cases of the data folder with 1 and ``--workers`` processes.

Run: ``python benchmarks/bench_metrics.py [--case Brats18_2013_20_1] [--repeats 5] [--workers 2]``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "brats2018_deepbrainseg"
TO_CANONICAL = np.zeros(256, dtype=np.uint8)
TO_CANONICAL[[1, 2, 4]] = [2, 1, 3]  # BraTS 2017-2021 -> canonical (docs/DEFINITIONS.md §2)
LABELS = {"edema": 1, "core": 2, "enhancing": 3}


def predictions(ref: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic wrong predictions of a canonical label map (same memory layout as ``ref``)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = {}
    eroded = np.zeros_like(ref)
    for v in (1, 2, 3):
        eroded[ndimage.binary_erosion(ref == v)] = v
    out["eroded"] = eroded
    dilated = ref.copy()
    dilated[(ref == 0) & ndimage.binary_dilation(ref > 0)] = 1
    out["dilated"] = dilated
    out["shifted 1"] = np.roll(ref, (1, -1, 0), axis=(0, 1, 2))
    out["shifted 3"] = np.roll(ref, (3, 0, 1), axis=(0, 1, 2))
    mixed = ref.copy()
    fg = ref > 0
    band = ndimage.binary_dilation(fg) & ~ndimage.binary_erosion(fg)
    flip = band & (rng.random(ref.shape) < 0.3)
    mixed[flip & fg] = 0
    mixed[flip & ~fg] = 1
    mixed[ref == 3] = 2
    mixed[np.roll(ref == 3, 1, axis=1)] = 3
    for v in (1, 2, 3):  # false-positive islands
        x, y, z = (int(rng.integers(20, n - 20)) for n in ref.shape)
        mixed[x:x + 4, y:y + 4, z:z + 3] = v
    out["mixed + islands"] = mixed
    return {k: np.asfortranarray(v) if ref.flags.f_contiguous else v for k, v in out.items()}


def timed(fn, repeats: int, clock=time.process_time):
    times, result = [], None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        times.append(clock() - t0)
    return statistics.median(times), result


def ours(pred, ref, spacing):
    from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_case
    from brainseg_cli.metrics.regions import BRATS_REGIONS

    rows = evaluate_case(pred, ref, spacing=spacing, labels=LABELS, regions=BRATS_REGIONS,
                         config=EvaluateConfig(metrics=("dice", "hd95")))
    return [r["dice"] for r in rows], [r["hd95"] for r in rows]


def monai(pred, ref, spacing):
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    def channels(labels):
        onehot = one_hot(torch.as_tensor(labels.astype(np.int64))[None, None], num_classes=4)
        regions = torch.stack([onehot[:, 1:].sum(1), onehot[:, 2:].sum(1), onehot[:, 3]], dim=1).clamp(max=1)
        return onehot, regions

    (p_lab, p_reg), (g_lab, g_reg) = channels(pred), channels(ref)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    dice_r = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    hd_r = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = torch.cat([dice(p_lab, g_lab)[0], dice_r(p_reg, g_reg)[0]])
        h = torch.cat([hd(p_lab, g_lab, spacing=list(spacing))[0], hd_r(p_reg, g_reg, spacing=list(spacing))[0]])
    return d.tolist(), h.tolist()


def medpy(pred, ref, spacing):
    from medpy.metric.binary import dc, hd95

    structures = [(1,), (2,), (3,), (1, 2, 3), (2, 3), (3,)]
    dices, hds = [], []
    for values in structures:
        p, g = np.isin(pred, values), np.isin(ref, values)
        dices.append(dc(p, g))
        hds.append(hd95(p, g, voxelspacing=spacing))
    return dices, hds


def bench_case(case: str, repeats: int) -> None:
    import torch

    from brainseg_cli.io import read_image

    torch.set_num_threads(1)
    image = read_image(DATA / case / f"{case}_seg.nii.gz")
    ref = TO_CANONICAL[np.asarray(image.array)]
    if np.asarray(image.array).flags.f_contiguous:
        ref = np.asfortranarray(ref)
    spacing = tuple(image.spacing)
    print(f"case {case}: {ref.shape} voxels, spacing {spacing}; Dice + HD95 for 3 labels + WT/TC/ET; "
          f"1 thread; CPU ms, median of {repeats} (brainseg) / {max(1, repeats // 2)} (MONAI, medpy) runs")
    header = (f"{'prediction':<18}{'brainseg ms':>12}{'MONAI ms':>10}{'MONAI/ours':>11}"
              f"{'medpy ms':>10}{'medpy/ours':>11}{'max|dDice|':>11}{'max|dHD95|':>11}")
    print(header)
    print("-" * len(header))
    ratios = []
    for kind, pred in predictions(ref).items():
        t_ours, (d_ours, h_ours) = timed(lambda: ours(pred, ref, spacing), repeats)
        t_monai, (d_monai, h_monai) = timed(lambda: monai(pred, ref, spacing), max(1, repeats // 2))
        t_medpy, _ = timed(lambda: medpy(pred, ref, spacing), max(1, repeats // 2))
        dd = max(abs(a - b) for a, b in zip(d_ours, d_monai))
        dh = max(abs(a - b) for a, b in zip(h_ours, h_monai))
        ratios.append(t_monai / t_ours)
        print(f"{kind:<18}{t_ours * 1e3:>12.1f}{t_monai * 1e3:>10.0f}{t_monai / t_ours:>10.1f}x"
              f"{t_medpy * 1e3:>10.0f}{t_medpy / t_ours:>10.1f}x{dd:>11.1e}{dh:>11.1e}")
    print(f"MONAI / brainseg: {min(ratios):.1f}x to {max(ratios):.1f}x (target >= 10x)")


def bench_workers(workers: int, repeats: int = 5) -> None:
    """``evaluate_folders`` with 1 and ``workers`` processes over every case x every kind of wrong prediction.

    9 cases x 5 prediction kinds = 45 evaluations of about 40 ms each: enough work that the
    speed-up is not lost in the granularity of a handful of cases.
    """
    from brainseg_cli.io import read_image, write_image
    from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_folders

    cases = sorted(p.name for p in DATA.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        ref_dir, pred_dir = Path(tmp) / "ref", Path(tmp) / "pred"
        names = []
        for case in cases:
            image = read_image(DATA / case / f"{case}_seg.nii.gz")
            ref = TO_CANONICAL[np.asarray(image.array)]
            for i, pred in enumerate(predictions(ref).values()):
                name = f"{case}_{i}"
                write_image(image.with_array(ref), ref_dir / f"{name}.nii.gz")
                write_image(image.with_array(pred), pred_dir / f"{name}.nii.gz")
                names.append(name)
        print(f"\nevaluate_folders over {len(names)} BraTS evaluations ({len(cases)} cases x 5 wrong predictions; "
              f"read + Dice + HD95, 3 labels + 3 regions), median of {repeats}:")
        base = None
        for n in sorted({1, workers}):
            config = EvaluateConfig(ref=ref_dir, pred=pred_dir, regions="brats", workers=n)
            t, _ = timed(lambda: evaluate_folders(config=config), repeats, clock=time.perf_counter)
            base = base or t
            print(f"  workers={n}: {t:.2f} s ({len(names) / t:.1f} cases/s, speed-up {base / t:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="Brats18_2013_20_1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"data folder {DATA} not found")
    bench_case(args.case, args.repeats)
    bench_workers(args.workers, args.repeats)


if __name__ == "__main__":
    main()
