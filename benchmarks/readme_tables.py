"""The README's generated tables: a benchmark writes its block between two HTML-comment markers."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_results(path: Path) -> dict:
    """A benchmark's results file (JSON); exits with a one-line error when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path}: no such results file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        sys.exit(f"error: {path}: not a readable JSON results file ({exc})")


def write_block(readme: Path, begin: str, end: str, block: str) -> bool:
    """Replace the text from ``begin`` to ``end`` (markers included) in ``readme`` by ``block``.

    ``block`` starts with ``begin`` and ends with ``end``, so regenerating it changes nothing.
    Exits with a one-line error when ``readme`` lacks the markers.

    Returns:
        True when the file changed.
    """
    text = readme.read_text()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        sys.exit(f"error: {readme} has no {begin} ... {end} block")
    new = text[:start] + block + text[stop + len(end):]
    if new == text:
        return False
    readme.write_text(new)
    return True
