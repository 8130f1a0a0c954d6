"""The results tables every example script writes: ``results.csv`` and ``results.md``.

Imported by the scripts in this folder (Python puts a script's own folder on ``sys.path``).
"""

from __future__ import annotations

import csv
from pathlib import Path


def write_tables(out: Path, rows: list[dict], *, title: str, notes: list[str], float_format: str = ".4f") -> None:
    """``results.csv`` (the rows) and ``results.md`` (protocol notes and the same table).

    Args:
        out: output folder (exists).
        rows: one dict per table row; the first row's keys are the columns.
        title: Markdown heading.
        notes: Markdown lines written between the heading and the table (the protocol).
        float_format: format spec for float cells in the Markdown table.
    """
    columns = list(rows[0])
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return format(v, float_format) if isinstance(v, float) else str(v)

    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
