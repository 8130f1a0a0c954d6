"""GPU sliding-window prediction: precision and cuDNN autotuning, on a BraTS-sized volume.

The network is the one a GPU plan gives BraTS (``unet``, 32-320 features, patch from the default
8 GB plan), the image a 4-channel 240 x 240 x 155 volume (random values: time does not depend on
them), window batch 2, overlap 0.5, with and without mirroring (TTA). For each precision (fp32,
bf16, fp16) and ``torch.backends.cudnn.benchmark`` off and on, the median of ``--repeats`` runs after
a warm-up is reported (seconds per volume, synchronised).

    python benchmarks/bench_predict_gpu.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from brainseg_cli.data.layout import DatasetInfo
from brainseg_cli.data.plan import make_plan
from brainseg_cli.inference.sliding_window import sliding_window_predict
from brainseg_cli.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    fp = {"orientation": "LPS", "spacing_median": [1.0, 1.0, 1.0], "spacing_10th": [1.0, 1.0, 1.0],
          "shape_median": [140, 172, 138], "num_cases": 300, "intensity": [{"eight_bit": False}] * 4, "hash": "0"}
    info = DatasetInfo(root=Path("/nonexistent"), name="brats", channels=("T1", "T1c", "T2", "FLAIR"),
                       labels={"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3},
                       regions={}, file_ending=".nii.gz", training_cases=(), test_cases=())
    plan = make_plan(fingerprint=fp, info=info, device="cuda")
    m = plan.model
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = build_model(m.name, spatial_dims=m.spatial_dims, in_channels=m.in_channels,
                      num_classes=m.num_classes, **m.config).to(device).eval()
    image = torch.randn(4, 240, 240, 155, device=device)
    patch = list(plan.patch_size)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; unet {params:.1f}M parameters, "
          f"patch {patch}, image (4, 240, 240, 155), window batch 2, overlap 0.5")
    print(f"{'precision':<10} {'cudnn.benchmark':<16} {'s/volume':>9} {'s/volume TTA':>13}")
    before = torch.backends.cudnn.benchmark
    try:
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for precision in ("fp32", "bf16", "fp16"):
                row = []
                for tta in (False, True):
                    def run() -> None:
                        sliding_window_predict(net, image, patch_size=patch, overlap=0.5, batch_size=2, tta=tta,
                                               precision=precision)
                        torch.cuda.synchronize()
                    run()  # warm-up (and cuDNN's search when benchmark is on)
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - t0)
                    row.append(statistics.median(times))
                print(f"{precision:<10} {str(bench):<16} {row[0]:>9.3f} {row[1]:>13.3f}", flush=True)
    finally:
        torch.backends.cudnn.benchmark = before


if __name__ == "__main__":
    main()
