"""``benchmarks/readme_tables.py``: the marked README block and the results file behind it."""

from __future__ import annotations

import pytest
from helpers.benchmarks import load_benchmark

tables = load_benchmark("readme_tables")


def test_write_block_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:begin -->\nold\n<!-- t:end -->\nafter\n")
    block = "<!-- t:begin -->\nnew\n<!-- t:end -->"
    assert tables.write_block(readme, "<!-- t:begin -->", "<!-- t:end -->", block) is True
    assert readme.read_text() == f"intro\n{block}\nafter\n"
    assert tables.write_block(readme, "<!-- t:begin -->", "<!-- t:end -->", block) is False


def test_missing_markers_and_bad_results_files_exit_with_one_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match=r"README.md has no <!-- t:begin --> \.\.\. <!-- t:end --> block"):
        tables.write_block(readme, "<!-- t:begin -->", "<!-- t:end -->", "x")
    assert readme.read_text() == "no markers\n"  # untouched
    with pytest.raises(SystemExit, match=r"missing.json: no such results file"):
        tables.read_results(tmp_path / "missing.json")
    with pytest.raises(SystemExit, match=r"README.md: not a readable JSON results file"):
        tables.read_results(readme)
    (tmp_path / "r.json").write_text('{"rows": []}')
    assert tables.read_results(tmp_path / "r.json") == {"rows": []}
