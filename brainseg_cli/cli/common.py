"""Shared CLI plumbing: global options, error mapping, progress bars.

Every command function ends in :func:`run`, which calls exactly one library function and maps a
:class:`~brainseg_cli.errors.BrainsegError` to ``error: <message>`` on stderr with its exit code.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

stderr_console = Console(stderr=True, highlight=False)
stdout_console = Console(highlight=False)


@dataclass
class GlobalOptions:
    """Options of the root command, shared by every subcommand."""

    verbose: bool = False
    quiet: bool = False
    debug: bool = False
    threads: int | None = None


OPTIONS = GlobalOptions()


def configure(*, verbose: bool, quiet: bool, debug: bool, threads: int | None) -> None:
    """Install logging and thread settings for this process (called by the root callback)."""
    OPTIONS.verbose, OPTIONS.quiet, OPTIONS.debug, OPTIONS.threads = verbose, quiet, debug, threads
    level = logging.DEBUG if (verbose or debug) else (logging.WARNING if quiet else logging.INFO)
    from rich.logging import RichHandler

    root = logging.getLogger("brainseg_cli")
    root.handlers.clear()
    handler = RichHandler(console=stderr_console, show_path=debug, show_time=verbose or debug,
                          markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)


def apply_threads() -> None:
    """Apply ``--threads`` to torch and SimpleITK (called by commands after their heavy imports)."""
    n = OPTIONS.threads or os.cpu_count() or 1
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(n)

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


def show_progress() -> bool:
    """True when progress bars should be drawn (not ``--quiet`` and stderr is a terminal)."""
    return not OPTIONS.quiet and stderr_console.is_terminal


class RateColumn(ProgressColumn):
    """Items (steps, cases) per second, over the progress bar's speed window."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f}/s" if task.speed else "", style="progress.data.speed")


def make_progress() -> Progress:
    """A Rich progress bar on stderr (disabled under ``--quiet`` or when not a terminal).

    Columns: the description, the bar, done/total, the rate (items per second over the last
    half minute), the time elapsed and the time remaining.
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=stderr_console,
                    disable=not show_progress(), transient=False, speed_estimate_period=30.0)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    stderr_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def run(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Call one library function, mapping errors to one line on stderr and an exit code.

    BrainsegError -> ``error: <message>`` and its ``exit_code`` (1 runtime, 2 usage);
    KeyboardInterrupt -> exit 130; anything else -> one line plus a hint to rerun with ``--debug``
    (the traceback is printed only under ``--debug``).
    """
    from brainseg_cli.errors import BrainsegError

    try:
        return fn(**kwargs)
    except BrainsegError as exc:
        if OPTIONS.debug:
            traceback.print_exc()
        raise fail(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except (typer.Exit, typer.Abort):
        raise
    except OSError as exc:  # what a user's machine causes (a full disk, a read-only folder): not a crash
        if OPTIONS.debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}" + (f" (errno {exc.errno})" if exc.errno else "")) from None
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: never a raw traceback by default
        if OPTIONS.debug:
            traceback.print_exc()
            raise typer.Exit(1) from None
        raise fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)") from None


def usage_error(message: str) -> typer.Exit:
    """A usage error (exit code 2) with one line on stderr."""
    return fail(message, 2)


def is_debug() -> bool:
    return OPTIONS.debug


def echo(message: str) -> None:
    """Print a plain line on stdout (results a script may read)."""
    sys.stdout.write(message + "\n")


JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print one JSON document on stdout describing what was done (docs/DEFINITIONS.md §8) instead of "
                   "the table; progress and logs stay on stderr.")]


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: dataclasses as dicts, paths as strings, tuples as lists, NumPy scalars as numbers,
    non-finite floats as None (the ``repr=False`` fields of a dataclass, such as per-step losses, are left out)."""
    import dataclasses
    import math
    from pathlib import PurePath

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:  # NumPy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def emit_json(command: str, *, inputs: Mapping[str, Any], result: Any, seconds: float | None = None) -> None:
    """Print the ``--json`` document of a command on stdout (docs/DEFINITIONS.md §8).

    Keys: ``command``, ``tool_version``, ``inputs`` (what the command was given), ``result`` (what it
    did: its summary), ``seconds`` (wall time, when the command measured it).
    """
    import json

    from brainseg_cli import __version__

    document = {"command": command, "tool_version": __version__, "inputs": jsonable(inputs),
                "result": jsonable(result)}
    if seconds is not None:
        document["seconds"] = round(float(seconds), 3)
    echo(json.dumps(document, indent=2, allow_nan=False))


def choice_enum(name: str, values: tuple[str, ...], doc: str) -> type[Enum]:
    """A ``str`` Enum whose values are ``values`` (from :mod:`brainseg_cli.choices`): typer's option choices.

    Member names are the values with ``-`` as ``_`` (``"dice-ce"`` -> ``dice_ce``; ``"2d"`` -> ``_2d``).
    """
    members = {("_" + v if v[0].isdigit() else v).replace("-", "_"): v for v in values}
    enum = Enum(name, members, type=str)  # type: ignore[misc]
    enum.__doc__ = doc
    return enum
