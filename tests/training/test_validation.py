"""Validation scoring, the region-threshold and keep-largest-component decisions on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.synthetic import cube_plan
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.training.validation import (
    case_dice,
    decide_min_volumes,
    decide_postprocessing,
    decide_region_thresholds,
    min_volume_caps,
    probabilities_to_logits,
    validate,
    validation_entities,
)

LABELS = {"background": 0, "edema": 1, "core": 2}


class Oracle(nn.Module):
    """Returns confident logits of the labels stored (as numbers) in input channel 0."""

    def __init__(self, num_classes: int = 3, regions=None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.regions = regions
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        labels = x[:, 0].round().long()
        if self.regions is None:
            out = torch.nn.functional.one_hot(labels, self.num_classes).movedim(-1, 1).float()
        else:
            out = torch.stack([torch.isin(labels, torch.tensor(r)) for r in self.regions], 1).float()
        return (out * 2 - 1) * 20 + self.dummy


def test_entities():
    assert validation_entities(labels=LABELS, regions={}, region_based=False) == {"edema": [1], "core": [2]}
    regions = {"WT": [1, 2], "TC": [2]}
    assert validation_entities(labels=LABELS, regions=regions, region_based=True) == regions
    with pytest.raises(ConfigError, match="region-based plan needs regions"):
        validation_entities(labels=LABELS, regions={}, region_based=True)


def test_case_dice_hand_computed():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[0, 0, :2] = 1
    ref[1, 1, 1] = 2
    pred = np.zeros_like(ref)
    pred[0, 0, 0] = 1
    scores = case_dice(pred, ref, {"edema": [1], "core": [2], "WT": [1, 2], "none": [3]})
    assert scores == {"edema": pytest.approx(2 / 3), "core": 0.0, "WT": pytest.approx(2 / 4), "none": 1.0}


def test_probabilities_to_logits_inverts_the_activation():
    probs = torch.softmax(torch.randn(3, 5, 5), 0)
    assert torch.allclose(torch.softmax(probabilities_to_logits(probs, activation="softmax"), 0), probs, atol=1e-5)
    sig = torch.rand(2, 5)
    assert torch.allclose(torch.sigmoid(probabilities_to_logits(sig, activation="sigmoid")), sig, atol=1e-4)


@pytest.mark.parametrize("two_d", [False, True])
def test_validate_with_a_perfect_network(two_d):
    label = np.zeros((12, 10, 8), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[3:5, 3:5, 3:5] = 2
    image = np.stack([label.astype(np.float32), np.zeros_like(label, np.float32)])
    plan = cube_plan(patch_size=(8, 8) if two_d else (8, 8, 8))
    from brainseg_cli.losses import build_loss

    result = validate(Oracle(), [("a", image, label)], plan=plan, entities={"edema": [1], "core": [2]},
                      loss_fn=build_loss("dice-ce", activation="softmax"),
                      target_fn=lambda lab: torch.from_numpy(lab.astype(np.int64))[None])
    assert result.per_case == {"a": {"edema": 1.0, "core": 1.0}} and result.mean == 1.0
    assert result.loss < 0.01
    assert np.array_equal(result.predictions["a"], label)


def test_validate_region_based():
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:5, 1:5, 1:5] = 1
    label[2:4, 2:4, 2:4] = 2
    image = label[None].astype(np.float32)
    regions = {"WT": [1, 2], "TC": [2]}
    plan = dict(cube_plan(patch_size=(8, 8, 8), channels=1), region_based=True, regions=regions)
    result = validate(Oracle(regions=list(regions.values())), [("a", image, label)], plan=plan, entities=regions)
    assert result.mean_per_entity == {"WT": 1.0, "TC": 1.0}
    assert np.isnan(result.loss)


def _blob(array, corner, size, value):
    array[tuple(slice(c, c + size) for c in corner)] = value


def test_largest_component_switched_on_only_where_it_helps():
    # edema: the prediction has a spurious far-away blob -> removing it helps.
    # core: the reference itself has two components -> keeping only the largest hurts.
    refs, preds = {}, {}
    for i in range(2):
        ref = np.zeros((20, 20, 20), np.uint8)
        _blob(ref, (2, 2, 2), 5, 1)
        _blob(ref, (12, 12, 12), 3, 2)
        _blob(ref, (2, 14, 2), 2, 2)
        pred = ref.copy()
        _blob(pred, (15, 2, 15), 2, 1)
        refs[f"c{i}"], preds[f"c{i}"] = ref, pred
    decision = decide_postprocessing(preds, refs, labels=LABELS, entities={"edema": [1], "core": [2]})
    # All foreground as one would drop the second core component: tried first and rejected.
    assert decision.postprocessing == {"all foreground": {"largest_component": False},
                                       "edema": {"largest_component": True}, "core": {"largest_component": False}}
    assert decision.dice_after["edema"] == 1.0 and decision.dice_before["edema"] < 1.0
    assert decision.dice_after["core"] == decision.dice_before["core"] == 1.0


def test_largest_component_of_all_foreground_removes_a_far_island():
    # A false-positive island made of two labels: per label it is not the largest component of
    # either (core: the island is bigger than the true core), but all foreground as one removes it.
    ref = np.zeros((24, 24, 24), np.uint8)
    _blob(ref, (2, 2, 2), 8, 1)
    _blob(ref, (4, 4, 4), 2, 2)
    pred = ref.copy()
    _blob(pred, (17, 17, 17), 3, 1)
    _blob(pred, (18, 18, 18), 3, 2)
    decision = decide_postprocessing({"a": pred}, {"a": ref}, labels=LABELS, entities={"WT": [1, 2], "TC": [2]})
    assert decision.postprocessing["all foreground"] == {"largest_component": True}
    assert decision.dice_after == {"WT": 1.0, "TC": 1.0} and decision.dice_before["TC"] < 1.0


def test_largest_component_rejected_when_another_entity_gets_worse():
    # Region-based scoring: removing the far "core" voxels raises TC more than it lowers WT (so the
    # mean rises), but WT gets worse, so the rule keeps post-processing off.
    ref = np.zeros((24, 24, 24), np.uint8)
    _blob(ref, (2, 2, 2), 10, 1)
    _blob(ref, (4, 4, 4), 6, 2)
    _blob(ref, (18, 18, 18), 2, 1)
    pred = ref.copy()
    pred[18:20, 18:20, 18:20] = 2
    entities = {"WT": [1, 2], "TC": [2]}
    decision = decide_postprocessing({"a": pred}, {"a": ref}, labels=LABELS, entities=entities)
    trial = decision.trials["core"]
    assert trial["mean_after"] > trial["mean_before"] and trial["worse"] == ["WT"]
    assert decision.postprocessing["core"] == {"largest_component": False}
    assert decision.dice_after == decision.dice_before


def _sphere(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


REGIONS = {"WT": [1, 2], "TC": [2]}


def _region_case(rim: float):
    """WT (label 1, radius 9) around TC (label 2, radius 4). The network is confident (0.9) inside
    radius 7 and gives the rest of WT (a rim within the growth radius) probability ``rim``; a far blob
    of ``rim`` is not tumour."""
    from brainseg_cli.inference import probabilities_to_labels

    ref = np.zeros((24, 24, 40), np.uint8)
    ref[_sphere(ref.shape, (12, 12, 12), 9)] = 1
    ref[_sphere(ref.shape, (12, 12, 12), 4)] = 2
    probs = np.full((2, *ref.shape), 0.05, np.float32)
    probs[0][ref > 0] = rim
    probs[0][_sphere(ref.shape, (12, 12, 12), 7)] = 0.9
    probs[1][ref == 2] = 0.9
    probs[0][_sphere(ref.shape, (12, 12, 33), 4)] = rim    # the far blob
    return probs, probabilities_to_labels(probs, regions=list(REGIONS.values())), ref


def test_region_growing_threshold_lowered_for_a_faint_rim():
    probs, pred, ref = _region_case(rim=0.35)
    decision = decide_region_thresholds({"a": probs}, {"a": pred}, {"a": ref}, regions=REGIONS)
    assert decision.thresholds == {"WT": 0.3, "TC": 0.5}   # the value nearest 0.5 that takes in the rim
    assert decision.dice_before["WT"] < 0.7 and decision.dice_after["WT"] == 1.0   # the far blob stays out
    assert decision.dice_after["TC"] == decision.dice_before["TC"] == 1.0
    assert decision.trials["WT"][0.5] < decision.trials["WT"][0.3] == decision.trials["WT"][0.1]


def test_region_growing_threshold_stays_at_half_without_a_rim():
    probs, pred, ref = _region_case(rim=0.9)
    decision = decide_region_thresholds({"a": probs}, {"a": pred}, {"a": ref}, regions=REGIONS)
    assert decision.thresholds == {"WT": 0.5, "TC": 0.5}
    assert max(decision.trials["WT"]) == 0.5


def test_region_thresholds_without_cases_and_with_bad_input():
    assert decide_region_thresholds({}, {}, {}, regions=REGIONS).thresholds == {"WT": 0.5, "TC": 0.5}
    probs, pred, ref = _region_case(0.9)
    with pytest.raises(ConfigError, match="no reference label map for validation case 'a'"):
        decide_region_thresholds({"a": probs}, {"a": pred}, {}, regions=REGIONS)
    with pytest.raises(ConfigError, match="no predicted label map for validation case 'a'"):
        decide_region_thresholds({"a": probs}, {}, {"a": ref}, regions=REGIONS)
    with pytest.raises(ConfigError, match=r"shape \(1, 24, 24, 40\) for 2 regions"):
        decide_region_thresholds({"a": probs[:1]}, {"a": pred}, {"a": ref}, regions=REGIONS)
    with pytest.raises(ConfigError, match=r"in \(0, 0.5\]"):
        decide_region_thresholds({"a": probs}, {"a": pred}, {"a": ref}, regions=REGIONS, candidates=(0.3, 0.7))


def test_validate_keeps_probabilities_when_asked():
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:5, 1:5, 1:5] = 1
    regions = {"WT": [1]}
    plan = dict(cube_plan(patch_size=(8, 8, 8), channels=1), region_based=True, regions=regions)
    cases = [("a", label[None].astype(np.float32), label)]
    kept = validate(Oracle(regions=[[1]]), cases, plan=plan, entities=regions, keep_probabilities=True)
    assert kept.probabilities["a"].shape == (1, 8, 8, 8) and kept.probabilities["a"].dtype == np.float16
    assert (kept.probabilities["a"][0][label == 1] > 0.99).all()
    assert validate(Oracle(regions=[[1]]), cases, plan=plan, entities=regions).probabilities == {}


BRATS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def _glioma(*, enhancing: bool, fp_voxels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference): a tumour whose core is found exactly; the reference holds an enhancing
    tumour of 27 voxels or none; the prediction finds it (when there) and adds ``fp_voxels`` stray ET voxels."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:18, 2:18, 2:18] = 1
    ref[6:14, 6:14, 6:14] = 2
    if enhancing:
        ref[8:11, 8:11, 8:11] = 3
    pred = ref.copy()
    pred.reshape(-1)[np.flatnonzero(pred.reshape(-1) == 2)[:fp_voxels]] = 3
    return pred, ref


def test_min_volume_removes_stray_enhancing_voxels_of_a_case_without_enhancing_tumour():
    pred, ref = _glioma(enhancing=False, fp_voxels=5)
    decision = decide_min_volumes({"lgg": pred}, {"lgg": ref}, regions=BRATS, voxel_volume=1.0,
                                  caps={"WT": 10.0, "TC": 10.0, "ET": 800.0})
    assert decision.min_volumes == {"WT": 0.0, "TC": 0.0, "ET": 750.0}   # the largest candidate under the cap
    assert decision.dice_before["ET"] == 0.0 and decision.dice_after["ET"] == 1.0
    assert decision.dice_after["TC"] == decision.dice_before["TC"] == 1.0


def test_min_volume_stops_under_a_validation_case_with_a_small_enhancing_tumour():
    small, small_ref = _glioma(enhancing=True)            # 27 voxels of ET, found: 8 mm3 voxels -> 216 mm3
    lgg, lgg_ref = _glioma(enhancing=False, fp_voxels=5)
    decision = decide_min_volumes({"hgg": small, "lgg": lgg}, {"hgg": small_ref, "lgg": lgg_ref}, regions=BRATS,
                                  voxel_volume=8.0, caps={"ET": 1000.0})
    assert decision.min_volumes["ET"] == 200.0           # 300 would remove the small, correct enhancing tumour
    trials = decision.trials["ET"]
    assert trials[50.0] == trials[200.0] > trials[0.0] and trials[300.0] < trials[200.0]
    assert decision.dice_after["ET"] == 1.0 and decision.dice_before["ET"] == 0.5
    assert decision.caps == {"WT": 0.0, "TC": 0.0, "ET": 1000.0}


def test_min_volume_stays_off_without_cases_or_cap():
    pred, ref = _glioma(enhancing=False, fp_voxels=5)
    assert decide_min_volumes({}, {}, regions=BRATS, voxel_volume=1.0, caps={"ET": 1e6}).min_volumes == \
        {"WT": 0.0, "TC": 0.0, "ET": 0.0}
    assert decide_min_volumes({"a": pred}, {"a": ref}, regions=BRATS, voxel_volume=1.0, caps={}).min_volumes["ET"] == 0.0
    with pytest.raises(ConfigError, match="no reference label map for validation case 'a'"):
        decide_min_volumes({"a": pred}, {}, regions=BRATS, voxel_volume=1.0, caps={})
    with pytest.raises(ConfigError, match=r"prediction of shape \(20, 20, 20\) and a reference of shape \(20, 20\)"):
        decide_min_volumes({"a": pred}, {"a": ref[0]}, regions=BRATS, voxel_volume=1.0, caps={})
    with pytest.raises(ConfigError, match=">= 0, got -5"):
        decide_min_volumes({"a": pred}, {"a": ref}, regions=BRATS, voxel_volume=1.0, caps={}, candidates=(-5,))


def test_min_volume_caps_from_the_training_volumes():
    caps = min_volume_caps({"ET": [0.0, 1000.0, 2000.0, 3000.0], "TC": [0.0, 0.0], "WT": [4000.0]})
    assert caps["ET"] == pytest.approx(0.25 * (1000.0 + 0.2 * 1000.0))   # 10th percentile of the non-zero ones
    assert caps["TC"] == 0.0 and caps["WT"] == 1000.0


def test_min_volume_takes_the_highest_mean_dice_even_when_one_case_loses():
    """nnU-Net's rule: two cases without enhancing tumour (512 mm3 of stray ET each) gain more than the
    small enhancing tumour (216 mm3) loses."""
    small, small_ref = _glioma(enhancing=True)
    cases = {"hgg": (small, small_ref)}
    for k in range(2):
        cases[f"lgg{k}"] = _glioma(enhancing=False, fp_voxels=64)
    decision = decide_min_volumes({c: p for c, (p, _) in cases.items()}, {c: r for c, (_, r) in cases.items()},
                                  regions=BRATS, voxel_volume=8.0, caps={"ET": 1000.0})
    assert decision.min_volumes["ET"] == 1000.0           # 750 and 1000 tie: the largest
    trials = decision.trials["ET"]        # mean over WT, TC, ET; WT and TC stay 1
    assert trials[500.0] < trials[200.0] == trials[0.0] < trials[750.0] == trials[1000.0]
    assert decision.dice_before["ET"] == pytest.approx(1 / 3) and decision.dice_after["ET"] == pytest.approx(2 / 3)
