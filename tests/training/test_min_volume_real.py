"""The minimum-region-volume decision on real BraTS 2018 label maps (docs/DEFINITIONS.md §4).

A lower-grade glioma without enhancing tumour is made from a real one (Brats18_TCIA13_623_1, whose 4,674
enhancing voxels become necrosis/non-enhancing core); its prediction is the reference plus a stray
enhancing blob, the error that costs such a case its whole ET score. The real high-grade cases'
references, perfect and perturbed, are the validation cases that must not lose anything.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.metrics_data import load_brats_canonical, perturbations

from brainseg_cli.inference.postprocess import remove_small_regions
from brainseg_cli.metrics.overlap import dice
from brainseg_cli.training.validation import MIN_VOLUME_CANDIDATES, decide_min_volumes, min_volume_caps

REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
HGG = ("Brats18_2013_20_1", "Brats18_CBICA_AQN_1", "Brats18_TCIA02_135_1")


@pytest.fixture(scope="module")
def cases(shared_data):
    return {case: load_brats_canonical(shared_data, case) for case in (*HGG, "Brats18_TCIA13_623_1")}


def _without_enhancing(ref: np.ndarray, *, stray_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) of an LGG without enhancing tumour: ET -> core; the prediction adds a blob."""
    lgg = ref.copy()
    lgg[lgg == 3] = 2
    pred = lgg.copy()
    core = np.argwhere(lgg == 2)
    centre = core[len(core) // 2]
    blob = np.zeros(lgg.shape, bool)
    side = round(stray_voxels ** (1 / 3))
    blob[tuple(slice(c, c + side) for c in centre)] = True
    pred[blob & (lgg > 0)] = 3
    return pred, lgg


def test_a_stray_enhancing_blob_in_a_real_lgg_is_removed_and_real_hgg_cases_keep_theirs(cases):
    pred, lgg = _without_enhancing(cases["Brats18_TCIA13_623_1"], stray_voxels=125)
    stray = int((pred == 3).sum())
    assert 50 < stray < 200
    # the training volumes: the real cases' regions at 1 mm (ET 6,159-43,379 mm3 among them)
    volumes = {name: [float(np.isin(cases[c], v).sum()) for c in HGG] for name, v in REGIONS.items()}
    caps = min_volume_caps(volumes)
    assert caps["ET"] > max(MIN_VOLUME_CANDIDATES)
    predictions = {"lgg": pred, **{c: perturbations(cases[c])["eroded"] for c in HGG}}
    references = {"lgg": lgg, **{c: cases[c] for c in HGG}}
    decision = decide_min_volumes(predictions, references, regions=REGIONS, voxel_volume=1.0, caps=caps)
    assert decision.min_volumes["ET"] > stray
    assert decision.dice_after["WT"] == decision.dice_before["WT"]
    assert decision.dice_after["TC"] == decision.dice_before["TC"]
    after = remove_small_regions(pred, regions=list(REGIONS.values()), min_volumes=list(decision.min_volumes.values()),
                                 voxel_volume=1.0)
    assert dice(pred == 3, lgg == 3) == 0.0 and dice(after == 3, lgg == 3) == 1.0   # both empty: 1 (BraTS policy)
    assert dice(np.isin(after, [2, 3]), np.isin(lgg, [2, 3])) == dice(np.isin(pred, [2, 3]), np.isin(lgg, [2, 3]))
    for case in HGG:   # a real enhancing tumour (thousands of mm3) is never removed
        np.testing.assert_array_equal(remove_small_regions(cases[case], regions=list(REGIONS.values()),
                                                           min_volumes=list(decision.min_volumes.values()),
                                                           voxel_volume=1.0), cases[case])


def test_a_real_small_enhancing_tumour_in_validation_keeps_the_minimum_under_it(cases):
    """A validation case whose found enhancing tumour is 300-343 mm3 keeps it: the minimum stays at or under it
    (removing it would cost more than the stray blob of the other case gains)."""
    ref = cases["Brats18_CBICA_AQN_1"].copy()
    et = np.argwhere(ref == 3)
    ref[ref == 3] = 2
    centre = et[len(et) // 2]
    small = tuple(slice(c - 3, c + 4) for c in centre)        # 7^3 = 343 voxels of ET in the core
    ref[small] = np.where(ref[small] > 0, 3, ref[small])
    found = int((ref == 3).sum())
    assert 300 <= found <= 343
    pred, lgg = _without_enhancing(cases["Brats18_TCIA13_623_1"], stray_voxels=64)
    decision = decide_min_volumes({"small": ref, "lgg": pred}, {"small": ref, "lgg": lgg}, regions=REGIONS,
                                  voxel_volume=1.0, caps={"ET": 5000.0})
    assert decision.min_volumes["ET"] == 300.0 and decision.trials["ET"][500.0] < decision.trials["ET"][300.0]
    assert decision.dice_after["ET"] == 1.0
