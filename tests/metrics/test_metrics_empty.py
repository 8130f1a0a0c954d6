"""Every cell of the empty-case table (docs/DEFINITIONS.md §3), for both policies, through the full evaluation path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg_cli.metrics.empty import EmptyPolicy, empty_distance_value, empty_nsd_value, image_diagonal
from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_case

NAN = float("nan")
SHAPE = (12, 10, 8)
SPACING = (1.0, 2.0, 3.0)
D = image_diagonal(SHAPE, SPACING)
METRICS = ("dice", "iou", "sensitivity", "precision", "hd95", "hd", "assd", "nsd", "specificity", "volume")

#: (case, policy) -> expected values. The docs/DEFINITIONS.md §3 table for ``brats``; for ``nan`` every cell of it
#: NaN except Dice/IoU 0 when exactly one mask is empty.
EXPECTED = {
    ("both", "brats"): {"dice": 1, "iou": 1, "sensitivity": 1, "precision": 1, "hd95": 0, "hd": 0, "assd": 0,
                        "nsd": 1, "lesion_dice": 1, "lesion_hd95": 0},
    ("ref_empty", "brats"): {"dice": 0, "iou": 0, "sensitivity": NAN, "precision": 0, "hd95": D, "hd": D,
                             "assd": D, "nsd": 0, "lesion_dice": 0, "lesion_hd95": D},
    ("pred_empty", "brats"): {"dice": 0, "iou": 0, "sensitivity": 0, "precision": NAN, "hd95": D, "hd": D,
                              "assd": D, "nsd": 0, "lesion_dice": 0, "lesion_hd95": D},
    ("both", "nan"): {"dice": NAN, "iou": NAN, "sensitivity": NAN, "precision": NAN, "hd95": NAN, "hd": NAN,
                      "assd": NAN, "nsd": NAN, "lesion_dice": NAN, "lesion_hd95": NAN},
    ("ref_empty", "nan"): {"dice": 0, "iou": 0, "sensitivity": NAN, "precision": NAN, "hd95": NAN, "hd": NAN,
                           "assd": NAN, "nsd": NAN, "lesion_dice": 0, "lesion_hd95": NAN},
    ("pred_empty", "nan"): {"dice": 0, "iou": 0, "sensitivity": NAN, "precision": NAN, "hd95": NAN, "hd": NAN,
                            "assd": NAN, "nsd": NAN, "lesion_dice": 0, "lesion_hd95": NAN},
}


def _arrays(case: str) -> tuple[np.ndarray, np.ndarray]:
    blob = np.zeros(SHAPE, dtype=np.uint8)
    blob[3:8, 2:7, 2:6] = 1  # 100 voxels x 6 mm3 = 600 mm3: above the lesion-wise threshold
    empty = np.zeros(SHAPE, dtype=np.uint8)
    return {"both": (empty, empty), "ref_empty": (blob, empty), "pred_empty": (empty, blob)}[case]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


@pytest.mark.parametrize("policy", ["brats", "nan"])
@pytest.mark.parametrize("case", ["both", "ref_empty", "pred_empty"])
def test_empty_case_table(case: str, policy: str) -> None:
    pred, ref = _arrays(case)
    config = EvaluateConfig(metrics=METRICS, empty_policy=policy, lesion_wise=True)
    (row,) = evaluate_case(pred, ref, spacing=SPACING, labels={"tumour": 1}, config=config)
    for metric, expected in EXPECTED[(case, policy)].items():
        assert _same(row[metric], expected), (case, policy, metric, row[metric], expected)
    # Specificity and volumes never depend on the policy.
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    total = pred.size
    assert row["specificity"] == pytest.approx((total - n_ref - n_pred) / (total - n_ref))
    assert row["volume_pred_ml"] == pytest.approx(n_pred * 6.0 / 1000)
    assert row["volume_ref_ml"] == pytest.approx(n_ref * 6.0 / 1000)
    assert row["volume_diff_ml"] == pytest.approx((n_pred - n_ref) * 6.0 / 1000)


def test_diagonal_is_373_for_brats_images() -> None:
    assert image_diagonal((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.13, abs=0.005)


def test_policy_helpers_refuse_non_empty_cases() -> None:
    with pytest.raises(ValueError, match="empty"):
        empty_distance_value(policy=EmptyPolicy.BRATS, ref_empty=False, pred_empty=False, diagonal=1.0)
    with pytest.raises(ValueError, match="empty"):
        empty_nsd_value(policy="nan", ref_empty=False, pred_empty=False)


def test_label_absent_from_one_case_is_scored_as_both_empty() -> None:
    """A label missing from both arrays of a case is 'both empty', not skipped."""
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    config = EvaluateConfig(metrics=("dice", "hd95"))
    rows = evaluate_case(ref.copy(), ref, spacing=SPACING, labels={"a": 1, "b": 2}, config=config)
    assert [r["label"] for r in rows] == ["a", "b"]
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    nan_rows = evaluate_case(ref.copy(), ref, spacing=SPACING, labels={"a": 1, "b": 2},
                             config=EvaluateConfig(metrics=("dice", "hd95"), empty_policy="nan"))
    assert math.isnan(nan_rows[1]["dice"]) and math.isnan(nan_rows[1]["hd95"])
