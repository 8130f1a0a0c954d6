"""The README's generated tables: a benchmark writes its block between two HTML-comment markers."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def markers(results: Path) -> tuple[str, str]:
    """The README markers a results file fills: ``<!-- STEM:begin -->``, ``<!-- STEM:end -->``."""
    return f"<!-- {results.stem}:begin -->", f"<!-- {results.stem}:end -->"


def machine() -> dict:
    """What a results record says about this machine: cores, architecture, CPU model (``/proc/cpuinfo``'s
    first ``model name``, else the architecture), native bf16."""
    from brainseg_cli.training.config import cpu_supports_bf16

    arch = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return {"cpu_count": os.cpu_count(), "processor": arch, "cpu": names[0] if names else arch,
            "native_bf16": cpu_supports_bf16()}


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
