"""``brainseg visualize``: overlay PNGs, metric plots, training curves and the self-contained HTML report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from brainseg_cli.cli import common

app = typer.Typer(
    name="visualize",
    help="Draw overlays, metric plots, training curves, or one self-contained HTML report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ImagesOption = Annotated[Path, typer.Option(
    "--images", exists=True, file_okay=False,
    help="Images: a dataset folder (dataset.json), a Kaggle-LGG kaggle_3m folder, or a folder of "
         "<case>[_0000].nii.gz images.")]
PredOption = Annotated[Path, typer.Option(
    "--pred", exists=True, file_okay=False,
    help="Predictions: a folder of <case>.nii.gz label maps (or Kaggle-LGG *_mask.tif slices).")]
RefOption = Annotated[Optional[Path], typer.Option(
    "--ref", exists=True, file_okay=False,
    help="References, in any layout --pred accepts (a dataset folder or kaggle_3m folder works too).")]
ChannelOption = Annotated[Optional[str], typer.Option(
    "--channel", help="Channel to show: a name (FLAIR, T1c, ...) or a 0-based index. Default: FLAIR if present, "
                      "else the first channel.")]
ViewsOption = Annotated[Optional[str], typer.Option(
    "--views", help="Comma-separated views from axial,coronal,sagittal. Default: all three for volumes, "
                    "axial for slice stacks.")]
SlicesOption = Annotated[int, typer.Option(
    "--slices", min=1, help="Slices per view: those with the most reference or predicted foreground.")]


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A Rich progress bar driven by the library's ``(description, done, total)`` callback."""
    with common.make_progress() as bar:
        task = bar.add_task("rendering", total=None)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update


def _build(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Build a config, mapping its validation errors to a one-line message and exit code."""
    from brainseg_cli.errors import BrainsegError

    try:
        return factory(**kwargs)
    except BrainsegError as exc:
        raise common.fail(str(exc), exc.exit_code) from None


def _inputs(images: Path, pred: Path, ref: Path | None, channel: str | None, views: str | None, slices: int) -> Any:
    from brainseg_cli.viz.overlays import OverlayInputs, parse_views

    parsed = _build(parse_views, text=views)
    return _build(OverlayInputs, images=images, pred=pred, ref=ref, channel=channel, views=parsed, n_slices=slices)


@app.command("overlays")
def overlays(
    images: ImagesOption,
    pred: PredOption,
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Folder for <case>.png.")],
    ref: RefOption = None,
    channel: ChannelOption = None,
    views: ViewsOption = None,
    slices: SlicesOption = 3,
    as_json: common.JsonOption = False,
) -> None:
    """One PNG per case: reference (green) and prediction (red) contours on the slices with the most foreground."""
    from brainseg_cli.viz.overlays import OverlayConfig, write_overlays

    config = OverlayConfig(inputs=_inputs(images, pred, ref, channel, views, slices), output_dir=output)
    with _progress() as progress:
        written = common.run(write_overlays, config=config, progress=progress)
    if as_json:
        common.emit_json("visualize overlays", inputs=config, result={"written": written})
        return
    common.echo(f"wrote {len(written)} overlay(s) to {output}")


@app.command("metrics")
def metrics(
    results: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="results.json of brainseg evaluate.")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Folder for the plots.")],
    as_json: common.JsonOption = False,
) -> None:
    """Per-case Dice bar charts (sorted, mean and median), Dice box plots and the HD95 distribution."""
    from brainseg_cli.viz.plots import write_metric_plots

    written = common.run(write_metric_plots, results_json=results, out_dir=output)
    if as_json:
        common.emit_json("visualize metrics", inputs={"results": results, "output": output}, result={"written": written})
        return
    common.echo(f"wrote {', '.join(p.name for p in written)} to {output}")


@app.command("curves")
def curves(
    run_dir: Annotated[Path, typer.Argument(exists=True, help="Training run folder (holding metrics.csv).")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Folder for the plots.")],
    as_json: common.JsonOption = False,
) -> None:
    """Training and validation loss, validation Dice per label, and the learning rate, per epoch."""
    from brainseg_cli.viz.curves import write_curves

    written = common.run(write_curves, run_dir=run_dir, out_dir=output)
    if as_json:
        common.emit_json("visualize curves", inputs={"run_dir": run_dir, "output": output}, result={"written": written})
        return
    common.echo(f"wrote {', '.join(p.name for p in written)} to {output}")


@app.command("report")
def report(
    images: ImagesOption,
    pred: PredOption,
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="The HTML file to write.")],
    ref: RefOption = None,
    results: Annotated[Optional[Path], typer.Option(
        "--results", exists=True, dir_okay=False,
        help="results.json of brainseg evaluate: metrics table and distributions.")] = None,
    run: Annotated[Optional[Path], typer.Option(
        "--run", exists=True, help="Training run folder (metrics.csv): training curves.")] = None,
    channel: ChannelOption = None,
    views: ViewsOption = None,
    slices: SlicesOption = 3,
    as_json: common.JsonOption = False,
) -> None:
    """One self-contained HTML file (opens offline): overlays, sortable metrics table, distributions, curves."""
    from brainseg_cli.viz.report import ReportConfig, write_report

    config = ReportConfig(inputs=_inputs(images, pred, ref, channel, views, slices), output=output,
                          results=results, run_dir=run)
    with _progress() as progress:
        path = common.run(write_report, config=config, progress=progress)
    if as_json:
        common.emit_json("visualize report", inputs=config, result={"written": [path]})
        return
    common.echo(f"wrote {path}")


def register(root: typer.Typer) -> None:
    """Add ``visualize`` and its subcommands to the root app."""
    root.add_typer(app, name="visualize")
