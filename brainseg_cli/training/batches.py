"""Training batches: what :func:`~brainseg_cli.training.fit.fit` draws, step by step.

The global batch of step ``t`` has ``plan.batch_size`` samples; sample ``j`` is drawn (case
choice, patch position, augmentation) from its own generator ``numpy.random.default_rng([seed, t, j])``,
and the last share of each batch (``plan.sampling.foreground_fraction``, nnU-Net's 1/3) is
forced to contain foreground. A batch is therefore a pure function of ``(seed, t)``: the same
whatever the number of data-loading workers, after a ``--resume``, and across data-parallel ranks
(rank ``r`` of ``W`` takes samples ``j = r, r + W, ...``, so W processes see exactly the global
batch one process would).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from brainseg_cli.training import distributed as D

#: Default share of each batch forced to contain foreground (nnU-Net: 0.33); plans override it
#: with ``plan.sampling.foreground_fraction``.
FOREGROUND_FRACTION = 1.0 / 3.0


class TrainingCases(Protocol):
    """What :func:`fit` needs from the data: preprocessed cases and a patch sampler."""

    def load_case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, X, Y, Z) float32, label (X, Y, Z) uint8)`` of one case in the plan's space."""

    def label_voxels(self, case: str) -> dict[int, int]:
        """``{label value: voxel count}`` of one case's reference in the plan's space (absent labels may be left out)."""

    def sample(self, case: str, *, rng: np.random.Generator, force_foreground: bool,
               augment: bool) -> tuple[np.ndarray, np.ndarray]:
        """One training patch ``(image (C, *patch) float32, label (*patch) integer)``."""


def local_sample_indices(batch_size: int, ctx: D.DistContext) -> list[int]:
    """Indices ``j`` of the global batch this rank draws (``rank, rank + W, ...``)."""
    return list(range(ctx.rank, batch_size, ctx.world_size))


def foreground_forced(j: int, batch_size: int, fraction: float, rng: np.random.Generator) -> bool:
    """Whether sample ``j`` of a batch must contain foreground.

    nnU-Net's rule: the samples ``j >= round(batch_size * (1 - fraction))`` are forced. With a
    batch of one (where that rule never forces anything) the sample is forced with probability
    ``fraction``, drawn from its own generator.
    """
    if batch_size == 1:
        return bool(rng.random() < fraction)
    return j >= round(batch_size * (1.0 - fraction))


class StepBatches(torch.utils.data.Dataset):
    """Item ``k`` is this rank's share of the global batch of step ``first_step + k``.

    Args:
        data: the cases (:class:`TrainingCases`).
        cases: training case names.
        batch_size: the global batch size.
        seed: the run's seed.
        first_step: global step of item 0.
        num_steps: number of items.
        indices: the sample indices this rank draws (:func:`local_sample_indices`).
        augment: augment the patches.
        foreground_fraction: share of each batch forced to contain foreground.
    """

    def __init__(self, data: TrainingCases, cases: Sequence[str], *, batch_size: int, seed: int, first_step: int,
                 num_steps: int, indices: Sequence[int], augment: bool,
                 foreground_fraction: float = FOREGROUND_FRACTION) -> None:
        self.data = data
        self.cases = list(cases)
        self.batch_size = batch_size
        self.seed = seed
        self.first_step = first_step
        self.num_steps = num_steps
        self.indices = list(indices)
        self.augment = augment
        self.foreground_fraction = foreground_fraction

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.first_step + k
        images, labels = [], []
        for j in self.indices:
            rng = np.random.default_rng([self.seed, step, j])
            case = self.cases[int(rng.integers(len(self.cases)))]
            forced = foreground_forced(j, self.batch_size, self.foreground_fraction, rng)
            image, label = self.data.sample(case, rng=rng, force_foreground=forced, augment=self.augment)
            images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
            labels.append(torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)))
        return torch.stack(images), torch.stack(labels)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_iterator(batches: StepBatches, *, workers: int, pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate the steps in order, loading ahead in ``workers`` processes (0: in this process)."""
    if workers == 0:
        return (batches[k] for k in range(len(batches)))
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=_worker_init, persistent_workers=False, prefetch_factor=2,
    )
    return iter(loader)


def case_iterator(dataset: TrainingCases, cases: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(case, image, label)`` of each case in order, loaded one at a time (validation)."""
    for case in cases:
        image, label = dataset.load_case(case)
        yield case, image, label


def close_iterator(iterator: Iterator) -> None:
    """Stop the loading workers of a :func:`batch_iterator` (nothing for one without workers)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
