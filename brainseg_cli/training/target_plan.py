"""How ``finetune`` plans a target dataset for a pretrained checkpoint (:func:`plan_for_target`).

The *architecture* (model name and its whole config: depth, widths, kernels, strides, deep
supervision), the 2-D/3-D *configuration*, a 2-D network's *slice context* and the *normalisation
scheme* are inherited from the checkpoint; the orientation, target spacing, slice axis, patch and
batch size are re-planned from the target's fingerprint by the normal planner
(:func:`brainseg_cli.data.plan.make_plan`) with that architecture fixed, so patches stay multiples
of the network's size divisor. ``plan.decisions`` says "inherited" or "re-planned" for each, and
``plan.transfer`` lists both sets. Region-based (sigmoid) outputs are inherited when the
checkpoint has them and the target dataset defines regions. Options that would change the
architecture are refused (:data:`ARCHITECTURE_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainseg_cli.data.plan import PlanOverrides, make_plan
from brainseg_cli.data.plan_schema import PREDICTION_KEYS, Normalization, Plan
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.training.transfer import channel_key

logger = logging.getLogger(__name__)

#: Plan options that would change what the checkpoint fixes; ``finetune`` refuses them.
ARCHITECTURE_OPTIONS: tuple[str, ...] = ("config", "model", "model_config", "deep_supervision", "normalization")

#: Keys of a model config that ``build_model`` takes as separate arguments.
_MODEL_ARGS: tuple[str, ...] = ("spatial_dims", "in_channels", "num_classes")


def _model_kwargs(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``build_model`` keyword arguments (its model config without dims/channels/classes)."""
    return {k: v for k, v in dict(checkpoint["model"]["config"]).items() if k not in _MODEL_ARGS}


def spatial_dims(checkpoint: Mapping[str, Any]) -> int:
    """2 or 3: the checkpoint's network dimensionality (from its model config, else its plan)."""
    config = checkpoint["model"]["config"]
    dims = config.get("spatial_dims") or (checkpoint.get("plan") or {}).get("model", {}).get("spatial_dims")
    if dims not in (2, 3):
        plan_config = (checkpoint.get("plan") or {}).get("config")
        if plan_config in ("2d", "3d"):
            return 2 if plan_config == "2d" else 3
        raise InputError(f"checkpoint model '{checkpoint['model']['name']}' does not say whether it is 2-D or 3-D")
    return int(dims)


def output_names(*, labels: Mapping[str, int], regions: Mapping[str, Sequence[int]] | None,
                 region_based: bool) -> dict[str, int]:
    """Output name -> output row: the labels (softmax) or the regions in order (sigmoid)."""
    if region_based:
        return {str(name): i for i, name in enumerate(regions or {})}
    return {str(k): int(v) for k, v in labels.items()}


def source_outputs(checkpoint: Mapping[str, Any]) -> dict[str, int]:
    """The checkpoint's output name -> row map (labels, or regions for a region-based model)."""
    return output_names(labels=checkpoint["labels"], regions=checkpoint.get("regions"),
                        region_based=_source_plan(checkpoint).region_based)


def _source_plan(checkpoint: Mapping[str, Any]) -> Plan:
    return Plan.from_dict(checkpoint.get("plan"), what="the pretrained checkpoint", required=PREDICTION_KEYS)


def _inherited_normalization(source_plan: Plan, target_channels: Sequence[str],
                             channel_map: Sequence[tuple[str, str]]) -> tuple[Normalization, ...]:
    """Normalisation entries for the target channels: the scheme of the matched checkpoint channel
    (by ``channel_map``, else by canonical name), else that of the checkpoint's first channel."""
    entries = list(source_plan.normalization) or [Normalization(channel=None)]
    by_key = {channel_key(e.channel): e for e in entries if e.channel is not None}
    overrides = {channel_key(t): channel_key(s) for t, s in channel_map}
    out = []
    for channel in target_channels:
        key = channel_key(channel)
        out.append(dataclasses.replace(by_key.get(overrides.get(key, key), entries[0]), channel=channel))
    return tuple(out)


def plan_for_target(
    *,
    checkpoint: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    info: Any,
    plan_overrides: Mapping[str, Any] | None = None,
    channel_map: Sequence[tuple[str, str]] = (),
    device: str = "cpu",
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> Plan:
    """Plan a target dataset for a pretrained checkpoint (rules in the module docstring).

    Args:
        checkpoint: a checkpoint dict (:func:`brainseg_cli.checkpoint.load_checkpoint`).
        fingerprint: the target's fingerprint (:func:`brainseg_cli.data.fingerprint.compute_fingerprint`).
        info: the target's :class:`~brainseg_cli.data.layout.DatasetInfo`.
        plan_overrides: :class:`~brainseg_cli.data.plan.PlanOverrides` fields for the re-planned
            values (``patch_size``, ``batch_size``, ``target_spacing``, ``regions``, ...).
        channel_map: ``(target, source)`` pairs (only used to pick each channel's inherited normalisation).
        device: ``cpu`` / ``cuda`` / ``cuda:N`` (the planner's budget).
        checkpoint_path: recorded in ``plan.transfer``.

    Returns:
        The plan (as :func:`~brainseg_cli.data.plan.make_plan`'s) with ``decisions`` marking
        inherited and re-planned values and a ``transfer`` section
        ``{"checkpoint", "source_dataset", "source_fingerprint", "inherited": {...}, "replanned": [...]}``.

    Raises:
        ConfigError: an architecture option in ``plan_overrides`` (names it), or another invalid override.
    """
    overrides = {k: v for k, v in dict(plan_overrides or {}).items() if v is not None}
    refused = [k for k in overrides if k in ARCHITECTURE_OPTIONS]
    if refused:
        raise ConfigError(
            f"fine-tuning keeps the checkpoint's architecture, configuration and normalisation: option "
            f"'{refused[0]}' cannot be set (it comes from the checkpoint)"
        )
    source_plan = _source_plan(checkpoint)
    context = source_plan.slice_context
    if overrides.get("slice_context", context) != context:
        raise ConfigError(f"fine-tuning keeps the checkpoint's 2.5-D slice context ({context}): slice_context "
                          f"{overrides['slice_context']!r} cannot be set")
    overrides["slice_context"] = context
    name = checkpoint["model"]["name"]
    dims = spatial_dims(checkpoint)
    config = "2d" if dims == 2 else "3d"
    kwargs = _model_kwargs(checkpoint)
    inherited_regions = False
    if "regions" not in overrides and source_plan.region_based:
        if info.regions:
            overrides["regions"] = "dataset"
            inherited_regions = True
        else:
            logger.warning("the checkpoint has region (sigmoid) outputs but dataset %s defines no regions: training "
                           "softmax labels, the output head starts afresh", info.name)
    elif "regions" not in overrides:
        overrides["regions"] = "none"  # a softmax checkpoint keeps softmax outputs unless --regions says otherwise
        inherited_regions = True
    for key in ("patch_size", "target_spacing"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key])
    try:
        plan_options = PlanOverrides(config=config, model=name, model_config=kwargs, **overrides)
    except TypeError as exc:
        raise ConfigError(f"invalid plan options for fine-tuning: {exc}") from None
    plan = make_plan(fingerprint=fingerprint, info=info, overrides=plan_options, device=device)

    source_desc = f"checkpoint {Path(checkpoint_path).name if checkpoint_path else '(in memory)'}"
    normalization = _inherited_normalization(source_plan, plan.channels, channel_map)
    decisions = dict(plan.decisions or {})
    for key in ("orientation", "target_spacing", "slice_axis", "patch_size", "batch_size", "budget"):
        if key in decisions and not str(decisions[key]).startswith("given"):
            decisions[key] = f"re-planned for {info.name}: {decisions[key]}"
    decisions["config"] = f"inherited from the {source_desc} ({config})"
    if context:
        decisions["slice_context"] = f"inherited from the {source_desc} ({context})"
    else:
        decisions.pop("slice_context", None)
    decisions["model"] = f"inherited from the {source_desc}: {name} with its configuration"
    schemes = sorted({e.scheme for e in normalization})
    decisions["normalization"] = f"inherited from the {source_desc}: {', '.join(schemes)}"
    if inherited_regions:
        decisions["regions"] = (f"inherited from the {source_desc}: region-based outputs over {info.name}'s regions"
                                if plan.region_based else f"inherited from the {source_desc}: softmax over the labels")
    replanned = ["orientation", "target_spacing", "patch_size", "batch_size"] + (["slice_axis"] if dims == 2 else [])
    inherited: dict[str, Any] = {"config": config, "model": {"name": name, "config": kwargs},
                                 "normalization": schemes}
    if context:
        inherited["slice_context"] = context
    if inherited_regions:
        inherited["region_based"] = plan.region_based
    transfer = {
        "checkpoint": str(Path(checkpoint_path).resolve()) if checkpoint_path else None,
        "source_dataset": source_plan.dataset or None,
        "source_fingerprint": (checkpoint.get("training") or {}).get("dataset_fingerprint"),
        "inherited": inherited,
        "replanned": replanned,
        "given": sorted(k for k in overrides if not (k == "regions" and inherited_regions) and k != "slice_context"),
    }
    return plan.replace(model=dataclasses.replace(plan.model, config=dict(kwargs)), normalization=normalization,
                        decisions=decisions, transfer=transfer)


