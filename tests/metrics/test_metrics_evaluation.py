"""Folder-level evaluation: pairing, labels and regions, geometry, outputs, workers, Kaggle-LGG patients."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from brainseg_cli import __version__
from brainseg_cli.errors import ConfigError, GeometryError, InputError, RegistryError
from brainseg_cli.io import Image, read_image, write_image
from brainseg_cli.metrics.empty import image_diagonal
from brainseg_cli.metrics.evaluation import FOREGROUND_MEAN, EvaluateConfig, evaluate_case, evaluate_folders
from brainseg_cli.metrics.overlap import dice

SHAPE = (20, 18, 12)
SPACING = (1.0, 1.0, 2.0)


def _labels(seed: int, values=(1, 2, 3)) -> np.ndarray:
    """A tumour-like label map: nested boxes of the given labels (outermost first), placed by ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, dtype=np.uint8)
    centre = np.array(SHAPE) // 2 + rng.integers(-2, 3, 3)
    for k, v in enumerate(values):
        half = np.array([7, 6, 4]) - 2 * k
        out[tuple(slice(c - h, c + h) for c, h in zip(centre, np.maximum(half, 1)))] = v
    return out


def _write(folder: Path, case: str, array: np.ndarray, spacing=SPACING, origin=None) -> Path:
    path = folder / f"{case}.nii.gz"
    write_image(Image(array, spacing, origin), path)
    return path


def _folders(tmp_path: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(exist_ok=True)
    pred.mkdir(exist_ok=True)
    for case, (r, p) in cases.items():
        if r is not None:
            _write(ref, case, r)
        if p is not None:
            _write(pred, case, p)
    return ref, pred


def _rows(result, case: str) -> dict[str, dict]:
    return {r["label"]: r for r in result.rows if r["case"] == case}


def test_evaluate_case_orders_labels_then_regions_and_discovers_values() -> None:
    ref = _labels(0)
    pred = np.roll(ref, 1, axis=0)
    config = EvaluateConfig(metrics=("dice", "iou"))
    rows = evaluate_case(pred, ref, spacing=SPACING, labels={"edema": 1, "core": 2, "enh": 3},
                         regions={"WT": (1, 2, 3), "ET": (3,)}, config=config)
    assert [r["label"] for r in rows] == ["edema", "core", "enh", "WT", "ET"]
    assert set(rows[0]) == {"label", "dice", "iou"}
    assert rows[0]["dice"] == pytest.approx(dice(pred == 1, ref == 1))
    assert rows[3]["dice"] == pytest.approx(dice(pred > 0, ref > 0))
    assert rows[4] == {**rows[2], "label": "ET"}
    discovered = evaluate_case(pred, ref.astype(np.float32), spacing=SPACING, labels=None, config=config)
    assert [r["label"] for r in discovered] == ["1", "2", "3"]
    with pytest.raises(GeometryError, match="shape"):
        evaluate_case(pred[:-1], ref, spacing=SPACING, labels=None, config=config)
    with pytest.raises(InputError, match="non-integer"):
        evaluate_case(pred + 0.5, ref, spacing=SPACING, labels=None, config=config)


def test_pairs_by_case_id_reports_missing_and_extra(tmp_path: Path) -> None:
    a, b, c = _labels(1), _labels(2), _labels(3)
    ref, pred = _folders(tmp_path, {"case_a": (a, a), "case_b": (b, np.roll(b, 2, 0)), "case_c": (c, None),
                                    "stray": (None, a)})
    result = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice", "hd95")))
    assert result.missing == ["case_c"] and result.extra == ["stray"]
    assert sorted({r["case"] for r in result.rows}) == ["case_a", "case_b", "case_c"]
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in _rows(result, "case_a").values())
    missing = _rows(result, "case_c")["1"]
    assert missing["dice"] == 0.0
    assert missing["hd95"] == pytest.approx(image_diagonal(SHAPE, SPACING))
    with pytest.raises(InputError, match="case_c.*--strict"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, strict=True))


def test_geometry_mismatch_is_an_error_naming_the_case(tmp_path: Path) -> None:
    a = _labels(1)
    ref, pred = _folders(tmp_path, {"case_a": (a, a)})
    _write(ref, "case_b", a)
    _write(pred, "case_b", a, spacing=(1.0, 1.0, 3.0))
    with pytest.raises(GeometryError, match=r"case case_b: .*spacing"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred))
    _write(pred, "case_b", a[:, :, :-1])
    with pytest.raises(GeometryError, match=r"case case_b: .*shape 20x18x12 vs 20x18x11"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred))
    _write(pred, "case_b", a, origin=(0.0, 0.0, 5.0))
    with pytest.raises(GeometryError, match=r"case case_b: .*origin"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred))


def test_labels_found_in_the_data_across_cases(tmp_path: Path) -> None:
    """Without dataset.json, a label seen in any case is scored in every case (both empty elsewhere)."""
    two = _labels(1, values=(1, 2))
    one = _labels(2, values=(1,))
    ref, pred = _folders(tmp_path, {"two": (two, two), "one": (one, one)})
    result = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice", "hd95")))
    assert list(result.labels) == ["1", "2"]
    assert _rows(result, "one")["2"]["dice"] == 1.0  # both empty: the brats policy
    nan = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice",), empty_policy="nan"))
    assert math.isnan(_rows(nan, "one")["2"]["dice"])
    only = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, labels=("2",)))
    assert list(only.labels) == ["2"] and {r["label"] for r in only.rows} == {"2"}
    with pytest.raises(ConfigError, match=r"label\(s\) \[5\] occur in no reference"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, labels=("5",)))
    with pytest.raises(ConfigError, match=r"region WT uses label\(s\) \[3\]"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, regions="brats"))
    with pytest.raises(ConfigError, match="no dataset.json"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, regions="dataset"))


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    from brainseg_cli.data.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("ds") / "Dataset", n_cases=2, seed=3, shape=(32, 32, 24))


def _predictions_from(dataset: Path, folder: Path, shift: int = 1) -> Path:
    folder.mkdir()
    for path in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        image = read_image(path)
        write_image(image.with_array(np.roll(np.asarray(image.array), shift, axis=0)), folder / path.name)
    return folder


def test_dataset_reference_gives_label_names_and_regions(phantom_dataset: Path, tmp_path: Path) -> None:
    pred = _predictions_from(phantom_dataset, tmp_path / "pred")
    meta = json.loads((phantom_dataset / "dataset.json").read_text())
    result = evaluate_folders(config=EvaluateConfig(ref=phantom_dataset, pred=pred, regions="dataset"))
    names = [k for k, v in sorted(meta["labels"].items(), key=lambda kv: kv[1]) if v != 0]
    assert list(result.labels) == names
    assert result.regions == meta["brainseg"]["regions"]
    assert list(result.summary) == names + list(meta["brainseg"]["regions"]) + [FOREGROUND_MEAN]
    by_labels_tr = evaluate_folders(config=EvaluateConfig(ref=phantom_dataset / "labelsTr", pred=pred,
                                                          regions="dataset"))
    assert by_labels_tr.rows == result.rows
    chosen = evaluate_folders(config=EvaluateConfig(ref=phantom_dataset, pred=pred, labels=(names[0], "2")))
    assert list(chosen.labels) == sorted([names[0], next(k for k, v in meta["labels"].items() if v == 2)],
                                         key=lambda k: meta["labels"][k])
    with pytest.raises(ConfigError, match="did you mean"):
        evaluate_folders(config=EvaluateConfig(ref=phantom_dataset, pred=pred, labels=(names[0][:-1],)))
    with pytest.raises(ConfigError, match=r"\[7\] not defined"):
        evaluate_folders(config=EvaluateConfig(ref=phantom_dataset, pred=pred, labels=("7",)))


def test_tissue_dataset_without_regions(tmp_path: Path) -> None:
    from brainseg_cli.data.phantom import write_phantom_dataset

    dataset = write_phantom_dataset(tmp_path / "tissue", n_cases=1, seed=1, kind="tissue", shape=(24, 24, 16))
    pred = _predictions_from(dataset, tmp_path / "pred")
    with pytest.raises(ConfigError, match="defines none"):
        evaluate_folders(config=EvaluateConfig(ref=dataset, pred=pred, regions="dataset"))


def test_results_json_and_csv_formats(tmp_path: Path) -> None:
    a, b = _labels(1), _labels(2)
    ref, pred = _folders(tmp_path, {"case_a": (a, np.roll(a, 1, 1)), "case_b": (b, None)})
    out, table = tmp_path / "out" / "results.json", tmp_path / "out" / "cases.csv"
    config = EvaluateConfig(ref=ref, pred=pred, metrics=("dice", "hd95", "volume"), regions="brats",
                            empty_policy="nan", output=out, csv=table)
    result = evaluate_folders(config=config)

    def refuse(constant: str):
        raise AssertionError(f"NaN literal {constant} in results.json")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["format_version"] == 1 and data["tool_version"] == __version__
    assert data["empty_policy"] == "nan"
    assert data["definitions"]["hd95_mode"] == "max" and "surface" in data["definitions"]
    assert "reference image header" in data["definitions"]["spacing_source"]
    assert data["missing"] == ["case_b"] and data["extra"] == []
    assert data["cases"][0] == {"case": "case_a", "label": "1", **{k: data["cases"][0][k] for k in (
        "dice", "hd95", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml")}}
    hd95_b = [c["hd95"] for c in data["cases"] if c["case"] == "case_b"]
    assert hd95_b == [None] * 6  # the nan policy, written as null
    stats = data["summary"]["WT"]["hd95"]
    assert set(stats) == {"mean", "std", "median", "min", "max", "n", "n_nan"}
    assert (stats["n"], stats["n_nan"]) == (1, 1)
    assert data == json.loads(result.to_json())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]

    lines = list(csv.reader(io.StringIO(table.read_text())))
    assert lines[0] == ["case", "label", "dice", "hd95", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"]
    assert len(lines) == 1 + 2 * 6
    row_b = next(r for r in lines if r[0] == "case_b" and r[1] == "WT")
    assert row_b[3] == "" and float(row_b[2]) == 0.0


def test_summary_statistics_and_foreground_mean(tmp_path: Path) -> None:
    a, b = _labels(1), _labels(2)
    ref, pred = _folders(tmp_path, {"case_a": (a, np.roll(a, 1, 0)), "case_b": (b, np.roll(b, 2, 1))})
    result = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice",), exclude_labels=("3",)))
    dices = {(r["case"], r["label"]): r["dice"] for r in result.rows}
    label1 = [dices[("case_a", "1")], dices[("case_b", "1")]]
    stats = result.summary["1"]["dice"]
    assert stats["mean"] == pytest.approx(np.mean(label1)) and stats["std"] == pytest.approx(np.std(label1))
    assert stats["median"] == pytest.approx(np.median(label1)) and stats["min"] == min(label1)
    assert (stats["n"], stats["n_nan"]) == (2, 0)
    per_case = [np.mean([dices[(c, "1")], dices[(c, "2")]]) for c in ("case_a", "case_b")]
    assert result.summary[FOREGROUND_MEAN]["dice"]["mean"] == pytest.approx(np.mean(per_case))
    assert result.foreground_labels == ["1", "2"]
    everything = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice",)))
    assert everything.foreground_labels == ["1", "2", "3"]
    assert everything.summary[FOREGROUND_MEAN]["dice"]["mean"] != pytest.approx(np.mean(per_case))
    with pytest.raises(ConfigError, match="--exclude-label"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, exclude_labels=("9",)))


def test_workers_score_cases_in_other_processes(tmp_path: Path, monkeypatch) -> None:
    cases = {f"case_{i}": (_labels(i), np.roll(_labels(i), i % 3, 0)) for i in range(4)}
    ref, pred = _folders(tmp_path, cases)
    serial = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice", "hd95"), regions="brats"))
    parallel = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("dice", "hd95"),
                                                      regions="brats", workers=2))
    assert parallel.rows == serial.rows

    import concurrent.futures

    used = []

    class Recording(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, max_workers=None, **kwargs):
            used.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recording)
    seen = []
    evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, workers=3),
                     progress=lambda d, done, total: seen.append((done, total)))
    assert used == [3]
    assert sorted(seen) == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_invalid_options() -> None:
    with pytest.raises(RegistryError, match="did you mean 'hd95'"):
        evaluate_folders(config=EvaluateConfig(ref=Path("."), pred=Path("."), metrics=("hd96",)))
    with pytest.raises(ConfigError, match="nsd is not among"):
        evaluate_folders(config=EvaluateConfig(ref=Path("."), pred=Path("."), nsd_tolerance=2.0))
    with pytest.raises(ConfigError, match="--workers"):
        evaluate_folders(config=EvaluateConfig(ref=Path("."), pred=Path("."), workers=0))


def test_nsd_tolerance_changes_nsd(tmp_path: Path) -> None:
    a = _labels(1)
    ref, pred = _folders(tmp_path, {"case_a": (a, np.roll(a, 2, 0))})
    tight = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("nsd",), nsd_tolerance=1.0))
    loose = evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred, metrics=("nsd",), nsd_tolerance=2.0))
    assert tight.summary["1"]["nsd"]["mean"] < loose.summary["1"]["nsd"]["mean"] == 1.0
    assert loose.definitions["nsd_tolerance_mm"] == 2.0


def test_non_integer_label_file_names_the_case(tmp_path: Path) -> None:
    a = _labels(1)
    ref, pred = _folders(tmp_path, {"case_a": (a, a)})
    write_image(Image(a.astype(np.float32) * 0.5, SPACING), pred / "case_a.nii.gz")
    with pytest.raises(InputError, match=r"case case_a: prediction .*non-integer"):
        evaluate_folders(config=EvaluateConfig(ref=ref, pred=pred))


# --------------------------------------------------------------------------------- Kaggle-LGG

LGG_PATIENT = "TCGA_BX_0001_20180111"


def _lgg_reference(shared_data: Path) -> Path:
    return shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m" / LGG_PATIENT


def test_kaggle_lgg_is_scored_per_patient_on_the_stacked_volume(shared_data: Path, tmp_path: Path) -> None:
    from scipy import ndimage

    from brainseg_cli.io.slices import read_lgg_patient, write_lgg_masks

    ref_dir = _lgg_reference(shared_data)
    patient = read_lgg_patient(ref_dir)
    ref = np.asarray(patient.mask.array).astype(bool)
    pred = np.stack([ndimage.binary_erosion(ref[..., k], iterations=2) for k in range(ref.shape[2])], axis=-1)
    pred[5:9, 5:9, 0] = True  # a false positive on a slice without tumour
    write_lgg_masks(tmp_path / "pred" / LGG_PATIENT, patient=LGG_PATIENT, mask=pred.astype(np.uint8),
                    slice_numbers=patient.slice_numbers)
    result = evaluate_folders(config=EvaluateConfig(ref=ref_dir, pred=tmp_path / "pred", metrics=("dice", "hd95")))
    (row,) = result.rows
    assert row["case"] == LGG_PATIENT and row["label"] == "FLAIR abnormality"
    assert row["dice"] == pytest.approx(dice(pred, ref))
    per_slice = [dice(pred[..., k], ref[..., k]) for k in range(ref.shape[2])]
    assert abs(row["dice"] - float(np.mean(per_slice))) > 0.01  # stacked first, not a mean of slices
    assert "Kaggle-LGG" in result.definitions["spacing_source"] and "slices" in result.definitions

    flat = tmp_path / "flat"  # masks directly in the prediction folder
    flat.mkdir()
    for f in (tmp_path / "pred" / LGG_PATIENT).iterdir():
        (flat / f.name).write_bytes(f.read_bytes())
    assert evaluate_folders(config=EvaluateConfig(ref=ref_dir, pred=flat)).rows[0]["dice"] == row["dice"]

    (flat / f"{LGG_PATIENT}_{patient.slice_numbers[-1]}_mask.tif").unlink()
    with pytest.raises(GeometryError, match=rf"case {LGG_PATIENT}: prediction slices differ"):
        evaluate_folders(config=EvaluateConfig(ref=ref_dir, pred=flat))


def test_lgg_reference_against_volume_predictions_is_refused(shared_data: Path, tmp_path: Path) -> None:
    _write(tmp_path, LGG_PATIENT, _labels(1))
    with pytest.raises(InputError, match="Kaggle-LGG mask slices but prediction"):
        evaluate_folders(config=EvaluateConfig(ref=_lgg_reference(shared_data), pred=tmp_path))


def test_lesion_params_of_the_config_are_used() -> None:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[2:5, 2:5, 2:5] = 1  # 27 voxels x 2 mm3 = 54 mm3
    empty = np.zeros_like(ref)
    from brainseg_cli.metrics.lesionwise import LesionWiseParams

    default = evaluate_case(empty, ref, spacing=SPACING, labels={"t": 1},
                            config=EvaluateConfig(metrics=("dice",), lesion_wise=True))[0]
    strict = evaluate_case(empty, ref, spacing=SPACING, labels={"t": 1},
                           config=EvaluateConfig(metrics=("dice",), lesion_wise=True,
                                                 lesion_params=LesionWiseParams(3, 60.0)))[0]
    assert (default["lesion_fn"], default["lesion_dice"]) == (1, 0.0)
    assert (strict["lesion_fn"], strict["lesion_dice"]) == (0, 1.0)
    with pytest.raises(ConfigError, match="lesion-wise parameters"):
        evaluate_folders(config=EvaluateConfig(ref=Path("."), pred=Path("."),
                                               lesion_params=LesionWiseParams(-1, 50.0)))


def test_region_named_like_a_label_is_refused(tmp_path: Path) -> None:
    from brainseg_cli.data.phantom import write_phantom_dataset

    dataset = write_phantom_dataset(tmp_path / "ds", n_cases=1, seed=2, shape=(24, 24, 16))
    meta = json.loads((dataset / "dataset.json").read_text())
    first = next(k for k, v in meta["labels"].items() if v == 1)
    meta["brainseg"]["regions"] = {first: [1, 2]}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=f"region '{first}' has the name of a label"):
        evaluate_folders(config=EvaluateConfig(ref=dataset, pred=dataset / "labelsTr", regions="dataset"))
