"""Options shared by ``brainseg pretrain`` and ``finetune`` (``brainseg_cli.cli.training_options``): one definition,
the same ``--help`` text in both commands, literal ``[default: ...]`` notes that Rich does not swallow as markup."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from brainseg_cli.cli.main import app

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _help(command: str) -> str:
    """``brainseg COMMAND --help``, 200 columns wide (Rich does not wrap the help column), ANSI stripped."""
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}, terminal_width=200)
    assert res.exit_code == 0, res.output
    return ANSI.sub("", res.output)


def _option_line(text: str, flag: str) -> str:
    """The help text of ``flag``: its table row without the frame, flag column and type column."""
    (line,) = [row for row in text.splitlines() if re.search(rf"│\s+{re.escape(flag)}\s", row)]
    return " ".join(line.strip("│ ").split())


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_epochs_help_shows_its_default(command):
    line = _option_line(_help(command), "--epochs")
    assert line.endswith("Epochs to train [default: 100].")


@pytest.mark.parametrize(("flag", "note"), [
    ("--iterations", "[default: 50]"), ("--val-every", "[default: 2 with --max-time, else 1]"), ("--optimizer", "[default: sgd]"),
    ("--grad-clip", "[default: 12]"), ("--ema", "[default: 0.995]"), ("--loss", "[default: dice-ce]"), ("--aug", "[default: on]"),
    ("--val-split", "[default: 0.2]"), ("--folds", "[default: 5]"), ("--precision", "[default: auto]"),
    ("--seed", "[default: 0]"), ("--device", "[default: auto]"),
])
def test_shared_options_read_the_same_in_both_commands(flag, note):
    pretrain, finetune = _option_line(_help("pretrain"), flag), _option_line(_help("finetune"), flag)
    assert note in pretrain
    assert pretrain.split(maxsplit=1)[1] == finetune.split(maxsplit=1)[1]  # all but the flag column's padding
