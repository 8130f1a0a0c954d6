"""Benchmark the training data pipeline (cache -> patch sampling -> augmentation) on real BraTS data.

Run: ``python benchmarks/bench_data_pipeline.py [--cases N] [--samples S]``. Needs ../shared/data.

Real BraTS 2018 cases (``brats2018_deepbrainseg``) are linked into a temporary nnU-Net-layout
dataset, fingerprinted, planned (a GPU plan: 3-D 1 mm patches; a CPU plan: 3-D at 2 mm; a 2-D plan:
whole axial slices) and preprocessed into the memory-mapped cache. Then, per plan:

* ``brainseg``: samples/s of :class:`brainseg_cli.data.datasets.PatchDataset` in this process, with
  augmentation off and on (nnU-Net's default probabilities);
* ``MONAI``: the reference a user would otherwise write, on the same preprocessed arrays held in
  memory: ``RandCropByPosNegLabeld`` (1 positive : 2 negative, as the one-third foreground
  oversampling) and, with augmentation, ``RandRotated`` (p 0.2, +-30 degrees) + ``RandZoomd``
  (p 0.2, 0.7-1.4) + ``RandFlipd`` per axis (p 0.5) + ``RandGaussianNoised`` (p 0.1) +
  ``RandGaussianSmoothd`` (p 0.2) + ``RandScaleIntensityd`` (p 0.15) + ``RandAdjustContrastd`` (p 0.3);
* ratio = brainseg samples/s / MONAI samples/s (> 1: brainseg is faster);
* data wait: a consumer that "trains" for the plan's estimated step time per batch (sleep) reads
  batches from a ``DataLoader`` with 2 workers; the share of wall time it spent waiting for data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainseg_cli.data.augmentation import AugmentConfig  # noqa: E402
from brainseg_cli.data.cache import build_cache  # noqa: E402
from brainseg_cli.data.datasets import CachedCases, PatchDataset  # noqa: E402
from brainseg_cli.data.fingerprint import compute_fingerprint  # noqa: E402
from brainseg_cli.data.layout import load_dataset, write_dataset_json  # noqa: E402
from brainseg_cli.data.plan import PlanOverrides, make_plan  # noqa: E402

SHARED = (REPO / ".." / "shared" / "data").resolve()
BRATS = SHARED / "brats2018_deepbrainseg"
MODALITIES = ("t1", "t1ce", "t2", "flair")
# BraTS 2018 label values as a consecutive label set (3 unused): the pipeline only samples them.
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "unused": 3, "enhancing": 4}


def link_dataset(root: Path, cases: list[str]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in cases:
        for i, m in enumerate(MODALITIES):
            os.symlink(BRATS / case / f"{case}_{m}.nii.gz", root / "imagesTr" / f"{case}_{i:04d}.nii.gz")
        os.symlink(BRATS / case / f"{case}_seg.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    write_dataset_json(root, channels=["T1", "T1c", "T2", "FLAIR"], labels=LABELS, num_training=len(cases),
                       brainseg={"source": "benchmark"})
    return root


def rate(fn, n: int) -> float:
    fn(0)  # warm up (opens the memory maps)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t0)


def monai_pipeline(patch, augment: bool, dims: int):
    from monai import transforms as T

    keys = ["image", "label"]
    steps = [T.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=list(patch), pos=1, neg=2,
                                      num_samples=1, allow_smaller=True),
             T.SpatialPadd(keys=keys, spatial_size=list(patch))]
    if augment:
        rot = {"range_x": 0.52} if dims == 2 else {"range_x": 0.52, "range_y": 0.52, "range_z": 0.52}
        steps += [T.RandRotated(keys=keys, prob=0.2, mode=("bilinear", "nearest"), keep_size=True, **rot),
                  T.RandZoomd(keys=keys, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("trilinear" if dims == 3 else "bilinear", "nearest"),
                              keep_size=True)]
        steps += [T.RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(dims)]
        steps += [T.RandGaussianNoised(keys=["image"], prob=0.1, std=0.3),
                  T.RandGaussianSmoothd(keys=["image"], prob=0.2),
                  T.RandScaleIntensityd(keys=["image"], prob=0.15, factors=0.25),
                  T.RandAdjustContrastd(keys=["image"], prob=0.3, gamma=(0.7, 1.5))]
    pipe = T.Compose(steps)
    pipe.set_random_state(seed=0)
    return pipe


def monai_rate(arrays, plan, augment: bool, n: int) -> float:
    dims = plan.spatial_dims
    pipe = monai_pipeline(list(plan.patch_size), augment, dims)
    rng = np.random.default_rng(0)
    axis = plan.slice_axis

    def one(_):
        data, seg = arrays[int(rng.integers(len(arrays)))]
        if dims == 2:
            k = int(rng.integers(seg.shape[axis]))
            data = np.take(data, k, axis=axis + 1)
            seg = np.take(seg, k, axis=axis)
        out = pipe({"image": data, "label": seg[None]})
        return out[0]["image"]

    return rate(one, n)


def data_wait(ds, batch: int, step_seconds: float, steps: int) -> float:
    import torch

    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=2, persistent_workers=False)
    it = iter(loader)
    next(it)  # start-up is not steady state
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        w = time.perf_counter()
        next(it)
        waited += time.perf_counter() - w
        time.sleep(step_seconds)
    return waited / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--wait-steps", type=int, default=10)
    args = parser.parse_args()
    if not BRATS.is_dir():
        sys.exit(f"{BRATS} not found")
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # MONAI's "unable to generate class balanced samples"
    torch.set_num_threads(1)
    cases = sorted(p.name for p in BRATS.iterdir() if p.is_dir())[: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        info = load_dataset(link_dataset(tmp / "ds", cases))
        t0 = time.perf_counter()
        fp = compute_fingerprint(info, workers=2)
        t_fp = time.perf_counter() - t0
        plans = {
            "3d GPU plan (1 mm)": make_plan(fingerprint=fp, info=info, device="cuda"),
            "3d CPU plan (2 mm)": make_plan(fingerprint=fp, info=info, device="cpu",
                                            overrides=PlanOverrides(config="3d")),
            "2d CPU plan (slices)": make_plan(fingerprint=fp, info=info, device="cpu",
                                              overrides=PlanOverrides(config="2d")),
        }
        print(f"{len(cases)} BraTS 2018 cases; fingerprint {t_fp:.1f} s (2 workers)")
        header = (f"{'plan':22s} {'patch':>14s} {'bs':>3s} {'prep s/case':>11s} {'aug':>4s} "
                  f"{'brainseg/s':>10s} {'MONAI/s':>8s} {'ratio':>6s} {'wait':>6s}")
        rows = []
        for name, plan in plans.items():
            t0 = time.perf_counter()
            cache = build_cache(info, plan, folder=tmp / f"cache-{len(rows)}", workers=2)
            t_prep = (time.perf_counter() - t0) / len(cases)
            arrays = [tuple(np.asarray(a) for a in cache.load(c, mmap=False)) for c in cache.cases]
            for augment in (False, True):
                source = CachedCases(cache, plan, augment=AugmentConfig())
                ds = PatchDataset(source, cache.cases, seed=0, length=10**6, augment=augment)
                ours = rate(lambda i: ds[i], args.samples)
                ref = monai_rate(arrays, plan, augment, args.samples)
                step = (plan.budget or {}).get("estimated_step_seconds") or 0.3
                wait = data_wait(ds, plan.batch_size, step, args.wait_steps) if augment else float("nan")
                rows.append(f"{name:22s} {'x'.join(map(str, plan.patch_size)):>14s} {plan.batch_size:>3d} "
                            f"{t_prep:>11.1f} {'on' if augment else 'off':>4s} {ours:>10.1f} {ref:>8.1f} "
                            f"{ours / ref:>6.2f} {wait:>6.1%}")
                print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)


if __name__ == "__main__":
    main()
