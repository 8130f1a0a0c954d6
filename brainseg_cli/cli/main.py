"""The root ``brainseg`` Typer app.

Each subcommand lives in its own module under :mod:`brainseg_cli.cli` and exposes
``register(app)``. Only modules listed in :data:`COMMANDS` are registered: a subcommand is listed
once it works end to end.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Optional

import typer

from brainseg_cli import __version__
from brainseg_cli.cli import common

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("convert", "pretrain", "finetune", "predict", "evaluate", "visualize", "demo")

app = typer.Typer(
    name="brainseg",
    help="Brain-MRI segmentation with transfer learning: convert, train, fine-tune, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"brainseg {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, warnings and errors only.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    threads: Annotated[
        Optional[int],
        typer.Option("--threads", min=1, help="Threads for torch and numerical libraries (default: all cores)."),
    ] = None,
) -> None:
    """Brain-MRI segmentation with transfer learning."""
    common.configure(verbose=verbose, quiet=quiet, debug=debug, threads=threads)


for _name in COMMANDS:
    importlib.import_module(f"brainseg_cli.cli.{_name}").register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m brainseg_cli.cli.main`
    main()
