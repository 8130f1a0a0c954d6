"""``brainseg predict``: segment every case of an input folder with one checkpoint or an ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from brainseg_cli import choices
from brainseg_cli.cli import common

Lcc = common.choice_enum("Lcc", choices.LCC_MODES, "Keep-largest-component modes.")

Precision = common.choice_enum("Precision", choices.PRECISIONS, "Network precisions.")

Engine = common.choice_enum("Engine", choices.ENGINES, "Inference engines.")

LabelValues = common.choice_enum("LabelValues", choices.LABEL_MODES, "Label values written.")

HELP = (
    "Segment images with a trained checkpoint (or an ensemble: repeat --model).\n\n"
    "INPUT is a folder in the dataset layout (<case>_0000.nii.gz, ...; a dataset root uses imagesTs, else imagesTr), "
    "a folder of BraTS case folders, a Kaggle-LGG folder of patient TIFF slices, a folder of 4-D NIfTI files, or a "
    "single case. Channels are matched to the model by name (dataset.json, modality names in file names); files "
    "named only by _cccc are taken in the checkpoint's channel order unless --channel-order names them.\n\n"
    "OUTPUT gets one label map per case in the input's format and geometry (TIFF slices in: "
    "<patient>/<patient>_<n>_mask.tif, 0/255), predictions.csv (predicted volume per label, mL) and "
    "predict_config.json. Finished cases are skipped unless --overwrite, so an interrupted run continues; "
    "INPUT is never written to."
)


def _parse_channel_order(value: Optional[str]) -> Optional[tuple[str, ...]]:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise common.usage_error(f"--channel-order '{value}': expected names such as T1,T1c,T2,FLAIR")
    return names


def predict(
    input_path: Annotated[Path, typer.Option("--input", "-i", exists=True, help="Input folder or file (read only).",
                                             show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Output folder (created).",
                                         show_default=False)],
    model: Annotated[list[Path], typer.Option("--model", "-m",
                                              help="Checkpoint (best.pt), export (brainseg export: .onnx, .ts) or the name of "
                                                   "an installed bundle (brainseg models list); repeat for an ensemble "
                                                   "(probabilities averaged).",
                                              show_default=False)],
    tta: Annotated[bool, typer.Option("--tta", help="Average over mirrored inputs (all axis flips; 8x slower in 3-D).")] = False,
    lcc: Annotated[Lcc, typer.Option("--lcc", help="Keep the largest connected component: auto = the checkpoint's "
                                                   "decision per label, on = of the whole foreground, off = never.")] = Lcc.auto,
    overlap: Annotated[float, typer.Option("--overlap", min=0.0, max=0.95, help="Sliding-window overlap.")] = 0.5,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Windows per network call \\[default: 8 on --engine openvino, else 2].")] = None,
    precision: Annotated[Precision, typer.Option("--precision", help="Network precision (bf16/fp16: autocast).")] = Precision.fp32,
    engine: Annotated[Engine, typer.Option("--engine", help="auto = each model file's own (.onnx exports on "
                                           "onnxruntime, checkpoints on torch); onnxruntime and openvino (CPU, "
                                           "pip install openvino) also run a checkpoint, exported in memory.")] = Engine.auto,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities",
                                                     help="Also write <case>_probabilities.npz (float16).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Predict cases whose outputs exist.")] = False,
    labels: Annotated[LabelValues, typer.Option("--labels", help="Write the checkpoint's label values (model) or the "
                                                                 "source dataset's (source, e.g. BraTS 1/2/4).")] = LabelValues.model,
    channel_order: Annotated[Optional[str], typer.Option(
        "--channel-order", metavar="NAMES", help="Channel names of _cccc / 4-D inputs, e.g. FLAIR,T1,T1c,T2.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid",
                                               help="Continue after a bad case and list the failures at the end.")] = False,
    region_threshold: Annotated[Optional[float], typer.Option(
        "--region-threshold", help="Region-based models (WT/TC/ET): grow every region into the connected voxels "
             "above this probability, in (0, 0.5]; default: the checkpoint's thresholds, decided on its "
             "validation cases (0.5 = no growing, as for older checkpoints).")] = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli.inference.predict import PredictConfig, predict_folder

    common.apply_threads()
    config = PredictConfig(
        models=tuple(model), input=input_path, output=output, tta=tta, lcc=lcc.value, overlap=overlap,
        batch_size=batch_size, precision=precision.value, save_probabilities=save_probabilities, device=device,
        overwrite=overwrite, labels=labels.value, channel_order=_parse_channel_order(channel_order),
        skip_invalid=skip_invalid, region_threshold=region_threshold, engine=engine.value,
    )
    with common.make_progress() as bar:
        task = bar.add_task("Predicting", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description or "Predicting", completed=done, total=total)

        summary = common.run(predict_folder, config=config, progress=progress)
    if as_json:
        common.emit_json("predict", inputs=config, result=summary, seconds=summary.seconds)
        return
    _print_summary(summary)
    if summary.failed:
        for _, message in summary.failed:
            common.stderr_console.print(f"failed: {message}", markup=False, soft_wrap=True)


def _print_summary(summary) -> None:
    from rich.table import Table

    table = Table(title=f"predictions in {summary.output}", title_justify="left")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    table.add_row("predicted", str(len(summary.predicted)))
    table.add_row("skipped (already done)", str(len(summary.skipped)))
    if summary.failed:
        table.add_row("failed", f"{len(summary.failed)}: {', '.join(c for c, _ in summary.failed)}")
    table.add_row("time", f"{summary.seconds:.1f} s")
    common.stdout_console.print(table)
    common.echo(str(summary.csv))


def register(app: typer.Typer) -> None:
    """Add ``predict`` to the root app."""
    app.command("predict", help=HELP, no_args_is_help=True)(predict)
