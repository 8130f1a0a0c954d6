"""Overlap metrics from voxel counts: hand-computed values, the one-pass label counts, volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg_cli.metrics.overlap import (
    Confusion,
    confusion,
    dice,
    dice_per_label,
    label_confusion,
    overlap_metrics,
    volumes,
)


def test_hand_computed_overlap() -> None:
    ref = np.zeros((4, 5), dtype=bool)
    pred = np.zeros_like(ref)
    ref[0, :4] = True          # 4 voxels
    pred[0, 2:5] = True        # 3 voxels, 2 shared
    c = confusion(pred, ref)
    assert c == Confusion(tp=2, fp=1, fn=2, tn=15)
    m = overlap_metrics(c)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(15 / 16)
    assert dice(pred, ref) == pytest.approx(4 / 7)


def test_dice_both_empty_is_one() -> None:
    empty = np.zeros((3, 3, 3))
    assert dice(empty, empty) == 1.0
    assert math.isnan(overlap_metrics(Confusion(0, 0, 0, 27), policy="nan")["dice"])


@pytest.mark.parametrize("high", [4, 300])
def test_label_confusion_matches_per_mask_counts(high: int) -> None:
    rng = np.random.default_rng(0)
    values = np.array([0, 1, 2, high - 1])
    ref = values[rng.integers(0, 4, (9, 8, 7))]
    pred = values[rng.integers(0, 4, (9, 8, 7))]
    lc = label_confusion(pred, ref, outside=50)
    assert lc.counts.sum() == ref.size + 50
    for members in ([1], [2], [high - 1], [1, 2], [1, 2, high - 1], [0]):
        mask_p, mask_g = np.isin(pred, members), np.isin(ref, members)
        expected = confusion(mask_p, mask_g)
        if 0 in members:
            expected = Confusion(expected.tp + 50, expected.fp, expected.fn, expected.tn)
        else:
            expected = Confusion(expected.tp, expected.fp, expected.fn, expected.tn + 50)
        assert lc.for_members(members) == expected, members
    assert lc.for_members([77]) == Confusion(0, 0, 0, ref.size + 50)


def test_label_confusion_lists_present_values() -> None:
    ref = np.array([[0, 1], [1, 3]], dtype=np.uint8)
    pred = np.array([[0, 1], [5, 5]], dtype=np.uint8)
    lc = label_confusion(pred, ref)
    assert lc.values.tolist() == [0, 1, 3, 5]
    assert lc.ref_values == [0, 1, 3] and lc.pred_values == [0, 1, 5]
    with pytest.raises(ValueError, match="non-negative"):
        label_confusion(np.array([-1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="differs"):
        label_confusion(np.zeros(3, int), np.zeros(4, int))


def test_dice_per_label_equals_dice_of_each_mask() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (10, 10, 6))
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.integers(0, 4, ref.shape))
    scores = dice_per_label(pred, ref, [1, 2, 3, 7])
    for label in (1, 2, 3):
        assert scores[label] == pytest.approx(dice(pred == label, ref == label))
    assert scores[7] == 1.0  # absent from both


def test_volumes_use_the_voxel_volume() -> None:
    v = volumes(Confusion(tp=10, fp=5, fn=20, tn=0), spacing=(0.5, 1.0, 2.0))
    assert v == {"volume_pred_ml": pytest.approx(0.015), "volume_ref_ml": pytest.approx(0.03),
                 "volume_diff_ml": pytest.approx(-0.015)}
