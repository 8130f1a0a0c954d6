"""Choosing N training cases for small-data studies (``finetune --train-cases N --select ...``).

Two methods, both reproducible for a given seed:

- ``random``: N cases drawn uniformly without replacement.
- ``lesion-balanced``: the cases are sorted by lesion volume and cut into N quantile strata of
  (nearly) equal size (``numpy.array_split`` of the sorted order: the first strata get the extra
  case when the count does not divide); one case is drawn at random from each stratum. The
  selection therefore spans the whole lesion-volume distribution, from the smallest to the
  largest lesions, instead of depending on the luck of a random draw.

"Lesion volume" is whatever the caller measures; :func:`lesion_volumes_from_fingerprint` gives the
volume in mm³ of every foreground label of each case (all labels > 0 together).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brainseg_cli import choices
from brainseg_cli.errors import ConfigError, InputError, did_you_mean

logger = logging.getLogger(__name__)

#: Selection methods of :func:`select_cases`.
SELECT_METHODS: tuple[str, ...] = choices.SELECT_METHODS


def select_cases(
    cases: Sequence[str],
    lesion_volumes: Mapping[str, float] | None,
    n: int,
    *,
    method: str,
    seed: int,
) -> list[str]:
    """Pick ``n`` of ``cases`` (rules in the module docstring).

    Args:
        cases: candidate case names (no duplicates).
        lesion_volumes: case -> lesion volume (any unit; mm³ from
            :func:`lesion_volumes_from_fingerprint`); needed by ``lesion-balanced`` only (None is
            allowed for ``random``).
        n: number of cases to pick (1 .. ``len(cases)``).
        method: ``"random"`` or ``"lesion-balanced"``.
        seed: seed of the draw (same seed, same inputs -> same selection).

    Returns:
        The picked case names, in the order of ``cases``.

    Raises:
        ConfigError: unknown method, ``n`` out of range, duplicate case names.
        InputError: ``lesion-balanced`` without a (finite, non-negative) volume for some case.
    """
    if method not in SELECT_METHODS:
        raise ConfigError(f"unknown selection method '{method}'{did_you_mean(str(method), SELECT_METHODS)}; "
                          f"valid: {', '.join(SELECT_METHODS)}")
    names = [str(c) for c in cases]
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise ConfigError(f"case '{dup}' appears twice among the candidate cases")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(names):
        raise ConfigError(f"cannot select {n!r} training cases out of {len(names)} "
                          f"(choose 1 .. {len(names)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"selection seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng([seed, n, 0 if method == "random" else 1])
    if method == "random":
        picked = set(rng.choice(len(names), size=n, replace=False).tolist())
        return [c for i, c in enumerate(names) if i in picked]
    volumes = _checked_volumes(names, lesion_volumes)
    order = sorted(range(len(names)), key=lambda i: (volumes[i], names[i]))
    picked = set()
    for stratum in np.array_split(np.asarray(order, dtype=np.int64), n):
        picked.add(int(stratum[int(rng.integers(len(stratum)))]))
    return [c for i, c in enumerate(names) if i in picked]


def _checked_volumes(names: Sequence[str], lesion_volumes: Mapping[str, float] | None) -> list[float]:
    if lesion_volumes is None:
        raise InputError("lesion-balanced selection needs the lesion volume of every case, got none")
    out = []
    for name in names:
        if name not in lesion_volumes:
            raise InputError(f"lesion-balanced selection: no lesion volume for case '{name}'")
        value = float(lesion_volumes[name])
        if not math.isfinite(value) or value < 0:
            raise InputError(f"lesion-balanced selection: case '{name}' has lesion volume {value}")
        out.append(value)
    return out


def strata(cases: Sequence[str], lesion_volumes: Mapping[str, float], n: int) -> list[list[str]]:
    """The ``n`` lesion-volume strata ``lesion-balanced`` draws from (smallest volumes first).

    Returns:
        ``n`` lists of case names, each sorted by volume (then name).

    Raises:
        ConfigError / InputError: as :func:`select_cases`.
    """
    names = [str(c) for c in cases]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(names):
        raise ConfigError(f"cannot make {n!r} strata out of {len(names)} cases")
    volumes = _checked_volumes(names, lesion_volumes)
    order = sorted(range(len(names)), key=lambda i: (volumes[i], names[i]))
    return [[names[int(i)] for i in part] for part in np.array_split(np.asarray(order, dtype=np.int64), n)]


def lesion_volumes_from_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, float]:
    """Foreground volume (mm³, every label > 0) of each case of a dataset fingerprint.

    Args:
        fingerprint: from :func:`brainseg_cli.data.fingerprint.compute_fingerprint` (its
            ``cases`` entries hold ``label_voxels`` ``{"k": count}`` and ``spacing``).

    Returns:
        ``{case: volume_mm3}``.

    Raises:
        InputError: the fingerprint has no per-case entries.
    """
    entries = fingerprint.get("cases")
    if not entries:
        raise InputError("the dataset fingerprint holds no per-case entries (label voxel counts)")
    out: dict[str, float] = {}
    for entry in entries:
        voxel = float(np.prod([float(s) for s in entry["spacing"]]))
        count = sum(int(v) for k, v in (entry.get("label_voxels") or {}).items() if int(k) > 0)
        out[str(entry["case"])] = count * voxel
    return out


__all__ = ["SELECT_METHODS", "lesion_volumes_from_fingerprint", "select_cases", "strata"]
