"""Training-step time of the default CPU plan's network: eager fp32 against ``channels_last`` and ``torch.compile``.

One process, one network (the 2-D ``unet`` of the BraTS CPU plan: 16 base features, six levels of 3x3
convolutions, deep supervision, 4 input channels, 3 region outputs), the same batch (``--batch`` slices of
``--patch`` pixels, fixed random inputs and region masks), the same loss (sigmoid Dice + BCE over the
deep-supervision outputs), optimiser (SGD, momentum 0.99, Nesterov) and gradient clipping as ``pretrain``.
Per variant: ``--warmup`` untimed steps (the first one's time is printed: it holds ``torch.compile``'s
compilation), then the median of ``--steps`` timed steps. Variants:

- ``eager``: what ``pretrain`` does by default;
- ``channels_last``: network and batch in the NHWC memory format (oneDNN's preferred layout);
- ``compile``: ``torch.compile`` (Inductor, C++ kernels on the CPU), what ``pretrain --compile`` does.

    python benchmarks/bench_train_step.py [--variants eager channels_last compile] [--steps 15]
        [--patch 160 192] [--batch 5] [--threads N]

``ratio`` = the variant's step time / eager's (below 1: faster than eager).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from brainseg_cli.losses import DeepSupervisionLoss, build_loss
from brainseg_cli.models import build_model

VARIANTS = ("eager", "channels_last", "compile")
#: The network of the BraTS CPU plan (``run/plan.json`` of a default ``pretrain`` on BraTS 2018).
NETWORK = {"base_features": 16, "norm": "instance", "deep_supervision": True,
           "kernel_sizes": [[3, 3]] * 6, "strides": [[1, 1]] + [[2, 2]] * 5}


def time_variant(variant: str, *, patch: tuple[int, int], batch: int, steps: int, warmup: int) -> dict:
    """``{"first", "median"}`` seconds per training step of one variant (same seed, same batch)."""
    torch.manual_seed(0)
    model = build_model("unet", spatial_dims=2, in_channels=4, num_classes=3, **NETWORK)
    model.train()
    loss_fn = DeepSupervisionLoss(build_loss("dice-ce", activation="sigmoid"), model.num_outputs)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, *patch, generator=gen)
    y = (torch.rand(batch, 3, *patch, generator=gen) > 0.8).float()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    network = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"first": times[0], "median": statistics.median(times[warmup:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to time")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (default 3)")
    parser.add_argument("--patch", type=int, nargs=2, default=(160, 192), help="slice size (default 160 192)")
    parser.add_argument("--batch", type=int, default=5, help="slices per step (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1, got {args.steps} and {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"unet 2-D, {NETWORK['base_features']} base features, batch {args.batch} x {args.patch[0]}x{args.patch[1]}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'variant':<14} {'first step (s)':>14} {'s/step':>8} {'ratio':>6}")
    eager = None
    for variant in args.variants:
        t = time_variant(variant, patch=tuple(args.patch), batch=args.batch, steps=args.steps, warmup=args.warmup)
        eager = t["median"] if variant == "eager" else eager
        ratio = f"{t['median'] / eager:6.2f}" if eager else f"{'':>6}"
        print(f"{variant:<14} {t['first']:14.1f} {t['median']:8.3f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
