"""One self-contained HTML report: overlays, a sortable metrics table, distributions, training curves.

The file needs nothing but a browser: every image is embedded as a ``data:`` URI, the styles and
the small table-sorting script are inline, and a Content-Security-Policy forbids every network
request (``default-src 'none'``), so it opens offline and never phones home. A
``window.onerror`` handler copies any JavaScript error into ``<div id="js-errors">`` and the
script marks ``<body data-ready="true">`` when it has run, so a headless browser can check both.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brainseg_cli import __version__
from brainseg_cli.io import atomic_write
from brainseg_cli.viz.curves import curve_figures, read_training_log
from brainseg_cli.viz.overlays import OverlayInputs, Progress, iter_overlays
from brainseg_cli.viz.plots import load_results, metric_figures
from brainseg_cli.viz.render import encode_png

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """``visualize report``: one HTML file.

    Attributes:
        inputs: images, predictions, optional references and overlay options.
        output: the HTML file to write.
        results: ``results.json`` of ``brainseg evaluate`` for the metrics table and distributions; None
            gives a table of predicted and reference volumes instead.
        run_dir: training run folder (``metrics.csv``) for the training curves; None leaves them out.
    """

    inputs: OverlayInputs
    output: Path
    results: Path | None = None
    run_dir: Path | None = None


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 2rem 3rem;
       color: #1d2330; background: #fff; }
h1 { margin: 1.2rem 0 0.3rem; } h2 { margin-top: 2rem; border-bottom: 2px solid #dde3ee; padding-bottom: 0.2rem; }
nav a { margin-right: 1rem; } .meta { color: #4a5468; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.6rem 0; }
th, td { border: 1px solid #cfd6e4; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
thead th { background: #e8eef9; position: sticky; top: 0; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th::after { content: " \\2195"; color: #8a94a8; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\2191"; color: #1d2330; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\2193"; color: #1d2330; }
tbody tr:nth-child(even) { background: #f6f8fc; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; vertical-align: top; }
figcaption { font-size: 0.85rem; color: #4a5468; }
img { max-width: 100%; height: auto; border: 1px solid #dde3ee; }
section.case { margin-bottom: 2rem; } section.case h3 { margin-bottom: 0.2rem; }
#js-errors { background: #fde2e1; color: #8a1c1c; padding: 0.5rem; white-space: pre-wrap; }
"""

_ERROR_HANDLER = """
window.addEventListener('error', function (event) {
  var box = document.getElementById('js-errors');
  if (box) { box.hidden = false; box.textContent += 'JavaScript error: ' + event.message + '\\n'; }
});
"""

_SORT_SCRIPT = """
(function () {
  function value(cell) {
    var v = cell.getAttribute('data-value');
    return v === null ? cell.textContent.trim() : v;
  }
  function sortBy(table, col, numeric, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[col]), y = value(b.cells[col]);
      if (numeric) {
        x = parseFloat(x); y = parseFloat(y);
        if (isNaN(x) || isNaN(y)) { return (isNaN(x) ? 1 : 0) - (isNaN(y) ? 1 : 0); }
        return ascending ? x - y : y - x;
      }
      return ascending ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.tabIndex = 0;
      th.title = 'sort by ' + th.textContent;
      function activate() {
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(headers, function (other) { other.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        sortBy(table, col, th.getAttribute('data-type') === 'number', ascending);
      }
      th.addEventListener('click', activate);
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); activate(); }
      });
    });
  });
  document.body.setAttribute('data-ready', 'true');
})();
"""


def case_anchor(case: str) -> str:
    """The HTML id of a case's overlay section (``case-`` + the id with unsafe characters replaced)."""
    return "case-" + re.sub(r"[^A-Za-z0-9_.-]", "_", case)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _fmt(value: float | None, digits: int) -> tuple[str, str]:
    """(shown text, sort value) of a number; NaN/None shown as 'NaN' / '-' and sorted last."""
    if value is None:
        return "-", "NaN"
    if math.isnan(value):
        return "NaN", "NaN"
    return f"{value:.{digits}f}", repr(float(value))


def _digits(metric: str) -> int:
    return 4 if metric.lower() in ("dice", "iou", "sensitivity", "specificity", "precision", "nsd") \
        or metric.lower().startswith("nsd") else 2


def _table(table_id: str, headers: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """A sortable table; ``headers`` are (text, numeric); ``rows`` hold ready-made ``<td>`` cells."""
    head = "".join('<th scope="col" data-type="number">' + _e(text) + "</th>" if num
                   else '<th scope="col" data-type="text" class="text">' + _e(text) + "</th>"
                   for text, num in headers)
    body = "\n".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return (f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table>")


def _num_cell(value: float | None, digits: int) -> str:
    text, sort = _fmt(value, digits)
    return f'<td data-value="{sort}">{text}</td>'


def _case_cell(case: str, linked: set[str]) -> str:
    if case in linked:
        return f'<td class="text"><a href="#{case_anchor(case)}">{_e(case)}</a></td>'
    return f'<td class="text">{_e(case)}</td>'


def _results_table(results, linked: set[str]) -> str:
    headers = [("case", False), ("label", False)] + [(m, True) for m in results.metrics]
    rows = []
    for row in results.rows:
        cells = [_case_cell(row["case"], linked), f'<td class="text">{_e(row["label"])}</td>']
        cells += [_num_cell(row.get(m), _digits(m)) for m in results.metrics]
        rows.append(cells)
    return _table("cases-table", headers, rows)


def _summary_table(results) -> str:
    metrics = [m for m in results.metrics
               if any(isinstance(results.summary.get(lab, {}).get(m), dict) for lab in results.labels)]
    if not metrics:
        return ""
    head = "".join(f'<th scope="col">{_e(m)}<br><small>mean ± std (median)</small></th>' for m in metrics)
    body = []
    for label in results.labels:
        stats = results.summary.get(label, {})
        cells = [f'<td class="text">{_e(label)}</td>']
        for m in metrics:
            s = stats.get(m) if isinstance(stats.get(m), dict) else {}
            d = _digits(m)
            mean, std, median = (s.get(k) for k in ("mean", "std", "median"))
            if isinstance(mean, (int, float)):
                text = f"{mean:.{d}f}"
                if isinstance(std, (int, float)):
                    text += f" ± {std:.{d}f}"
                if isinstance(median, (int, float)):
                    text += f" ({median:.{d}f})"
            else:
                text = "-"
            n, n_nan = s.get("n"), s.get("n_nan")
            if isinstance(n, int):
                text += f" <small>n={n}" + (f", NaN {n_nan}" if n_nan else "") + "</small>"
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table id="summary-table"><thead><tr><th scope="col" class="text">label</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _volume_table(volumes: dict[str, dict[str, tuple[float, float | None]]], linked: set[str],
                  with_ref: bool) -> str:
    headers = [("case", False), ("label", False), ("predicted volume (mL)", True)]
    if with_ref:
        headers += [("reference volume (mL)", True), ("difference (mL)", True)]
    rows = []
    for case, per_label in volumes.items():
        for label, (pred, ref) in per_label.items():
            cells = [_case_cell(case, linked), f'<td class="text">{_e(label)}</td>', _num_cell(pred, 2)]
            if with_ref:
                cells += [_num_cell(ref, 2), _num_cell(None if ref is None else pred - ref, 2)]
            rows.append(cells)
    return _table("cases-table", headers, rows)


def build_report_html(*, title: str, meta: Sequence[tuple[str, str]], summary_html: str, table_html: str,
                      table_note: str, distributions: dict[str, bytes], curves: dict[str, bytes],
                      overlays: Sequence[tuple[str, bytes]]) -> str:
    """Assemble the report page.

    Args:
        title: page heading.
        meta: ``(name, value)`` lines under the heading (inputs, version, date).
        summary_html: the summary table (may be empty).
        table_html: the sortable cases table.
        table_note: one sentence above the table.
        distributions: file name -> PNG of the metric figures.
        curves: file name -> PNG of the training curves.
        overlays: ``(case, PNG)`` in case order.

    Returns:
        The whole HTML document.
    """
    nav = [("cases", "Cases")]
    if distributions:
        nav.append(("distributions", "Distributions"))
    if curves:
        nav.append(("training", "Training curves"))
    nav.append(("overlays", "Overlays"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_ERROR_HANDLER}</script>",
        "</head><body>",
        '<div id="js-errors" hidden></div>',
        f"<header><h1>{_e(title)}</h1>",
        '<p class="meta">' + "<br>".join(f"<strong>{_e(k)}:</strong> {_e(v)}" for k, v in meta) + "</p>",
        "<nav>" + "".join(f'<a href="#{i}">{_e(t)}</a>' for i, t in nav) + "</nav></header>",
        '<section id="cases"><h2>Cases</h2>',
        summary_html,
        f'<p class="meta">{_e(table_note)}</p>',
        table_html,
        "</section>",
    ]
    if distributions:
        parts.append('<section id="distributions"><h2>Distributions</h2>')
        for name, png in distributions.items():
            parts.append(f"<figure>{_img(png, name)}<figcaption>{_e(name)}</figcaption></figure>")
        parts.append("</section>")
    if curves:
        parts.append('<section id="training"><h2>Training curves</h2>')
        for name, png in curves.items():
            parts.append(f"<figure>{_img(png, name)}<figcaption>{_e(name)}</figcaption></figure>")
        parts.append("</section>")
    parts.append('<section id="overlays"><h2>Overlays</h2>')
    for case, png in overlays:
        parts.append(f'<section class="case" id="{case_anchor(case)}"><h3>{_e(case)}</h3>'
                     f'<p class="meta"><a href="#cases">back to the table</a></p>{_img(png, f"overlay of {case}")}'
                     "</section>")
    parts += ["</section>", f"<script>{_SORT_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def write_report(*, config: ReportConfig, progress: Progress | None = None) -> Path:
    """Write the self-contained HTML report.

    Args:
        config: inputs and output file.
        progress: optional callback ``(description, done, total)`` (overlay rendering).

    Returns:
        The written HTML path.

    Raises:
        InputError, GeometryError, ConfigError: unreadable or inconsistent inputs (see
            :func:`~brainseg_cli.viz.overlays.iter_overlays`, :func:`~brainseg_cli.viz.plots.load_results`,
            :func:`~brainseg_cli.viz.curves.read_training_log`).
    """
    inputs = config.inputs
    # read the small inputs first, so a bad results file or run folder fails before rendering
    results = None if config.results is None else load_results(config.results)
    distributions = {} if results is None else metric_figures(results)
    curves = {} if config.run_dir is None else curve_figures(read_training_log(config.run_dir))

    overlays: list[tuple[str, bytes]] = []
    volumes: dict[str, dict[str, tuple[float, float | None]]] = {}
    channel = ""
    for item in iter_overlays(inputs=inputs, progress=progress):
        overlays.append((item.case, encode_png(item.overlay.rgb)))
        volumes[item.case] = item.volumes
        channel = item.channel
    linked = {case for case, _ in overlays}

    if results is not None:
        summary_html = _summary_table(results)
        table_html = _results_table(results, linked)
        note = (f"Per-case metrics from {results.path.name} (empty policy: {results.empty_policy or 'not stated'}"
                + (f", HD95 {results.hd95_mode}" if results.hd95_mode else "")
                + "). Click a column header to sort; click a case to see its overlay.")
    else:
        summary_html = ""
        table_html = _volume_table(volumes, linked, with_ref=inputs.ref is not None)
        note = ("Predicted and reference volumes per case and label. Click a column header to sort; "
                "click a case to see its overlay.")
    meta = [("images", str(inputs.images)), ("predictions", str(inputs.pred))]
    if inputs.ref is not None:
        meta.append(("references", str(inputs.ref)))
    if config.results is not None:
        meta.append(("results", str(config.results)))
    if config.run_dir is not None:
        meta.append(("training run", str(config.run_dir)))
    meta += [("channel shown", channel), ("cases", str(len(overlays))),
             ("generated", f"brainseg {__version__}, {_dt.datetime.now().isoformat(timespec='seconds')}")]
    page = build_report_html(title="brainseg report", meta=meta, summary_html=summary_html, table_html=table_html,
                             table_note=note, distributions=distributions, curves=curves, overlays=overlays)
    output = Path(config.output)
    with atomic_write(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d cases, %.1f MB)", output, len(overlays), len(page) / 1e6)
    return output
