"""The root ``brainseg`` Typer app.

Each subcommand lives in its own module under :mod:`brainseg_cli.cli` and exposes
``register(app)``. Only modules listed in :data:`COMMANDS` are registered: a subcommand is listed
once it works end to end.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from brainseg_cli import __version__
from brainseg_cli.cli import common

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("convert", "pretrain", "finetune", "predict", "export", "models", "evaluate", "visualize",
                             "demo")

# The parser's exception classes, found through the public BadParameter (typer vendors click in newer
# releases and uses click itself in older ones).
_USAGE_ERROR: type = typer.BadParameter.__mro__[1]
_CLICK_EXCEPTION: type = _USAGE_ERROR.__mro__[1]
_NO_ARGS_IS_HELP: Any = getattr(sys.modules[_USAGE_ERROR.__module__], "NoArgsIsHelpError", ())
_MISSING_PARAMETER: Any = getattr(sys.modules[_USAGE_ERROR.__module__], "MissingParameter", ())


def usage_error_line(exc: Exception) -> str:
    """The one line a parser error is reported as: ``error: <option>: <what is wrong> (see '<command> --help')``."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    if isinstance(exc, typer.BadParameter) and not isinstance(exc, _MISSING_PARAMETER):
        message = re.sub(r"^Invalid value for ((?:'[^']+'(?: / )?)+): ",
                         lambda m: " / ".join(re.findall(r"'([^']+)'", m.group(1))) + ": ", message)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", "") else ""
    return f"error: {message}{hint}"


class BrainsegGroup(TyperGroup):
    """The root command group: parser errors are one ``error:`` line on stderr with exit code 2.

    (Typer's default draws a multi-line box with the usage text.)
    """

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP:
            return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)  # prints the help
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        except _CLICK_EXCEPTION as exc:
            typer.echo(usage_error_line(exc) if isinstance(exc, _USAGE_ERROR)
                       else f"error: {' '.join(str(exc.format_message()).split())}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(
    cls=BrainsegGroup,
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
