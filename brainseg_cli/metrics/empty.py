"""Empty-mask policies: the value of a metric when the reference or the prediction is empty.

docs/DEFINITIONS.md §3 fixes the table. Overlap metrics are computed from voxel counts, so only ``0 / 0`` needs a
policy; distance metrics have no surface to measure when either mask is empty, so every empty case
needs one. ``D`` is the image diagonal in mm (:func:`image_diagonal`).

========================  ==========  ===========  =========  ===============  ===
case (policy ``brats``)   Dice, IoU   sensitivity  precision  HD95, HD, ASSD   NSD
========================  ==========  ===========  =========  ===============  ===
both empty                1           1            1          0                1
reference empty only      0           NaN          0          D                0
prediction empty only     0           0            NaN        D                0
========================  ==========  ===========  =========  ===============  ===

Policy ``nan`` (nnU-Net / MONAI style): every cell of the table becomes NaN except Dice and IoU,
which are 0 when exactly one mask is empty. Specificity and volumes never depend on the policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum

NAN = float("nan")


class EmptyPolicy(str, Enum):
    """How metrics are defined when the reference and/or the prediction mask is empty."""

    BRATS = "brats"
    NAN = "nan"


#: One-line description of each policy, written into every results file.
POLICY_DESCRIPTIONS: dict[EmptyPolicy, str] = {
    EmptyPolicy.BRATS: (
        "brats: both empty -> Dice/IoU/sensitivity/precision/NSD 1, HD95/HD/ASSD 0; exactly one empty -> "
        "Dice/IoU/NSD 0, HD95/HD/ASSD = image diagonal D (mm), sensitivity NaN if the reference is empty "
        "(0 otherwise), precision NaN if the prediction is empty (0 otherwise)"
    ),
    EmptyPolicy.NAN: (
        "nan: both empty -> every metric NaN except specificity and volumes; exactly one empty -> "
        "Dice/IoU 0, sensitivity/precision/HD95/HD/ASSD/NSD NaN"
    ),
}

def as_policy(policy: EmptyPolicy | str) -> EmptyPolicy:
    """Return ``policy`` as an :class:`EmptyPolicy` (accepts ``"brats"`` / ``"nan"``).

    Raises:
        ValueError: an unknown policy name (callers validate user input before this).
    """
    return policy if isinstance(policy, EmptyPolicy) else EmptyPolicy(policy)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The image diagonal ``D`` in mm: ``sqrt(sum((shape * spacing) ** 2))``.

    Args:
        shape: spatial shape ``(X, Y, Z)`` (or ``(X, Y)``).
        spacing: voxel size in mm per axis, same order.

    Returns:
        D in mm (373.13 for 240 x 240 x 155 at 1 mm).
    """
    return math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing)))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else NAN


def empty_overlap_value(*, policy: EmptyPolicy | str) -> float:
    """Dice, IoU, sensitivity and precision when both masks are empty (their ``0 / 0`` case).

    Returns:
        1.0 under ``brats``, NaN under ``nan``.
    """
    return 1.0 if as_policy(policy) is EmptyPolicy.BRATS else NAN


def empty_distance_value(*, policy: EmptyPolicy | str, ref_empty: bool, pred_empty: bool, diagonal: float) -> float:
    """HD95, HD and ASSD when at least one mask is empty.

    Args:
        policy: the empty-case policy.
        ref_empty: the reference mask is empty.
        pred_empty: the prediction mask is empty.
        diagonal: the image diagonal D in mm.

    Returns:
        ``brats``: 0 when both are empty, D when exactly one is; ``nan``: NaN.

    Raises:
        ValueError: neither mask is empty (the distance is then measured, not decided).
    """
    if not (ref_empty or pred_empty):
        raise ValueError("empty_distance_value needs at least one empty mask")
    if as_policy(policy) is EmptyPolicy.NAN:
        return NAN
    return 0.0 if (ref_empty and pred_empty) else float(diagonal)


def empty_nsd_value(*, policy: EmptyPolicy | str, ref_empty: bool, pred_empty: bool) -> float:
    """Normalised surface distance when at least one mask is empty.

    Returns:
        ``brats``: 1 when both are empty, 0 when exactly one is; ``nan``: NaN.

    Raises:
        ValueError: neither mask is empty.
    """
    if not (ref_empty or pred_empty):
        raise ValueError("empty_nsd_value needs at least one empty mask")
    if as_policy(policy) is EmptyPolicy.NAN:
        return NAN
    return 1.0 if (ref_empty and pred_empty) else 0.0
