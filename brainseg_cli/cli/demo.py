"""``brainseg demo``: the whole pipeline on synthetic brains (or a real BraTS folder), in minutes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from brainseg_cli.cli import common

HELP = (
    "Run the whole pipeline with nothing to download: phantom brains with tumours are written as BraTS "
    "case folders and converted, a small 3-D U-Net is pretrained on them, fine-tuned with --freeze first3 on "
    "tissue-labelled phantoms with other channels (T1, FLAIR, IR), both models predict held-out phantoms, "
    "which are evaluated (Dice, HD95; WT/TC/ET for tumours) and shown in an HTML report. Prints the Dice "
    "per label and where the report is. Deterministic for a given --seed; a few minutes on two CPU cores."
)


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, metavar="DIR",
                                         help="Output folder (a previous demo output there is replaced).")] = Path(
        "demo_output"),
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the phantoms, the split and the training.")] = 0,
    data: Annotated[Optional[Path], typer.Option(
        "--data", exists=True, file_okay=False, dir_okay=True, metavar="BRATS_DIR",
        help="A real BraTS folder as the tumour source set instead of phantoms (trained at 4 mm; "
             "held-out real cases are evaluated). The tissue part still uses phantoms.")] = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli.demo import DemoConfig, check_data_folder, run_demo

    common.apply_threads()
    if data is not None:
        common.run(check_data_folder, data=data)  # a one-line error before anything is written
    config = common.run(DemoConfig, output_dir=output, seed=seed, data=data)
    with common.make_progress() as bar:
        task = bar.add_task("Starting", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        summary = common.run(run_demo, config=config, progress=progress)
    if as_json:
        common.emit_json("demo", inputs=config, result=summary, seconds=summary.seconds)
        return
    _print_summary(summary)


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _print_summary(summary) -> None:
    from rich.table import Table

    for title, result in ((f"Tumour model (pretrained on {summary.source}), held-out cases", summary.tumour),
                          ("Tissue model (fine-tuned, freeze first3), held-out phantoms", summary.tissue)):
        table = Table(title=title, title_justify="left")
        table.add_column("label / region")
        table.add_column("Dice", justify="right")
        table.add_column("HD95 (mm)", justify="right")
        for name, dice in result.dice.items():
            table.add_row(name, _fmt(dice), _fmt(result.hd95.get(name, float("nan")), 2))
        table.add_row("mean (labels)", _fmt(result.mean_dice), "")
        common.stdout_console.print(table)
        common.stdout_console.print(
            f"  {len(result.cases)} case(s); best validation Dice {_fmt(result.val_dice)} after "
            f"{result.epochs} epoch(s), trained in {result.seconds:.0f} s", markup=False)
    if summary.export:
        common.echo(f"export:        {summary.export['model']} (ONNX Runtime labels equal PyTorch's on "
                    f"{summary.export['equal_voxels'] * 100:.3f} % of {summary.export['case']}'s voxels)")
    common.echo(f"report:        {summary.report}")
    common.echo(f"tumour report: {summary.tumour_report}")
    common.echo(f"outputs:       {summary.output_dir} (summary: {summary.summary_json})")
    common.echo(f"finished in {summary.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo", help=HELP)(demo)
