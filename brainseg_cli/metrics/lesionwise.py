"""BraTS 2023 lesion-wise Dice and HD95 (docs/DEFINITIONS.md §3).

The rules of the challenge's evaluation code (``rachitsaluja/BraTS-2023-Metrics``,
``get_lesion_wise_score`` / ``get_lesion_wise_results``), for one structure (WT, TC, ET, or a label):

1. Lesions are 26-connected components (``ndim``-connected; full connectivity).
2. The reference is dilated ``dilation_iterations`` times with the 18-connected structuring element
   (``generate_binary_structure(3, 2)``); reference components that fall into one dilated component
   form one lesion, and that dilated component is the lesion's search region.
3. A predicted component (26-connected) that touches a lesion's search region is a true positive
   of that lesion; the lesion's Dice and HD95 compare the lesion with the union of its true-positive
   components. A lesion without one is missed: Dice 0, HD95 = D (the challenge writes 374 for
   240 x 240 x 155 images; D = the image diagonal, 373.13 there).
4. Lesions whose volume is <= ``min_volume_mm3`` are left out (their matched components are still
   true positives, not false positives).
5. Predicted components that touch no lesion's search region are false positives: Dice 0, HD95 D.
6. Lesion-wise Dice = sum of kept lesion Dice / (#kept lesions + #false positives); lesion-wise
   HD95 = (sum of kept lesion HD95 + #FP * D) / (same). When the denominator is 0 (no kept lesion
   and no false positive) the challenge scores Dice 1 and HD95 0: that is the ``brats`` policy;
   the ``nan`` policy gives NaN.

The challenge parameters for glioma (BraTS-GLI, also SSA and PED): 3 dilation iterations, 50 mm³
(= 50 voxels at 1 mm). Meningioma uses 1 and 50, metastases 1 and 2.

Differences from the challenge code, both following docs/DEFINITIONS.md §3: each lesion's HD95 is this package's
voxel-surface HD95 (``max`` or ``pooled``) instead of DeepMind's surfel-area-weighted robust
Hausdorff; and a missed or false-positive lesion scores D instead of the constant 374.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from brainseg_cli.metrics.empty import NAN, EmptyPolicy, as_policy, image_diagonal
from brainseg_cli.metrics.surface import bounding_box, surface_distances


@dataclass(frozen=True)
class LesionWiseParams:
    """The challenge's lesion-matching parameters.

    Attributes:
        dilation_iterations: iterations of the 18-connected dilation of the reference.
        min_volume_mm3: lesions of at most this volume (mm³) are left out.
    """

    dilation_iterations: int = 3
    min_volume_mm3: float = 50.0


#: BraTS 2023 glioma (GLI) parameters; also used for SSA and PED.
BRATS_GLI = LesionWiseParams(dilation_iterations=3, min_volume_mm3=50.0)


@dataclass(frozen=True)
class LesionWiseResult:
    """Lesion-wise scores of one structure in one case.

    Attributes:
        dice: lesion-wise Dice.
        hd95: lesion-wise HD95 (mm).
        n_tp: kept reference lesions with at least one matching predicted component.
        n_fn: kept reference lesions without one.
        n_fp: predicted components that match no reference lesion.
    """

    dice: float
    hd95: float
    n_tp: int
    n_fn: int
    n_fp: int


def both_empty_result(*, policy: EmptyPolicy | str = EmptyPolicy.BRATS) -> LesionWiseResult:
    """The score when there is no kept reference lesion and no false positive (the challenge's 0 / 0).

    Returns:
        Dice 1 and HD95 0 under ``brats`` (the challenge's rule); NaN for both under ``nan``.
    """
    if as_policy(policy) is EmptyPolicy.BRATS:
        return LesionWiseResult(dice=1.0, hd95=0.0, n_tp=0, n_fn=0, n_fp=0)
    return LesionWiseResult(dice=NAN, hd95=NAN, n_tp=0, n_fn=0, n_fp=0)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def lesion_wise(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    *,
    spacing: Sequence[float],
    hd95_mode: str = "max",
    policy: EmptyPolicy | str = EmptyPolicy.BRATS,
    params: LesionWiseParams = BRATS_GLI,
    diagonal: float | None = None,
) -> LesionWiseResult:
    """BraTS 2023 lesion-wise Dice and HD95 of one structure.

    Args:
        pred_mask: predicted mask ``(X, Y, Z)`` (or ``(X, Y)``); nonzero = inside.
        ref_mask: reference mask, same shape.
        spacing: voxel size in mm per axis.
        hd95_mode: ``"max"`` or ``"pooled"`` (see :meth:`SurfaceDistances.hd95`).
        policy: decides the 0 / 0 case (no kept lesion, no false positive) and, under ``nan``, makes
            HD95 NaN when exactly one mask is empty.
        params: dilation iterations and size threshold.
        diagonal: D in mm (default: the diagonal of ``ref_mask``'s grid).

    Returns:
        The :class:`LesionWiseResult`.
    """
    from scipy import ndimage

    p = np.asarray(pred_mask).astype(bool, copy=False)
    g = np.asarray(ref_mask).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    policy = as_policy(policy)
    d_max = image_diagonal(g.shape, spacing) if diagonal is None else float(diagonal)
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    ref_empty, pred_empty = not g.any(), not p.any()

    n_kept = n_tp = n_fn = n_fp = 0
    dice_sum = hd_sum = 0.0
    box = bounding_box(p | g, margin=params.dilation_iterations + 1)
    if box is not None:
        p, g = p[box], g[box]
        full = ndimage.generate_binary_structure(p.ndim, p.ndim)
        pred_cc, n_pred_cc = ndimage.label(p, structure=full)
        if not ref_empty:
            dilated = ndimage.binary_dilation(g, structure=ndimage.generate_binary_structure(g.ndim, 2),
                                              iterations=params.dilation_iterations)
            regions_cc, _ = ndimage.label(dilated, structure=full)
        else:
            regions_cc = np.zeros(g.shape, dtype=np.int32)
        pred_boxes = ndimage.find_objects(pred_cc)
        matched: set[int] = set()
        for lesion, region_box in enumerate(ndimage.find_objects(regions_cc), start=1):
            if region_box is None:
                continue
            in_region = regions_cc[region_box] == lesion
            hits = np.unique(pred_cc[region_box][in_region])
            hits = [int(h) for h in hits if h]
            matched.update(hits)
            lesion_voxels = int(np.count_nonzero(in_region & g[region_box]))
            if lesion_voxels * voxel_mm3 <= params.min_volume_mm3:
                continue
            n_kept += 1
            if not hits:
                n_fn += 1
                hd_sum += d_max
                continue
            n_tp += 1
            sub = region_box
            for h in hits:
                sub = _union_box(sub, pred_boxes[h - 1])
            sub = _grow(sub, 1, g.shape)
            lesion_mask = (regions_cc[sub] == lesion) & g[sub]
            pred_lesion = np.isin(pred_cc[sub], hits)
            inter = np.count_nonzero(lesion_mask & pred_lesion)
            dice_sum += 2.0 * int(inter) / int(np.count_nonzero(lesion_mask) + np.count_nonzero(pred_lesion))
            dists = surface_distances(pred_lesion, lesion_mask, spacing=spacing)
            hd_sum += dists.hd95(hd95_mode) if dists is not None else d_max
        n_fp = n_pred_cc - len(matched)
        hd_sum += n_fp * d_max

    denominator = n_kept + n_fp
    if denominator == 0:
        empty = both_empty_result(policy=policy)
        return LesionWiseResult(dice=empty.dice, hd95=empty.hd95, n_tp=n_tp, n_fn=n_fn, n_fp=n_fp)
    hd95 = hd_sum / denominator
    if policy is EmptyPolicy.NAN and ref_empty != pred_empty:
        hd95 = NAN  # the nan policy: no distance when exactly one mask is empty
    return LesionWiseResult(dice=float(dice_sum / denominator), hd95=float(hd95), n_tp=n_tp, n_fn=n_fn, n_fp=int(n_fp))
