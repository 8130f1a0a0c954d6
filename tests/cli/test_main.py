"""The root app: version, help, lazy imports, error convention and the public Python API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import brainseg_cli
from brainseg_cli.cli import common
from brainseg_cli.cli.main import COMMANDS, app
from brainseg_cli.errors import ConfigError, InputError

runner = CliRunner()


def test_version_is_eager_and_exact():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"brainseg {brainseg_cli.__version__}"


def test_no_args_prints_help_listing_every_registered_command():
    result = runner.invoke(app, [])
    # click exits 0 or 2 for no_args_is_help depending on version; the help text is what matters
    assert "Usage" in result.output
    for name in COMMANDS:
        assert name in result.output


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from brainseg_cli.cli.main import app\n"
        "heavy = [m for m in ('torch', 'SimpleITK', 'scipy', 'nibabel', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _app_with(fn) -> typer.Typer:
    local = typer.Typer()

    @local.command()
    def boom() -> None:
        common.run(fn)

    @local.callback()
    def cb(debug: bool = False) -> None:
        common.configure(verbose=False, quiet=True, debug=debug, threads=None)

    return local


@pytest.mark.fault
def test_brainseg_error_is_one_line_with_its_exit_code():
    def fail():
        raise InputError("case BRATS_004: FLAIR is 240x240x155 but the label is 240x240x150")

    result = runner.invoke(_app_with(fail), ["boom"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: case BRATS_004: FLAIR is 240x240x155 but the label is 240x240x150"]


def test_config_error_is_a_usage_error():
    def fail():
        raise ConfigError("--precision fp16 needs a CUDA device")

    result = runner.invoke(_app_with(fail), ["boom"])
    assert result.exit_code == 2
    assert "error: --precision fp16 needs a CUDA device" in result.output


def test_unexpected_exception_hints_at_debug_without_traceback():
    def fail():
        raise ValueError("bad thing 42")

    result = runner.invoke(_app_with(fail), ["boom"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "unexpected ValueError: bad thing 42" in result.output
    assert "--debug" in result.output


@pytest.mark.fault
def test_an_os_error_is_named_not_called_unexpected():
    """Issue #20: a full disk reached the user as 'unexpected OSError: [Errno 28] ...'."""
    import errno

    def fail():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/case.nii.gz")

    result = runner.invoke(_app_with(fail), ["boom"])
    assert result.exit_code == 1 and "unexpected" not in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "error: /data/out/case.nii.gz: No space left on device (errno 28)"]


def test_debug_shows_the_traceback():
    def fail():
        raise ValueError("bad thing 42")

    result = runner.invoke(_app_with(fail), ["--debug", "boom"])
    assert result.exit_code == 1
    assert "Traceback" in result.output


@pytest.mark.parametrize("name", sorted(set(brainseg_cli.__all__) - {"__version__"}))
def test_public_api_names_resolve(name):
    assert getattr(brainseg_cli, name) is not None


def test_unknown_api_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        brainseg_cli.no_such_thing  # noqa: B018


@pytest.mark.parametrize(("args", "line"), [
    (["predict", "-m", "{ckpt}", "-i", "{tmp}", "-o", "{tmp}/o", "--batch-size", "0"],
     "error: --batch-size: Input should be greater than or equal to 1 (see 'brainseg predict --help')"),
    (["predict", "-m", "{ckpt}", "-i", "{tmp}", "-o", "{tmp}/o", "--overlap", "0.99"],
     "error: --overlap: "),
    (["predict", "-m", "{ckpt}", "-o", "{tmp}/o"], "error: Missing option '--input'"),
    (["evaluate", "--pred", "{tmp}"], "error: Missing option '--ref'"),
    (["pretrain", "{tmp}", "-o", "{tmp}/r", "--epochs", "x"], "error: --epochs: Input should be a valid integer"),
    (["nosuch"], "error: No such command 'nosuch'."),
])
@pytest.mark.fault
def test_parser_errors_are_one_line_with_exit_code_2(tmp_path, args, line):
    """Issue #20: ``--batch-size 0``, ``--overlap 0.99`` or a missing ``--input`` drew the parser's 5-line box."""
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")
    res = runner.invoke(app, [a.format(ckpt=ckpt, tmp=tmp_path) for a in args])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), res.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


@pytest.mark.fault
def test_a_huge_epoch_count_is_refused_before_any_folder_is_made(tmp_path):
    """Issue #20: ``--epochs 1000000000000000000000000000000`` raised OverflowError with a traceback and left a run folder."""
    res = runner.invoke(app, ["pretrain", str(tmp_path), "-o", str(tmp_path / "run"), "--epochs", "1" + "0" * 30])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1] == f"error: epochs must be at most 1000000, got 1{'0' * 30}"
    assert not (tmp_path / "run").exists()
