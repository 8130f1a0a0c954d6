"""``brainseg finetune``: specialise a pretrained checkpoint on another dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from brainseg_cli import choices
from brainseg_cli.cli import common
from brainseg_cli.cli import training_options as opts

Select = common.choice_enum("Select", choices.SELECT_METHODS, "Case selection methods.")

HELP = (
    "Fine-tune a pretrained checkpoint (--from, a best.pt or last.pt of `brainseg pretrain`) on DATASET "
    "(the dataset layout written by `brainseg convert`), even when DATASET has other channels and labels.\n\n"
    "The architecture, 2-D/3-D configuration and normalisation come from the checkpoint (so --model and --config "
    "are refused); spacing, patch and batch are re-planned for DATASET. Input channels are matched by name "
    "(--channel-map TARGET=SOURCE overrides; unmatched channels start from the mean of the pretrained filters); "
    "output rows are kept for label names present in both, the others start afresh.\n\n"
    "--freeze encoder freezes all encoder stages and the bottleneck, --freeze firstK the encoder stages 0..K-1 "
    "(frozen BatchNorm statistics stay fixed); --unfreeze-after E releases them at epoch E; --encoder-lr-scale "
    "gives the encoder a smaller learning rate. --train-cases N --select lesion-balanced trains on N cases spread "
    "over the lesion-volume distribution (small-data studies).\n\n"
    "RUN_DIR receives plan.json, transfer.json (stage table, channel and label decisions), config.json, "
    "metrics.csv, best.pt and last.pt; the training options are those of `brainseg pretrain`."
)


def finetune(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, dir_okay=True, metavar="DATASET",
                                            help="The target dataset folder (read only).")],
    checkpoint: Annotated[Path, typer.Option("--from", exists=True, dir_okay=False, metavar="CKPT",
                                             help="The pretrained checkpoint (best.pt / last.pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, metavar="RUN_DIR",
                                         help="The run folder to create (or to continue with --resume).")],
    freeze: Annotated[str, typer.Option("--freeze", metavar="none|encoder|firstK",
                                        help="Stages to freeze: none, encoder (+ bottleneck), firstK (encoder "
                                             "stages 0..K-1, e.g. first3).")] = "none",
    unfreeze_after: Annotated[Optional[int], typer.Option(
        "--unfreeze-after", min=1, metavar="EPOCHS", help="Release the frozen stages after this many epochs.")] = None,
    encoder_lr_scale: Annotated[float, typer.Option(
        "--encoder-lr-scale", metavar="X", help="Factor on the encoder's learning rate.")] = 1.0,
    channel_map: Annotated[Optional[str], typer.Option(
        "--channel-map", metavar="TARGET=SOURCE,...",
        help="Which checkpoint channel each data channel takes its filters from (overrides matching by name).")] = None,
    train_cases: Annotated[Optional[int], typer.Option(
        "--train-cases", min=1, metavar="N", help="Train on N of the training cases (after the validation split).")] = None,
    select: Annotated[Select, typer.Option("--select", help="How --train-cases are chosen.")] = Select.random,
    model: Annotated[Optional[str], typer.Option("--model", hidden=True)] = None,
    config: Annotated[Optional[str], typer.Option("--config", hidden=True)] = None,
    epochs: opts.Epochs = None,
    iterations: opts.Iterations = None,
    val_every: opts.ValEvery = None,
    max_time: opts.MaxTime = None,
    patience: opts.Patience = None,
    batch_size: opts.BatchSize = None,
    patch_size: opts.PatchSize = None,
    spacing: opts.Spacing = None,
    memory_gb: opts.MemoryGb = None,
    regions: opts.RegionsOption = None,
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
    for flag, value in (("--model", model), ("--config", config)):
        if value is not None:
            raise common.usage_error(
                f"{flag} {value}: fine-tuning keeps the architecture of the checkpoint ({flag.lstrip('-')} and "
                "network depth come from --from CKPT); use `brainseg pretrain` to train another architecture")
    from brainseg_cli.training.finetune import FinetuneConfig, parse_channel_map
    from brainseg_cli.training.finetune import finetune as finetune_fn

    common.apply_threads()
    cli_options: dict[str, Any] = {
        **opts.train_cli_options(
            epochs=epochs, iterations=iterations, val_every=val_every, max_time=max_time, patience=patience, lr=lr,
            optimizer=optimizer, schedule=schedule, grad_clip=grad_clip, ema=ema, loss=loss, aug=aug, aug_preset=aug_preset,
            val_cases=val_cases,
            val_split=val_split, fold=fold, folds=folds, precision=precision, compile_model=compile_model,
            resume=resume, deterministic=deterministic, seed=seed, device=device, workers=workers, nproc=nproc),
        **opts.plan_cli_options(batch_size=batch_size, patch_size=patch_size, spacing=spacing, memory_gb=memory_gb,
                                regions=regions, batch_dice=batch_dice),
    }
    train_config, plan_overrides = opts.resolve_cli_options(options_file=options_file, cli_options=cli_options)
    pairs = common.run(parse_channel_map, text=channel_map) if channel_map is not None else ()
    finetune_config = common.run(FinetuneConfig, checkpoint=checkpoint, freeze=freeze, unfreeze_after=unfreeze_after,
                                 encoder_lr_scale=encoder_lr_scale, channel_map=pairs, train_cases=train_cases,
                                 select=select.value)
    result = opts.run_training(finetune_fn, dataset_dir=dataset, run_dir=output, finetune_config=finetune_config,
                               train_config=train_config, plan_overrides=plan_overrides, bundle=bundle)
    opts.print_train_summary(result, command="finetune" if as_json else None,
                             inputs={"dataset": dataset, "run_dir": output, "finetune_config": finetune_config,
                                     "train_config": train_config, "plan_overrides": plan_overrides})


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to the root app."""
    app.command("finetune", help=HELP, no_args_is_help=True)(finetune)
