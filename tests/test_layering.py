"""The package's layers import downwards only (docs/ARCHITECTURE.md): checked on the source, statically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brainseg_cli"

#: package -> packages it must never import (directly, at any depth of the module).
FORBIDDEN = {
    "inference": ("brainseg_cli.training", "brainseg_cli.cli", "brainseg_cli.viz"),
    "metrics": ("brainseg_cli.training", "brainseg_cli.inference", "brainseg_cli.cli", "brainseg_cli.viz"),
    "models": ("brainseg_cli.training", "brainseg_cli.inference", "brainseg_cli.cli", "brainseg_cli.data"),
    "io": ("brainseg_cli.training", "brainseg_cli.inference", "brainseg_cli.cli", "brainseg_cli.data",
           "brainseg_cli.models"),
    "data": ("brainseg_cli.training", "brainseg_cli.inference", "brainseg_cli.cli", "brainseg_cli.viz"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(package):
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert bad == []


def test_only_the_cli_imports_typer():
    users = [p.relative_to(PACKAGE.parent) for p in PACKAGE.rglob("*.py")
             if "typer" in {n.split(".")[0] for n in _imports(p)} and "cli" not in p.relative_to(PACKAGE).parts]
    assert users == []
