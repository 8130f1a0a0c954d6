"""The predictor: ensemble loading, preprocessing round trip, 2-D slicing, post-processing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from predict_fixtures import (
    cube_volume,
    make_network,
    make_plan,
    random_checkpoint,
    reference_sliding_window,
    save_model_checkpoint,
)

from brainseg_cli.errors import CheckpointError, ConfigError, InputError
from brainseg_cli.inference.predictor import Predictor, resolve_device
from brainseg_cli.io import Image


def test_equals_independent_sliding_window(tmp_path):
    """No crop, same spacing and orientation: labels = argmax of a window-by-window reference."""
    from brainseg_cli.data.preprocessing import preprocess_case

    plan = make_plan(patch_size=(16, 16, 8), crop_to_brain=False)
    net = make_network(plan, seed=3)
    ckpt = save_model_checkpoint(tmp_path / "m.pt", plan, net)
    image, _ = cube_volume(1, shape=(30, 21, 17), background=False)
    img = Image(image, (1.0, 1.0, 1.0))
    predictor = Predictor.from_checkpoints([ckpt], device="cpu", overlap=0.5, batch_size=3)
    labels, probs = predictor.predict(img, lcc="off")
    data, _, _ = preprocess_case(img, plan)
    ref = reference_sliding_window(net, torch.from_numpy(data), (16, 16, 8), 0.5, "softmax").numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    np.testing.assert_array_equal(labels, ref.argmax(0))
    assert labels.shape == (30, 21, 17) and labels.dtype == np.uint8


def test_fitted_model_segments_and_crop_is_undone(fitted_checkpoint):
    predictor = Predictor.from_checkpoints([fitted_checkpoint], device="cpu")
    image, label = cube_volume(11)
    labels, probs = predictor.predict(Image(image, (1.0, 1.0, 1.0)), lcc="off")
    assert probs.shape == (3, *label.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    # outside the brain crop (the zero border): background with probability 1
    assert (probs[0, :2] == 1).all() and (labels[:2] == 0).all()
    for value in (1, 2):
        p, g = labels == value, label == value
        assert 2 * (p & g).sum() / (p.sum() + g.sum()) > 0.6


@pytest.mark.parametrize("direction", ["lps", "ras", "permuted"])
def test_prediction_does_not_depend_on_storage_orientation(tmp_path, direction):
    """The same world content stored in another index order gives the same labels (also for 2-D plans)."""
    plan = make_plan(config="2d", patch_size=(16, 16), slice_axis=2, crop_to_brain=False)
    ckpt = save_model_checkpoint(tmp_path / "m2d.pt", plan, make_network(plan, seed=1))
    predictor = Predictor.from_checkpoints([ckpt], device="cpu")
    image, _ = cube_volume(2, shape=(20, 18, 6), background=False)
    spacing = (1.0, 1.2, 3.0)
    base, _ = predictor.predict(Image(image, spacing), lcc="off")
    if direction == "lps":
        moved, back = Image(image, spacing), lambda a: a
    elif direction == "ras":  # axes 0, 1 reversed in storage, direction flipped: same world voxels
        moved = Image(image[:, ::-1, ::-1].copy(), spacing, direction=np.diag([-1.0, -1.0, 1.0]),
                      origin=(19.0, 18 * 1.2 - 1.2, 0.0))
        def back(a):
            return a[::-1, ::-1]
    else:  # storage axes (z, x, y) with the matching direction
        perm = np.transpose(image, (0, 3, 1, 2)).copy()
        d = np.zeros((3, 3))
        d[2, 0] = d[0, 1] = d[1, 2] = 1.0
        moved = Image(perm, (3.0, 1.0, 1.2), direction=d)
        def back(a):
            return np.transpose(a, (1, 2, 0))
    labels, _ = predictor.predict(moved, lcc="off")
    np.testing.assert_array_equal(back(labels), base)


def _predict_2d(path, plan, *, seed, shape):
    """Predict a cube volume with a fresh 2-D network; returns (network, probabilities, preprocessed data)."""
    from brainseg_cli.data.preprocessing import preprocess_case

    net = make_network(plan, seed=seed)
    ckpt = save_model_checkpoint(path, plan, net)
    image, _ = cube_volume(seed + 1, shape=shape, background=False)
    img = Image(image, (1.0, 1.0, 1.0))
    _, probs = Predictor.from_checkpoints([ckpt], device="cpu").predict(img)
    data, _, _ = preprocess_case(img, plan)
    return net, probs, data


def test_2d_model_runs_along_plan_slice_axis(tmp_path):
    from brainseg_cli.inference.sliding_window import sliding_window_predict

    plan = make_plan(config="2d", patch_size=(8, 8), slice_axis=0, crop_to_brain=False)
    net, probs, data = _predict_2d(tmp_path / "m.pt", plan, seed=2, shape=(5, 12, 10))
    expected = torch.stack([sliding_window_predict(net, torch.from_numpy(data[:, k]), patch_size=(8, 8))
                            for k in range(5)], dim=1)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)


def test_2_5d_model_sees_neighbouring_slices(tmp_path):
    from brainseg_cli.inference.sliding_window import sliding_window_predict

    plan = make_plan(config="2d", patch_size=(8, 8), slice_axis=2, crop_to_brain=False)
    plan["slice_context"] = 1
    plan["model"]["in_channels"] = 2 * 3
    net, probs, data = _predict_2d(tmp_path / "m25.pt", plan, seed=4, shape=(12, 10, 6))
    expected = sliding_window_predict(net, torch.from_numpy(data), patch_size=(8, 8), slice_axis=2, slice_context=1)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    for bad in (-1, "1", True):
        plan["slice_context"] = bad
        save_model_checkpoint(tmp_path / "bad.pt", plan, net)
        with pytest.raises(CheckpointError, match=r"bad.pt: slice_context must be a non-negative integer"):
            Predictor.from_checkpoints([tmp_path / "bad.pt"], device="cpu")


def test_ensemble_averages_probabilities(tmp_path):
    a = random_checkpoint(tmp_path / "a.pt", seed=1, crop_to_brain=False)
    b = random_checkpoint(tmp_path / "b.pt", seed=2, crop_to_brain=False, target_spacing=(2.0, 2.0, 2.0),
                          patch_size=(8, 8, 8))
    image, _ = cube_volume(4, shape=(20, 16, 16))
    img = Image(image, (1.0, 1.0, 1.0))
    pa = Predictor.from_checkpoints([a], device="cpu").predict_probabilities(img)
    pb = Predictor.from_checkpoints([b], device="cpu").predict_probabilities(img)
    both = Predictor.from_checkpoints([a, b], device="cpu").predict_probabilities(img)
    np.testing.assert_allclose(both, (pa + pb) / 2, atol=1e-5)
    same = Predictor.from_checkpoints([a, a], device="cpu").predict_probabilities(img)
    np.testing.assert_allclose(same, pa, atol=1e-6)


def test_ensemble_must_agree(tmp_path):
    a = random_checkpoint(tmp_path / "a.pt")
    b = random_checkpoint(tmp_path / "b.pt", channels=("T1c", "FLAIR"))
    with pytest.raises(CheckpointError, match="b.pt: channels"):
        Predictor.from_checkpoints([a, b], device="cpu")


def test_tta_and_precision_reach_the_sliding_window(tmp_path):
    ckpt = random_checkpoint(tmp_path / "a.pt", seed=5, crop_to_brain=False)
    image, _ = cube_volume(5, shape=(16, 16, 16), background=False)
    img = Image(image, (1.0, 1.0, 1.0))
    plain = Predictor.from_checkpoints([ckpt], device="cpu").predict_probabilities(img)
    tta = Predictor.from_checkpoints([ckpt], device="cpu", tta=True).predict_probabilities(img)
    assert not np.allclose(plain, tta, atol=1e-4)
    bf16 = Predictor.from_checkpoints([ckpt], device="cpu", precision="bf16").predict_probabilities(img)
    assert not np.array_equal(plain, bf16) and np.abs(plain - bf16).max() < 0.1


def test_largest_component_modes(tmp_path):
    ckpt = random_checkpoint(tmp_path / "a.pt", postprocessing={
        "outer": {"largest_component": True}, "inner": {"largest_component": False}})
    predictor = Predictor.from_checkpoints([ckpt], device="cpu")
    assert predictor.largest_component_groups("auto") == [[1]]
    assert predictor.largest_component_groups("on") == [[1, 2]]
    assert predictor.largest_component_groups("off") == []
    probs = np.zeros((3, 12, 12, 12), np.float32)
    probs[0] = 1
    probs[:, 1:6, 1:6, 1:6] = [[[[0]]], [[[1]]], [[[0]]]]      # outer blob
    probs[:, 8:10, 8:10, 8:10] = [[[[0]]], [[[1]]], [[[0]]]]   # outer island
    probs[:, 10:12, 0:2, 10:12] = [[[[0]]], [[[0]]], [[[1]]]]  # inner island
    off = predictor.labels_from_probabilities(probs, lcc="off")
    auto = predictor.labels_from_probabilities(probs, lcc="auto")
    on = predictor.labels_from_probabilities(probs, lcc="on")
    assert off[9, 9, 9] == 1 and off[11, 1, 11] == 2
    assert auto[9, 9, 9] == 0 and auto[11, 1, 11] == 2 and auto[3, 3, 3] == 1
    assert on[9, 9, 9] == 0 and on[11, 1, 11] == 0 and on[3, 3, 3] == 1
    with pytest.raises(ConfigError, match="unknown --lcc mode 'maybe'"):
        predictor.largest_component_groups("maybe")
    # A stored decision for all foreground labels as one group comes first, in the stored order.
    whole = Predictor.from_checkpoints([random_checkpoint(tmp_path / "b.pt", postprocessing={
        "all foreground": {"largest_component": True}, "inner": {"largest_component": True}})], device="cpu")
    assert whole.largest_component_groups("auto") == [[1, 2], [2]]
    np.testing.assert_array_equal(whole.labels_from_probabilities(probs, lcc="auto"), on)


def test_region_based_checkpoint(tmp_path):
    regions = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    labels = {"background": 0, "edema": 1, "core": 2, "enhancing": 3}
    ckpt = random_checkpoint(tmp_path / "r.pt", labels=labels, regions=regions, region_based=True,
                             crop_to_brain=False, postprocessing={"WT": {"largest_component": True}})
    predictor = Predictor.from_checkpoints([ckpt], device="cpu")
    assert predictor.output_names == ["WT", "TC", "ET"] and predictor.largest_component_groups("auto") == [[1, 2, 3]]
    image, _ = cube_volume(6, shape=(16, 16, 16), background=False)
    labels_out, probs = predictor.predict(Image(image, (1.0, 1.0, 1.0)), lcc="off")
    assert probs.shape == (3, 16, 16, 16) and (probs >= 0).all() and (probs <= 1).all()
    expected = np.zeros((16, 16, 16), np.uint8)
    for value, p in zip((1, 2, 3), probs):
        expected[p > 0.5] = value
    np.testing.assert_array_equal(labels_out, expected)


def _with(path, key, value):
    """The checkpoint at ``path`` with ``key`` set to ``value`` (rewritten in place)."""
    from brainseg_cli.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    ckpt[key] = value
    save_checkpoint(path, ckpt)
    return path


#: A region-based BraTS-like checkpoint (``random_checkpoint`` options).
BRATS_LIKE = dict(labels={"background": 0, "edema": 1, "core": 2, "enhancing": 3},
                  regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}, region_based=True, crop_to_brain=False)


def _with_thresholds(path, thresholds):
    return _with(path, "region_thresholds", thresholds)


def test_region_thresholds_from_the_checkpoint(tmp_path):
    kwargs = BRATS_LIKE
    a = _with_thresholds(random_checkpoint(tmp_path / "a.pt", **kwargs), {"WT": 0.3, "TC": 0.4})
    predictor = Predictor.from_checkpoints([a], device="cpu")
    assert predictor.thresholds() == {"WT": 0.3, "TC": 0.4, "ET": 0.5}   # ET not stored: 0.5
    probs = np.zeros((3, 1, 1, 8), np.float32)
    probs[:, 0, 0, 0] = [0.35, 0.1, 0.1]    # faint WT next to the tumour: grows in with 0.3
    probs[:, 0, 0, 1] = [0.9, 0.45, 0.1]    # TC 0.45 next to TC: grows in with 0.4
    probs[:, 0, 0, 2] = [0.9, 0.9, 0.45]    # ET 0.45: ET stays at 0.5, so core
    probs[:, 0, 0, 3] = [0.9, 0.9, 0.9]
    probs[:, 0, 0, 5] = [0.35, 0.1, 0.1]    # faint WT away from the tumour: stays out
    grown = predictor.labels_from_probabilities(probs, lcc="off")
    np.testing.assert_array_equal(grown[0, 0], [1, 2, 2, 3, 0, 0, 0, 0])
    # one threshold for every region overrides the checkpoint's (0.5: no growing)
    half = Predictor.from_checkpoints([a], device="cpu", region_threshold=0.5)
    assert half.thresholds() == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    np.testing.assert_array_equal(half.labels_from_probabilities(probs, lcc="off")[0, 0], [0, 1, 2, 3, 0, 0, 0, 0])
    # an ensemble grows a region only where every member grows it (a checkpoint without any: 0.5, no growing)
    b = random_checkpoint(tmp_path / "b.pt", seed=1, **kwargs)
    assert Predictor.from_checkpoints([a, b], device="cpu").thresholds() == {"WT": 0.5, "TC": 0.5, "ET": 0.5}
    # ... and then to the highest threshold of the members (the least growing they all agree on)
    c = _with_thresholds(random_checkpoint(tmp_path / "c.pt", seed=2, **kwargs), {"WT": 0.1, "TC": 0.5, "ET": 0.2})
    ensemble = Predictor.from_checkpoints([a, c], device="cpu")
    assert ensemble.thresholds() == {"WT": 0.3, "TC": 0.5, "ET": 0.5}
    np.testing.assert_array_equal(ensemble.labels_from_probabilities(probs, lcc="off")[0, 0], [1, 1, 2, 3, 0, 0, 0, 0])


def _with_min_volumes(path, volumes):
    return _with(path, "region_min_volumes", volumes)


def test_region_min_volumes_from_the_checkpoint(tmp_path):
    kwargs = BRATS_LIKE
    a = _with_min_volumes(random_checkpoint(tmp_path / "a.pt", **kwargs), {"ET": 3.0})
    predictor = Predictor.from_checkpoints([a], device="cpu")
    assert predictor.min_volumes() == {"WT": 0.0, "TC": 0.0, "ET": 3.0}   # not stored: never removed
    probs = np.zeros((3, 1, 1, 8), np.float32)
    probs[:, 0, 0, 1:6] = [[0.9], [0.9], [0.1]]
    probs[:, 0, 0, 3] = 0.9                                             # one enhancing voxel
    np.testing.assert_array_equal(predictor.labels_from_probabilities(probs, lcc="off")[0, 0], [0, 2, 2, 2, 2, 2, 0, 0])
    # the volume is measured with the given spacing: 1 voxel of 4 mm3 is over the 3 mm3 minimum
    kept = predictor.labels_from_probabilities(probs, lcc="off", spacing=(1.0, 2.0, 2.0))
    np.testing.assert_array_equal(kept[0, 0], [0, 2, 2, 3, 2, 2, 0, 0])
    # an ensemble removes a region only under the smallest of its members' minimums
    b = _with_min_volumes(random_checkpoint(tmp_path / "b.pt", seed=1, **kwargs), {"ET": 0.5, "WT": 100.0})
    assert Predictor.from_checkpoints([a, b], device="cpu").min_volumes() == {"WT": 0.0, "TC": 0.0, "ET": 0.5}
    np.testing.assert_array_equal(Predictor.from_checkpoints([a, b], device="cpu").labels_from_probabilities(
        probs, lcc="off")[0, 0], [0, 2, 2, 3, 2, 2, 0, 0])


@pytest.mark.parametrize("volumes, message", [
    ({"XX": 5.0}, "region_min_volumes names 'XX', which is not one of its regions"),
    ({"ET": -1.0}, "region_min_volumes: a minimum volume must be a finite number of mm³ >= 0, got -1.0"),
    ([5.0], "region_min_volumes is a list, not a dict"),
])
def test_bad_region_min_volumes_are_refused(tmp_path, volumes, message):
    from brainseg_cli.errors import CheckpointError

    path = _with_min_volumes(random_checkpoint(tmp_path / "a.pt", **BRATS_LIKE), volumes)
    with pytest.raises(CheckpointError, match=message):
        Predictor.from_checkpoints([path], device="cpu")


def test_ensemble_applies_the_largest_component_decisions_all_members_made(tmp_path):
    kwargs = BRATS_LIKE
    a = random_checkpoint(tmp_path / "a.pt", postprocessing={"WT": {"largest_component": True},
                                                              "ET": {"largest_component": True}}, **kwargs)
    b = random_checkpoint(tmp_path / "b.pt", seed=1, postprocessing={"ET": {"largest_component": True},
                                                                      "WT": {"largest_component": True},
                                                                      "TC": {"largest_component": True}}, **kwargs)
    c = random_checkpoint(tmp_path / "c.pt", seed=2, postprocessing={"ET": {"largest_component": True},
                                                                      "WT": {"largest_component": False}}, **kwargs)
    assert Predictor.from_checkpoints([a], device="cpu").largest_component_groups("auto") == [[1, 2, 3], [3]]
    # both decided WT and ET (in a's order); only b decided TC
    assert Predictor.from_checkpoints([a, b], device="cpu").largest_component_groups("auto") == [[1, 2, 3], [3]]
    assert Predictor.from_checkpoints([b, a], device="cpu").largest_component_groups("auto") == [[3], [1, 2, 3]]
    # c decided against WT: only ET is kept to its largest component
    ensemble = Predictor.from_checkpoints([a, b, c], device="cpu")
    assert ensemble.largest_component_groups("auto") == [[3]]
    probs = np.zeros((3, 1, 1, 8), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.1, 0.1]      # a WT island apart from the tumour: kept (WT not agreed)
    probs[:, 0, 0, 2:4] = 0.9                # the tumour with its enhancing part
    probs[:, 0, 0, 6] = [0.9, 0.9, 0.9]      # an ET island: removed (ET agreed)
    out = ensemble.labels_from_probabilities(probs)
    np.testing.assert_array_equal(out[0, 0], [1, 0, 3, 3, 0, 0, 0, 0])
    # "on"/"off" ignore the stored decisions
    assert ensemble.largest_component_groups("on") == [[1, 2, 3]] and ensemble.largest_component_groups("off") == []


def test_region_thresholds_rejected(tmp_path):
    regions = {"WT": [1, 2], "TC": [2]}
    labels = {"background": 0, "edema": 1, "core": 2}
    kwargs = dict(labels=labels, regions=regions, region_based=True)
    bad = _with_thresholds(random_checkpoint(tmp_path / "bad.pt", **kwargs), {"WT": 0.7})
    with pytest.raises(CheckpointError, match=r"bad.pt: region_thresholds: a region threshold must be a number in \(0, 0.5\], got 0.7"):
        Predictor.from_checkpoints([bad], device="cpu")
    unknown = _with_thresholds(random_checkpoint(tmp_path / "unknown.pt", **kwargs), {"ET": 0.3})
    with pytest.raises(CheckpointError, match="names 'ET', which is not one of its regions"):
        Predictor.from_checkpoints([unknown], device="cpu")
    good = random_checkpoint(tmp_path / "good.pt", **kwargs)
    with pytest.raises(ConfigError, match=r"--region-threshold: a region threshold must be a number in \(0, 0.5\]"):
        Predictor.from_checkpoints([good], device="cpu", region_threshold=0.6)
    softmax = random_checkpoint(tmp_path / "softmax.pt")
    with pytest.raises(ConfigError, match="applies to region-based .* softmax.pt has softmax classes"):
        Predictor.from_checkpoints([softmax], device="cpu", region_threshold=0.3)
    assert Predictor.from_checkpoints([softmax], device="cpu").thresholds() is None


def test_source_labels(tmp_path):
    ckpt = random_checkpoint(tmp_path / "s.pt", source_labels={1: 2, 2: 4})
    predictor = Predictor.from_checkpoints([ckpt], device="cpu")
    np.testing.assert_array_equal(predictor.to_source_labels(np.array([0, 1, 2, 1], np.uint8)), [0, 2, 4, 2])
    plain = Predictor.from_checkpoints([random_checkpoint(tmp_path / "p.pt")], device="cpu")
    with pytest.raises(ConfigError, match="records no source label mapping"):
        plain.to_source_labels(np.zeros(3, np.uint8))


def test_bad_images(tmp_path):
    predictor = Predictor.from_checkpoints([random_checkpoint(tmp_path / "a.pt")], device="cpu")
    with pytest.raises(InputError, match=r"case x: 3 channel\(s\) but the model needs 2 \(T1, FLAIR\)"):
        predictor.predict(Image(np.zeros((3, 8, 8, 8), np.float32), (1.0, 1.0, 1.0)), case="x")
    with pytest.raises(InputError, match="case y: a 2-D image"):
        predictor.predict(Image(np.zeros((2, 8, 8), np.float32), (1.0, 1.0)), case="y")
    nan = np.zeros((2, 8, 8, 8), np.float32)
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(InputError, match="case z: the image has NaN"):
        predictor.predict(Image(nan, (1.0, 1.0, 1.0)), case="z")


def test_bad_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Predictor.from_checkpoints([junk], device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a brainseg checkpoint"):
        Predictor.from_checkpoints([foreign], device="cpu")
    plan = make_plan()
    del plan["patch_size"]
    net = make_network(make_plan())
    bad = save_model_checkpoint(tmp_path / "noplan.pt", plan, net)
    with pytest.raises(CheckpointError, match="its plan lacks patch_size"):
        Predictor.from_checkpoints([bad], device="cpu")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="invalid device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("patch_size", [-5, 0, 4], "plan key patch_size must be 3 positive integers (a 3d plan), got [-5, 0, 4]"),
    ("target_spacing", [0, -1, float("nan")], "plan key target_spacing must be 3 positive, finite spacings in mm, "
                                              "got [0, -1, nan]"),
    ("batch_size", 0, "plan key batch_size must be a positive integer, got 0"),
    ("crop_to_brain", "yes", "plan key crop_to_brain must be true or false, got 'yes'"),
])
@pytest.mark.fault
def test_a_checkpoint_plan_with_nonsense_values_is_named(tmp_path, key, value, expected):
    """Issue #20: a plan with ``patch_size [-5, 0]`` or ``target_spacing [0, -1, nan]`` gave 'unexpected ZeroDivisionError'."""
    from brainseg_cli.checkpoint import load_checkpoint, save_checkpoint

    path = random_checkpoint(tmp_path / "m.pt")
    ckpt = load_checkpoint(path)
    ckpt["plan"][key] = value
    save_checkpoint(path, ckpt)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoints([path], device="cpu")
    assert str(info.value) == f"checkpoint {path}: {expected}"


@pytest.mark.fault
def test_a_plan_file_with_nonsense_values_is_named(tmp_path):
    """Issue #20: ``pretrain --resume`` on a plan.json holding ``patch_size [-3, "x"]``, ``batch_size 0``, spacing 0."""
    from brainseg_cli.checkpoint import load_checkpoint
    from brainseg_cli.data.plan import load_plan, save_plan

    plan = load_checkpoint(random_checkpoint(tmp_path / "m.pt"))["plan"]
    plan["sampling"] = {"foreground_fraction": 0.33, "slice_weighting": "uniform", "drop_edge_slices": False}
    path = save_plan(plan, tmp_path / "plan.json")
    written, loaded = json.loads(path.read_text()), load_plan(path).to_dict()
    assert {k: loaded[k] for k in written} == written  # the file's keys read back unchanged
    for key, value, expected in (("patch_size", [-3, "x", 2], "3 positive integers"), ("batch_size", 0, "a positive integer"),
                                 ("target_spacing", [0, 1, 1], "3 positive, finite spacings in mm"),
                                 ("slice_axis", 5, "0, 1 or 2 (or null for a 3-D plan)")):
        save_plan({**plan, key: value}, path)
        with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: plan key {key} must be {re.escape(expected)}"):
            load_plan(path)
