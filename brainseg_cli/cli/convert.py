"""``brainseg convert``: turn a public dataset into the dataset layout (nnU-Net v2 raw format)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from brainseg_cli import choices
from brainseg_cli.cli import common

Source = common.choice_enum("Source", choices.CONVERT_SOURCES, "Dataset sources.")

HELP = (
    "Convert a public dataset into the brainseg / nnU-Net v2 raw dataset layout.\n\n"
    "SOURCE is one of: lgg (Kaggle LGG kaggle_3m TIFF slices), brats (BraTS case folders of any generation: "
    "2012, 2013-2015, 2017-2021, 2023+), msd (a Decathlon task folder), mrbrains18 "
    "(training/<id>/pre/{T1,IR,FLAIR}.nii.gz + segm.nii.gz), nifti (any layout: one --channel NAME=GLOB per "
    "channel, --label GLOB and --label-map).\n\n"
    "OUTPUT defaults to ./<NAME>_converted; with --nnunet-id NNN the dataset folder is DatasetNNN_<NAME> inside "
    "OUTPUT (default: $nnUNet_raw, else the current folder). NAME defaults to INPUT's folder name. Channels are "
    "written in the canonical order T1, T1c, T2, FLAIR, IR; labels are mapped to the canonical labels and the "
    "evaluation regions go into dataset.json under \"brainseg\". Re-running an interrupted conversion resumes it.\n\n"
    "Glob patterns (nifti) are relative to INPUT: '*' stays within one folder, '**/' spans any number of folders. "
    "The case id is the folder holding the file, or for flat folders the text matched by the first '*'. "
    "Example (BraTS 2015, DeepMedic layout): brainseg convert nifti brats2015_deepmedic "
    "--channel FLAIR='**/Flair*.nii.gz' --channel T1c='**/T1c*.nii.gz' --label '**/OTMultiClass.nii.gz' "
    "--label-map brats2015"
)


def _parse_spacing(value: str) -> tuple[float, float, float]:
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        raise common.usage_error(f"--spacing '{value}': expected three numbers in mm, e.g. 1,1,3") from None
    if len(numbers) != 3 or not all(n > 0 for n in numbers):
        raise common.usage_error(f"--spacing '{value}': expected three positive numbers in mm, e.g. 1,1,3")
    return numbers  # type: ignore[return-value]


def convert(
    source: Annotated[Source, typer.Argument(help="Source format.", show_default=False)],
    input_dir: Annotated[Path, typer.Argument(metavar="INPUT", exists=True, file_okay=False, dir_okay=True,
                                              help="The source dataset folder (read only).")],
    output: Annotated[Optional[Path], typer.Argument(metavar="[OUTPUT]", file_okay=False,
                                                     help="Dataset folder to create (see above for the default).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Dataset name (default: INPUT's folder name).")] = None,
    nnunet_id: Annotated[Optional[int], typer.Option("--nnunet-id", min=1, max=999,
                                                     help="nnU-Net dataset id: the folder becomes DatasetNNN_<NAME>.")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Cases converted in parallel.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty OUTPUT dataset.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid",
                                               help="Skip invalid cases (reported) instead of stopping.")] = False,
    spacing: Annotated[Optional[str], typer.Option("--spacing", metavar="X,Y,Z",
                                                   help="Voxel size in mm for TIFF slices (lgg; default 1,1,1).")] = None,
    channel: Annotated[Optional[list[str]], typer.Option("--channel", metavar="NAME=GLOB",
                                                         help="nifti: files of one channel (repeat per channel).")] = None,
    label: Annotated[Optional[str], typer.Option("--label", metavar="GLOB", help="nifti: the label files.")] = None,
    label_map: Annotated[Optional[str], typer.Option(
        "--label-map", metavar="PRESET|PAIRS",
        help="nifti: brats2012, brats2015, brats2017, brats2023, msd, lgg, mrbrains18, or pairs like 2:1,1:2,4:3.")] = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset
    from brainseg_cli.data.converters.nifti import parse_channel_option

    common.apply_threads()
    patterns = tuple(common.run(parse_channel_option, value=v) for v in (channel or []))
    config = ConvertConfig(
        source=source.value, input=input_dir, output=output, name=name, nnunet_id=nnunet_id, workers=workers,
        overwrite=overwrite, skip_invalid=skip_invalid, spacing=_parse_spacing(spacing) if spacing else None,
        channel_patterns=patterns, label_pattern=label, label_map=label_map,
    )
    with common.make_progress() as bar:
        task = bar.add_task("Converting", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        start = time.perf_counter()
        summary = common.run(convert_dataset, config=config, progress=progress)
    if as_json:
        common.emit_json("convert", inputs=config, result=summary, seconds=time.perf_counter() - start)
        return
    _print_summary(summary)


def _fmt_spacing(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _print_summary(summary) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.output.name}: {summary.source_format}", show_header=True, title_justify="left")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    cases = f"{summary.num_training} training, {summary.num_test} test"
    if summary.resumed:
        cases += f" ({summary.resumed} kept from an interrupted run)"
    table.add_row("cases", cases)
    if summary.skipped:
        table.add_row("skipped", f"{len(summary.skipped)}: " + "; ".join(reason for _, reason in summary.skipped))
    table.add_row("channels", ", ".join(f"{i:04d} {c}" for i, c in enumerate(summary.channels)))
    voxels = summary.label_voxels
    for label_name, value in summary.labels.items():
        table.add_row(f"label {value}", f"{label_name}: {voxels.get(value, 0):,} voxels")
    if summary.regions:
        table.add_row("regions", ", ".join(f"{r} {v}" for r, v in summary.regions.items()))
    low, high = summary.spacing_range
    table.add_row("spacing (mm)", _fmt_spacing(low) if low == high else f"{_fmt_spacing(low)} .. {_fmt_spacing(high)}")
    common.stdout_console.print(table)
    common.echo(str(summary.dataset_json))


def register(app: typer.Typer) -> None:
    """Add ``convert`` to the root app."""
    app.command("convert", help=HELP, no_args_is_help=True)(convert)
