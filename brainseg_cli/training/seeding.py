"""Seeding and determinism of a training run.

The global generators (torch CPU and CUDA, NumPy's, Python's ``random``) are seeded from
``--seed`` at the start of a run and again at the start of every epoch from ``(seed, rank, epoch)``
(:func:`epoch_seed`), so that a resumed or re-run epoch draws the same numbers on every rank.
Batches do not use them: each sample has its own generator (:mod:`brainseg_cli.training.batches`).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of the global RNGs at the start of ``epoch`` on ``rank``."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def set_determinism(deterministic: bool) -> None:
    """Deterministic algorithms (``--deterministic``) or cuDNN autotuning (the default)."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
