"""``brainseg pretrain``: plan, preprocess and train a segmentation network on a dataset folder."""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from brainseg_cli.cli import common


class Config(str, Enum):
    """Network configuration."""

    d2 = "2d"
    d3 = "3d"


class Regions(str, Enum):
    """Region-based (sigmoid) training targets."""

    brats = "brats"
    dataset = "dataset"


class Optimizer(str, Enum):
    """Optimiser presets."""

    sgd = "sgd"
    adam = "adam"


class Schedule(str, Enum):
    """Learning-rate schedules."""

    poly = "poly"
    cosine = "cosine"


class Loss(str, Enum):
    """Training losses."""

    dice_ce = "dice-ce"
    dice = "dice"


class Precision(str, Enum):
    """Numeric precision of the forward pass."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


HELP = (
    "Train a segmentation network from scratch on DATASET (the dataset layout written by `brainseg convert`, "
    "= nnU-Net v2 raw format).\n\n"
    "The dataset is fingerprinted and planned (configuration, spacing, patch, batch and network; any of them can "
    "be set), preprocessed into RUN_DIR/preprocessed, split into training and validation cases, and trained for "
    "--epochs epochs of --iterations steps. RUN_DIR receives plan.json, config.json, metrics.csv and the "
    "self-describing checkpoints best.pt and last.pt (what `brainseg predict` and `finetune` read). "
    "--resume continues an interrupted run from last.pt with the same options.\n\n"
    "Data-parallel training: --nproc N starts N processes on this machine; across machines use torchrun "
    "(see the README). An --options-file (JSON or TOML) holds option names as keys (e.g. max_time_min, "
    "patch_size); flags given here override it."
)


def _ints(value: str, option: str, counts: tuple[int, ...]) -> list[int]:
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise common.usage_error(f"{option} '{value}': expected integers such as 128,128,128") from None
    if len(numbers) not in counts or not all(n > 0 for n in numbers):
        raise common.usage_error(f"{option} '{value}': expected {' or '.join(map(str, counts))} positive integers")
    return numbers


def _floats(value: str, option: str) -> list[float]:
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise common.usage_error(f"{option} '{value}': expected three numbers in mm, e.g. 1,1,1") from None
    if len(numbers) != 3 or not all(n > 0 for n in numbers):
        raise common.usage_error(f"{option} '{value}': expected three positive numbers in mm, e.g. 1,1,1")
    return numbers


def pretrain(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, dir_okay=True, metavar="DATASET",
                                            help="The dataset folder (read only).")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, metavar="RUN_DIR",
                                         help="The run folder to create (or to continue with --resume).")],
    config: Annotated[Optional[Config], typer.Option("--config", help="2-D or 3-D network (default: planned).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Network architecture (default: unet).")] = None,
    regions: Annotated[Optional[Regions], typer.Option(
        "--regions", help="Region-based training with sigmoid outputs: brats (WT/TC/ET) or the dataset's regions.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs to train [default: 100].")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", min=1,
                                                      help="Optimiser steps per epoch [default: 50].")] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", min=1,
                                                     help="Validate every N epochs [default: 1].")] = None,
    max_time: Annotated[Optional[float], typer.Option("--max-time", metavar="MIN",
                                                      help="Wall-clock budget in minutes.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", min=1,
                                                    help="Stop after N epochs without a better validation Dice.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (default: planned).")] = None,
    patch_size: Annotated[Optional[str], typer.Option("--patch-size", metavar="X,Y[,Z]",
                                                      help="Patch size in voxels (default: planned).")] = None,
    spacing: Annotated[Optional[str], typer.Option("--spacing", metavar="X,Y,Z",
                                                   help="Target spacing in mm (default: planned).")] = None,
    memory_gb: Annotated[Optional[float], typer.Option("--memory-gb", help="Memory budget of the plan in GB.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate (default: the optimiser's).")] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(
        "--optimizer", help="sgd (lr 1e-2, momentum 0.99, Nesterov, poly) or adam (lr 1e-4, cosine) [default: sgd].")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option("--schedule", help="Learning-rate schedule.")] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", min=0.0,
                                                       help="Gradient-norm clipping, 0 = off [default: 12].")] = None,
    loss: Annotated[Optional[Loss], typer.Option("--loss", help="Training loss [default: dice-ce].")] = None,
    aug: Annotated[Optional[bool], typer.Option("--aug/--no-aug", help="Data augmentation [default: on].")] = None,
    val_cases: Annotated[Optional[int], typer.Option("--val-cases", min=1, help="Hold out N validation cases.")] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", metavar="FRAC",
                                                       help="Hold out this fraction [default: 0.2].")] = None,
    fold: Annotated[Optional[int], typer.Option("--fold", min=0, metavar="K", help="Validate on fold K of --folds.")] = None,
    folds: Annotated[Optional[int], typer.Option("--folds", min=2, metavar="N",
                                                 help="Number of folds [default: 5].")] = None,
    precision: Annotated[Optional[Precision], typer.Option(
        "--precision", help="fp16 needs CUDA; auto = bf16 on CUDA, fp32 on CPUs [default: auto].")] = None,
    compile_model: Annotated[Optional[bool], typer.Option("--compile", help="Compile the network (torch.compile).")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue RUN_DIR from last.pt.")] = None,
    deterministic: Annotated[Optional[bool], typer.Option(
        "--deterministic", help="Deterministic algorithms: a rerun or resume gives identical weights.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Random seed [default: 0].")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N [default: auto].")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0,
                                                   help="Data-loading processes (0: in the main process).")] = None,
    nproc: Annotated[Optional[int], typer.Option("--nproc", min=1, help="Data-parallel processes on this machine.")] = None,
    options_file: Annotated[Optional[Path], typer.Option("--options-file", exists=True, dir_okay=False,
                                                         help="JSON or TOML file of options.")] = None,
) -> None:
    from brainseg_cli.training.config import read_options_file, resolve_options
    from brainseg_cli.training.pretrain import pretrain as pretrain_fn

    common.apply_threads()
    file_options = common.run(read_options_file, path=options_file) if options_file is not None else None
    cli_options: dict[str, Any] = {
        "config": config.value if config else None,
        "model": model,
        "regions": regions.value if regions else None,
        "epochs": epochs,
        "iterations_per_epoch": iterations,
        "val_every": val_every,
        "max_time_min": max_time,
        "patience": patience,
        "batch_size": batch_size,
        "patch_size": _ints(patch_size, "--patch-size", (2, 3)) if patch_size else None,
        "target_spacing": _floats(spacing, "--spacing") if spacing else None,
        "memory_gb": memory_gb,
        "lr": lr,
        "optimizer": optimizer.value if optimizer else None,
        "schedule": schedule.value if schedule else None,
        "grad_clip": grad_clip,
        "loss": loss.value if loss else None,
        "augment": aug,
        "val_cases": val_cases,
        "val_split": val_split,
        "fold": fold,
        "folds": folds,
        "precision": precision.value if precision else None,
        "compile": compile_model,
        "resume": resume,
        "deterministic": deterministic,
        "seed": seed,
        "device": device,
        "workers": workers,
        "nproc": nproc,
    }
    train_config, plan_overrides = common.run(resolve_options, file_options=file_options, cli_options=cli_options)
    with common.make_progress() as bar:
        task = bar.add_task("Preparing", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        result = common.run(pretrain_fn, dataset_dir=dataset, run_dir=output, train_config=train_config,
                            plan_overrides=plan_overrides, progress=progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's)
        _print_summary(result)


def _print_summary(result) -> None:
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
    common.stdout_console.print(table)
    common.echo(str(result.best_checkpoint))


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` to the root app."""
    app.command("pretrain", help=HELP, no_args_is_help=True)(pretrain)
