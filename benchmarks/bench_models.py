"""Forward time of every brainseg model beside MONAI networks of the same size (CPU, or a GPU).

Run: ``python benchmarks/bench_models.py [--device cuda]`` (defaults: one 128^3 patch with 4 channels for 3-D
models, a batch of 16 x 256^2 slices with 4 channels for 2-D ones; 4 output classes; eval mode
under ``torch.inference_mode``; fp32 and bf16 autocast). Each model is warmed up on a half-size
input and then timed ``--repeats`` times at full size (the best time is kept). References:

- ``unet`` (2-D and 3-D, nnU-Net topology from ``plan_unet_topology``) vs MONAI ``DynUNet`` with the
  same kernels, strides and filters (InstanceNorm, LeakyReLU): the same network, so the ratio
  measures the implementation;
- ``unet3d`` and ``unet2d-classic`` vs ``DynUNet`` with their levels and widths (BatchNorm, ReLU;
  DynUNet downsamples by strided convolution instead of max-pooling and keeps both convolutions of
  a level at full width);
- ``unet`` 3-D also vs MONAI ``UNet`` with the same widths (2 residual units per level): its first
  layer already downsamples, so it does much less full-resolution work: a different network of the
  same parameter size, shown for context;
- ``unetr`` and ``ratlesnet`` have no like-for-like MONAI reference here (MONAI's UNETR needs
  ``einops``); their absolute times are reported.

``ratio`` = brainseg time / MONAI time (below 1: brainseg is faster). The default run does about
12 full-size 3-D forward passes per precision; use ``--size 64 --batch2d 4`` for a quick run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from brainseg_cli.models import build_model, plan_unet_topology


def _time(model: nn.Module, shape: tuple[int, ...], *, bf16: bool, repeats: int, device: torch.device) -> float:
    warm_shape = (1, shape[1], *(s // 2 for s in shape[2:]))  # half-size: still a valid multiple
    best = float("inf")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model(torch.randn(warm_shape, device=device))
        x = torch.randn(shape, device=device)
        model(x)  # full-size warm-up too (cuDNN picks its algorithms per shape)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            best = min(best, time.perf_counter() - start)
    return best


def _monai_unet(dims: int, channels: list[int]) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=dims, in_channels=4, out_channels=4, channels=channels, strides=(2,) * (len(channels) - 1),
        num_res_units=2, norm=("INSTANCE", {"affine": True}),
    )


def _dynunet(dims: int, strides: list[list[int]], filters: list[int], *, kernels: list[list[int]] | None = None,
             batch_relu: bool = False) -> nn.Module:
    from monai.networks.nets import DynUNet

    norm = ("BATCH", {}) if batch_relu else ("INSTANCE", {"affine": True})
    act = ("relu", {"inplace": True}) if batch_relu else ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
    return DynUNet(
        spatial_dims=dims, in_channels=4, out_channels=4, kernel_size=kernels or [[3] * dims] * len(strides),
        strides=strides, upsample_kernel_size=strides[1:], filters=filters, norm_name=norm, act_name=act,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="3-D patch edge (default 128)")
    parser.add_argument("--batch2d", type=int, default=16, help="2-D batch of 256^2 slices (default 16)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per model and precision (best kept)")
    parser.add_argument("--only", nargs="*", default=None, help="row labels to run (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (GPU)")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device(args.device)

    size3 = (args.size,) * 3
    k3, s3 = plan_unet_topology(size3, (1.0, 1.0, 1.0))
    k2, s2 = plan_unet_topology((256, 256), (1.0, 1.0))
    f3 = [min(32 * 2**i, 320) for i in range(len(s3))]
    f2 = [min(32 * 2**i, 512) for i in range(len(s2))]
    shape3 = (1, 4, *size3)
    shape2 = (args.batch2d, 4, 256, 256)

    # (label, shape, brainseg builder, MONAI label, MONAI builder or None)
    # A row without a brainseg builder reuses the times of the previous row with the same label.
    rows: list[tuple[str, tuple[int, ...], Callable[[], nn.Module] | None, str, Callable[[], nn.Module] | None]] = [
        ("unet 3d", shape3, lambda: build_model("unet", spatial_dims=3, in_channels=4, num_classes=4, kernel_sizes=k3, strides=s3),
         "DynUNet", lambda: _dynunet(3, s3, f3, kernels=k3)),
        ("unet 3d", shape3, None, "UNet", lambda: _monai_unet(3, f3)),
        ("unet3d", shape3, lambda: build_model("unet3d", spatial_dims=3, in_channels=4, num_classes=4),
         "DynUNet BN", lambda: _dynunet(3, [[1] * 3] + [[2] * 3] * 3, [64, 128, 256, 512], batch_relu=True)),
        ("unetr small", shape3,
         lambda: build_model("unetr", spatial_dims=3, in_channels=4, num_classes=4, preset="small", img_size=list(size3)),
         "-", None),
        ("unetr base", shape3,
         lambda: build_model("unetr", spatial_dims=3, in_channels=4, num_classes=4, preset="base", img_size=list(size3)),
         "-", None),
        ("ratlesnet", shape3, lambda: build_model("ratlesnet", spatial_dims=3, in_channels=4, num_classes=4), "-", None),
        ("unet 2d", shape2, lambda: build_model("unet", spatial_dims=2, in_channels=4, num_classes=4, kernel_sizes=k2, strides=s2),
         "DynUNet", lambda: _dynunet(2, s2, f2, kernels=k2)),
        ("unet2d-classic", shape2, lambda: build_model("unet2d-classic", spatial_dims=2, in_channels=4, num_classes=4),
         "DynUNet BN", lambda: _dynunet(2, [[1] * 2] + [[2] * 2] * 4, [32, 64, 128, 256, 512], batch_relu=True)),
    ]
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; 3-D input {shape3}, 2-D input {shape2}")
    header = (f"{'model':<15} {'params':>8} {'fp32 s':>8} {'bf16 s':>8} | {'MONAI':<15} {'params':>8} {'fp32 s':>8} "
              f"{'bf16 s':>8} | {'ratio fp32':>10} {'ratio bf16':>10}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    cache: dict[str, tuple[float, float, float]] = {}
    for label, shape, ours_fn, ref_label, ref_fn in rows:
        if args.only and label not in args.only:
            continue
        ours = ours_fn().eval().to(device) if ours_fn is not None else None
        ref = ref_fn().eval().to(device) if ref_fn is not None else None
        times: dict[tuple[str, bool], float] = {}
        # Interleaved (ours, MONAI) per precision, so that load changes hit both alike.
        for bf16 in (False, True):
            for key, model in (("ours", ours), ("ref", ref)):
                if model is not None:
                    times[key, bf16] = _time(model, shape, bf16=bf16, repeats=args.repeats, device=device)
        if ours is not None:
            cache[label] = (sum(p.numel() for p in ours.parameters()) / 1e6, times["ours", False], times["ours", True])
        n_ours, t32, t16 = cache[label]
        line = f"{label:<15} {n_ours:>7.2f}M {t32:>8.3f} {t16:>8.3f} | "
        if ref is None:
            line += f"{ref_label:<15} {'':>8} {'':>8} {'':>8} | {'':>10} {'':>10}"
        else:
            n_ref = sum(p.numel() for p in ref.parameters()) / 1e6
            r32, r16 = times["ref", False], times["ref", True]
            line += f"{ref_label:<15} {n_ref:>7.2f}M {r32:>8.3f} {r16:>8.3f} | {t32 / r32:>10.2f} {t16 / r16:>10.2f}"
        del ours, ref
        print(line, flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
