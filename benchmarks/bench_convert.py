"""Benchmark ``brainseg convert`` against the floor of the same reads and writes done directly.

Run: ``python benchmarks/bench_convert.py [--cases N] [--repeats R]``. Needs ../shared/data.

Each conversion reads every channel and the label of a case, maps the labels and writes one
``.nii.gz`` per channel plus the label. The floors do exactly those reads and writes with the
libraries a user would call directly, in one process:

* ``sitk direct``: SimpleITK ReadImage / WriteImage (the same compressor and level as brainseg);
* ``nibabel gz1`` / ``nibabel gz6``: nibabel ``dataobj`` reads and ``nib.save`` at gzip level 1
  (nibabel's default) and 6 (zlib's default; file sizes close to SimpleITK's);
* LGG: tifffile reads of every slice, stacking, and ``nib.save`` (gz1).

The table gives best-of-R wall times, the ratio to each floor (target: <= 1.3 with one worker) and
the speed-up with two workers (target: near 2 on an idle 2-core machine). Output sizes are listed
so that compression levels can be compared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainseg_cli.data.convert import ConvertConfig, convert_dataset  # noqa: E402

SHARED = (REPO / ".." / "shared" / "data").resolve()
BRATS = SHARED / "brats2018_deepbrainseg"
LGG = SHARED / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
BRATS_LUT = np.zeros(5, np.uint8)
BRATS_LUT[[1, 2, 4]] = [2, 1, 3]


def _best(fn: Callable[[Path], None], work: Path, repeats: int) -> float:
    times = []
    for r in range(repeats):
        out = work / f"run{r}"
        t0 = time.perf_counter()
        fn(out)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(out)
    return min(times)


def _size(fn: Callable[[Path], None], work: Path) -> int:
    out = work / "size"
    fn(out)
    total = sum(p.stat().st_size for p in out.rglob("*.nii.gz"))
    shutil.rmtree(out)
    return total


def _link_brats(dst: Path, cases: list[str]) -> Path:
    for case in cases:
        (dst / case).mkdir(parents=True)
        for f in (BRATS / case).iterdir():
            os.symlink(f, dst / case / f.name)
    return dst


def _brats_files(src: Path) -> list[tuple[str, list[Path], Path]]:
    out = []
    for case in sorted(p.name for p in src.iterdir()):
        chans = [src / case / f"{case}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")]
        out.append((case, chans, src / case / f"{case}_seg.nii.gz"))
    return out


def sitk_floor(src: Path) -> Callable[[Path], None]:
    import SimpleITK as sitk

    def run(out: Path) -> None:
        (out / "imagesTr").mkdir(parents=True)
        (out / "labelsTr").mkdir()
        for case, chans, seg in _brats_files(src):
            for i, f in enumerate(chans):
                sitk.WriteImage(sitk.ReadImage(str(f)), str(out / "imagesTr" / f"{case}_{i:04d}.nii.gz"))
            lab = sitk.ReadImage(str(seg))
            mapped = sitk.GetImageFromArray(BRATS_LUT[sitk.GetArrayViewFromImage(lab)])
            mapped.CopyInformation(lab)
            sitk.WriteImage(mapped, str(out / "labelsTr" / f"{case}.nii.gz"))
    return run


def nibabel_floor(src: Path, level: int) -> Callable[[Path], None]:
    import nibabel as nib
    from nibabel.openers import Opener

    def run(out: Path) -> None:
        old = Opener.default_compresslevel
        Opener.default_compresslevel = level
        try:
            (out / "imagesTr").mkdir(parents=True)
            (out / "labelsTr").mkdir()
            for case, chans, seg in _brats_files(src):
                for i, f in enumerate(chans):
                    img = nib.load(f)
                    arr = np.asanyarray(img.dataobj)
                    nib.save(nib.Nifti1Image(arr, img.affine, img.header), out / "imagesTr" / f"{case}_{i:04d}.nii.gz")
                lab = nib.load(seg)
                mapped = BRATS_LUT[np.asanyarray(lab.dataobj)]
                hdr = lab.header.copy()
                hdr.set_data_dtype(np.uint8)
                nib.save(nib.Nifti1Image(mapped, lab.affine, hdr), out / "labelsTr" / f"{case}.nii.gz")
        finally:
            Opener.default_compresslevel = old
    return run


def lgg_floor(src: Path) -> Callable[[Path], None]:
    import nibabel as nib
    import tifffile

    def run(out: Path) -> None:
        (out / "imagesTr").mkdir(parents=True)
        (out / "labelsTr").mkdir()
        for folder in sorted(p for p in src.iterdir() if p.is_dir()):
            names = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
            numbers = sorted(int(p.stem.rsplit("_", 1)[1]) for p in names)
            vol = np.stack([tifffile.imread(folder / f"{folder.name}_{n}.tif") for n in numbers], axis=-1)
            mask = np.stack([tifffile.imread(folder / f"{folder.name}_{n}_mask.tif") for n in numbers], axis=-1)
            affine = np.diag([-1.0, -1.0, 1.0, 1.0])
            for i, sample in enumerate((0, 2, 1)):
                nib.save(nib.Nifti1Image(np.ascontiguousarray(vol[:, :, sample, :]), affine),
                         out / "imagesTr" / f"{folder.name}_{i:04d}.nii.gz")
            nib.save(nib.Nifti1Image((mask == 255).astype(np.uint8), affine), out / "labelsTr" / f"{folder.name}.nii.gz")
    return run


def brainseg(source: str, src: Path, workers: int) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        convert_dataset(config=ConvertConfig(source=source, input=src, output=out, workers=workers))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=9, help="BraTS 2018 cases to convert (max 9, the default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not BRATS.is_dir():
        sys.exit(f"real data not found: {BRATS}")
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = sorted(p.name for p in BRATS.iterdir() if p.is_dir())[: args.cases]
        src = _link_brats(work / "brats_src", cases)
        rows = []
        runs = {
            "brainseg convert, 1 worker": brainseg("brats", src, 1),
            "brainseg convert, 2 workers": brainseg("brats", src, 2),
            "sitk direct (same compression)": sitk_floor(src),
            "nibabel gz1": nibabel_floor(src, 1),
            "nibabel gz6": nibabel_floor(src, 6),
        }
        times = {name: _best(fn, work, args.repeats) for name, fn in runs.items()}
        sizes = {name: _size(fn, work) for name, fn in runs.items() if "2 workers" not in name}
        one = times["brainseg convert, 1 worker"]
        print(f"\nBraTS 2018, {len(cases)} cases (4 channels + label, 240x240x155), best of {args.repeats}")
        print(f"{'run':34s} {'seconds':>8s} {'s/case':>7s} {'MB out':>7s} {'brainseg(1w) / this':>20s}")
        for name, t in times.items():
            size = f"{sizes[name] / 1e6:7.1f}" if name in sizes else "      -"
            rows.append((name, t))
            print(f"{name:34s} {t:8.2f} {t / len(cases):7.2f} {size} {one / t:20.2f}")
        print(f"speed-up with 2 workers: {one / times['brainseg convert, 2 workers']:.2f}x")

        if LGG.is_dir():
            lgg_runs = {"brainseg convert lgg, 1 worker": brainseg("lgg", LGG, 1),
                        "tifffile + nibabel gz1": lgg_floor(LGG)}
            lgg_times = {name: _best(fn, work, args.repeats) for name, fn in lgg_runs.items()}
            n = len([p for p in LGG.iterdir() if p.is_dir()])
            print(f"\nKaggle LGG layout, {n} patients, best of {args.repeats}")
            lgg_one = lgg_times["brainseg convert lgg, 1 worker"]
            for name, t in lgg_times.items():
                print(f"{name:34s} {t:8.2f} {t / n:7.2f} {'':7s} {lgg_one / t:20.2f}")


if __name__ == "__main__":
    main()
