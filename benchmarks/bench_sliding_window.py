"""Benchmark: brainseg's sliding window against MONAI's ``sliding_window_inference``.

Same network (a MONAI 3-D UNet), same input, same patch, overlap 0.5, Gaussian weighting
(sigma = patch/8), same window count and window batch, softmax applied per window on both sides
(MONAI's predictor wraps the network in a softmax). Prints the time ratio ours / MONAI (target
<= 1.05; wall clock and process CPU time) and the largest probability difference.
Run: ``python benchmarks/bench_sliding_window.py``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def monai_window_count(size, patch, overlap):
    n = 1
    for s, p in zip(size, patch):
        interval = max(int(p * (1 - overlap)), 1)
        n *= max(math.ceil((s - p) / interval), 0) + 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 112))
    parser.add_argument("--patch", type=int, nargs=3, default=(96, 96, 64))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from brainseg_cli.inference.sliding_window import sliding_window_predict, window_starts

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=4, channels=(16, 32, 64, 128),
               strides=(2, 2, 2), num_res_units=1).to(device).eval()
    image = torch.randn(4, *args.size, device=device)
    size, patch, overlap = tuple(args.size), tuple(args.patch), 0.5
    ours_n = math.prod(len(s) for s in window_starts(size, patch, overlap=overlap))
    monai_n = monai_window_count(size, patch, overlap)
    if ours_n != monai_n:
        raise SystemExit(f"window counts differ (ours {ours_n}, MONAI {monai_n}): pick another size/patch")

    def ours():
        return sliding_window_predict(net, image, patch_size=patch, overlap=overlap, batch_size=args.batch)

    def monai():
        with torch.no_grad():
            out = sliding_window_inference(image[None], patch, args.batch, lambda x: torch.softmax(net(x), 1),
                                           overlap=overlap, mode="gaussian", sigma_scale=0.125)
        return out[0].cpu()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in (ours, monai):  # warm-up
        fn()
    times = {"brainseg": [], "monai": []}
    cpu = {"brainseg": [], "monai": []}
    for _ in range(args.repeats):
        for name, fn in (("monai", monai), ("brainseg", ours)):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if name == "brainseg":
                a = out
            else:
                b = out
    t_ours, t_monai = statistics.median(times["brainseg"]), statistics.median(times["monai"])
    c_ours, c_monai = statistics.median(cpu["brainseg"]), statistics.median(cpu["monai"])
    print(f"device {device}, image {size}, patch {patch}, overlap {overlap}, windows {ours_n}, batch {args.batch}")
    print(f"{'tool':<10}{'wall s':>10}{'CPU s':>10}   (medians of {args.repeats})")
    print(f"{'brainseg':<10}{t_ours:>10.3f}{c_ours:>10.3f}")
    print(f"{'monai':<10}{t_monai:>10.3f}{c_monai:>10.3f}")
    print(f"ratio brainseg/monai: wall {t_ours / t_monai:.3f}, CPU {c_ours / c_monai:.3f} (target <= 1.05)")
    print(f"max |prob difference| (window placement and Gaussian centre differ): {(a - b).abs().max():.3g}")


if __name__ == "__main__":
    main()
