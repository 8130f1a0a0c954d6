"""The typed plan: ``Plan.from_dict`` / ``to_dict`` round trips, validation naming the file and key,
older plan files, and the planner's output as a ``Plan``."""

from __future__ import annotations

import json

import pytest

from brainseg_cli.data.layout import DatasetInfo
from brainseg_cli.data.plan import PlanOverrides, load_plan, make_plan, save_plan
from brainseg_cli.data.plan_schema import (
    PREDICTION_KEYS,
    LossSpec,
    ModelSpec,
    Normalization,
    Plan,
    Sampling,
    as_plan,
)
from brainseg_cli.errors import InputError


def _info() -> DatasetInfo:
    return DatasetInfo(root=None, name="toy", channels=("T1", "FLAIR"),  # type: ignore[arg-type]
                       labels={"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3},
                       regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}, file_ending=".nii.gz",
                       training_cases=("a", "b", "c"), test_cases=())


def _fingerprint() -> dict:
    intensity = {"mean": 100.0, "std": 20.0, "min": 0.0, "max": 300.0, "p00_5": 0.0, "p10": 60.0, "median": 100.0,
                 "p99": 200.0, "p99_5": 220.0, "integer_valued": True, "eight_bit": False}
    return {"format_version": 1, "dataset": "toy", "channels": ["T1", "FLAIR"], "num_cases": 3, "orientation": "LPS",
            "spacing_median": [1.0, 1.0, 1.0], "spacing_10th": [1.0, 1.0, 1.0], "shape_median": [40.0, 48.0, 32.0],
            "intensity": [dict(intensity, channel="T1"), dict(intensity, channel="FLAIR")], "hash": "abc123"}


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(fingerprint=_fingerprint(), info=_info(), device="cpu")


def test_make_plan_returns_a_frozen_typed_plan(plan):
    assert isinstance(plan, Plan) and isinstance(plan.model, ModelSpec) and isinstance(plan.sampling, Sampling)
    assert plan.config == "2d" and plan.spatial_dims == 2 and plan.two_d
    assert plan.channels == ("T1", "FLAIR") and plan.region_based and plan.region_lists == [[1, 2, 3], [2, 3], [3]]
    assert all(isinstance(n, Normalization) and n.scheme == "zscore" for n in plan.normalization)
    assert plan.loss == LossSpec(batch_dice=False) and plan.fingerprint_hash == "abc123"
    with pytest.raises(AttributeError):
        plan.batch_size = 3  # type: ignore[misc]
    changed = plan.replace(batch_size=plan.batch_size + 1)
    assert changed.batch_size == plan.batch_size + 1 and changed != plan


def test_round_trip_through_plan_json(plan, tmp_path):
    data = plan.to_dict()
    assert list(data)[:6] == ["format_version", "dataset", "config", "channels", "labels", "num_classes"]
    assert list(data)[-4:] == ["model", "budget", "fingerprint", "decisions"]
    assert Plan.from_dict(data) == plan
    path = save_plan(plan, tmp_path / "plan.json")
    assert json.loads(path.read_text()) == data
    assert load_plan(path) == plan
    assert Plan.from_dict(json.loads(json.dumps(data))).to_dict() == data  # JSON-exact


def test_unknown_keys_survive_and_old_files_load(plan, tmp_path):
    data = plan.to_dict()
    data["added_by_a_newer_version"] = {"x": 1}
    assert Plan.from_dict(data).to_dict()["added_by_a_newer_version"] == {"x": 1}
    old = {k: v for k, v in plan.to_dict().items()
           if k not in ("slice_context", "source_labels", "loss", "background", "resampling", "num_classes",
                        "budget", "fingerprint", "decisions", "dataset")}
    old["sampling"] = {"foreground_fraction": 0.5}  # written before slice weighting existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_plan(tmp_path / "old.json")
    assert loaded.slice_context == 0 and loaded.source_labels == {} and loaded.loss.batch_dice is False
    assert loaded.sampling == Sampling(foreground_fraction=0.5) and loaded.resampling.image_order == 3
    assert loaded.num_classes is None and loaded.to_dict()["num_classes"] == len(loaded.labels)
    assert loaded.fingerprint_hash is None and "budget" not in loaded.to_dict()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("patch_size", [-5, 0], "plan key patch_size must be 2 positive integers"),
        ("target_spacing", [0, -1, float("nan")], "plan key target_spacing must be 3 positive, finite spacings"),
        ("batch_size", 0, "plan key batch_size must be a positive integer"),
        ("slice_axis", 7, "plan key slice_axis must be 0, 1 or 2"),
        ("labels", {"background": -1}, "plan key labels must be a mapping of label names to non-negative"),
        ("normalization", [], "plan key normalization must be one entry per channel (2)"),
        ("model", {"name": 3}, "plan key model must be"),
        ("config", "4d", "plan config '4d' is not 2d or 3d"),
        ("format_version", 9, "plan format_version 9 is not supported"),
    ],
)
def test_validation_names_the_file_and_key(plan, key, value, message):
    data = dict(plan.to_dict(), **{key: value})
    with pytest.raises(InputError) as err:
        Plan.from_dict(data, what="run/plan.json")
    assert str(err.value).startswith("run/plan.json: ") and message in str(err.value)


def test_missing_keys_and_what_a_checkpoint_needs(plan):
    data = plan.to_dict()
    del data["sampling"], data["patch_size"]
    with pytest.raises(InputError, match=r"plan.json: plan is missing key\(s\) patch_size, sampling"):
        Plan.from_dict(data, what="plan.json")
    data["patch_size"] = list(plan.patch_size)
    assert "sampling" not in PREDICTION_KEYS and as_plan(data).sampling == Sampling()  # older checkpoints
    with pytest.raises(InputError, match="a plan must be a JSON object, got list"):
        Plan.from_dict([1, 2])


def test_a_region_based_plan_and_overrides(plan):
    given = make_plan(fingerprint=_fingerprint(), info=_info(), device="cpu",
                      overrides=PlanOverrides(regions="none", patch_size=(32, 32), batch_size=3))
    assert not given.region_based and given.model.num_classes == 4 and given.patch_size == (32, 32)
    assert given.decisions["regions"] == "given: softmax over the labels" and given.batch_size == 3
    assert given.preprocessing_key() == plan.preprocessing_key()  # same preprocessing, other training choices


def test_region_weights_round_trip_and_are_checked_when_read(plan, tmp_path):
    data = plan.to_dict()
    assert data["loss"] == {"batch_dice": False} and plan.loss.region_weights is None
    weighted = dict(data, loss={"batch_dice": False, "region_weights": {"TC": 2, "ET": 2}})
    loaded = Plan.from_dict(weighted)
    assert loaded.loss.region_weights == {"TC": 2.0, "ET": 2.0}
    assert loaded.to_dict()["loss"] == {"batch_dice": False, "region_weights": {"TC": 2.0, "ET": 2.0}}
    for bad, message in (({"XX": 2}, r"name region\(s\) \['XX'\] that the plan does not have; its regions: WT, TC, ET"),
                         ({"TC": -1}, "must be a mapping of region names to numbers >= 0, got {'TC': -1}"),
                         ({"WT": 0, "TC": 0, "ET": 0}, "give every region weight 0")):
        with pytest.raises(InputError, match=r"p\.json: plan key loss\.region_weights " + message):
            Plan.from_dict(dict(data, loss={"region_weights": bad}), what="p.json")
