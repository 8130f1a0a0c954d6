"""Command-line options and steps shared by the training commands (``pretrain`` and ``finetune``).

Each option is an ``Annotated`` type alias, so a command declares it as a parameter
(``epochs: opts.Epochs = None``) and gets the same flag, help text and checks everywhere.
Every alias defaults to ``None`` = "not given", so an options file (``--options-file``) can supply
the value; :func:`train_cli_options` and :func:`plan_cli_options` turn the parsed values into the
option-name -> value mapping that :func:`resolve_cli_options` merges over the file. Help texts
write a literal ``[default: ...]`` as ``\\[default: ...]``: Rich would otherwise read it as markup
and drop it from ``--help``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from brainseg_cli import choices
from brainseg_cli.cli import common

Optimizer = common.choice_enum("Optimizer", choices.OPTIMIZERS, "Optimiser presets.")

Schedule = common.choice_enum("Schedule", choices.SCHEDULES, "Learning-rate schedules.")

SliceWeighting = common.choice_enum("SliceWeighting", choices.SLICE_WEIGHTINGS,
                                    "How a 2-D plan draws the slices that are not forced to hold foreground.")

Loss = common.choice_enum("Loss", choices.TRAINING_LOSSES, "Training losses.")

AugmentPreset = common.choice_enum("AugmentPreset", choices.AUGMENT_PRESETS, "Augmentation presets.")

Precision = common.choice_enum("Precision", choices.TRAIN_PRECISIONS, "Numeric precision of the forward pass.")

Config = common.choice_enum("Config", choices.CONFIGS, "Network configuration.")

Regions = common.choice_enum("Regions", choices.REGION_CHOICES, "Region-based (sigmoid) training targets.")

# ----------------------------------------------------------------------------- training options
Epochs = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs to train \\[default: 100].")]
Iterations = Annotated[Optional[int], typer.Option("--iterations", min=1, help="Optimiser steps per epoch \\[default: 50].")]
ValEvery = Annotated[Optional[int], typer.Option(
    "--val-every", min=1, help="Validate every N epochs \\[default: 2 with --max-time, else 1].")]
MaxTime = Annotated[Optional[float], typer.Option("--max-time", metavar="MIN", help="Wall-clock budget in minutes.")]
Patience = Annotated[Optional[int], typer.Option("--patience", min=1,
                                                 help="Stop after N epochs without a better validation Dice.")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate (default: the optimiser's).")]
OptimizerOption = Annotated[Optional[Optimizer], typer.Option(
    "--optimizer", help="sgd (lr 1e-2, momentum 0.99, Nesterov, poly) or adam (lr 1e-4, cosine) \\[default: sgd].")]
ScheduleOption = Annotated[Optional[Schedule], typer.Option("--schedule", help="Learning-rate schedule.")]
GradClip = Annotated[Optional[float], typer.Option("--grad-clip", min=0.0,
                                                   help="Gradient-norm clipping, 0 = off \\[default: 12].")]
EmaOption = Annotated[Optional[float], typer.Option(
    "--ema", metavar="DECAY",
    help="Validate and save a moving average of the weights with this decay; 0 = off \\[default: 0.995].")]
LossOption = Annotated[Optional[Loss], typer.Option("--loss", help="Training loss \\[default: dice-ce].")]
Augment = Annotated[Optional[bool], typer.Option("--aug/--no-aug", help="Data augmentation \\[default: on].")]
AugPresetOption = Annotated[Optional[AugmentPreset], typer.Option(
    "--aug-preset", help="default (nnU-Net's), brats (stronger: more scaling, rotation, elastic, brightness, "
    "contrast, gamma) or lgg (Buda et al.) \\[default: default].")]
ValCases = Annotated[Optional[int], typer.Option("--val-cases", min=1, help="Hold out N validation cases.")]
ValSplit = Annotated[Optional[float], typer.Option("--val-split", metavar="FRAC",
                                                   help="Hold out this fraction \\[default: 0.2].")]
Fold = Annotated[Optional[int], typer.Option("--fold", min=0, metavar="K", help="Validate on fold K of --folds.")]
Folds = Annotated[Optional[int], typer.Option("--folds", min=2, metavar="N", help="Number of folds \\[default: 5].")]
PrecisionOption = Annotated[Optional[Precision], typer.Option(
    "--precision", help="auto = fp16 (loss scaling) on CUDA, bf16 on native-bf16 CPUs, else fp32; fp16: CUDA only \\[default: auto].")]
Compile = Annotated[Optional[bool], typer.Option("--compile", help="Compile the network (torch.compile).")]
Resume = Annotated[Optional[bool], typer.Option("--resume", help="Continue RUN_DIR from last.pt.")]
Deterministic = Annotated[Optional[bool], typer.Option(
    "--deterministic", help="Deterministic algorithms: a rerun or resume gives identical weights.")]
Seed = Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed \\[default: 0].")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N \\[default: auto].")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0,
                                               help="Data-loading processes (0: in the main process).")]
Nproc = Annotated[Optional[int], typer.Option("--nproc", min=1, help="Data-parallel processes on this machine.")]
BundleOption = Annotated[Optional[str], typer.Option(
    "--bundle", metavar="NAME", help="Also write RUN_DIR/NAME.bundle.zip at the end: best.pt with its model card "
    "(install it with brainseg models install).", show_default=False)]
OptionsFile = Annotated[Optional[Path], typer.Option("--options-file", exists=True, dir_okay=False,
                                                     help="JSON or TOML file of options.")]

# ----------------------------------------------------------------------------- plan options: architecture
ConfigOption = Annotated[Optional[Config], typer.Option("--config", help="2-D or 3-D network (default: planned).")]
Model = Annotated[Optional[str], typer.Option("--model", help="Network architecture (default: unet).")]

# ----------------------------------------------------------------------------- plan options (not architecture)
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (default: planned).")]
PatchSize = Annotated[Optional[str], typer.Option("--patch-size", metavar="X,Y[,Z]",
                                                  help="Patch size in voxels (default: planned).")]
Spacing = Annotated[Optional[str], typer.Option("--spacing", metavar="X,Y,Z",
                                               help="Target spacing in mm (default: planned).")]
MemoryGb = Annotated[Optional[float], typer.Option("--memory-gb", help="Memory budget of the plan in GB.")]
SliceWeightingOption = Annotated[Optional[SliceWeighting], typer.Option(
    "--slice-weighting", help="2-D: draw slices uniformly or weighted by foreground area \\[default: uniform].")]
SliceContextOption = Annotated[Optional[int], typer.Option(
    "--slice-context", min=0, max=3, metavar="K", help="2-D: also give the network the K neighbouring slices on "
    "each side as channels (2.5-D) \\[default: 0].")]
BatchDiceOption = Annotated[Optional[bool], typer.Option(
    "--batch-dice/--sample-dice", help="Dice loss over the whole batch (nnU-Net's 2-D choice) or per "
    "sample \\[default: per sample].")]
RegionsOption = Annotated[Optional[Regions], typer.Option(
    "--regions", help="Region-based training with sigmoid outputs: brats (WT/TC/ET), the dataset's regions, or none "
    "(softmax over the labels) \\[default: the dataset's regions when they nest, as BraTS's, else none].")]


def parse_ints(value: str, option: str, counts: tuple[int, ...]) -> list[int]:
    """``"128,128,128"`` / ``"128x128"`` -> ints; a usage error (exit 2) otherwise."""
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise common.usage_error(f"{option} '{value}': expected integers such as 128,128,128") from None
    if len(numbers) not in counts or not all(n > 0 for n in numbers):
        raise common.usage_error(f"{option} '{value}': expected {' or '.join(map(str, counts))} positive integers")
    return numbers


def parse_spacing(value: str, option: str) -> list[float]:
    """``"1,1,1"`` -> three positive floats (mm); a usage error (exit 2) otherwise."""
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise common.usage_error(f"{option} '{value}': expected three numbers in mm, e.g. 1,1,1") from None
    if len(numbers) != 3 or not all(n > 0 for n in numbers):
        raise common.usage_error(f"{option} '{value}': expected three positive numbers in mm, e.g. 1,1,1")
    return numbers


def _value(option: Any) -> Any:
    return option.value if isinstance(option, Enum) else option


def train_cli_options(
    *,
    epochs: int | None = None,
    iterations: int | None = None,
    val_every: int | None = None,
    max_time: float | None = None,
    patience: int | None = None,
    lr: float | None = None,
    optimizer: Optimizer | None = None,
    schedule: Schedule | None = None,
    grad_clip: float | None = None,
    ema: float | None = None,
    loss: Loss | None = None,
    aug: bool | None = None,
    aug_preset: AugmentPreset | None = None,
    val_cases: int | None = None,
    val_split: float | None = None,
    fold: int | None = None,
    folds: int | None = None,
    precision: Precision | None = None,
    compile_model: bool | None = None,
    resume: bool | None = None,
    deterministic: bool | None = None,
    seed: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    nproc: int | None = None,
) -> dict[str, Any]:
    """Parsed training flags -> ``{TrainConfig field: value}`` (None = not given)."""
    return {
        "epochs": epochs, "iterations_per_epoch": iterations, "val_every": val_every, "max_time_min": max_time,
        "patience": patience, "lr": lr, "optimizer": _value(optimizer), "schedule": _value(schedule),
        "grad_clip": grad_clip, "ema": ema, "loss": _value(loss), "augment": aug, "augment_preset": _value(aug_preset),
        "val_cases": val_cases,
        "val_split": val_split, "fold": fold, "folds": folds, "precision": _value(precision),
        "compile": compile_model, "resume": resume, "deterministic": deterministic, "seed": seed, "device": device,
        "workers": workers, "nproc": nproc,
    }


def plan_cli_options(
    *,
    batch_size: int | None = None,
    patch_size: str | None = None,
    spacing: str | None = None,
    memory_gb: float | None = None,
    regions: Regions | None = None,
    config: Config | None = None,
    model: str | None = None,
    slice_weighting: SliceWeighting | None = None,
    slice_context: int | None = None,
    batch_dice: bool | None = None,
) -> dict[str, Any]:
    """Parsed plan flags -> ``{PlanOverrides field: value}`` (None = not given); usage errors exit 2."""
    return {
        "config": _value(config),
        "model": model,
        "batch_size": batch_size,
        "patch_size": parse_ints(patch_size, "--patch-size", (2, 3)) if patch_size else None,
        "target_spacing": parse_spacing(spacing, "--spacing") if spacing else None,
        "memory_gb": memory_gb,
        "regions": _value(regions),
        "slice_weighting": _value(slice_weighting),
        "slice_context": slice_context,
        "batch_dice": batch_dice,
    }


def resolve_cli_options(*, options_file: Path | None, cli_options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Read ``--options-file`` (when given) and merge the flags over it.

    Returns:
        ``(TrainConfig, plan overrides)`` from :func:`brainseg_cli.training.config.resolve_options`;
        an unreadable file or an invalid value ends the command (exit 1 or 2, one line on stderr).
    """
    from brainseg_cli.training.config import read_options_file, resolve_options

    file_options = common.run(read_options_file, path=options_file) if options_file is not None else None
    return common.run(resolve_options, file_options=file_options, cli_options=cli_options)


def run_training(fn: Callable[..., Any], /, **kwargs: Any) -> Any:
    """Call a training entry point (``pretrain`` / ``finetune``) under a progress bar on stderr.

    ``fn`` is called through :func:`common.run` with ``kwargs`` plus a ``progress(description, done,
    total)`` callback that drives the bar; its result is returned.
    """
    with common.make_progress() as bar:
        task = bar.add_task("Preparing", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        return common.run(fn, progress=progress, **kwargs)


def print_train_summary(result: Any, *, command: str | None = None, inputs: Mapping[str, Any] | None = None) -> None:
    """The results table of a finished training run (a :class:`~brainseg_cli.training.fit.TrainResult`),
    or with ``command`` (``--json``) its JSON document.

    Under torchrun every rank returns; only rank 0 prints.
    """
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    if command is not None:
        common.emit_json(command, inputs=inputs or {}, result=result, seconds=result.seconds)
        return
    from rich.table import Table

    table = Table(title=f"{result.run_dir}", show_header=True, title_justify="left")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    reasons = {"epochs": "all epochs done", "patience": "early stop (no improvement)", "max_time": "time budget"}
    table.add_row("epochs", f"{result.epochs_completed} ({reasons.get(result.stop_reason, result.stop_reason)}), "
                            f"{result.seconds / 60:.1f} min")
    table.add_row("best epoch", f"{result.best_epoch}: mean validation Dice {result.best_val_dice:.4f}")
    for name, value in result.val_dice.items():
        table.add_row(f"  Dice {name}", f"{value:.4f}")
    on = [name for name, d in result.postprocessing.items() if d.get("largest_component")]
    table.add_row("post-processing", "largest component for " + ", ".join(on) if on else "none")
    minimums = {name: v for name, v in result.region_min_volumes.items() if v}
    if minimums:
        table.add_row("minimum volumes", ", ".join(f"{name} {v:g} mm³" for name, v in minimums.items()))
    if getattr(result, "bundle", None) is not None:
        table.add_row("bundle", str(result.bundle))
    common.stdout_console.print(table)
    common.echo(str(result.best_checkpoint))
