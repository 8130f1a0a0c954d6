"""``brainseg finetune``: specialise a pretrained checkpoint on another dataset.

:func:`finetune` takes a checkpoint written by ``pretrain`` (or an earlier ``finetune``) and a
target dataset (nnU-Net v2 raw layout) whose channels and labels may differ, and:

1. **plans** the target (:func:`brainseg_cli.training.target_plan.plan_for_target`): the
   architecture, the 2-D/3-D configuration, the slice context and the normalisation scheme come
   from the checkpoint, the rest is re-planned from the target's fingerprint; options that would
   change the architecture are refused (:data:`~brainseg_cli.training.target_plan.ARCHITECTURE_OPTIONS`);
2. **builds** the network with the target's input channels and outputs and loads the pretrained
   weights (:func:`brainseg_cli.training.transfer.transfer_weights`): input channels are matched
   by canonical name (``channel_map`` overrides), unmatched channels start from the mean of the
   pretrained first-layer filters, the first layer is rescaled by ``n_source / n_target``; output
   rows (main and deep-supervision heads) are kept for label (or region) names present in both,
   the others are freshly initialised;
3. **freezes** the chosen stages (``none``, ``encoder``, ``firstK``; docs/DEFINITIONS.md §6): frozen
   parameters get no gradient and are not given to the optimiser, frozen BatchNorm layers stay in
   eval mode (running statistics unchanged). ``unfreeze_after=E`` releases them at the start of
   epoch E (0-based, i.e. after E epochs) by adding them to the optimiser as a new parameter group;
   ``encoder_lr_scale`` multiplies the learning rate of the encoder and bottleneck (released
   parameters included);
4. optionally **selects** N training cases (:mod:`brainseg_cli.training.selection`: ``random`` or
   ``lesion-balanced`` quantile strata of the foreground volume), after the validation split;
5. **trains** with :func:`brainseg_cli.training.fit.fit` through the process skeleton it shares
   with ``pretrain`` (:mod:`brainseg_cli.training.process`).

Before training the stage table (trainable / frozen parameters per stage) and the channel and
label decisions are logged and written to ``RUN_DIR/transfer.json``; the same record is stored
in every checkpoint under ``training["transfer"]``. The run folder is otherwise that of
``pretrain``: ``plan.json``, ``preprocessed/``, ``config.json``, ``metrics.csv``, ``best.pt``,
``last.pt``. ``--resume`` reuses the run's plan (and so its case selection) and refuses fine-tuning
options that differ from the run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainseg_cli.checkpoint import load_checkpoint
from brainseg_cli.data.fingerprint import compute_fingerprint
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.data.plan_schema import PREDICTION_KEYS, Plan
from brainseg_cli.errors import ConfigError, did_you_mean
from brainseg_cli.io.atomic import atomic_write
from brainseg_cli.models import build_model
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.freeze import (
    FreezeSpec,
    apply_freeze,
    frozen_stages,
    keep_frozen_norms_in_eval,
    param_groups,
    parse_freeze,
    stage_table,
    unfreeze,
)
from brainseg_cli.training.optim import resolved_optimizer_settings
from brainseg_cli.training.process import (
    launch_or_run,
    plan_and_cache,
    planned_model,
    train,
    training_process,
)
from brainseg_cli.training.run import EpochState, TrainResult
from brainseg_cli.training.rundir import LAST
from brainseg_cli.training.selection import SELECT_METHODS, lesion_volumes_from_fingerprint, select_cases
from brainseg_cli.training.splits import split_cases
from brainseg_cli.training.target_plan import (
    ARCHITECTURE_OPTIONS,
    output_names,
    plan_for_target,
    source_outputs,
    spatial_dims,
)
from brainseg_cli.training.transfer import (
    channel_key,
    transfer_weights,
)

logger = logging.getLogger(__name__)

TRANSFER_FILE = "transfer.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune from and how (the training options themselves are a ``TrainConfig``)."""

    checkpoint: Path
    """The pretrained checkpoint (``best.pt`` / ``last.pt`` of a ``pretrain`` or ``finetune`` run)."""
    freeze: str = "none"
    """Freeze preset: ``none``, ``encoder`` (all encoder stages and the bottleneck) or ``firstK``
    (encoder stages 0..K-1, e.g. ``first3``)."""
    unfreeze_after: int | None = None
    """Release the frozen stages at the start of this epoch (0-based: after this many epochs);
    None keeps them frozen. Needs a freeze preset other than ``none``."""
    encoder_lr_scale: float = 1.0
    """Factor on the learning rate of the encoder stages and the bottleneck (> 0)."""
    channel_map: tuple[tuple[str, str], ...] = ()
    """``(target channel, checkpoint channel)`` pairs overriding matching by canonical name; a
    mapping ``{target: source}`` is accepted and stored as pairs."""
    train_cases: int | None = None
    """Train on only this many of the training cases (after the validation split); None: all."""
    select: str = "random"
    """How :attr:`train_cases` are chosen: ``random`` or ``lesion-balanced``."""
    seed: int | None = None
    """Seed of the case selection; None uses the training seed."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        pairs = self.channel_map.items() if isinstance(self.channel_map, Mapping) else self.channel_map
        try:
            normalised = tuple((str(t), str(s)) for t, s in pairs)
        except (TypeError, ValueError):
            raise ConfigError(f"channel_map must be TARGET=SOURCE pairs, got {self.channel_map!r}") from None
        targets = [t.lower() for t, _ in normalised]
        if len(set(targets)) != len(targets):
            raise ConfigError(f"channel_map names a target channel twice: {dict(normalised)}")
        object.__setattr__(self, "channel_map", normalised)
        spec = parse_freeze(self.freeze)
        if self.unfreeze_after is not None:
            if isinstance(self.unfreeze_after, bool) or not isinstance(self.unfreeze_after, int) or self.unfreeze_after < 1:
                raise ConfigError(f"unfreeze_after must be an epoch >= 1, got {self.unfreeze_after!r}")
            if spec.kind == "none":
                raise ConfigError(f"--unfreeze-after {self.unfreeze_after} needs a freeze preset (--freeze encoder or "
                                  "firstK); with --freeze none nothing is frozen")
        scale = self.encoder_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"encoder_lr_scale must be a positive number, got {scale!r}")
        if self.train_cases is not None and (isinstance(self.train_cases, bool) or not isinstance(self.train_cases, int)
                                             or self.train_cases < 1):
            raise ConfigError(f"train_cases must be an integer >= 1, got {self.train_cases!r}")
        if self.select not in SELECT_METHODS:
            raise ConfigError(f"select must be one of {', '.join(SELECT_METHODS)}, got {self.select!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"selection seed must be an integer >= 0, got {self.seed!r}")

    @property
    def freeze_spec(self) -> FreezeSpec:
        """The parsed :attr:`freeze` preset."""
        return parse_freeze(self.freeze)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (checkpoint as an absolute path, channel map as ``{target: source}``)."""
        return {
            "checkpoint": str(self.checkpoint.resolve()),
            "freeze": str(self.freeze_spec),
            "unfreeze_after": self.unfreeze_after,
            "encoder_lr_scale": float(self.encoder_lr_scale),
            "channel_map": dict(self.channel_map),
            "train_cases": self.train_cases,
            "select": self.select,
            "seed": self.seed,
        }


def parse_channel_map(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``"TARGET=SOURCE,TARGET=SOURCE"`` (e.g. ``"IR=T1,FLAIR=FLAIR"``).

    Raises:
        ConfigError: an item without exactly one ``=`` or with an empty name.
    """
    pairs = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        target, sep, source = item.partition("=")
        if not sep or "=" in source or not target.strip() or not source.strip():
            raise ConfigError(f"--channel-map item '{item}' must be TARGET=SOURCE (e.g. IR=T1)")
        pairs.append((target.strip(), source.strip()))
    if not pairs:
        raise ConfigError(f"--channel-map '{text}' holds no TARGET=SOURCE pair")
    return tuple(pairs)


# ------------------------------------------------------------------------------------- records
def format_transfer_table(record: Mapping[str, Any]) -> str:
    """The human-readable summary of a transfer record (stage table, channel and label decisions)."""
    stages = record["stages"]
    width = max([len("stage"), *(len(r["stage"]) for r in stages)])
    freeze = record["freeze"]
    lines = [f"fine-tuning {record['source']['model']} from {record['checkpoint']}: freeze {freeze['preset']}"
             + (f", released at epoch {freeze['unfreeze_after']}" if freeze.get("unfreeze_after") else "")
             + (f", encoder lr x{freeze['encoder_lr_scale']:g}" if freeze.get("encoder_lr_scale", 1.0) != 1.0 else "")]
    lines.append(f"  {'stage':<{width}}  {'trainable':>12}  {'frozen':>12}")
    for row in stages:
        lines.append(f"  {row['stage']:<{width}}  {row['trainable']:>12,}  {row['frozen']:>12,}")
    total = record["parameters"]
    lines.append(f"  {'total':<{width}}  {total['trainable']:>12,}  {total['frozen']:>12,}")
    channels = record["channels"]
    parts = []
    for target, source in channels["mapping"].items():
        how = channels["how"][target]
        parts.append(f"{target} <- {source}" + (" (channel map)" if how == "channel_map" else "")
                     if source is not None else f"{target} <- mean of the pretrained filters")
    lines.append(f"  input channels: {'; '.join(parts)} (first-layer filters x{channels['scale']:.3g})")
    labels = record["labels"]
    kept = ", ".join(f"{t}" if t == s else f"{t} <- {s}" for t, s in labels["kept"].items()) or "none"
    lines.append(f"  outputs kept: {kept}; re-initialised: {', '.join(labels['reinitialised']) or 'none'}")
    selection = record.get("case_selection")
    if selection:
        lines.append(f"  training cases: {selection['n']} of {selection['candidates']} ({selection['method']}, "
                     f"seed {selection['seed']}): {', '.join(selection['selected'])}")
    return "\n".join(lines)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


class _FreezeControl:
    """The hooks :func:`fit` calls: frozen norms kept in eval, release at ``unfreeze_after``, transfer.json."""

    def __init__(self, *, spec: FreezeSpec, unfreeze_after: int | None, lr: float, encoder_lr_scale: float,
                 record: Mapping[str, Any], record_path: Path | None) -> None:
        self.spec = spec
        self.unfreeze_after = unfreeze_after
        self.lr = lr
        self.encoder_lr_scale = encoder_lr_scale
        self.record = record
        self.record_path = record_path
        self.released = False
        self.written = False

    def train_mode(self, model: Any) -> None:

        if not self.released:
            keep_frozen_norms_in_eval(model, self.spec)

    def write_record(self, state: EpochState) -> None:
        if self.written or state.replay:
            return
        self.written = True
        if self.record_path is not None:
            _write_json(self.record_path, self.record)

    def release(self, state: EpochState) -> None:
        if self.released or self.unfreeze_after is None or state.epoch < self.unfreeze_after:
            return

        params = [p for p in state.model.parameters() if not p.requires_grad]
        unfreeze(state.model)
        self.released = True
        if not params:
            return
        factor = 1.0
        for group in state.optimizer.param_groups:
            if group.get("initial_lr"):
                factor = group["lr"] / group["initial_lr"]
                break
        base = self.lr * self.encoder_lr_scale
        state.optimizer.add_param_group({"name": "released", "params": params, "lr": base * factor,
                                         "initial_lr": base})
        if not state.replay:
            logger.info("epoch %d: released %d frozen parameters (%s) at learning rate %.3g", state.epoch,
                        sum(p.numel() for p in params), str(self.spec), base * factor)


# ------------------------------------------------------------------------------------- finetune
def finetune(
    *,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    finetune_config: FinetuneConfig,
    train_config: TrainConfig,
    plan_overrides: Mapping[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    bundle: str | None = None,
) -> TrainResult:
    """Fine-tune a pretrained checkpoint on a dataset; write the run folder (module docstring).

    Args:
        dataset_dir: the target dataset (nnU-Net v2 raw layout, ``brainseg convert`` output).
        run_dir: the run folder (``plan.json``, ``preprocessed/``, ``transfer.json``, ``config.json``,
            ``metrics.csv``, ``best.pt``, ``last.pt``).
        finetune_config: checkpoint, freezing, channel map, case selection.
        train_config: training options (as for ``pretrain``).
        plan_overrides: re-planned values to set (``patch_size``, ``batch_size``, ``target_spacing``,
            ``memory_gb``, ``regions``, ...; not :data:`ARCHITECTURE_OPTIONS`).
        progress: ``progress(description, done, total)`` (single-process runs only).
        bundle: also write ``RUN_DIR/BUNDLE.bundle.zip`` (``best.pt`` and its model card) at the end.

    Returns:
        The :class:`~brainseg_cli.training.fit.TrainResult`.

    Raises:
        ConfigError: invalid options (an architecture option, ``unfreeze_after`` not before the
            last epoch, ``firstK`` beyond the encoder, too many ``train_cases``, a channel map
            naming unknown channels, options differing from the run being resumed, ...).
        CheckpointError: the checkpoint is missing, foreign or damaged.
        InputError: an invalid dataset.
    """
    overrides = {k: v for k, v in dict(plan_overrides or {}).items() if v is not None}
    refused = [k for k in overrides if k in ARCHITECTURE_OPTIONS]
    if refused:
        raise ConfigError(f"option '{refused[0]}' cannot be set when fine-tuning: the architecture, configuration "
                          "and normalisation come from the checkpoint")
    if finetune_config.unfreeze_after is not None and finetune_config.unfreeze_after >= train_config.epochs:
        raise ConfigError(f"--unfreeze-after {finetune_config.unfreeze_after} must be before the last epoch "
                          f"(--epochs {train_config.epochs})")
    load_checkpoint(finetune_config.checkpoint)  # a missing or foreign file fails here, before any work
    return launch_or_run(_finetune_process, run_dir=Path(run_dir), train_config=train_config,
                         kwargs={"dataset_dir": str(dataset_dir), "finetune_config": finetune_config,
                                 "plan_overrides": overrides}, progress=progress, bundle=bundle)


def _check_resume(run_dir: Path, finetune_config: FinetuneConfig) -> None:
    """Refuse ``--resume`` with fine-tuning options that differ from the run's (read from ``last.pt``)."""
    last = run_dir / LAST
    if not last.exists():
        return
    saved = (load_checkpoint(last)["training"].get("transfer") or {}).get("finetune_config")
    if saved is None:
        raise ConfigError(f"--resume: {run_dir} is not a finetune run (its {LAST} has no transfer record)")
    now = finetune_config.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} (run) vs {now[k]!r} (now)" for k in now if saved.get(k) != now[k]]
    if diffs:
        raise ConfigError(f"--resume with fine-tuning options that differ from the run in {run_dir}: {'; '.join(diffs)}")


def _finetune_process(
    *,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    finetune_config: FinetuneConfig,
    train_config: TrainConfig,
    plan_overrides: Mapping[str, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """One process of :func:`finetune` (the whole run without DDP)."""
    with training_process(run_dir, train_config,
                          check_resume=lambda folder: _check_resume(folder, finetune_config)) as proc:
        ckpt_path = Path(finetune_config.checkpoint)
        ckpt = load_checkpoint(ckpt_path)
        spec = finetune_config.freeze_spec
        selection_seed = train_config.seed if finetune_config.seed is None else finetune_config.seed
        info = load_dataset(dataset_dir)
        train_cases, val_cases = split_cases(list(info.training_cases), val_cases=train_config.val_cases,
                                             val_split=train_config.val_split, fold=train_config.fold,
                                             folds=train_config.folds)
        _check_before_planning(ckpt, info=info, finetune_config=finetune_config, num_train=len(train_cases))

        def new_plan() -> Plan:
            fingerprint = compute_fingerprint(info, workers=proc.workers, progress=progress)
            plan = plan_for_target(checkpoint=ckpt, fingerprint=fingerprint, info=info, plan_overrides=plan_overrides,
                                   channel_map=finetune_config.channel_map, device=proc.runtime.device,
                                   checkpoint_path=ckpt_path)
            selection = _selection(finetune_config, train_cases, fingerprint, seed=selection_seed)
            return plan.replace(transfer={**(plan.transfer or {}), "case_selection": selection})

        plan, cache = plan_and_cache(proc, info=info, make_plan=new_plan, progress=progress,
                                     cases=lambda plan: [*_selected_cases(plan, train_cases), *val_cases])
        selected = _selected_cases(plan, train_cases)
        logger.info("%d training and %d validation cases (validation: %s)", len(selected), len(val_cases),
                    ", ".join(val_cases))

        model = planned_model(plan, seed=train_config.seed)
        target_outputs = output_names(labels=plan.labels, regions=plan.regions, region_based=plan.region_based)
        report = transfer_weights(model, ckpt["state_dict"], source_channels=list(ckpt["channels"]),
                                  target_channels=list(plan.channels),
                                  channel_map=dict(finetune_config.channel_map) or None,
                                  source_labels=source_outputs(ckpt), target_labels=target_outputs,
                                  slice_context=plan.slice_context)
        freeze_report = apply_freeze(model, spec)
        settings = resolved_optimizer_settings(name=train_config.optimizer, lr=train_config.lr,
                                               schedule=train_config.schedule, weight_decay=train_config.weight_decay)
        groups = param_groups(model, lr=settings["lr"], encoder_lr_scale=finetune_config.encoder_lr_scale)
        record = _record(ckpt=ckpt, ckpt_path=ckpt_path, plan=plan, info=info, finetune_config=finetune_config,
                         report=report, freeze_report=freeze_report, stages=stage_table(model, spec))
        if proc.ctx.is_main:
            logger.info("%s", format_transfer_table(record))
        control = _FreezeControl(spec=spec, unfreeze_after=finetune_config.unfreeze_after, lr=settings["lr"],
                                 encoder_lr_scale=finetune_config.encoder_lr_scale, record=record,
                                 record_path=proc.run_dir / TRANSFER_FILE if proc.ctx.is_main else None)
        return train(proc, model=model, plan=plan, cache=cache, info=info, dataset_dir=dataset_dir,
                     train_cases=selected, val_cases=val_cases,
                     extra={"pretrained_from": str(ckpt_path.resolve()), "transfer": record},
                     param_groups=groups, epoch_hooks=[control.write_record, control.release],
                     train_mode_hook=control.train_mode, progress=progress)


def _check_before_planning(ckpt: Mapping[str, Any], *, info: Any, finetune_config: FinetuneConfig,
                           num_train: int) -> None:
    """Usage errors that need the checkpoint and the dataset, raised before the (slow) fingerprint.

    Raises:
        ConfigError: ``firstK`` beyond the model's encoder stages, a channel map naming a channel
            that neither side has, more ``train_cases`` than training cases.
    """
    frozen_stages(build_model(ckpt["model"]["name"], **ckpt["model"]["config"]), finetune_config.freeze_spec)
    targets = {channel_key(c) for c in info.channels}
    sources = {channel_key(c) for c in ckpt["channels"]}
    for target, source in finetune_config.channel_map:
        if channel_key(target) not in targets:
            raise ConfigError(f"--channel-map names '{target}'{did_you_mean(target, info.channels)}, which is not a "
                              f"channel of dataset {info.name} ({', '.join(info.channels)})")
        if channel_key(source) not in sources:
            raise ConfigError(f"--channel-map maps '{target}' to '{source}'{did_you_mean(source, ckpt['channels'])}, "
                              f"which is not a channel of the checkpoint ({', '.join(ckpt['channels'])})")
    if finetune_config.train_cases is not None and finetune_config.train_cases > num_train:
        raise ConfigError(f"--train-cases {finetune_config.train_cases}: dataset {info.name} has {num_train} training "
                          "cases after the validation split")


def _selection(config: FinetuneConfig, train_cases: Sequence[str], fingerprint: Mapping[str, Any], *,
               seed: int) -> dict[str, Any] | None:
    """The case-selection record stored in ``plan.transfer`` (None: every training case)."""
    if config.train_cases is None:
        return None
    volumes = lesion_volumes_from_fingerprint(fingerprint) if config.select == "lesion-balanced" else None
    selected = select_cases(train_cases, volumes, config.train_cases, method=config.select, seed=seed)
    logger.info("selected %d of %d training cases (%s): %s", len(selected), len(train_cases), config.select,
                ", ".join(selected))
    return {"method": config.select, "n": config.train_cases, "seed": seed, "candidates": len(train_cases),
            "selected": selected,
            "lesion_volume_mm3": {c: round(volumes[c], 3) for c in selected} if volumes is not None else None}


def _selected_cases(plan: Plan, train_cases: Sequence[str]) -> list[str]:
    selection = (plan.transfer or {}).get("case_selection")
    if not selection:
        return list(train_cases)
    chosen = [str(c) for c in selection["selected"]]
    stray = [c for c in chosen if c not in train_cases]
    if stray:
        raise ConfigError(f"the run's plan selected training case '{stray[0]}', which is not a training case of "
                          "this split (were the validation options changed?)")
    return chosen


def _record(*, ckpt: Mapping[str, Any], ckpt_path: Path, plan: Plan, info: Any,
            finetune_config: FinetuneConfig, report: Any, freeze_report: Any,
            stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The transfer record (``transfer.json`` and ``training["transfer"]`` of every checkpoint)."""
    source_plan = Plan.from_dict(ckpt.get("plan"), what=f"checkpoint {ckpt_path}", required=PREDICTION_KEYS)
    channel_map_keys = {channel_key(t) for t, _ in finetune_config.channel_map}
    mapping = dict(report.channels.mapping)
    how = {t: ("channel_map" if channel_key(t) in channel_map_keys else "name" if s is not None else "mean")
           for t, s in mapping.items()}
    transfer = dict(plan.transfer or {})
    return {
        "checkpoint": str(ckpt_path.resolve()),
        "source": {
            "dataset": source_plan.dataset or None,
            "model": ckpt["model"]["name"],
            "spatial_dims": spatial_dims(ckpt),
            "channels": list(ckpt["channels"]),
            "outputs": source_outputs(ckpt),
            "region_based": source_plan.region_based,
            "fingerprint": (ckpt.get("training") or {}).get("dataset_fingerprint"),
            "epoch": (ckpt.get("training") or {}).get("epoch"),
            "tool_version": ckpt.get("tool_version"),
        },
        "target": {
            "dataset": info.name,
            "channels": list(plan.channels),
            "outputs": output_names(labels=plan.labels, regions=plan.regions, region_based=plan.region_based),
            "region_based": plan.region_based,
        },
        "finetune_config": finetune_config.to_dict(),
        "freeze": {
            "preset": str(freeze_report.spec),
            "frozen_stages": list(freeze_report.frozen_stages),
            "frozen_norm_layers": int(freeze_report.frozen_norm_layers),
            "unfreeze_after": finetune_config.unfreeze_after,
            "encoder_lr_scale": float(finetune_config.encoder_lr_scale),
        },
        "parameters": {"trainable": int(freeze_report.trainable_parameters),
                       "frozen": int(freeze_report.frozen_parameters)},
        "stages": [dict(row) for row in stages],
        "channels": {"mapping": mapping, "how": how, "scale": float(report.channels.scale),
                     "layers": list(report.channels.layers)},
        "labels": {"kept": dict(report.head.kept), "reinitialised": list(report.head.reinitialised),
                   "layers": list(report.head.layers)},
        "weights": {"loaded": int(report.loaded), "ignored": list(report.ignored),
                    "initialised": list(report.initialised)},
        "plan": {"inherited": transfer.get("inherited"), "replanned": transfer.get("replanned"),
                 "given": transfer.get("given")},
        "case_selection": transfer.get("case_selection"),
    }


__all__ = ["ARCHITECTURE_OPTIONS", "FinetuneConfig", "TRANSFER_FILE", "finetune", "format_transfer_table",
           "output_names", "parse_channel_map", "plan_for_target", "source_outputs"]
