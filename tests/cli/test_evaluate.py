"""``brainseg evaluate`` on the command line, on real BraTS labels and small synthetic folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.metrics_data import BRATS18_TO_CANONICAL, perturbations
from typer.testing import CliRunner

from brainseg_cli.cli.evaluate import expand_arguments
from brainseg_cli.cli.main import app
from brainseg_cli.io import Image, read_image, write_image
from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_case
from brainseg_cli.metrics.regions import BRATS_REGIONS

runner = CliRunner()
CASES = ("Brats18_CBICA_AQN_1", "Brats18_TCIA02_135_1")


@pytest.fixture(scope="module")
def brats_folders(shared_data: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """Reference (canonical BraTS labels, full 240x240x155 grid) and perturbed predictions, as flat folders."""
    root = tmp_path_factory.mktemp("brats")
    ref_dir, pred_dir = root / "ref", root / "pred"
    arrays = {}
    for i, case in enumerate(CASES):
        image = read_image(shared_data / "brats2018_deepbrainseg" / case / f"{case}_seg.nii.gz")
        ref = BRATS18_TO_CANONICAL[np.asarray(image.array)]
        box = tuple(slice(max(int(h[0]) - 8, 0), int(h[-1]) + 9) for h in (
            np.flatnonzero(ref.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)))
        pred = np.zeros_like(ref)  # perturbed around the tumour only, to keep the test fast
        pred[box] = perturbations(np.ascontiguousarray(ref[box]), seed=i)["mixed" if i == 0 else "islands"]
        write_image(image.with_array(ref), ref_dir / f"{case}.nii.gz")
        write_image(image.with_array(pred), pred_dir / f"{case}.nii.gz")
        arrays[case] = (pred, ref, image.spacing)
    return ref_dir, pred_dir, arrays


def test_evaluate_real_brats_writes_results_and_csv(brats_folders, tmp_path: Path) -> None:
    ref_dir, pred_dir, arrays = brats_folders
    out, table = tmp_path / "results.json", tmp_path / "cases.csv"
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--metrics", "dice",
                              "hd95", "assd", "--regions", "brats", "-o", str(out), "--csv", str(table)])
    assert res.exit_code == 0, res.output
    assert "foreground mean" in res.stdout and "WT" in res.stdout and "HD95 max" in res.stdout
    data = json.loads(out.read_text())
    assert [(c["case"], c["label"]) for c in data["cases"][:6]] == [(CASES[0], x) for x in ("1", "2", "3", "WT", "TC", "ET")]
    config = EvaluateConfig(metrics=("dice", "hd95", "assd"))
    for case, (pred, ref, spacing) in arrays.items():
        expected = evaluate_case(pred, ref, spacing=spacing, labels={"1": 1, "2": 2, "3": 3}, regions=BRATS_REGIONS,
                                 config=config)
        got = [c for c in data["cases"] if c["case"] == case]
        assert got == [{"case": case, **row} for row in expected]
    lines = list(csv.DictReader(table.open()))
    assert list(lines[0]) == ["case", "label", "dice", "hd95", "assd"] and len(lines) == 12
    assert float(lines[0]["dice"]) == data["cases"][0]["dice"]


def test_json_flag_prints_only_json(brats_folders) -> None:
    ref_dir, pred_dir, _ = brats_folders
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--json",
                              "--hd95", "pooled", "--labels", "1", "3", "--metrics", "dice,hd95", "sensitivity"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["definitions"]["hd95_mode"] == "pooled"
    assert {c["label"] for c in data["cases"]} == {"1", "3"}
    assert set(data["cases"][0]) == {"case", "label", "dice", "hd95", "sensitivity"}


def test_hd95_flag_changes_the_value(brats_folders) -> None:
    ref_dir, pred_dir, _ = brats_folders
    values = {}
    for mode in ("max", "pooled"):
        res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--json",
                                  "--metrics", "hd95", "--hd95", mode])
        assert res.exit_code == 0, res.stderr
        values[mode] = [c["hd95"] for c in json.loads(res.stdout)["cases"]]
    assert values["max"] != values["pooled"]
    assert all(m >= p for m, p in zip(values["max"], values["pooled"]))


def _small(tmp_path: Path, *, pred_cases=("a", "b"), spacing=(1.0, 1.0, 1.0)) -> tuple[Path, Path]:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    labels = np.zeros((10, 10, 8), np.uint8)
    labels[2:7, 2:7, 2:6] = 1
    labels[3:6, 3:6, 3:5] = 2
    for case in ("a", "b"):
        write_image(Image(labels, (1.0, 1.0, 1.0)), ref_dir / f"{case}.nii.gz")
    for case in pred_cases:
        write_image(Image(np.roll(labels, 1, 0), spacing), pred_dir / f"{case}.nii.gz")
    return ref_dir, pred_dir


def test_missing_extra_and_strict(tmp_path: Path) -> None:
    ref_dir, pred_dir = _small(tmp_path, pred_cases=("a", "zz"))
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["missing"] == ["b"] and data["extra"] == ["zz"]
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir)])
    assert "1 missing prediction(s) scored as empty: b" in res.stdout
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--strict"])
    assert res.exit_code == 1
    assert "error: 1 reference case(s) have no prediction" in res.stderr and "e.g. b" in res.stderr


def test_geometry_mismatch_exit_code_and_message(tmp_path: Path) -> None:
    ref_dir, pred_dir = _small(tmp_path, spacing=(1.0, 1.0, 2.0))
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir)])
    assert res.exit_code == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: case a: prediction a.nii.gz vs reference a.nii.gz: grids differ: spacing (1, 1, 1) vs (1, 1, 2)"


def test_empty_policy_exclude_label_and_lesion_wise_flags(tmp_path: Path) -> None:
    ref_dir, pred_dir = _small(tmp_path, pred_cases=("a",))
    base = ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "--json"]
    brats = json.loads(runner.invoke(app, base).stdout)
    nan = json.loads(runner.invoke(app, [*base, "--empty", "nan"]).stdout)
    missing = lambda d: [c["hd95"] for c in d["cases"] if c["case"] == "b"]  # noqa: E731
    assert missing(brats) == [pytest.approx(np.sqrt(10**2 + 10**2 + 8**2))] * 2
    assert missing(nan) == [None, None] and nan["empty_policy"] == "nan"
    excluded = json.loads(runner.invoke(app, [*base, "--exclude-label", "2"]).stdout)
    assert excluded["summary"]["foreground_mean"]["dice"] == excluded["summary"]["1"]["dice"]
    assert brats["summary"]["foreground_mean"]["dice"] != brats["summary"]["1"]["dice"]
    lesion = json.loads(runner.invoke(app, [*base, "--lesion-wise"]).stdout)
    assert {"lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp"} <= set(lesion["cases"][0])
    assert "lesion_wise" in lesion["definitions"] and "lesion_dice" not in brats["cases"][0]
    nsd = json.loads(runner.invoke(app, [*base, "--metrics", "nsd", "--nsd-tolerance", "0.5"]).stdout)
    assert nsd["definitions"]["nsd_tolerance_mm"] == 0.5
    res = runner.invoke(app, [*base, "--workers", "2"])
    assert res.exit_code == 0 and json.loads(res.stdout)["cases"] == brats["cases"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    ref_dir, pred_dir = _small(tmp_path)
    base = ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir)]
    res = runner.invoke(app, [*base, "--metrics", "dice", "hd96"])
    assert res.exit_code == 2 and "unknown metric 'hd96' (did you mean 'hd95'?)" in res.stderr
    res = runner.invoke(app, [*base, "--regions"])
    assert res.exit_code == 2 and "has no evaluation regions" in res.stderr
    res = runner.invoke(app, [*base, "--regions", "brats"])
    assert res.exit_code == 2 and "region WT uses label(s) [3]" in res.stderr
    res = runner.invoke(app, [*base, "--nsd-tolerance", "2"])
    assert res.exit_code == 2 and "nsd is not among --metrics" in res.stderr
    res = runner.invoke(app, [*base, "--labels", "edema"])
    assert res.exit_code == 2 and "'edema' is not a label" in res.stderr


def test_dataset_regions_by_bare_flag(tmp_path: Path) -> None:
    from brainseg_cli.data.phantom import write_phantom_dataset

    dataset = write_phantom_dataset(tmp_path / "ds", n_cases=1, seed=5, shape=(24, 24, 16))
    res = runner.invoke(app, ["evaluate", "--ref", str(dataset), "--pred", str(dataset / "labelsTr"), "--regions",
                              "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert list(data["regions"]) == list(json.loads((dataset / "dataset.json").read_text())["brainseg"]["regions"])
    assert all(c["dice"] == 1.0 for c in data["cases"])


def test_expand_arguments() -> None:
    assert expand_arguments(["--metrics", "dice", "hd95", "--labels", "1", "2", "--json"]) == [
        "--metrics", "dice", "--metrics", "hd95", "--labels", "1", "--labels", "2", "--json"]
    assert expand_arguments(["--regions", "--json"]) == ["--regions", "dataset", "--json"]
    assert expand_arguments(["--regions"]) == ["--regions", "dataset"]
    assert expand_arguments(["--regions", "brats", "-o", "x"]) == ["--regions", "brats", "-o", "x"]


@pytest.mark.fault
def test_outputs_that_name_an_input_are_refused_and_the_input_is_untouched(brats_folders, tmp_path: Path) -> None:
    """Issue #20: ``-o`` or ``--csv`` naming a prediction or reference file overwrote it with the results."""
    ref_dir, pred_dir, _ = brats_folders
    target = pred_dir / f"{CASES[0]}.nii.gz"
    before = {p: p.read_bytes() for p in (target, ref_dir / f"{CASES[1]}.nii.gz")}
    for option, path, role in (("-o", target, "prediction"), ("--csv", ref_dir / f"{CASES[1]}.nii.gz", "reference")):
        res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), option, str(path)])
        assert res.exit_code == 1, res.output
        assert res.stderr.strip().splitlines()[-1:] == [
            f"error: {option} {path.resolve()}: this is an input of the {role} {ref_dir if role == 'reference' else pred_dir}; "
            "writing the results there would overwrite it"]
    assert {p: p.read_bytes() for p in before} == before
    same = tmp_path / "both.json"
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "-o", str(same), "--csv", str(same)])
    assert res.exit_code == 2 and f"-o and --csv both name {same.resolve()}" in res.stderr and not same.exists()
    # a results file beside the predictions (not one of them) is fine
    beside = pred_dir / "results.json"
    res = runner.invoke(app, ["evaluate", "--ref", str(ref_dir), "--pred", str(pred_dir), "-o", str(beside)])
    assert res.exit_code == 0, res.stderr
    beside.unlink()


@pytest.mark.fault
def test_a_prediction_label_the_reference_does_not_define_is_refused(tmp_path: Path) -> None:
    """Issue #20: a prediction holding label 7 was scored silently (its voxels counted as nothing)."""
    import json as _json

    ref_dir, pred_dir = _small(tmp_path)
    labels = {"background": 0, "outer": 1, "inner": 2}
    (tmp_path / "ds" / "labelsTr").mkdir(parents=True)
    for case in ("a", "b"):
        (ref_dir / f"{case}.nii.gz").rename(tmp_path / "ds" / "labelsTr" / f"{case}.nii.gz")
        write_image(Image(np.zeros((10, 10, 8), np.float32), (1.0, 1.0, 1.0)),
                    tmp_path / "ds" / "imagesTr" / f"{case}_0000.nii.gz")
    (tmp_path / "ds" / "dataset.json").write_text(_json.dumps({
        "channel_names": {"0": "T1"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}))
    bad = read_image(pred_dir / "b.nii.gz")
    array = np.asarray(bad.array).copy()
    array[0, 0, :3] = 7
    write_image(bad.with_array(array), pred_dir / "b.nii.gz")
    res = runner.invoke(app, ["evaluate", "--ref", str(tmp_path / "ds"), "--pred", str(pred_dir)])
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1:] == [
        f"error: case b: prediction {pred_dir / 'b.nii.gz'} holds label(s) 7 (3 voxels) that the reference "
        f"{tmp_path / 'ds'} does not define (labels [0, 1, 2]); a label the reference cannot hold would "
        "be scored as nothing"]
    array[0, 0, :3] = 2
    write_image(bad.with_array(array), pred_dir / "b.nii.gz")
    assert runner.invoke(app, ["evaluate", "--ref", str(tmp_path / "ds"), "--pred", str(pred_dir)]).exit_code == 0


def test_undefined_labels() -> None:
    from brainseg_cli.metrics.evaluation import undefined_labels

    assert undefined_labels(np.array([0, 1, 2, 2]), [0, 1, 2]) == {}
    assert undefined_labels(np.array([0, 1, 7, 7]), [0, 1, 2]) == {7: 2}
    assert undefined_labels(np.array([0, 3]), [0, 1, 3]) == {}
    assert undefined_labels(np.array([0, 2, -1]), [0, 1, 2]) == {-1: 1}


def _labelled_dataset(tmp_path: Path, labels: dict) -> tuple[Path, Path]:
    """A reference dataset (dataset.json naming ``labels``) and a flat prediction folder, both of cases a, b."""
    import json as _json

    ref_dir, pred_dir = _small(tmp_path)
    ds = tmp_path / "ds"
    (ds / "labelsTr").mkdir(parents=True)
    for case in ("a", "b"):
        (ref_dir / f"{case}.nii.gz").rename(ds / "labelsTr" / f"{case}.nii.gz")
        write_image(Image(np.zeros((10, 10, 8), np.float32), (1.0, 1.0, 1.0)), ds / "imagesTr" / f"{case}_0000.nii.gz")
    (ds / "dataset.json").write_text(_json.dumps({"channel_names": {"0": "T1"}, "labels": labels, "numTraining": 2,
                                                  "file_ending": ".nii.gz"}))
    return ds, pred_dir


@pytest.mark.fault
def test_predictions_of_another_label_scheme_are_refused(tmp_path: Path) -> None:
    """Issue #20: BraTS 2012 keeps its own labels (2 = active tumour); a canonical model's 2 means another thing."""
    import json as _json

    ds, pred_dir = _labelled_dataset(tmp_path, {"background": 0, "edema": 1, "active tumour": 2})
    written = {"labels": "model", "model_labels": {"background": 0, "edema": 1, "non-enhancing tumour": 2,
                                                   "enhancing tumour": 3}}
    (pred_dir / "predict_config.json").write_text(_json.dumps(written))
    res = runner.invoke(app, ["evaluate", "--ref", str(ds), "--pred", str(pred_dir)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: prediction {pred_dir} was written by a model whose label 2 is 'non-enhancing tumour', but label 2 of "
        f"the reference {ds} is 'active tumour': the two label schemes differ (convert both with the same scheme, or "
        "predict with --labels source against the source's labels)")
    # the same scheme, or source-coded outputs, are compared as before
    written["model_labels"] = {"background": 0, "Edema": 1, "active tumour": 2}
    (pred_dir / "predict_config.json").write_text(_json.dumps(written))
    assert runner.invoke(app, ["evaluate", "--ref", str(ds), "--pred", str(pred_dir)]).exit_code == 0
    (pred_dir / "predict_config.json").write_text(_json.dumps({**written, "labels": "source",
                                                               "model_labels": {"core": 2}}))
    assert runner.invoke(app, ["evaluate", "--ref", str(ds), "--pred", str(pred_dir)]).exit_code == 0
