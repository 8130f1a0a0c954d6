"""Overlap metrics from voxel counts: Dice, IoU, sensitivity, specificity, precision, volumes.

Definitions (docs/DEFINITIONS.md §3), with P the predicted and G the reference mask over the whole image:
Dice = 2|P∩G| / (|P|+|G|), IoU = |P∩G| / |P∪G|, sensitivity = TP/(TP+FN), specificity =
TN/(TN+FP), precision = TP/(TP+FP). A ``0 / 0`` is decided by the empty-case policy
(:mod:`brainseg_cli.metrics.empty`); the values equal MONAI's ``DiceMetric(ignore_empty=False)``
and ``ConfusionMatrixMetric`` under the default ``brats`` policy.

All label values are counted in one pass: :func:`label_confusion` builds the reference x prediction
count matrix with one ``np.bincount``, and the counts of any label or region (a union of labels)
are sums over that matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from brainseg_cli.metrics.empty import NAN, EmptyPolicy, as_policy, empty_overlap_value, ratio

#: Above this many distinct values per axis, :func:`label_confusion` maps values through np.unique.
_DIRECT_MAX_VALUE = 255


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of one binary comparison (prediction P vs reference G).

    Attributes:
        tp: voxels in P and G.
        fp: voxels in P only.
        fn: voxels in G only.
        tn: voxels in neither.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n_pred(self) -> int:
        """|P|."""
        return self.tp + self.fp

    @property
    def n_ref(self) -> int:
        """|G|."""
        return self.tp + self.fn

    @property
    def total(self) -> int:
        """Voxels in the image."""
        return self.tp + self.fp + self.fn + self.tn


def confusion(pred_mask: np.ndarray, ref_mask: np.ndarray) -> Confusion:
    """Count TP, FP, FN, TN of two binary masks.

    Args:
        pred_mask: predicted mask, any shape (e.g. ``(X, Y, Z)``); nonzero = inside.
        ref_mask: reference mask, same shape.

    Returns:
        The :class:`Confusion`.

    Raises:
        ValueError: the shapes differ.
    """
    p = np.asarray(pred_mask).astype(bool, copy=False)
    g = np.asarray(ref_mask).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    tp = int(np.count_nonzero(p & g))
    return Confusion(tp=tp, fp=n_p - tp, fn=n_g - tp, tn=p.size - n_p - n_g + tp)


@dataclass(frozen=True)
class LabelConfusion:
    """Reference x prediction voxel counts of two label arrays.

    Attributes:
        values: the label values that occur in either array (plus 0 when ``outside`` > 0), sorted.
        counts: ``(len(values), len(values))`` int64; ``counts[i, j]`` = voxels whose reference is
            ``values[i]`` and prediction ``values[j]``.
    """

    values: np.ndarray
    counts: np.ndarray

    @property
    def ref_values(self) -> list[int]:
        """Values that occur in the reference."""
        return [int(v) for v, n in zip(self.values, self.counts.sum(axis=1)) if n]

    @property
    def pred_values(self) -> list[int]:
        """Values that occur in the prediction."""
        return [int(v) for v, n in zip(self.values, self.counts.sum(axis=0)) if n]

    def for_members(self, members: Iterable[int]) -> Confusion:
        """The counts of the mask "label in ``members``" (one label, or a region's labels).

        Args:
            members: label values forming the mask; values that occur nowhere are allowed.

        Returns:
            The :class:`Confusion` of that mask.
        """
        sel = np.isin(self.values, np.asarray(list(members), dtype=np.int64))
        total = int(self.counts.sum())
        tp = int(self.counts[np.ix_(sel, sel)].sum())
        n_ref = int(self.counts[sel, :].sum())
        n_pred = int(self.counts[:, sel].sum())
        return Confusion(tp=tp, fp=n_pred - tp, fn=n_ref - tp, tn=total - n_pred - n_ref + tp)


def label_confusion(pred_labels: np.ndarray, ref_labels: np.ndarray, *, outside: int = 0) -> LabelConfusion:
    """Count every (reference value, predicted value) pair in one pass.

    Args:
        pred_labels: integer label array, any shape (e.g. ``(X, Y, Z)``), non-negative values.
        ref_labels: integer label array, same shape.
        outside: voxels not in these arrays where both are 0 (the background around a crop);
            added to the (0, 0) count.

    Returns:
        The :class:`LabelConfusion`.

    Raises:
        ValueError: the shapes differ or the arrays hold negative values.
    """
    p = np.asarray(pred_labels)
    g = np.asarray(ref_labels)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    if p.dtype == bool:
        p = p.view(np.uint8)
    if g.dtype == bool:
        g = g.view(np.uint8)
    if p.size:
        lo = min(int(p.min()), int(g.min()))
        hi = max(int(p.max()), int(g.max()))
    else:
        lo = hi = 0
    if lo < 0:
        raise ValueError(f"label arrays must be non-negative, got value {lo}")
    if hi <= _DIRECT_MAX_VALUE:
        k = hi + 1
        joint = g.astype(np.intp).ravel() * k + p.ravel()
        counts = np.bincount(joint, minlength=k * k).reshape(k, k)
        values = np.arange(k, dtype=np.int64)
    else:
        values, inverse = np.unique(np.concatenate([g.ravel(), p.ravel()]), return_inverse=True)
        k = len(values)
        gi, pi = inverse[: g.size], inverse[g.size:]
        counts = np.bincount(gi.astype(np.intp) * k + pi, minlength=k * k).reshape(k, k)
        values = values.astype(np.int64)
    if outside:
        if values.size == 0 or values[0] != 0:
            values = np.concatenate([[0], values])
            counts = np.pad(counts, ((1, 0), (1, 0)))
        counts[0, 0] += int(outside)
    keep = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
    return LabelConfusion(values=values[keep], counts=counts[np.ix_(keep, keep)].astype(np.int64))


def overlap_metrics(counts: Confusion, *, policy: EmptyPolicy | str = EmptyPolicy.BRATS) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity and precision of one comparison.

    Args:
        counts: the voxel counts.
        policy: the empty-case policy (docs/DEFINITIONS.md §3): both masks empty gives Dice, IoU, sensitivity and
            precision 1 (``brats``) or NaN (``nan``); exactly one empty gives sensitivity and
            precision as the counts give them (0, or NaN for 0/0) under ``brats``, NaN under ``nan``.

    Returns:
        ``{"dice", "iou", "sensitivity", "specificity", "precision"}`` -> float (NaN where undefined).
    """
    c = counts
    both_empty = c.n_pred == 0 and c.n_ref == 0
    out = {
        "dice": ratio(2 * c.tp, c.n_pred + c.n_ref),
        "iou": ratio(c.tp, c.tp + c.fp + c.fn),
        "sensitivity": ratio(c.tp, c.tp + c.fn),
        "specificity": ratio(c.tn, c.tn + c.fp),
        "precision": ratio(c.tp, c.tp + c.fp),
    }
    if both_empty:
        value = empty_overlap_value(policy=policy)
        for key in ("dice", "iou", "sensitivity", "precision"):
            out[key] = value
    elif (c.n_pred == 0 or c.n_ref == 0) and as_policy(policy) is EmptyPolicy.NAN:
        # docs/DEFINITIONS.md §3, policy nan: with exactly one mask empty only Dice and IoU (0) stay defined.
        out["sensitivity"] = out["precision"] = NAN
    return out


def volumes(counts: Confusion, *, spacing: Sequence[float]) -> dict[str, float]:
    """Predicted and reference volume in mL, and their difference (prediction - reference).

    Args:
        counts: the voxel counts.
        spacing: voxel size in mm per axis.

    Returns:
        ``{"volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}``.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    pred, ref = counts.n_pred * voxel_ml, counts.n_ref * voxel_ml
    return {"volume_pred_ml": pred, "volume_ref_ml": ref, "volume_diff_ml": (counts.n_pred - counts.n_ref) * voxel_ml}


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (the ``brats`` policy).

    Args:
        pred_mask: predicted mask, any shape; nonzero = inside.
        ref_mask: reference mask, same shape.

    Returns:
        2|P∩G| / (|P|+|G|), or 1.0 if both masks are empty.
    """
    c = confusion(pred_mask, ref_mask)
    denominator = c.n_pred + c.n_ref
    return 2.0 * c.tp / denominator if denominator else 1.0


def dice_per_label(pred_labels: np.ndarray, ref_labels: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice of each label in one pass over the arrays (``brats`` policy: both empty -> 1.0).

    Args:
        pred_labels: predicted integer labels, any shape (e.g. ``(X, Y, Z)``), non-negative.
        ref_labels: reference integer labels, same shape.
        labels: the label values to score.

    Returns:
        ``{label: dice}`` in the order of ``labels``.
    """
    lc = label_confusion(pred_labels, ref_labels)
    out: dict[int, float] = {}
    for label in labels:
        c = lc.for_members([int(label)])
        denominator = c.n_pred + c.n_ref
        out[int(label)] = 2.0 * c.tp / denominator if denominator else 1.0
    return out
