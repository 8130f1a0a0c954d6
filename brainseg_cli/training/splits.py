"""Training/validation splits at the case level: a held-out count, a fraction, or K-fold.

Splits depend only on the *sorted case names* and a fixed constant seed (:data:`SPLIT_SEED`), not on
the training ``--seed``: the five folds of a K-fold split are the same partition whatever seed each
fold is trained with, so they can be ensembled by ``predict`` without a case leaking into training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from brainseg_cli.errors import ConfigError

logger = logging.getLogger(__name__)

#: Seed of the case shuffle (nnU-Net uses 12345 for its folds too).
SPLIT_SEED = 12345

#: Fraction held out when no split option is given.
DEFAULT_VAL_SPLIT = 0.2


def _shuffled(cases: Sequence[str]) -> list[str]:
    ordered = sorted(cases)
    if len(set(ordered)) != len(ordered):
        dup = next(c for i, c in enumerate(ordered) if i and ordered[i - 1] == c)
        raise ConfigError(f"case '{dup}' appears twice in the case list")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ordered))
    return [ordered[i] for i in order]


def kfold_splits(cases: Sequence[str], *, folds: int) -> list[tuple[list[str], list[str]]]:
    """All ``folds`` (train, val) pairs of a deterministic case-level K-fold split.

    Every case is in exactly one validation fold; fold sizes differ by at most one.

    Raises:
        ConfigError: fewer cases than folds, or fewer than 2 folds.
    """
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}")
    if len(cases) < folds:
        raise ConfigError(f"{folds}-fold split needs at least {folds} cases, the dataset has {len(cases)}")
    shuffled = _shuffled(cases)
    parts = np.array_split(np.arange(len(shuffled)), folds)
    out = []
    for part in parts:
        held = set(part.tolist())
        val = sorted(shuffled[i] for i in held)
        train = sorted(shuffled[i] for i in range(len(shuffled)) if i not in held)
        out.append((train, val))
    return out


def split_cases(
    cases: Sequence[str],
    *,
    val_cases: int | None = None,
    val_split: float | None = None,
    fold: int | None = None,
    folds: int = 5,
) -> tuple[list[str], list[str]]:
    """Split case names into training and validation cases.

    At most one of ``val_cases``, ``val_split`` and ``fold`` may be given; with none,
    ``val_split = 0.2``. A fraction is rounded to the nearest count, at least 1 and at most
    ``len(cases) - 1``. The held-out cases of ``val_cases``/``val_split`` are the first of the
    fixed shuffle, so a larger count holds out a superset.

    Args:
        cases: case names (order does not matter).
        val_cases: number of validation cases.
        val_split: fraction of validation cases, in (0, 1).
        fold: validation fold K (0-based) of a ``folds``-fold split.
        folds: number of folds.

    Returns:
        ``(train_cases, val_cases)``, each sorted by name; disjoint, together all cases.

    Raises:
        ConfigError: exclusive options combined, fewer than 2 cases, or a count/fold out of range.
    """
    given = [n for n, v in (("--val-cases", val_cases), ("--val-split", val_split), ("--fold", fold)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"choose one of --val-cases, --val-split and --fold, got {' and '.join(given)}")
    n = len(cases)
    if n < 2:
        raise ConfigError(f"training needs at least 2 cases (one for validation), the dataset has {n}")
    if fold is not None:
        if not 0 <= fold < folds:
            raise ConfigError(f"fold {fold} does not exist with --folds {folds} (folds are 0..{folds - 1})")
        return kfold_splits(cases, folds=folds)[fold]
    if val_cases is not None:
        if not 1 <= val_cases <= n - 1:
            raise ConfigError(f"--val-cases {val_cases} must be between 1 and {n - 1} for a dataset of {n} cases")
        count = val_cases
    else:
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"--val-split must be in (0, 1), got {fraction}")
        count = min(max(int(round(fraction * n)), 1), n - 1)
    shuffled = _shuffled(cases)
    return sorted(shuffled[count:]), sorted(shuffled[:count])
