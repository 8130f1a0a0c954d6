"""The self-contained HTML report: static structure, and what headless Chromium renders and logs."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from viz_helpers import load_page, metrics_csv, results_json, write_tiny_dataset

from brainseg_cli.errors import InputError
from brainseg_cli.viz.overlays import OverlayInputs, iter_overlays
from brainseg_cli.viz.render import encode_png, label_colour
from brainseg_cli.viz.report import ReportConfig, case_anchor, write_report

TABLE_HEADER_RGB = (0xE8, 0xEE, 0xF9)


def dataset_results(path: Path) -> Path:
    rows = []
    for i, case in enumerate(("case_000", "case_001", "case_002")):
        for j, label in enumerate(("WT", "TC")):
            rows.append({"case": case, "label": label, "dice": [0.91, 0.42, 0.77][i] - 0.1 * j,
                         "hd95": [2.0, 14.5, 6.25][i] + j, "iou": None})
    rows.append({"case": "case_999", "label": "WT", "dice": 0.0, "hd95": 373.13, "iou": 0.0})  # no overlay
    summary = {"WT": {"dice": {"mean": 0.6, "std": 0.1, "median": 0.65, "min": 0.0, "max": 0.91, "n": 4, "n_nan": 0}}}
    return results_json(path, rows, summary=summary)


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    return write_tiny_dataset(root / "ds")


@pytest.fixture(scope="module")
def report(report_inputs, tmp_path_factory) -> Path:
    """A report with overlays of the tiny dataset, results (incl. a case without overlay) and curves."""
    root = tmp_path_factory.mktemp("report_out")
    config = ReportConfig(inputs=OverlayInputs(images=report_inputs["images"], pred=report_inputs["pred"],
                                               ref=report_inputs["ref"], views=("axial", "coronal"), n_slices=1),
                          output=root / "out" / "report.html", results=dataset_results(root / "results.json"),
                          run_dir=metrics_csv(root / "run").parent)
    return write_report(config=config)


def data_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_self_contained(report, report_inputs):
    page = report.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # nothing that could reach the network: every src/href is a data: URI or an in-page anchor
    for attr, value in re.findall(r'\b(src|href)="([^"]*)"', page):
        assert value.startswith("data:image/png;base64,") or value.startswith("#"), (attr, value[:40])
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"https?://", page)
    images = data_images(page)
    # 3 overlays + 3 metric figures + 3 training curves
    assert len(images) == 9
    overlays = [encode_png(i.overlay.rgb) for i in iter_overlays(
        inputs=OverlayInputs(images=report_inputs["images"], pred=report_inputs["pred"], ref=report_inputs["ref"],
                      views=("axial", "coronal"), n_slices=1))]
    assert images[-3:] == overlays


def test_report_table_links_cases_to_overlays(report):
    page = report.read_text(encoding="utf-8")
    table = page[page.index('<table id="cases-table"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 1 + 7  # header + one row per (case, label)
    for case in ("case_000", "case_001", "case_002"):
        assert f'<a href="#{case_anchor(case)}">{case}</a>' in table
        assert f'<section class="case" id="{case_anchor(case)}">' in page
    assert ">case_999</td>" in table and 'href="#case-case_999"' not in page  # no overlay, no link
    assert 'data-value="NaN">NaN</td>' in table  # null iou
    assert 'id="summary-table"' in page and "0.6000 ± 0.1000 (0.6500)" in page
    assert 'id="distributions"' in page and 'id="training"' in page


def test_report_without_results_lists_volumes(tiny_dataset, tmp_path):
    path = write_report(config=ReportConfig(
        inputs=OverlayInputs(images=tiny_dataset["images"], pred=tiny_dataset["pred"], ref=tiny_dataset["ref"],
                             views=("axial",), n_slices=1), output=tmp_path / "r.html"))
    page = path.read_text(encoding="utf-8")
    assert "reference volume (mL)" in page and 'id="distributions"' not in page and 'id="training"' not in page
    # case_000 core: 4 x 5 x 3 voxels of 2 mm^3
    assert '<td data-value="0.12">0.12</td>' in page
    assert len(data_images(page)) == 3


def test_report_fails_before_rendering_on_a_bad_results_file(tiny_dataset, tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="no 'cases' list"):
        write_report(config=ReportConfig(inputs=OverlayInputs(images=tiny_dataset["images"], pred=tiny_dataset["pred"]),
                                         output=tmp_path / "r.html", results=bad))
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------------ headless Chromium
SORT_BY_DICE = """(() => {
  const th = Array.from(document.querySelectorAll('#cases-table thead th')).find(h => h.textContent === 'dice');
  const col = Array.from(th.parentNode.children).indexOf(th);
  const read = () => Array.from(document.querySelectorAll('#cases-table tbody tr'))
      .map(r => r.cells[col].textContent);
  th.click(); const up = read(); th.click(); const down = read();
  return {up: up, down: down, sort: th.getAttribute('aria-sort')};
})()"""
IMAGES_DECODED = "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"


def test_report_in_headless_chromium(report, chromium, tmp_path):
    page = load_page(chromium, report, tmp_path / "chromium-profile", expressions=(
        "document.body.getAttribute('data-ready')",
        "document.getElementById('js-errors').textContent",
        "document.querySelectorAll('#cases-table tbody tr').length",
        IMAGES_DECODED,
        SORT_BY_DICE,
    ))
    assert page.exceptions == []
    assert page.console_errors == []
    assert page.foreign_requests == []
    values = list(page.values.values())
    assert values[0] == "true" and values[1] == "" and values[2] == 7
    assert values[3] == [True] * 9
    sort = values[4]
    assert sort["up"] == sorted(sort["up"], key=float) and sort["down"] == sorted(sort["down"], key=float, reverse=True)
    assert sort["sort"] == "descending"

    shot = np.asarray(PILImage.open(io.BytesIO(page.screenshot)).convert("RGB"))
    assert shot.shape[0] > 1600 and shot.std() > 20  # the whole page, not a blank one
    header = np.all(shot == TABLE_HEADER_RGB, axis=2)
    assert header.sum() > 2000  # the tables' header rows are drawn
    top_of_table = np.nonzero(header.any(axis=1))[0].min()
    assert top_of_table < 800
    # the overlays fit the page unscaled: their label contour colours are in the screenshot
    for value in (1, 2):
        assert np.all(shot == label_colour(value), axis=2).sum() > 100


def test_chromium_harness_catches_errors_and_network(chromium, tmp_path):
    """The checks above can fail: a page with a script error and a remote image is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="https://example.invalid/x.png">'
                   '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    page = load_page(chromium, bad, tmp_path / "profile")
    assert any("undefinedFunction" in e for e in page.exceptions)
    assert "boom" in page.console_errors
    assert page.foreign_requests == ["https://example.invalid/x.png"]


def test_real_lgg_report_in_chromium(shared_data, chromium, tmp_path):
    """Kaggle-LGG slices (real BraTS 2018 FLAIR), prediction = reference masks of another slice order."""
    from brainseg_cli.io.slices import list_lgg_patients, read_lgg_patient, write_lgg_masks

    root = shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    for folder in list_lgg_patients(root)[:2]:
        patient = read_lgg_patient(folder)
        mask = np.asarray(patient.mask.array)
        write_lgg_masks(tmp_path / "pred" / patient.patient, patient=patient.patient,
                        mask=np.roll(mask, 5, axis=1), slice_numbers=patient.slice_numbers)
    path = write_report(config=ReportConfig(inputs=OverlayInputs(images=root, pred=tmp_path / "pred", ref=root,
                                                                 n_slices=2), output=tmp_path / "lgg.html"))
    page = load_page(chromium, path, tmp_path / "profile", expressions=(
        "document.querySelectorAll('#cases-table tbody tr').length", IMAGES_DECODED,
        "Array.from(document.querySelectorAll('section.case h3')).map(h => h.textContent)"))
    assert page.exceptions == [] and page.console_errors == [] and page.foreign_requests == []
    rows, decoded, cases = page.values.values()
    assert rows == 2 and decoded == [True, True]
    assert cases == ["TCGA_BX_0001_20180111", "TCGA_BX_0002_20180212"]
    shot = np.asarray(PILImage.open(io.BytesIO(page.screenshot)).convert("RGB"))
    assert shot.std() > 20 and np.all(shot == TABLE_HEADER_RGB, axis=2).sum() > 500
