"""Benchmark: ``brainseg predict`` end to end on one real BraTS case, against a plain MONAI pipeline.

All in one process, on the same weights and the same case (``../shared/data/brats2018_deepbrainseg``):

1. **End to end at native resolution** (read, preprocess, infer, resample, write): ``predict_folder``
   with a plan at the case's own 1 mm spacing, against MONAI ``LoadImage -> EnsureChannelFirst ->
   NormalizeIntensity(nonzero, channel_wise) -> sliding_window_inference`` (whole volume, Gaussian,
   same patch and overlap, ``sw_batch_size=1``) ``-> argmax -> SaveImage``, with the same network.
   Target: ours <= 0.6x MONAI. The gain from cropping to the brain is reported separately (our
   pipeline with ``crop_to_brain`` off), and ours is compared with its own pure network time (the
   time spent inside the network's forward calls; target <= 1.25x).
2. **The 3-D CPU plan** (2 mm "3d lowres", as ``make_plan`` chooses on a CPU for ``--config 3d``): end-to-end time,
   network share, fp32 against ``--precision bf16`` (speed-up and per-label Dice agreement, target
   >= 0.99), and the peak resident memory of a separate ``predict`` process (target < 3 GB).
3. **A folder of cases** (all 9 of ``brats2018_deepbrainseg``, the default plan): seconds per case
   end to end and in the network, with ``predict``'s read-ahead (the next case read and
   preprocessed in a background thread while the network predicts the current one) and with it
   switched off (each case read, prepared and predicted in turn), best of ``--repeats``. On a CPU
   the reading thread and the network share the cores, so the network's own time grows; on a GPU
   it would not.

Each figure is given as wall-clock and as process CPU time (user + system, all threads): on a shared
machine the CPU time is the steadier of the two.

Weights: ``--checkpoint`` (e.g. ``RUN_DIR/best.pt`` of ``brainseg pretrain`` on converted BraTS
2018) or, without one, the default plan's network fitted for ``--fit-steps`` steps on the case
(Dice agreement needs a network that segments something).
Run: ``python benchmarks/bench_predict.py [--checkpoint best.pt]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "brats2018_deepbrainseg"
BRATS18_TO_CANONICAL = np.zeros(5, np.uint8)
BRATS18_TO_CANONICAL[[1, 2, 4]] = [2, 1, 3]
TUMOUR = {"background": 0, "edema": 1, "core": 2, "enhancing": 3}
CHANNELS = ["T1", "T1c", "T2", "FLAIR"]


def default_cpu_plan() -> dict:
    """The plan ``make_plan`` makes for BraTS 2018 on a CPU with ``config="3d"``, written out."""
    return {
        "format_version": 1, "dataset": "brats2018", "config": "3d", "channels": CHANNELS, "labels": TUMOUR,
        "num_classes": 4, "regions": {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}, "region_based": False,
        "orientation": "LPS", "target_spacing": [2.0, 2.0, 2.0], "slice_axis": None, "patch_size": [40, 56, 40],
        "batch_size": 2,
        "normalization": [{"channel": c, "scheme": "zscore", "lower_pct": 10.0, "upper_pct": 99.0} for c in CHANNELS],
        "crop_to_brain": True, "background": "border",
        "resampling": {"image_order": 3, "label_order": 0, "probability_order": 1, "anisotropy_threshold": 3.0},
        "model": {"name": "unet", "spatial_dims": 3, "in_channels": 4, "num_classes": 4,
                  "config": {"base_features": 16, "norm": "instance", "deep_supervision": True,
                             "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3}},
    }


def make_checkpoint(path: Path, plan: dict, state_dict: dict, model_config: dict) -> Path:
    from brainseg_cli import __version__
    from brainseg_cli.checkpoint import save_checkpoint

    return save_checkpoint(path, {
        "tool_version": __version__, "model": {"name": plan["model"]["name"], "config": model_config}, "plan": plan,
        "channels": list(plan["channels"]), "labels": dict(plan["labels"]), "regions": dict(plan["regions"]),
        "postprocessing": {}, "training": {"epoch": 0}, "state_dict": state_dict,
    })


def fit_default(case_dir: Path, plan: dict, steps: int) -> torch.nn.Module:
    """Fit the plan's network briefly on one case (patches, half centred on tumour)."""
    from brainseg_cli.data.preprocessing import preprocess_case
    from brainseg_cli.inference.inputs import discover_cases, load_case
    from brainseg_cli.io import read_image
    from brainseg_cli.models import build_model

    (case,) = discover_cases(case_dir)
    image = load_case(case, channels=CHANNELS).image
    seg = read_image(next(case_dir.glob("*_seg.nii.gz")))
    data, lab, _ = preprocess_case(image, plan, label=seg.with_array(BRATS18_TO_CANONICAL[np.asarray(seg.array)]))
    m = plan["model"]
    torch.manual_seed(0)
    net = build_model(m["name"], spatial_dims=3, in_channels=4, num_classes=4, **{**m["config"], "deep_supervision": False})
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    patch = plan["patch_size"]
    fg = np.argwhere(lab > 0)
    net.train()
    for step in range(steps):
        centre = fg[rng.integers(len(fg))] if step % 2 == 0 and len(fg) else [rng.integers(s) for s in lab.shape]
        sl = tuple(slice(int(np.clip(c - p // 2, 0, s - p)), int(np.clip(c - p // 2, 0, s - p)) + p)
                   for c, p, s in zip(centre, patch, lab.shape))
        x = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *sl)]))[None]
        y = torch.from_numpy(np.ascontiguousarray(lab[sl])).long()[None]
        loss = torch.nn.functional.cross_entropy(net(x), y, weight=torch.tensor([1.0, 3.0, 3.0, 3.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


class NetTimer:
    """Accumulates the wall time spent inside a module's forward calls."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self._t0 = (0.0, 0.0)
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t0 = (time.perf_counter(), time.process_time())

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t0[0]
        self.cpu += time.process_time() - self._t0[1]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def timed_networks():
    """Within the block, every network ``predict`` loads is timed; yields the list of :class:`NetTimer`."""
    from brainseg_cli.inference import predictor as predictor_module

    timers: list[NetTimer] = []
    original = predictor_module.load_member

    def timed_load(path, *, device):
        member = original(path, device=device)
        timers.append(NetTimer(member.network))
        return member

    predictor_module.load_member = timed_load
    try:
        yield timers
    finally:
        predictor_module.load_member = original


def run_ours(ckpt: Path, case_dir: Path, out: Path, **options) -> tuple[tuple[float, float], tuple[float, float], np.ndarray]:
    """``predict_folder`` on one case; returns ((wall, cpu) s, network (wall, cpu) s, labels)."""
    from brainseg_cli.inference.predict import PredictConfig, predict_folder
    from brainseg_cli.io import read_image

    with timed_networks() as timers:
        t0, c0 = time.perf_counter(), time.process_time()
        predict_folder(config=PredictConfig(models=(ckpt,), input=case_dir, output=out, device="cpu", lcc="off",
                                            overwrite=True, **options))
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
    labels = np.asarray(read_image(out / f"{case_dir.name}.nii.gz").array)
    return seconds, (sum(t.seconds for t in timers), sum(t.cpu for t in timers)), labels


def run_folder(ckpt: Path, folder: Path, out: Path, *, read_ahead: bool) -> tuple[int, float, float]:
    """``predict_folder`` on every case of ``folder``; returns (cases, wall s, network wall s).

    ``read_ahead=False`` replaces the read-ahead by reading and preparing each case when its turn
    comes, in the main thread (what ``predict`` did before it read ahead).
    """
    from brainseg_cli.inference.predict import PredictConfig, _Prefetcher, predict_folder

    original_get = _Prefetcher.get
    if not read_ahead:
        _Prefetcher.get = lambda self, index: self._load(self._cases[index])
    try:
        with timed_networks() as timers:
            t0 = time.perf_counter()
            summary = predict_folder(config=PredictConfig(models=(ckpt,), input=folder, output=out, device="cpu",
                                                          overwrite=True))
            seconds = time.perf_counter() - t0
    finally:
        _Prefetcher.get = original_get
    return len(summary.predicted), seconds, sum(t.seconds for t in timers)


def run_monai(net: torch.nn.Module, case_dir: Path, out: Path, patch, overlap: float):
    """The plain MONAI pipeline; returns ((wall, cpu) s, network (wall, cpu) s)."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, NormalizeIntensity, SaveImage

    files = [next(case_dir.glob(f"*_{n}.nii.gz")) for n in ("t1", "t1ce", "t2", "flair")]
    timer = NetTimer(net)
    t0, c0 = time.perf_counter(), time.process_time()
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst()])
    image = torch.cat([load(str(f)) for f in files], dim=0)
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    with torch.no_grad():
        logits = sliding_window_inference(image[None].float(), list(patch), 1, net, overlap=overlap, mode="gaussian",
                                          sigma_scale=0.125)
    labels = torch.argmax(logits[0], dim=0, keepdim=True).to(torch.uint8)
    labels = MetaTensor(labels, meta=image.meta) if isinstance(image, MetaTensor) else labels
    SaveImage(output_dir=str(out), output_postfix="seg", separate_folder=False, print_log=False)(labels)
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    timer.remove()
    return seconds, (timer.seconds, timer.cpu)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def peak_memory_gb(ckpt: Path, case_dir: Path, out: Path) -> float:
    code = (
        "import sys; from pathlib import Path; import resource;"
        "from brainseg_cli.inference.predict import PredictConfig, predict_folder;"
        f"predict_folder(config=PredictConfig(models=(Path({str(ckpt)!r}),), input=Path({str(case_dir)!r}), "
        f"output=Path({str(out)!r}), device='cpu', overwrite=True));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained 3-D BraTS checkpoint (default: brief fit)")
    parser.add_argument("--case", default="Brats18_2013_20_1")
    parser.add_argument("--fit-steps", type=int, default=60)
    parser.add_argument("--skip-monai", action="store_true", help="skip the (slow) native-resolution comparison")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the folder comparison (best is kept)")
    args = parser.parse_args()

    from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint

    case_dir = (DATA / args.case).resolve()
    if not case_dir.is_dir():
        raise SystemExit(f"case folder {case_dir} not found")
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        plan = ckpt["plan"]
        net = build_model_from_checkpoint(ckpt, source=args.checkpoint)
        state, model_config = ckpt["state_dict"], ckpt["model"]["config"]
        source = str(args.checkpoint)
    else:
        plan = default_cpu_plan()
        net = fit_default(case_dir, plan, args.fit_steps)
        state, model_config = net.state_dict(), dict(net.config)
        source = f"default CPU plan, fitted {args.fit_steps} steps on {args.case}"
    net.eval()
    default_ckpt = make_checkpoint(tmp / "default.pt", plan, state, model_config)
    print(f"weights: {source}; torch threads {torch.get_num_threads()}")
    print(f"plan: {plan['config']}, spacing {plan['target_spacing']}, patch {plan['patch_size']}, "
          f"model {plan['model']['name']} {plan['model']['config'].get('base_features')} features")
    rows: list[tuple[str, tuple[float, float]]] = []

    def ratio(a, b):
        return (a[0] / b[0], a[1] / b[1])

    # ---- 2. default plan: fp32 vs bf16, network share
    t32, n32, lab32 = run_ours(default_ckpt, case_dir, tmp / "fp32")
    t16, n16, lab16 = run_ours(default_ckpt, case_dir, tmp / "bf16", precision="bf16")
    agreement = {name: dice(lab32 == v, lab16 == v) for name, v in TUMOUR.items() if v}
    rows += [("default plan, fp32: end to end (s)", t32), ("default plan, fp32: network only (s)", n32),
             ("default plan: end to end / network", ratio(t32, n32)),
             ("default plan, bf16: end to end (s)", t16), ("bf16 speed-up (fp32 / bf16)", ratio(t32, t16))]

    # ---- 1. native resolution: ours (crop), ours (no crop), MONAI
    if not args.skip_monai:
        native = copy.deepcopy(plan)
        native["target_spacing"] = [1.0, 1.0, 1.0]
        nocrop = copy.deepcopy(native)
        nocrop["crop_to_brain"] = False
        native_ckpt = make_checkpoint(tmp / "native.pt", native, state, model_config)
        nocrop_ckpt = make_checkpoint(tmp / "nocrop.pt", nocrop, state, model_config)
        t_ours, n_ours, _ = run_ours(native_ckpt, case_dir, tmp / "native")
        t_monai, n_monai = run_monai(net, case_dir, tmp / "monai", plan["patch_size"], 0.5)
        t_nocrop, n_nocrop, _ = run_ours(nocrop_ckpt, case_dir, tmp / "nocrop")
        rows += [("native 1 mm: brainseg predict (s)", t_ours), ("native 1 mm: MONAI pipeline (s)", t_monai),
                 ("native 1 mm: brainseg, no brain crop (s)", t_nocrop),
                 ("native: brainseg / MONAI (target <= 0.6)", ratio(t_ours, t_monai)),
                 ("native: crop gain (no crop / crop)", ratio(t_nocrop, t_ours)),
                 ("native: no crop / MONAI (batching, window code)", ratio(t_nocrop, t_monai)),
                 ("native: brainseg / its network time (target <= 1.25)", ratio(t_ours, n_ours)),
                 ("native: network time brainseg crop (s)", n_ours), ("native: network time no crop (s)", n_nocrop),
                 ("native: network time MONAI, sw_batch_size 1 (s)", n_monai)]

    # ---- 3. a folder of cases: read-ahead on and off, alternating
    best: dict[bool, tuple[int, float, float]] = {}
    for _ in range(args.repeats):
        for read_ahead in (False, True):
            n, wall, network = run_folder(default_ckpt, DATA.resolve(), tmp / "folder", read_ahead=read_ahead)
            if read_ahead not in best or wall < best[read_ahead][1]:
                best[read_ahead] = (n, wall, network)
    for read_ahead, label in ((True, "read-ahead"), (False, "no read-ahead")):
        n, wall, network = best[read_ahead]
        rows += [(f"folder of {n}, {label}: end to end per case (s)", (wall / n, math.nan)),
                 (f"folder of {n}, {label}: network per case (s)", (network / n, math.nan)),
                 (f"folder of {n}, {label}: end to end / network", (wall / network, math.nan))]
    rows.append(("folder: read-ahead speed-up (off / on)", (best[False][1] / best[True][1], math.nan)))

    peak = peak_memory_gb(default_ckpt, case_dir, tmp / "mem")
    print(f"\n{'measure':<56}{'wall':>10}{'CPU':>10}")
    for name, (wall, cpu) in rows:
        print(f"{name:<56}{wall:>10.3f}{cpu:>10.3f}")
    print(f"{'bf16 vs fp32 Dice agreement (target >= 0.99)':<56}" + ", ".join(f"{k} {v:.4f}" for k, v in agreement.items()))
    print(f"{'peak memory, default plan, one case (target < 3 GB)':<56}{peak:>10.2f} GB")
    print(f"(this process: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB; outputs in {tmp})")


if __name__ == "__main__":
    main()
