"""``brainseg pretrain``: plan, preprocess and train a segmentation network on a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from brainseg_cli.cli import common
from brainseg_cli.cli import training_options as opts

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


def pretrain(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, dir_okay=True, metavar="DATASET",
                                            help="The dataset folder (read only).")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, metavar="RUN_DIR",
                                         help="The run folder to create (or to continue with --resume).")],
    config: opts.ConfigOption = None,
    model: opts.Model = None,
    regions: opts.RegionsOption = None,
    epochs: opts.Epochs = None,
    iterations: opts.Iterations = None,
    val_every: opts.ValEvery = None,
    max_time: opts.MaxTime = None,
    patience: opts.Patience = None,
    batch_size: opts.BatchSize = None,
    patch_size: opts.PatchSize = None,
    spacing: opts.Spacing = None,
    memory_gb: opts.MemoryGb = None,
    slice_weighting: opts.SliceWeightingOption = None,
    slice_context: opts.SliceContextOption = None,
    batch_dice: opts.BatchDiceOption = None,
    lr: opts.LearningRate = None,
    optimizer: opts.OptimizerOption = None,
    schedule: opts.ScheduleOption = None,
    grad_clip: opts.GradClip = None,
    ema: opts.EmaOption = None,
    loss: opts.LossOption = None,
    aug: opts.Augment = None,
    aug_preset: opts.AugPresetOption = None,
    val_cases: opts.ValCases = None,
    val_split: opts.ValSplit = None,
    fold: opts.Fold = None,
    folds: opts.Folds = None,
    precision: opts.PrecisionOption = None,
    compile_model: opts.Compile = None,
    resume: opts.Resume = None,
    deterministic: opts.Deterministic = None,
    seed: opts.Seed = None,
    device: opts.Device = None,
    workers: opts.Workers = None,
    nproc: opts.Nproc = None,
    options_file: opts.OptionsFile = None,
    bundle: opts.BundleOption = None,
    as_json: common.JsonOption = False,
) -> None:
    from brainseg_cli.training.pretrain import pretrain as pretrain_fn

    common.apply_threads()
    cli_options: dict[str, Any] = {
        **opts.train_cli_options(
            epochs=epochs, iterations=iterations, val_every=val_every, max_time=max_time, patience=patience, lr=lr,
            optimizer=optimizer, schedule=schedule, grad_clip=grad_clip, ema=ema, loss=loss, aug=aug, aug_preset=aug_preset,
            val_cases=val_cases,
            val_split=val_split, fold=fold, folds=folds, precision=precision, compile_model=compile_model,
            resume=resume, deterministic=deterministic, seed=seed, device=device, workers=workers, nproc=nproc),
        **opts.plan_cli_options(batch_size=batch_size, patch_size=patch_size, spacing=spacing, memory_gb=memory_gb,
                                regions=regions, config=config, model=model, slice_weighting=slice_weighting,
                                slice_context=slice_context, batch_dice=batch_dice),
    }
    train_config, plan_overrides = opts.resolve_cli_options(options_file=options_file, cli_options=cli_options)
    result = opts.run_training(pretrain_fn, dataset_dir=dataset, run_dir=output, train_config=train_config,
                               plan_overrides=plan_overrides, bundle=bundle)
    opts.print_train_summary(result, command="pretrain" if as_json else None,
                             inputs={"dataset": dataset, "run_dir": output, "train_config": train_config,
                                     "plan_overrides": plan_overrides})


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` to the root app."""
    app.command("pretrain", help=HELP, no_args_is_help=True)(pretrain)
