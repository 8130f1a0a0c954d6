"""predict_folder: outputs, geometry, resume, atomicity, failures, predictions.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from predict_fixtures import RAS_DIRECTION, cube_volume, oblique_direction, random_checkpoint, write_dataset_folder

from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.inference.predict import PredictConfig, predict_folder
from brainseg_cli.io import Image, read_image, write_image


def _case(seed, *, spacing=(1.0, 1.0, 1.0), direction=None, origin=(10.0, -20.0, 5.0), shape=(32, 32, 24)):
    image, label = cube_volume(seed, shape=shape)
    return Image(image, spacing, origin, direction), label


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


GEOMETRIES = {
    "lps": dict(),
    "ras": dict(direction=RAS_DIRECTION),
    "oblique": dict(direction=oblique_direction(25.0)),
    "anisotropic": dict(spacing=(0.9, 0.9, 3.0)),
}


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_geometry_preserved_and_matches_fitted_truth(tmp_path, fitted_checkpoint, geometry):
    img, label = _case(21, **GEOMETRIES[geometry])
    write_dataset_folder(tmp_path / "in", {"caseA": img}, channels=["T1", "FLAIR"])
    summary = predict_folder(config=PredictConfig(models=(fitted_checkpoint,), input=tmp_path / "in",
                                                  output=tmp_path / "out", device="cpu"))
    assert summary.predicted == ("caseA",) and not summary.failed
    out = read_image(tmp_path / "out" / "caseA.nii.gz")
    src = read_image(tmp_path / "in" / "caseA_0000.nii.gz")
    out.check_same_grid(src, "prediction vs input", tol=1e-5)
    assert out.array.shape == src.array.shape and np.issubdtype(out.array.dtype, np.integer)
    a, b = nib.load(tmp_path / "out" / "caseA.nii.gz"), nib.load(tmp_path / "in" / "caseA_0000.nii.gz")
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    if geometry != "anisotropic":  # the model was fitted at 1 mm
        assert _dice(np.asarray(out.array) > 0, label > 0) > 0.6


def test_outputs_csv_config_probabilities_and_source_labels(tmp_path, fitted_checkpoint):
    cases = {f"c{i}": _case(30 + i, spacing=(1.0, 1.0, 2.0))[0] for i in range(2)}
    write_dataset_folder(tmp_path / "in", cases)
    config = PredictConfig(models=(fitted_checkpoint,), input=tmp_path / "in", output=tmp_path / "out", device="cpu",
                           save_probabilities=True, labels="source", lcc="off")
    seen = []
    summary = predict_folder(config=config, progress=lambda d, i, n: seen.append((d, i, n)))
    assert seen == [("", 0, 2), ("c0", 1, 2), ("c1", 2, 2)]
    assert summary.predicted == ("c0", "c1")
    out = np.asarray(read_image(tmp_path / "out" / "c0.nii.gz").array)
    assert set(np.unique(out)) <= {0, 2, 4} and (out == 4).any()  # canonical 1 -> 2, 2 -> 4
    npz = np.load(tmp_path / "out" / "c0_probabilities.npz")
    assert npz["probabilities"].dtype == np.float16 and npz["probabilities"].shape == (3, 32, 32, 24)
    assert list(npz["names"]) == ["background", "outer", "inner"]
    np.testing.assert_allclose(npz["spacing"], (1.0, 1.0, 2.0))
    # labels are the argmax of the saved probabilities (up to float16 ties)
    argmax = npz["probabilities"].astype(np.float32).argmax(0)
    assert (np.array([0, 2, 4])[argmax] == out).mean() > 0.999
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == ["c0", "c1"] and list(rows[0]) == ["case", "outer_ml", "inner_ml"]
    canonical = np.array([0, 0, 1, 0, 2])[out]
    assert float(rows[0]["inner_ml"]) == pytest.approx((canonical == 2).sum() * 2.0 / 1000, abs=1e-4)
    saved = json.loads((tmp_path / "out" / "predict_config.json").read_text())
    assert saved["labels"] == "source" and saved["models"] == [str(fitted_checkpoint)]
    assert saved["largest_component_groups"] == []   # --lcc off: the post-processing applied is written down


def test_skip_finished_overwrite_and_resume(tmp_path, fitted_checkpoint):
    cases = {f"c{i}": _case(40 + i)[0] for i in range(2)}
    write_dataset_folder(tmp_path / "in", cases)
    config = PredictConfig(models=(fitted_checkpoint,), input=tmp_path / "in", output=tmp_path / "out", device="cpu")
    first = predict_folder(config=config)
    assert first.predicted == ("c0", "c1")
    marker = tmp_path / "out" / "c0.nii.gz"
    before = marker.stat().st_mtime_ns
    (tmp_path / "out" / "c1.nii.gz").unlink()  # an interrupted run: c1 missing
    (tmp_path / "out" / "predictions.csv").unlink()
    second = predict_folder(config=config)
    assert second.skipped == ("c0",) and second.predicted == ("c1",)
    assert marker.stat().st_mtime_ns == before
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"c0", "c1"}  # the skipped case's volumes are read back from its label map
    assert float(rows["c0"]["outer_ml"]) == pytest.approx(first.volumes["c0"]["outer"], abs=1e-4)
    third = predict_folder(config=PredictConfig(**{**config.__dict__, "overwrite": True}))
    assert third.predicted == ("c0", "c1") and not third.skipped
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_refuses_output_in_input(tmp_path, fitted_checkpoint):
    write_dataset_folder(tmp_path / "in", {"c": _case(1)[0]})
    for out in (tmp_path / "in", tmp_path / "in" / "preds"):
        with pytest.raises(ConfigError, match="input"):
            predict_folder(config=PredictConfig(models=(fitted_checkpoint,), input=tmp_path / "in", output=out))
    single = tmp_path / "in" / "c_0000.nii.gz"
    with pytest.raises(ConfigError, match="is the input folder"):
        predict_folder(config=PredictConfig(models=(fitted_checkpoint,), input=single, output=tmp_path / "in"))
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["c_0000.nii.gz", "c_0001.nii.gz"]


@pytest.mark.fault
def test_bad_case_and_skip_invalid(tmp_path, fitted_checkpoint):
    folder = write_dataset_folder(tmp_path / "in", {"a": _case(1)[0], "c": _case(2)[0]})
    write_image(_case(3)[0].channel(0), folder / "b_0000.nii.gz")  # b lacks its second channel
    config = PredictConfig(models=(fitted_checkpoint,), input=folder, output=tmp_path / "out", device="cpu")
    with pytest.raises(InputError, match=r"case b: 1 channel\(s\) but the model needs 2"):
        predict_folder(config=config)
    assert (tmp_path / "out" / "a.nii.gz").exists() and not (tmp_path / "out" / "c.nii.gz").exists()
    summary = predict_folder(config=PredictConfig(**{**config.__dict__, "skip_invalid": True}))
    assert summary.skipped == ("a",) and summary.predicted == ("c",)
    assert [case for case, _ in summary.failed] == ["b"] and "model needs 2" in summary.failed[0][1]


def test_cases_are_read_one_ahead_in_a_background_thread(tmp_path, fitted_checkpoint, monkeypatch):
    import threading

    from brainseg_cli.inference import inputs, predict
    from brainseg_cli.inference.predictor import Predictor

    folder = write_dataset_folder(tmp_path / "in", {f"c{i}": _case(50 + i)[0] for i in range(3)})
    write_image(_case(53)[0].channel(0), folder / "c3_0000.nii.gz")  # c3 lacks its second channel
    reads, read_started, ahead = [], {f"c{i}": threading.Event() for i in range(4)}, {}
    real_load, real_predict, real_prepare = inputs.load_case, predict.predict_case, Predictor.prepare
    prepared_in_main = []
    next_case = {"c0": "c2", "c2": "c3"}  # c1 is skipped below

    def load(case, **kwargs):
        reads.append((case.case, threading.current_thread() is threading.main_thread()))
        read_started[case.case].set()
        return real_load(case, **kwargs)

    def predict_one(case, loaded, prepared, **kwargs):
        # While a case is predicted, the next one to predict is being read (not only after).
        ahead[case.case] = read_started[next_case[case.case]].wait(timeout=60)
        return real_predict(case, loaded, prepared, **kwargs)

    def prepare(self, image, *, case):
        prepared_in_main.append(threading.current_thread() is threading.main_thread())
        return real_prepare(self, image, case=case)

    monkeypatch.setattr(predict, "load_case", load)
    monkeypatch.setattr(predict, "predict_case", predict_one)
    monkeypatch.setattr(Predictor, "prepare", prepare)
    (tmp_path / "out").mkdir()
    write_image(_case(1)[0].channel(0), tmp_path / "out" / "c1.nii.gz")  # c1 done: skipped, never read
    summary = predict_folder(config=PredictConfig(models=(fitted_checkpoint,), input=folder, output=tmp_path / "out",
                                                  device="cpu", skip_invalid=True))
    assert summary.predicted == ("c0", "c2") and summary.skipped == ("c1",) and summary.failed[0][0] == "c3"
    assert reads == [("c0", False), ("c2", False), ("c3", False)]  # each case read once, off the main thread
    assert prepared_in_main == [False, False]  # c0 and c2 preprocessed there too (c3 fails when read)
    assert ahead == {"c0": True, "c2": True}


def test_lgg_tiff_output(tmp_path):
    ckpt = random_checkpoint(tmp_path / "lgg.pt", config="2d", channels=("T1", "FLAIR", "T1c"), patch_size=(16, 16),
                             slice_axis=2, labels={"background": 0, "abnormality": 1})
    folder = tmp_path / "kaggle_3m" / "TCGA_X_1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        tifffile.imwrite(folder / f"TCGA_X_1_{n}.tif", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8),
                         photometric="rgb")
    summary = predict_folder(config=PredictConfig(models=(ckpt,), input=tmp_path / "kaggle_3m",
                                                  output=tmp_path / "out", device="cpu", lcc="off"))
    assert summary.predicted == ("TCGA_X_1",)
    masks = sorted(p.name for p in (tmp_path / "out" / "TCGA_X_1").iterdir())
    assert masks == ["TCGA_X_1_1_mask.tif", "TCGA_X_1_2_mask.tif", "TCGA_X_1_3_mask.tif"]
    m = tifffile.imread(tmp_path / "out" / "TCGA_X_1" / "TCGA_X_1_2_mask.tif")
    assert m.shape == (20, 20) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}


def test_bad_options(tmp_path, fitted_checkpoint):
    base = dict(models=(fitted_checkpoint,), input=tmp_path, output=tmp_path / "o")
    with pytest.raises(ConfigError, match="invalid --lcc"):
        predict_folder(config=PredictConfig(**base, lcc="sometimes"))
    with pytest.raises(ConfigError, match="--overlap must be in"):
        predict_folder(config=PredictConfig(**base, overlap=1.5))
    with pytest.raises(ConfigError, match="unknown channel name 'T9'"):
        predict_folder(config=PredictConfig(**base, channel_order=("T1", "T9")))
    with pytest.raises(InputError, match="input not found"):
        predict_folder(config=PredictConfig(**{**base, "input": tmp_path / "nope"}))


@pytest.mark.fault
def test_a_failed_run_leaves_no_new_output_folder(tmp_path, fitted_checkpoint):
    """Issue #20: a run failing on its first case left ``predict_config.json`` in the new output folder."""
    folder = write_dataset_folder(tmp_path / "in", {"c": _case(2)[0]})
    write_image(_case(3)[0].channel(0), folder / "a_0000.nii.gz")  # a, the first case, lacks its second channel
    config = PredictConfig(models=(fitted_checkpoint,), input=folder, output=tmp_path / "new" / "out", device="cpu")
    with pytest.raises(InputError, match=r"case a: 1 channel\(s\) but the model needs 2"):
        predict_folder(config=config)
    assert not (tmp_path / "new" / "out").exists()
    # a folder the user made is kept, emptied of nothing of theirs
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError):
        predict_folder(config=PredictConfig(**{**config.__dict__, "output": tmp_path / "mine"}))
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt", "predict_config.json"]


@pytest.mark.fault
def test_a_full_disk_leaves_no_partial_output_and_the_rerun_completes(tmp_path, fitted_checkpoint, monkeypatch):
    """Issue #20: on a full disk a truncated .nii.gz was renamed into place, and the re-run skipped it as done."""
    import SimpleITK as sitk

    from brainseg_cli.errors import OutputError

    folder = write_dataset_folder(tmp_path / "in", {"c0": _case(1)[0], "c1": _case(2)[0]})
    before = {p: p.read_bytes() for p in folder.iterdir()}
    real = sitk.WriteImage

    def full_disk(img, path, *args):  # the second output is cut short by a full disk, and ITK says nothing
        real(img, path, *args)
        if path.endswith("c1.nii.gz"):
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 3])

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    config = PredictConfig(models=(fitted_checkpoint,), input=folder, output=tmp_path / "out", device="cpu")
    with pytest.raises(OutputError, match=r"cannot write .*out/c1\.nii\.gz: the written file is incomplete"):
        predict_folder(config=config)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.nii.gz", "predict_config.json", "predictions.csv"]
    with open(tmp_path / "out" / "predictions.csv", newline="") as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["c0"]
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.setattr(sitk, "WriteImage", real)   # space freed: the re-run predicts c1 and skips c0
    summary = predict_folder(config=config)
    assert summary.skipped == ("c0",) and summary.predicted == ("c1",)
    read_image(tmp_path / "out" / "c1.nii.gz")


def _add_rows(args):
    """One "predict run": adds its cases to the shared table one at a time, as _predict_cases does."""
    from brainseg_cli.inference.predict import _update_csv

    path, name, n = args
    volumes = {}
    for i in range(n):
        volumes[f"{name}_{i:02d}"] = {"tumour": float(i)}
        _update_csv(Path(path), volumes, [("tumour", 1)])


@pytest.mark.fault
def test_concurrent_runs_into_one_folder_keep_every_row(tmp_path):
    """Issue #20: two predicts into one output folder; the table ends with the rows of both (it was
    last-writer-wins: each run wrote its own rows over the table it had read at its start)."""
    import csv
    from concurrent.futures import ThreadPoolExecutor

    from brainseg_cli.inference.predict import _update_csv

    path = tmp_path / "predictions.csv"
    _update_csv(path, {"earlier": {"tumour": 1.5}}, [("tumour", 1)])  # a previous run's row stays too
    # Threads, not forked processes (a fork of a process holding torch's threads can deadlock): each
    # update opens the folder anew, and flock locks of separate opens exclude each other within one process too.
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(_add_rows, [(str(path), name, 15) for name in ("a", "b", "c")]))
    with path.open(newline="") as fh:
        rows = {r["case"]: r["tumour_ml"] for r in csv.DictReader(fh)}
    assert set(rows) == {"earlier"} | {f"{n}_{i:02d}" for n in "abc" for i in range(15)}
    assert rows["earlier"] == "1.5000" and rows["c_14"] == "14.0000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]  # no lock or temporary file left
