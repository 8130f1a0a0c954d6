"""BraTS 2023 lesion-wise Dice and HD95: hand-built cases and a literal transcription of the challenge code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.metrics_data import perturbations
from scipy import ndimage

from brainseg_cli.metrics.empty import image_diagonal
from brainseg_cli.metrics.lesionwise import BRATS_GLI, LesionWiseParams, lesion_wise
from brainseg_cli.metrics.regions import BRATS_REGIONS, structure_mask
from brainseg_cli.metrics.surface import surface_distances

SHAPE = (60, 30, 30)


def _cube(mask: np.ndarray, corner: tuple[int, int, int], size: int) -> None:
    x, y, z = corner
    mask[x:x + size, y:y + size, z:z + size] = True


def _challenge_reference(pred, gt, spacing, *, dilation=3, threshold=50.0, mode="max"):
    """The steps of BraTS-2023-Metrics ``get_lesion_wise_score`` / ``get_lesion_wise_results``, literally
    (whole-image arrays, one pass per lesion), with docs/DEFINITIONS.md §3's HD95 and D in place of DeepMind's HD95 and 374."""
    full = np.ones((3, 3, 3), dtype=bool)
    struct18 = ndimage.generate_binary_structure(3, 2)
    d_max = image_diagonal(gt.shape, spacing)
    voxel = float(np.prod(spacing))
    gt_cc, _ = ndimage.label(gt, structure=full)
    pred_cc, _ = ndimage.label(pred, structure=full)
    dil_cc, n_dil = ndimage.label(ndimage.binary_dilation(gt, structure=struct18, iterations=dilation), structure=full)
    combined = np.zeros_like(dil_cc)
    for comp in range(1, n_dil + 1):
        part = (dil_cc == comp) * gt_cc
        combined[part > 0] = comp
    tp: list[int] = []
    pairs = []
    for comp in range(1, int(combined.max()) + 1):
        gt_tmp = combined == comp
        gt_tmp_dil = ndimage.binary_dilation(gt_tmp, structure=struct18, iterations=dilation)
        volume = gt_tmp.sum() * voxel
        hits = np.unique(pred_cc[gt_tmp_dil])
        hits = [int(h) for h in hits if h != 0]
        tp.extend(hits)
        pred_tmp = np.isin(pred_cc, hits)
        dice = 2.0 * (pred_tmp & gt_tmp).sum() / (pred_tmp.sum() + gt_tmp.sum())
        dists = surface_distances(pred_tmp, gt_tmp, spacing=spacing)
        hd = dists.hd95(mode) if dists is not None else d_max
        pairs.append((len(hits), volume, dice, hd))
    fp = np.unique(pred_cc[~np.isin(pred_cc, tp + [0])])
    kept = [p for p in pairs if p[1] > threshold]
    denominator = len(kept) + len(fp)
    if denominator == 0:
        return 1.0, 0.0, 0, 0, len(fp)
    dice = sum(p[2] for p in kept) / denominator
    hd95 = (sum(p[3] for p in kept) + len(fp) * d_max) / denominator
    return dice, hd95, sum(1 for p in kept if p[0]), sum(1 for p in kept if not p[0]), len(fp)


def test_missed_matched_and_false_positive_lesions() -> None:
    ref = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros_like(ref)
    _cube(ref, (5, 5, 5), 5)     # lesion A, 125 voxels
    _cube(ref, (40, 5, 5), 5)    # lesion B, missed
    _cube(pred, (5, 5, 5), 5)    # matches A exactly
    _cube(pred, (20, 20, 20), 4)  # false positive far from both
    d = image_diagonal(SHAPE, (1, 1, 1))
    result = lesion_wise(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert (result.n_tp, result.n_fn, result.n_fp) == (1, 1, 1)
    assert result.dice == pytest.approx((1.0 + 0.0) / 3)
    assert result.hd95 == pytest.approx((0.0 + d + d) / 3)


def test_small_lesions_are_dropped_by_volume_in_mm3() -> None:
    ref = np.zeros(SHAPE, dtype=bool)
    _cube(ref, (10, 10, 10), 3)  # 27 voxels
    empty = np.zeros_like(ref)
    at_1mm = lesion_wise(empty, ref, spacing=(1.0, 1.0, 1.0))  # 27 mm3 <= 50: dropped -> 0 / 0
    assert (at_1mm.dice, at_1mm.hd95, at_1mm.n_fn) == (1.0, 0.0, 0)
    nan = lesion_wise(empty, ref, spacing=(1.0, 1.0, 1.0), policy="nan")
    assert math.isnan(nan.dice) and math.isnan(nan.hd95)
    at_2mm = lesion_wise(empty, ref, spacing=(2.0, 2.0, 2.0))  # 216 mm3: kept and missed
    assert (at_2mm.dice, at_2mm.n_fn) == (0.0, 1)
    assert at_2mm.hd95 == pytest.approx(image_diagonal(SHAPE, (2.0, 2.0, 2.0)))
    loose = lesion_wise(empty, ref, spacing=(1.0, 1.0, 1.0), params=LesionWiseParams(3, 10.0))
    assert loose.n_fn == 1 and loose.dice == 0.0


def test_nearby_reference_components_form_one_lesion() -> None:
    ref = np.zeros(SHAPE, dtype=bool)
    _cube(ref, (10, 10, 10), 4)
    _cube(ref, (18, 10, 10), 4)  # gap of 4 voxels: the 3-iteration dilations meet
    pred = np.zeros_like(ref)
    _cube(pred, (10, 10, 10), 4)
    result = lesion_wise(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert (result.n_tp, result.n_fn, result.n_fp) == (1, 0, 0)
    assert result.dice == pytest.approx(2 * 64 / (64 + 128))
    far = np.zeros_like(ref)
    _cube(far, (10, 10, 10), 4)
    _cube(far, (30, 10, 10), 4)  # 16 voxels apart: two lesions, one missed
    split = lesion_wise(pred, far, spacing=(1.0, 1.0, 1.0))
    assert (split.n_tp, split.n_fn) == (1, 1)


def test_prediction_near_a_lesion_is_a_true_positive_not_a_false_positive() -> None:
    ref = np.zeros(SHAPE, dtype=bool)
    _cube(ref, (10, 10, 10), 4)
    pred = np.zeros_like(ref)
    _cube(pred, (16, 10, 10), 4)  # 2 voxels beyond the lesion: inside its dilated region
    result = lesion_wise(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert (result.n_tp, result.n_fp) == (1, 0)
    assert result.dice == 0.0
    assert result.hd95 == pytest.approx(_challenge_reference(pred, ref, (1.0, 1.0, 1.0))[1])


@pytest.mark.parametrize(("case", "mode"), [("Brats18_CBICA_AQN_1", "max"), ("Brats18_CBICA_AQN_1", "pooled"),
                                             ("Brats18_2013_20_1", "max")])
def test_equals_the_challenge_procedure_on_real_brats(brats_labels, case: str, mode: str) -> None:
    """Real tumours: one large lesion with up to 49 small satellites (ET of Brats18_2013_20_1), which
    the dilation groups and the size threshold drops, plus false-positive islands."""
    ref_labels = brats_labels[case]
    spacing = (1.0, 1.0, 1.0)
    checked = 0
    for kind, pred_labels in perturbations(ref_labels, seed=4).items():
        if kind not in ("islands", "mixed", "eroded"):
            continue
        for name, values in BRATS_REGIONS.items():
            pred, ref = structure_mask(pred_labels, values), structure_mask(ref_labels, values)
            result = lesion_wise(pred, ref, spacing=spacing, hd95_mode=mode, params=BRATS_GLI)
            dice, hd95, n_tp, n_fn, n_fp = _challenge_reference(pred, ref, spacing, mode=mode)
            assert result.dice == pytest.approx(dice, abs=1e-12), (kind, name)
            assert result.hd95 == pytest.approx(hd95, abs=1e-9), (kind, name)
            assert (result.n_tp, result.n_fn, result.n_fp) == (n_tp, n_fn, n_fp), (kind, name)
            checked += 1
    assert checked == 9
