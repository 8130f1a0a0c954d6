"""Overhead of brainseg's training loop against a plain PyTorch loop.

Both loops step the *same* network (identical initial weights), on the *same* batches (a fixed pool
of patches, served instantly, so data loading is not measured), with the same optimiser (SGD,
momentum 0.99, Nesterov), schedule, loss (Dice + CE with deep supervision) and gradient clipping.
The plain loop is the ten lines every PyTorch tutorial has; brainseg's is
:func:`brainseg_cli.training.fit.fit` (batch assembly from per-sample seeds, autocast context, loss
bookkeeping, schedule, progress callback). Time per step is measured inside the training phase
only (between the progress callbacks at steps 10 and N), so start-up, validation and checkpoint
writing are excluded from both. The runs alternate and the median of the repeats is reported.

    python benchmarks/bench_training_loop.py [--device cpu|cuda] [--steps 60] [--repeats 3]

Target: brainseg's step time within 5 % of the plain loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brainseg_cli.losses import DeepSupervisionLoss, build_loss
from brainseg_cli.models import build_model
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.fit import fit
from brainseg_cli.training.optim import StepSchedule, build_optimizer

LABELS = {"background": 0, "a": 1, "b": 2}


class Pool:
    """A fixed pool of patches; ``sample`` picks one with the sample's generator (no computation)."""

    def __init__(self, n: int, patch: tuple[int, ...], channels: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = [rng.normal(size=(channels, *patch)).astype(np.float32) for _ in range(n)]
        self.labels = [rng.integers(0, 3, size=patch).astype(np.uint8) for _ in range(n)]
        self.case = (self.images[0], self.labels[0])

    def load_case(self, case: str):
        return self.case

    def sample(self, case, *, rng, force_foreground, augment):
        i = int(rng.integers(len(self.images)))
        return self.images[i], self.labels[i]


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", spatial_dims=3, in_channels=2, num_classes=3, depth=3, base_features=8,
                       deep_supervision=True)


def brainseg_step_seconds(pool: Pool, *, steps: int, patch, batch: int, device: str) -> float:
    marks: dict[int, float] = {}

    def progress(description: str, done: int, total: int) -> None:
        if "validating" not in description:
            marks[done] = time.perf_counter()

    plan = {"labels": LABELS, "regions": {}, "region_based": False, "channels": ["T1", "FLAIR"],
            "patch_size": list(patch), "batch_size": batch, "slice_axis": None}
    with tempfile.TemporaryDirectory() as tmp:
        fit(model=make_model(), plan=plan, dataset=pool, train_cases=["a", "b"], val_cases=["c"],
            run_dir=Path(tmp) / "run", progress=progress,
            config=TrainConfig(epochs=1, iterations_per_epoch=steps, workers=0, device=device, precision="fp32"))
    first, last = 10, max(marks)
    return (marks[last] - marks[first]) / (last - first)


def plain_step_seconds(pool: Pool, *, steps: int, batch: int, device: str) -> float:
    # The same batches fit draws: sample j of step t comes from default_rng([seed, t, j]), which
    # first picks one of the 2 training cases, then the patch.
    batches = []
    for t in range(steps):
        picks = []
        for j in range(batch):
            rng = np.random.default_rng([0, t, j])
            rng.integers(2)
            picks.append(pool.sample(None, rng=rng, force_foreground=False, augment=False))
        batches.append((torch.from_numpy(np.stack([p[0] for p in picks])),
                        torch.from_numpy(np.stack([p[1] for p in picks]).astype(np.int64))))
    model = make_model().to(device)
    loss_fn = DeepSupervisionLoss(build_loss("dice-ce", activation="softmax", include_background=False),
                                  model.num_outputs)
    opt = build_optimizer(model.parameters(), name="sgd")
    sched = StepSchedule(opt, name="poly", total_steps=steps)
    model.train()
    marks = []
    for t, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        sched.step()
        if (t + 1) % 10 == 0:
            float(loss.detach())  # the same synchronisation point as fit's progress report
            marks.append(time.perf_counter())
    return (marks[-1] - marks[0]) / (10 * (len(marks) - 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    patch = (args.patch,) * 3
    pool = Pool(16, patch, channels=2)
    ours, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_step_seconds(pool, steps=args.steps, batch=args.batch, device=args.device))
        ours.append(brainseg_step_seconds(pool, steps=args.steps, patch=patch, batch=args.batch, device=args.device))
    p, o = statistics.median(plain), statistics.median(ours)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"training-loop overhead: unet (depth 3, 8 features, deep supervision), patch {args.patch}^3, "
          f"batch {args.batch}, {args.steps} steps, {args.repeats} repeats, {device}")
    print(f"{'loop':<22}{'ms/step (median)':>18}{'all repeats (ms)':>32}")
    print(f"{'plain PyTorch':<22}{p * 1e3:>18.1f}{'  '.join(f'{v * 1e3:.1f}' for v in plain):>32}")
    print(f"{'brainseg fit':<22}{o * 1e3:>18.1f}{'  '.join(f'{v * 1e3:.1f}' for v in ours):>32}")
    print(f"ratio brainseg / plain: {o / p:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
