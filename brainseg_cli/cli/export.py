"""``brainseg export``: a checkpoint's network as a self-describing ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from brainseg_cli import choices
from brainseg_cli.cli import common

ExportFormat = common.choice_enum("ExportFormat", choices.EXPORT_FORMATS, "Export formats.")

HELP = (
    "Export a checkpoint's network to ONNX (dynamic batch and spatial axes) or TorchScript.\n\n"
    "The file carries, as JSON metadata, everything predict needs beside the graph: the plan (spacing, "
    "orientation, normalisation, patch, slice axis and context), the channels in order, labels and regions, "
    "the post-processing decisions and region thresholds. `brainseg predict -m MODEL.onnx` runs it on ONNX Runtime "
    "with the same sliding window, post-processing and geometry as the checkpoint. The export is checked "
    "against PyTorch on one window before the command ends."
)


def export(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Checkpoint to export (best.pt).",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="File to write (.onnx or .ts).",
                                         show_default=False)],
    fmt: Annotated[Optional[ExportFormat], typer.Option(
        "--format", help="onnx or torchscript \\[default: from the output's ending].")] = None,
    opset: Annotated[int, typer.Option("--opset", min=13, max=21, help="ONNX opset version.")] = 17,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli.inference.export import ExportConfig, export_model

    common.apply_threads()
    config = ExportConfig(checkpoint=model, output=output, format=fmt.value if fmt else None, opset=opset)
    result = common.run(export_model, config=config)
    if as_json:
        common.emit_json("export", inputs=config, result=result, seconds=result.seconds)
        return
    common.stderr_console.print(
        f"exported {model} as {result.format} ({result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s); logits within "
        f"{result.max_logit_difference:.2g} of PyTorch's", markup=False, soft_wrap=True)
    typer.echo(str(result.output))


def register(app: typer.Typer) -> None:
    """Add ``export`` to the root app."""
    app.command("export", help=HELP, no_args_is_help=True)(export)
