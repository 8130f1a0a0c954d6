"""Exactness on real BraTS labels: every metric equals MONAI's and medpy's (issue #8, docs/DEFINITIONS.md §3).

Two real BraTS 2018 cases (canonical labels, cropped to the tumour box) with five realistic wrong
predictions each, at isotropic and anisotropic spacing, for the three labels and the WT/TC/ET
regions. medpy computes in float64, so its values must agree to 1e-9 mm.

MONAI converts its surface distances to float32 and takes the percentile with ``torch.quantile`` in
float32, whose interpolation position is itself rounded (about 1e-4 mm off on ~10^4 distances). So
against MONAI the test checks: the two directed distance sets equal MONAI's (sorted, to float32
rounding), HD95 equals ``numpy.percentile`` (float64, linear) applied to MONAI's own sets to 1e-6 mm
(float32 distance rounding aside), and HD, ASSD and NSD equal MONAI's values to 1e-6 mm plus float32
rounding of the value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers.metrics_data import perturbations

from brainseg_cli.metrics.evaluation import EvaluateConfig, evaluate_case
from brainseg_cli.metrics.regions import BRATS_REGIONS, structure_mask
from brainseg_cli.metrics.surface import surface_distances

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")
medpy_binary = pytest.importorskip("medpy.metric.binary")

SPACINGS = {"iso": (1.0, 1.0, 1.0), "aniso": (0.9375, 1.2, 3.0)}
STRUCTURES = {"1": (1,), "2": (2,), "3": (3,), **BRATS_REGIONS}
ALL_METRICS = ("dice", "iou", "hd95", "hd", "assd", "sensitivity", "specificity", "precision")


def _f32_close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= 1e-6 + 2 * float(np.spacing(np.float32(abs(theirs))))


def _monai_distance_sets(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]):
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, (pred_to_ref, ref_to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(ref), spacing=list(spacing), symmetric=True)
    return pred_to_ref.numpy().astype(np.float64), ref_to_pred.numpy().astype(np.float64)


def _tensor(mask: np.ndarray):
    return torch.from_numpy(mask[None, None].astype(np.float32))


def _monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], *, nsd: float | None = None) -> dict[str, float]:
    p, g = _tensor(pred), _tensor(ref)
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "dice": monai_metrics.DiceMetric(include_background=True, ignore_empty=False)(p, g).item(),
            "iou": monai_metrics.MeanIoU(include_background=True, ignore_empty=False)(p, g).item(),
            "hd95": monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95)(
                p, g, spacing=sp).item(),
            "hd": monai_metrics.HausdorffDistanceMetric(include_background=True)(p, g, spacing=sp).item(),
            "assd": monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)(
                p, g, spacing=sp).item(),
        }
        if nsd is not None:
            out["nsd"] = monai_metrics.SurfaceDiceMetric([nsd], include_background=True)(p, g, spacing=sp).item()
        confusion = monai_metrics.ConfusionMatrixMetric(
            include_background=True, metric_name=["sensitivity", "specificity", "precision"])
        confusion(p, g)
        for name, value in zip(("sensitivity", "specificity", "precision"), confusion.aggregate()):
            out[name] = value.item()
    return out


#: (case, spacing, perturbations): every perturbation on the small case at both spacings, two on the large one.
REAL_CASES = [
    ("Brats18_CBICA_AQN_1", "iso", ("eroded", "dilated", "shifted", "islands", "mixed")),
    ("Brats18_CBICA_AQN_1", "aniso", ("eroded", "dilated", "shifted", "islands", "mixed")),
    ("Brats18_2013_20_1", "aniso", ("eroded", "mixed")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "spacing_name", "kinds"), REAL_CASES)
def test_metrics_equal_monai_and_medpy_on_real_brats(brats_labels, case: str, spacing_name: str,
                                                     kinds: tuple[str, ...]) -> None:
    spacing = SPACINGS[spacing_name]
    ref = brats_labels[case]
    config = EvaluateConfig(metrics=ALL_METRICS)
    config_pooled = EvaluateConfig(metrics=("hd95",), hd95_mode="pooled")
    structures = {k: v for k, v in STRUCTURES.items() if k != "ET"}  # ET is label 3
    checked = 0
    all_predictions = perturbations(ref)
    for kind in kinds:
        pred = all_predictions[kind]
        rows = {r["label"]: r for r in evaluate_case(pred, ref, spacing=spacing, labels=None,
                                                     regions=BRATS_REGIONS, config=config)}
        pooled = {r["label"]: r for r in evaluate_case(pred, ref, spacing=spacing, labels=None,
                                                       regions=BRATS_REGIONS, config=config_pooled)}
        for name, values in structures.items():
            p, g = structure_mask(pred, values), structure_mask(ref, values)
            assert p.any() and g.any(), (kind, name)
            ours = rows[name]
            theirs = _monai(p, g, spacing)
            for metric in ("dice", "iou", "sensitivity", "specificity", "precision"):
                assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6), (kind, name, metric)
            for metric in ("hd", "assd"):
                assert _f32_close(ours[metric], theirs[metric]), (kind, name, metric, ours[metric], theirs[metric])
            pred_to_ref, ref_to_pred = _monai_distance_sets(p, g, spacing)
            dists = surface_distances(p, g, spacing=spacing)
            for mine, monai_set in ((dists.pred_to_ref, pred_to_ref), (dists.ref_to_pred, ref_to_pred)):
                assert mine.shape == monai_set.shape, (kind, name)
                np.testing.assert_allclose(np.sort(mine), np.sort(monai_set), rtol=2.0**-23, atol=1e-6)
            monai_formula = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
            assert ours["hd95"] == pytest.approx(monai_formula, rel=2.0**-23, abs=1e-6), (kind, name)
            assert ours["hd95"] == pytest.approx(theirs["hd95"], abs=1e-3), (kind, name)  # float32 quantile
            assert pooled[name]["hd95"] == pytest.approx(medpy_binary.hd95(p, g, voxelspacing=spacing), abs=1e-9)
            assert ours["hd"] == pytest.approx(medpy_binary.hd(p, g, voxelspacing=spacing), abs=1e-9)
            assert ours["assd"] == pytest.approx(medpy_binary.assd(p, g, voxelspacing=spacing), abs=1e-9)
            checked += 1
    assert checked == len(kinds) * len(structures)


@pytest.mark.parametrize("spacing_name", sorted(SPACINGS))
def test_nsd_equals_monai_surface_dice(brats_labels, spacing_name: str) -> None:
    spacing = SPACINGS[spacing_name]
    ref = brats_labels["Brats18_CBICA_AQN_1"]
    pred = perturbations(ref)["mixed"]
    config = EvaluateConfig(metrics=("nsd",), nsd_tolerance=1.5)
    rows = {r["label"]: r for r in evaluate_case(pred, ref, spacing=spacing, labels=None,
                                                 regions={"WT": (1, 2, 3)}, config=config)}
    for name, values in (("2", (2,)), ("WT", (1, 2, 3))):
        p, g = structure_mask(pred, values), structure_mask(ref, values)
        theirs = _monai(p, g, spacing, nsd=1.5)["nsd"]
        assert _f32_close(rows[name]["nsd"], theirs), (name, rows[name]["nsd"], theirs)
        assert 0.0 < rows[name]["nsd"] < 1.0


def test_hd95_modes_differ_by_millimetres_on_a_real_case(brats_labels) -> None:
    """The two HD95 definitions are not interchangeable: the output must say which one it used."""
    ref = brats_labels["Brats18_2013_20_1"]
    pred = perturbations(ref)["eroded"]
    p, g = pred > 0, ref > 0
    values = {}
    for mode in ("max", "pooled"):
        config = EvaluateConfig(metrics=("hd95",), hd95_mode=mode)
        rows = evaluate_case(pred, ref, spacing=(1.0, 1.0, 1.0), labels={}, regions={"WT": (1, 2, 3)}, config=config)
        values[mode] = rows[0]["hd95"]
    assert values["pooled"] == pytest.approx(medpy_binary.hd95(p, g), abs=1e-9)
    assert values["max"] - values["pooled"] > 1.0
