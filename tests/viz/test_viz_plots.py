"""Metric plots from results.json and training curves from metrics.csv."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image as PILImage
from viz_helpers import metrics_csv, results_json

from brainseg_cli.errors import InputError
from brainseg_cli.viz.curves import (
    dice_figure,
    loss_figure,
    lr_figure,
    read_training_log,
    write_curves,
)
from brainseg_cli.viz.plots import (
    dice_boxplot_figure,
    dice_per_case_figure,
    hd95_figure,
    load_results,
    write_metric_plots,
)

DICE = {"WT": [0.9, 0.5, 0.7, 0.8], "TC": [0.6, 0.95, None, 0.4]}
HD95 = {"WT": [2.0, 10.0, 4.0, 3.0], "TC": [5.0, 1.0, 373.13, 8.0]}


@pytest.fixture
def results_path(tmp_path):
    rows = [{"case": f"c{i}", "label": label, "dice": DICE[label][i], "hd95": HD95[label][i], "iou": 0.5,
             "note": "text values are ignored"}
            for label in ("WT", "TC") for i in range(4)]
    return results_json(tmp_path / "results.json", rows)


def test_load_results_reads_the_design_format(results_path):
    res = load_results(results_path)
    assert res.labels == ("WT", "TC")
    assert res.metrics == ("dice", "hd95", "iou")
    assert res.hd95_mode == "max" and res.empty_policy == "brats"
    assert res.values("TC", "dice") == [("c0", 0.6), ("c1", 0.95), ("c3", 0.4)]
    assert res.count_nan("TC", "dice") == 1


def test_dice_per_case_bars_sorted_with_mean_and_median(results_path):
    fig = dice_per_case_figure(load_results(results_path))
    wt, tc = fig.axes
    heights = [bar.get_height() for bar in wt.patches]
    assert heights == sorted(DICE["WT"], reverse=True)
    assert [t.get_text() for t in wt.get_xticklabels()] == ["c0", "c3", "c2", "c1"]
    mean_line, median_line = wt.get_lines()
    assert mean_line.get_ydata()[0] == pytest.approx(np.mean(DICE["WT"]))
    assert median_line.get_ydata()[0] == pytest.approx(np.median(DICE["WT"]))
    assert (mean_line.get_linestyle(), median_line.get_linestyle()) == ("--", ":")
    tc_values = [v for v in DICE["TC"] if v is not None]
    assert [bar.get_height() for bar in tc.patches] == sorted(tc_values, reverse=True)
    assert tc.get_lines()[0].get_ydata()[0] == pytest.approx(np.mean(tc_values))
    assert "1 NaN left out" in tc.get_title()


def test_box_plots_and_hd95_distribution(results_path):
    res = load_results(results_path)
    box = dice_boxplot_figure(res).axes[0]
    assert [t.get_text().split("\n")[0] for t in box.get_xticklabels()] == ["WT", "TC"]
    points = box.collections  # one scatter per label with every case
    np.testing.assert_allclose(sorted(points[0].get_offsets()[:, 1]), sorted(DICE["WT"]))
    hd = hd95_figure(res).axes[0]
    assert hd.get_ylabel() == "HD95 (mm)" and "(max)" in hd.get_title()
    np.testing.assert_allclose(sorted(hd.collections[1].get_offsets()[:, 1]), sorted(HD95["TC"]))


def test_write_metric_plots_files(results_path, tmp_path):
    written = write_metric_plots(results_json=results_path, out_dir=tmp_path / "plots")
    assert [p.name for p in written] == ["dice_per_case.png", "dice_boxplot.png", "hd95_distribution.png"]
    for path in written:
        with PILImage.open(path) as img:
            assert img.format == "PNG" and img.width > 200 and img.height > 200


def test_results_without_hd95_write_dice_plots_only(tmp_path):
    path = results_json(tmp_path / "r.json", [{"case": "a", "label": "1", "Dice": 0.5}])
    written = write_metric_plots(results_json=path, out_dir=tmp_path / "plots")
    assert [p.name for p in written] == ["dice_per_case.png", "dice_boxplot.png"]


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON file"),
    ('{"format_version": 1}', "no 'cases' list"),
    ('{"cases": [{"case": "a"}]}', r"cases\[0\] is not an object with 'case' and 'label'"),
    ('{"cases": [{"case": "a", "label": "x", "volume": 3}]}', "no 'dice' or 'hd95' values"),
])
def test_bad_results_files(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        write_metric_plots(results_json=path, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ------------------------------------------------------------------------------ training curves
def test_training_log_and_curves(tmp_path):
    metrics_csv(tmp_path / "run", epochs=6, val_every=2)
    log = read_training_log(tmp_path / "run")
    assert log.dice_labels == ("edema", "core")
    np.testing.assert_array_equal(log.epochs, np.arange(1, 7))
    assert math.isnan(log.columns["val_loss"][0]) and log.columns["val_loss"][1] == pytest.approx(1.0)

    loss = loss_figure(log).axes[0]
    train, val = loss.get_lines()
    assert train.get_label() == "training loss" and val.get_label() == "validation loss"
    np.testing.assert_allclose(train.get_ydata(), 1 / np.arange(1, 7), rtol=1e-5)
    np.testing.assert_array_equal(val.get_xdata(), [2, 4, 6])  # validated epochs only

    dice = dice_figure(log).axes[0]
    assert [line.get_label() for line in dice.get_lines()] == ["edema", "core", "mean"]
    np.testing.assert_allclose(dice.get_lines()[0].get_ydata(), [1 - 1 / e for e in (2, 4, 6)], rtol=1e-5)

    lr = lr_figure(log).axes[0]
    assert lr.get_yscale() == "log"
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), 0.01 * 0.5 ** np.arange(1, 7), rtol=1e-5)

    written = write_curves(run_dir=tmp_path / "run", out_dir=tmp_path / "curves")
    assert [p.name for p in written] == ["loss.png", "dice.png", "lr.png"]


def test_curves_without_validation_draw_the_loss_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_dice_mean,lr\n1,0.9,,,\n2,0.5,,,\n")
    written = write_curves(run_dir=run / "metrics.csv", out_dir=tmp_path / "curves")
    assert [p.name for p in written] == ["loss.png"]


@pytest.mark.parametrize("content, message", [
    (None, "training log not found"),
    ("epoch,val_loss\n1,0.5\n", "missing column"),
    ("epoch,train_loss\n", "no epochs logged"),
    ("epoch,train_loss\n1,abc\n", "line 2, column train_loss: 'abc' is not a number"),
])
def test_bad_training_logs(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        write_curves(run_dir=run, out_dir=tmp_path / "out")
