"""Post-processing: largest connected component, probabilities to labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg_cli.errors import ConfigError
from brainseg_cli.inference.postprocess import (
    GROWTH_RADIUS,
    agreed_min_volumes,
    apply_largest_component,
    enclosing_labels,
    grow_regions,
    keep_largest_component,
    probabilities_to_labels,
    region_label_values,
    remove_small_regions,
)

BRATS_REGIONS = [[1, 2, 3], [2, 3], [3]]   # WT, TC, ET in canonical labels


def test_keep_largest_component_removes_islands():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True          # 216 voxels
    mask[15:17, 15:17, 15:17] = True    # 8 voxels, an island
    out = keep_largest_component(mask)
    assert out.dtype == bool and out.sum() == 216 and not out[15:17, 15:17, 15:17].any()
    assert mask.sum() == 224  # input untouched


def test_full_connectivity_joins_corner_neighbours():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = True  # vertex-connected chain
    mask[5, 5, 0] = True
    out = keep_largest_component(mask)
    assert out.sum() == 3 and not out[5, 5, 0]
    m2 = np.zeros((5, 5), bool)
    m2[0, 0] = m2[1, 1] = True
    m2[4, 4] = True
    assert keep_largest_component(m2).sum() == 2


def test_keep_largest_component_empty_and_single():
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    np.testing.assert_array_equal(keep_largest_component(m), m.astype(bool))


def test_apply_largest_component_per_label_and_group():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[4:6, 4:6, 4:6] = 3
    labels[15:17, 15:17, 15:17] = 3   # a larger ET island away from the tumour
    labels[15:18, 2:4, 2:4] = 3
    labels[18, 18, 18] = 1            # edema island
    out = apply_largest_component(labels, labels_to_process=[1])
    assert out[18, 18, 18] == 0 and (out[labels == 3] == 3).all()
    assert out.dtype == labels.dtype and labels[18, 18, 18] == 1
    # group (whole tumour): the main tumour including its ET core stays, all islands go
    out = apply_largest_component(labels, labels_to_process=[[1, 2, 3]])
    assert out[5, 5, 5] == 3 and out[16, 16, 16] == 0 and out[16, 3, 3] == 0 and out[18, 18, 18] == 0
    # label 3 alone: the 12-voxel island beats the 8-voxel core and the 8-voxel other island
    out = apply_largest_component(labels, labels_to_process=[3])
    assert out[16, 3, 3] == 3 and out[5, 5, 5] == 0 and out[16, 16, 16] == 0
    with pytest.raises(ConfigError, match="background"):
        apply_largest_component(labels, labels_to_process=[0])


def test_argmax_labels():
    probs = np.zeros((4, 3, 3), np.float32)
    probs[0] = 0.4
    probs[2, 0, 0] = 0.6
    probs[3, 1, 1] = 0.9
    probs[1, 2, 2] = 0.4  # tie with background -> lower class
    out = probabilities_to_labels(probs)
    assert out.dtype == np.uint8 and out[0, 0] == 2 and out[1, 1] == 3 and out[2, 2] == 0
    np.testing.assert_array_equal(probabilities_to_labels(torch.from_numpy(probs)), out)


def test_region_label_values():
    assert region_label_values([[1, 2, 3], [2, 3], [3]]) == [1, 2, 3]
    assert region_label_values([[1, 2], [2]]) == [1, 2]
    with pytest.raises(ConfigError, match="in no later region"):
        region_label_values([[1, 2, 3], [3]])
    with pytest.raises(ConfigError, match="in no later region"):
        region_label_values([[3], [2, 3]])


def test_region_probabilities_later_overwrite_earlier():
    probs = np.zeros((3, 4), np.float32)
    probs[:, 0] = [0.9, 0.2, 0.9]   # ET without TC still writes 3 (later overwrites)
    probs[:, 1] = [0.9, 0.7, 0.1]   # TC -> 2
    probs[:, 2] = [0.6, 0.4, 0.2]   # WT -> 1
    probs[:, 3] = [0.5, 0.5, 0.5]   # exactly 0.5 is not foreground
    out = probabilities_to_labels(probs, regions=[[1, 2, 3], [2, 3], [3]])
    np.testing.assert_array_equal(out, [3, 2, 1, 0])
    with pytest.raises(ConfigError, match="3 probability channels but 2 regions"):
        probabilities_to_labels(probs, regions=[[1, 2], [2]])


def test_grow_regions_takes_in_connected_voxels_only():
    # one row of voxels: a confident tumour (WT 0.9) with a faint rim (0.3), a gap, and a faint blob (0.3)
    probs = np.zeros((3, 1, 10), np.float32)
    probs[0, 0] = [0.3, 0.9, 0.9, 0.3, 0.05, 0.3, 0.3, 0.3, 0.05, 0.1]
    probs[1, 0] = [0.1, 0.45, 0.9, 0.1, 0.05, 0.1, 0.1, 0.1, 0.05, 0.1]
    regions = [[1, 2, 3], [2, 3], [3]]
    labels = probabilities_to_labels(probs, regions=regions)
    np.testing.assert_array_equal(labels[0], [0, 1, 2, 0, 0, 0, 0, 0, 0, 0])
    grown = grow_regions(labels, probs, regions=regions, thresholds=[0.2, 0.4, 0.5])
    # WT takes in the rim on both sides, not the blob; TC grows into its 0.45 neighbour
    np.testing.assert_array_equal(grown[0], [1, 2, 2, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(labels[0], [0, 1, 2, 0, 0, 0, 0, 0, 0, 0])   # input untouched
    # 0.5 everywhere changes nothing; nothing grows from an empty region
    np.testing.assert_array_equal(grow_regions(labels, probs, regions=regions, thresholds=[0.5] * 3), labels)
    empty = np.zeros_like(labels)
    np.testing.assert_array_equal(grow_regions(empty, probs, regions=regions, thresholds=[0.1] * 3), empty)


def test_grow_regions_uses_full_connectivity():
    probs = np.zeros((1, 3, 3), np.float32)
    probs[0, 0, 0] = 0.9
    probs[0, 1, 1] = 0.3     # touches the tumour at a corner only
    labels = probabilities_to_labels(probs, regions=[[1]])
    grown = grow_regions(labels, probs, regions=[[1]], thresholds=[0.2])
    assert grown[1, 1] == 1 and grown.sum() == 2


def test_grow_regions_stops_at_the_growth_radius():
    # a confident core at 0-1 with a faint tail of 12 voxels connected to it
    probs = np.zeros((1, 1, 16), np.float32)
    probs[0, 0, :2] = 0.9
    probs[0, 0, 2:14] = 0.3
    labels = probabilities_to_labels(probs, regions=[[1]])
    grown = grow_regions(labels, probs, regions=[[1]], thresholds=[0.2])
    # GROWTH_RADIUS (3) voxels beyond the 0.5 segmentation, not the whole tail
    np.testing.assert_array_equal(grown[0], [1] * 5 + [0] * 11)
    assert GROWTH_RADIUS == 3.0
    wide = grow_regions(labels, probs, regions=[[1]], thresholds=[0.2], radius=100.0)
    np.testing.assert_array_equal(wide[0], [1] * 14 + [0] * 2)
    # in 3-D the bound is Euclidean from the nearest seed voxel (3, 3, 3): (4, 5, 5) is 3 away, (5, 5, 5) 3.5
    cube = np.zeros((1, 12, 12, 12), np.float32)
    cube[0, 2:4, 2:4, 2:4] = 0.9
    for i in range(4, 10):
        cube[0, i, i, i] = cube[0, i - 1, i, i] = cube[0, i, i - 1, i] = 0.3  # a faint connected diagonal
    labels3 = probabilities_to_labels(cube, regions=[[1]])
    grown3 = grow_regions(labels3, cube, regions=[[1]], thresholds=[0.2])
    assert grown3[4, 4, 4] == 1 and grown3[4, 5, 5] == 1 and grown3[5, 5, 5] == 0 and grown3[9, 9, 9] == 0


@pytest.mark.parametrize("thresholds, message", [
    ([0.3, 0.5], "2 values"),
    ([0.3, 0.5, 0.6], r"in \(0, 0.5\], got 0.6"),
    ([0.0, 0.5, 0.5], r"in \(0, 0.5\], got 0.0"),
    ([0.3, True, 0.5], "got True"),
])
def test_grow_regions_rejects_bad_thresholds(thresholds, message):
    probs = np.full((3, 2), 0.6, np.float32)
    labels = probabilities_to_labels(probs, regions=[[1, 2, 3], [2, 3], [3]])
    with pytest.raises(ConfigError, match=message):
        grow_regions(labels, probs, regions=[[1, 2, 3], [2, 3], [3]], thresholds=thresholds)
    with pytest.raises(ConfigError, match=r"probabilities of shape \(3, 2\) for 3 regions and labels of shape \(3,\)"):
        grow_regions(np.zeros(3, np.uint8), probs, regions=[[1, 2, 3], [2, 3], [3]], thresholds=[0.3] * 3)


def test_enclosing_labels_are_the_previous_regions_own_labels():
    assert enclosing_labels(BRATS_REGIONS) == [0, 1, 2]


def _tumour() -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:18, 2:18, 2:18] = 1          # edema: 16^3 = 4096 voxels
    labels[6:14, 6:14, 6:14] = 2          # core: 8^3 = 512
    labels[9:11, 9:11, 9:11] = 3          # enhancing: 8 voxels
    return labels


def test_remove_small_regions_turns_a_small_enhancing_tumour_into_core():
    labels = _tumour()
    out = remove_small_regions(labels, regions=BRATS_REGIONS, min_volumes=[0, 0, 10.0], voxel_volume=1.0)
    assert not (out == 3).any()
    np.testing.assert_array_equal(out[labels == 3], 2)                  # the core keeps the voxels
    np.testing.assert_array_equal(out[labels != 3], labels[labels != 3])
    assert (labels == 3).sum() == 8                                      # the input is not modified
    assert out.dtype == labels.dtype


def test_remove_small_regions_measures_volume_in_mm3():
    labels = _tumour()
    kept = remove_small_regions(labels, regions=BRATS_REGIONS, min_volumes=[0, 0, 10.0], voxel_volume=2.0)  # 16 mm3
    np.testing.assert_array_equal(kept, labels)
    exact = remove_small_regions(labels, regions=BRATS_REGIONS, min_volumes=[0, 0, 8.0], voxel_volume=1.0)
    np.testing.assert_array_equal(exact, labels)                         # strictly under the minimum only


def test_remove_small_regions_takes_the_inner_regions_along_and_leaves_empty_ones():
    labels = _tumour()
    core = remove_small_regions(labels, regions=BRATS_REGIONS, min_volumes=[0, 600.0, 0], voxel_volume=1.0)
    np.testing.assert_array_equal(core, (labels > 0).astype(np.uint8))   # the core and ET become edema
    whole = remove_small_regions(labels, regions=BRATS_REGIONS, min_volumes=[5000.0, 0, 0], voxel_volume=1.0)
    assert not whole.any()
    empty = np.zeros_like(labels)
    np.testing.assert_array_equal(remove_small_regions(empty, regions=BRATS_REGIONS, min_volumes=[1e9] * 3,
                                                       voxel_volume=1.0), empty)


@pytest.mark.parametrize("minimums, voxel, message", [
    ([0, 0], 1.0, "2 values"), ([0, 0, -1.0], 1.0, ">= 0, got -1.0"), ([0, 0, float("nan")], 1.0, ">= 0, got nan"),
    ([0, 0, "5"], 1.0, "got '5'"), ([0, 0, 5.0], 0.0, "positive number of mm³, got 0.0"),
])
def test_remove_small_regions_rejects_bad_values(minimums, voxel, message):
    with pytest.raises(ConfigError, match=message):
        remove_small_regions(_tumour(), regions=BRATS_REGIONS, min_volumes=minimums, voxel_volume=voxel)


def test_agreed_min_volumes_removes_only_where_every_member_removes():
    members = [{"WT": 100.0, "ET": 500.0}, {"WT": 300.0, "ET": 200.0}]
    assert agreed_min_volumes(members, ["WT", "TC", "ET"]) == {"WT": 100.0, "TC": 0.0, "ET": 200.0}
    assert agreed_min_volumes([], ["ET"]) == {"ET": 0.0}
