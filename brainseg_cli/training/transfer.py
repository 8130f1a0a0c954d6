"""Transfer learning at the model level: adapting input channels and output heads to a new dataset.

(Freezing stages is :mod:`brainseg_cli.training.freeze`.)

Input-channel adaptation (:func:`adapt_input_channels`). Channels are matched by canonical name
(docs/DEFINITIONS.md §1-2: aliases such as ``t1ce`` = ``T1c`` and case are ignored; names that are no known
channel match case-insensitively); ``channel_map`` ``{"TARGET": "SOURCE"}`` overrides the matching. For every input layer (a layer
whose weight has the input channels on dim 1; UNETR has several) with pretrained weight ``W``
(``(out, n_src, *kernel)``), the new weight ``W'`` (``(out, n_tgt, *kernel)``) is::

    W'[:, j] = s * W[:, src(j)]            if target channel j matches source channel src(j)
    W'[:, j] = s * mean_c W[:, c]          otherwise
    s = n_src / n_tgt

The first layer sums one term per channel; with z-scored, similarly scaled and positively
correlated MRI channels each term has about the same size, so the sum (hence the activation the
rest of the network was trained on) grows with the number of channels. Scaling by
``n_src / n_tgt`` keeps its expected size (``timm``'s ``adapt_input_conv`` uses the same factor),
which matters where no normalisation follows the first layer (UNETR's patch embedding feeds the
residual stream, RatLesNet's stem feeds a residual path) and for BatchNorm running statistics.
With as many target as source channels (e.g. a reordering) ``s = 1`` and matched filters are
copied unchanged. Biases are kept. A 2.5-D network (``slice_context`` ``k > 0``) takes each channel
at ``2k + 1`` neighbouring slices (channel-major): the rule applies to each channel's block of
``2k + 1`` filter columns (the mean is taken per slice offset), with ``s`` counting channels.

Output-head adaptation (:func:`adapt_output_head`): for the main head and every deep-supervision
head, the rows (weight and bias) of label names present in both label maps are copied from the
checkpoint; the other rows keep the target model's fresh initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from brainseg_cli.data.channels import find_canonical_channel
from brainseg_cli.errors import CheckpointError, ConfigError, did_you_mean
from brainseg_cli.models.base import SegmentationModel

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ChannelReport:
    """What :func:`adapt_input_channels` did."""

    mapping: dict[str, str | None]
    """Target channel -> source channel whose filters it got, or None (mean of the source filters)."""
    scale: float
    """Factor applied to every adapted filter (``n_source / n_target``)."""
    layers: tuple[str, ...]
    """State-dict keys of the adapted weights."""


@dataclass(frozen=True)
class HeadReport:
    """What :func:`adapt_output_head` did."""

    kept: dict[str, str]
    """Target label -> source label whose output rows were copied."""
    reinitialised: tuple[str, ...]
    """Target labels whose rows keep the model's fresh initialisation."""
    layers: tuple[str, ...]
    """State-dict keys of the adapted output weights and biases."""


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_weights` did."""

    loaded: int
    """State-dict entries loaded from the checkpoint (adapted ones included)."""
    channels: ChannelReport | None
    """Input-channel adaptation, when asked for."""
    head: HeadReport | None
    """Output-head adaptation, when asked for."""
    ignored: tuple[str, ...]
    """Checkpoint deep-supervision head entries the model has no place for."""
    initialised: tuple[str, ...]
    """Model deep-supervision head entries the checkpoint lacks (kept freshly initialised)."""


# ---------------------------------------------------------------------------------------- adaptation
def _layer_names(model: SegmentationModel, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] for layer in layers]


def channel_key(name: str) -> str:
    """Matching key of a channel name: its canonical name (aliases allowed), else the lower-cased name."""
    return find_canonical_channel(str(name)) or str(name).strip().lower()


def _index_by_name(names: Sequence[str], what: str) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        key = channel_key(name)
        if key in index:
            raise ConfigError(f"{what} list {list(names)} names '{name}' twice")
        index[key] = i
    return index


def adapt_input_channels(
    state_dict: Mapping[str, torch.Tensor],
    model: SegmentationModel,
    *,
    source_channels: Sequence[str],
    target_channels: Sequence[str],
    channel_map: Mapping[str, str] | None = None,
    slice_context: int = 0,
) -> tuple[dict[str, torch.Tensor], ChannelReport]:
    """Adapt the input layers of a checkpoint's state dict to another set of input channels.

    Args:
        state_dict: the pretrained weights (not modified).
        model: the target model (its ``in_channels`` is ``len(target_channels) * (2 * slice_context + 1)``).
        source_channels: the checkpoint's channel names, in its input order.
        target_channels: the new data's channel names, in input order.
        channel_map: ``{"TARGET": "SOURCE"}`` pairs overriding name matching (case-insensitive).
        slice_context: the 2.5-D slice context of both networks (each channel is ``2k + 1`` inputs).

    Returns:
        ``(new_state_dict, report)``: a shallow copy with every input layer's weight replaced by
        ``(out, n_target * (2k + 1), *kernel)`` filters built by the rule in the module docstring.

    Raises:
        ConfigError: duplicate channel names, a ``channel_map`` name that is not a target / source
            channel, or ``len(target_channels) * (2k + 1) != model.in_channels``.
        CheckpointError: an input layer is missing from the checkpoint or its shape does not fit.
    """
    group = 2 * int(slice_context) + 1
    if len(target_channels) * group != model.in_channels:
        raise ConfigError(
            f"target channels {list(target_channels)} are {len(target_channels)}"
            f"{f' x {group} slices' if group > 1 else ''} but model '{model.name}' has {model.in_channels} input channels"
        )
    source_index = _index_by_name(source_channels, "source channel")
    target_index = _index_by_name(target_channels, "target channel")
    overrides: dict[int, int] = {}
    for target, source in (channel_map or {}).items():
        if channel_key(target) not in target_index:
            raise ConfigError(
                f"channel_map names target channel '{target}'{did_you_mean(str(target), target_channels)}, "
                f"which is not among the target channels {', '.join(target_channels)}"
            )
        if channel_key(source) not in source_index:
            raise ConfigError(
                f"channel_map maps '{target}' to source channel '{source}'{did_you_mean(str(source), source_channels)}, "
                f"which is not among the checkpoint channels {', '.join(source_channels)}"
            )
        overrides[target_index[channel_key(target)]] = source_index[channel_key(source)]
    sources: list[int | None] = []
    for j, target in enumerate(target_channels):
        sources.append(overrides.get(j, source_index.get(channel_key(target))))
    n_src, n_tgt = len(source_channels), len(target_channels)
    scale = n_src / n_tgt
    current = model.state_dict()
    out = dict(state_dict)
    keys = []
    for layer in _layer_names(model, model.input_layers()):
        key = f"{layer}.weight"
        if key not in state_dict:
            raise CheckpointError(f"checkpoint lacks the input layer '{key}' of model '{model.name}'")
        weight = state_dict[key]
        expected = tuple(current[key].shape)
        if (weight.dim() != len(expected) or weight.shape[1] != n_src * group or tuple(weight.shape[2:]) != expected[2:]
                or weight.shape[0] != expected[0]):
            raise CheckpointError(
                f"checkpoint input layer '{key}' has shape {tuple(weight.shape)}; expected "
                f"({expected[0]}, {n_src} source channels{f' x {group} slices' if group > 1 else ''}, "
                f"{', '.join(str(v) for v in expected[2:])})"
            )
        blocks = weight.reshape(weight.shape[0], n_src, group, *weight.shape[2:])  # (out, channel, offset, *kernel)
        mean = blocks.mean(dim=1)
        columns = [blocks[:, s] if s is not None else mean for s in sources]
        out[key] = (torch.stack(columns, dim=1) * scale).reshape(expected).to(weight.dtype)
        keys.append(key)
    mapping = {str(t): (str(source_channels[s]) if s is not None else None) for t, s in zip(target_channels, sources, strict=True)}
    logger.info("input channels %s -> %s (scale %.3g)", list(source_channels), mapping, scale)
    return out, ChannelReport(mapping, scale, tuple(keys))


def adapt_output_head(
    state_dict: Mapping[str, torch.Tensor],
    model: SegmentationModel,
    *,
    source_labels: Mapping[str, int],
    target_labels: Mapping[str, int],
) -> tuple[dict[str, torch.Tensor], HeadReport]:
    """Adapt the output heads of a checkpoint's state dict to another label set.

    Args:
        state_dict: the pretrained weights (not modified).
        model: the target model; its current head weights provide the fresh rows.
        source_labels: checkpoint label name -> output row (e.g. ``{"background": 0, "edema": 1, ...}``;
            for region outputs, region name -> channel).
        target_labels: the same for the new task; rows ``0 .. model.num_classes - 1``.

    Returns:
        ``(new_state_dict, report)``: a shallow copy with each output layer's weight
        ``(num_classes, in, *1)`` and bias ``(num_classes,)`` rebuilt: rows of label names present in
        both maps (case-insensitive) come from the checkpoint, the others from ``model``. A
        deep-supervision head the checkpoint lacks is left out (it keeps its initialisation).

    Raises:
        ConfigError: a target row outside ``0 .. num_classes - 1`` or duplicate label names.
        CheckpointError: the main head is missing or a source row is outside the checkpoint's head.
    """
    for label, row in target_labels.items():
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < model.num_classes:
            raise ConfigError(
                f"target label '{label}' has output row {row!r} but model '{model.name}' has {model.num_classes} outputs"
            )
    source_lower = {str(name).lower(): (str(name), row) for name, row in source_labels.items()}
    if len(source_lower) != len(source_labels):
        raise ConfigError(f"source labels {dict(source_labels)} repeat a name (case-insensitively)")
    kept: dict[str, str] = {}
    pairs: list[tuple[int, int]] = []
    reinitialised: list[str] = []
    for name, row in target_labels.items():
        match = source_lower.get(str(name).lower())
        if match is None:
            reinitialised.append(str(name))
        else:
            kept[str(name)] = match[0]
            pairs.append((row, match[1]))
    current = model.state_dict()
    out = dict(state_dict)
    keys: list[str] = []
    for i, layer in enumerate(_layer_names(model, model.output_layers())):
        wkey, bkey = f"{layer}.weight", f"{layer}.bias"
        if wkey not in state_dict:
            if i == 0:
                raise CheckpointError(f"checkpoint lacks the output layer '{wkey}' of model '{model.name}'")
            continue
        src_w = state_dict[wkey]
        new_w = current[wkey].detach().clone().to(device=src_w.device, dtype=src_w.dtype)
        if tuple(src_w.shape[1:]) != tuple(new_w.shape[1:]):
            raise CheckpointError(
                f"checkpoint output layer '{wkey}' has shape {tuple(src_w.shape)}, which does not fit {tuple(new_w.shape)} "
                "apart from the number of outputs"
            )
        for target_row, source_row in pairs:
            if not 0 <= source_row < src_w.shape[0]:
                raise CheckpointError(
                    f"source label row {source_row} is outside the checkpoint's {src_w.shape[0]} outputs ('{wkey}')"
                )
            new_w[target_row] = src_w[source_row]
        out[wkey] = new_w
        keys.append(wkey)
        if bkey in current and bkey in state_dict:
            src_b = state_dict[bkey]
            new_b = current[bkey].detach().clone().to(device=src_b.device, dtype=src_b.dtype)
            for target_row, source_row in pairs:
                new_b[target_row] = src_b[source_row]
            out[bkey] = new_b
            keys.append(bkey)
    logger.info("output labels kept %s, re-initialised %s", kept, reinitialised)
    return out, HeadReport(kept, tuple(reinitialised), tuple(keys))


def transfer_weights(
    model: SegmentationModel,
    checkpoint_state_dict: Mapping[str, torch.Tensor],
    *,
    source_channels: Sequence[str] | None = None,
    target_channels: Sequence[str] | None = None,
    channel_map: Mapping[str, str] | None = None,
    source_labels: Mapping[str, int] | None = None,
    target_labels: Mapping[str, int] | None = None,
    slice_context: int = 0,
) -> TransferReport:
    """Load pretrained weights into ``model`` by name, adapting input channels and heads on request.

    Input layers are adapted (:func:`adapt_input_channels`) when both channel lists are given,
    output heads (:func:`adapt_output_head`) when both label maps are given; every other entry is
    copied by name and must have the model's shape. Deep-supervision heads may differ: checkpoint
    ones the model lacks are ignored, model ones the checkpoint lacks keep their initialisation.

    Args:
        model: the target model (modified in place).
        checkpoint_state_dict: the pretrained state dict (not modified).
        source_channels, target_channels, channel_map: see :func:`adapt_input_channels`.
        source_labels, target_labels: see :func:`adapt_output_head`.
        slice_context: the 2.5-D slice context of both networks (see :func:`adapt_input_channels`).

    Returns:
        A :class:`TransferReport`.

    Raises:
        ConfigError: only one of a pair of arguments given, or invalid names (see above).
        CheckpointError: a missing or extra entry outside the deep-supervision heads, or a shape
            mismatch (names the parameter and both shapes).
    """
    if (source_channels is None) != (target_channels is None):
        raise ConfigError("channel adaptation needs both source_channels and target_channels")
    if channel_map and source_channels is None:
        raise ConfigError("channel_map needs source_channels and target_channels")
    if (source_labels is None) != (target_labels is None):
        raise ConfigError("head adaptation needs both source_labels and target_labels")
    state = dict(checkpoint_state_dict)
    channel_report = head_report = None
    if source_channels is not None and target_channels is not None:
        state, channel_report = adapt_input_channels(
            state, model, source_channels=source_channels, target_channels=target_channels, channel_map=channel_map,
            slice_context=slice_context,
        )
    if source_labels is not None and target_labels is not None:
        state, head_report = adapt_output_head(state, model, source_labels=source_labels, target_labels=target_labels)
    current = model.state_dict()
    input_keys = {f"{n}.weight" for n in _layer_names(model, model.input_layers())}
    output_keys = {f"{n}.{p}" for n in _layer_names(model, model.output_layers()) for p in ("weight", "bias")}
    ignored = tuple(k for k in state if k not in current and k.startswith("ds_heads."))
    extra = [k for k in state if k not in current and not k.startswith("ds_heads.")]
    if extra:
        raise CheckpointError(
            f"checkpoint holds '{extra[0]}' (and {len(extra) - 1} more) that model '{model.name}' lacks: "
            "a different architecture or configuration"
        )
    initialised = tuple(k for k in current if k not in state and k.startswith("ds_heads."))
    missing = [k for k in current if k not in state and not k.startswith("ds_heads.")]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks '{missing[0]}' (and {len(missing) - 1} more) of model '{model.name}': "
            "a different architecture or configuration"
        )
    final: dict[str, torch.Tensor] = {}
    for key, value in current.items():
        if key not in state:
            final[key] = value
            continue
        loaded = state[key]
        if tuple(loaded.shape) != tuple(value.shape):
            hint = ""
            if key in input_keys:
                hint = " (an input layer: give the checkpoint's and the data's channels to adapt it)"
            elif key in output_keys:
                hint = " (an output layer: give the checkpoint's and the data's labels to adapt it)"
            raise CheckpointError(
                f"checkpoint parameter '{key}' has shape {tuple(loaded.shape)} but model '{model.name}' needs "
                f"{tuple(value.shape)}{hint}"
            )
        final[key] = loaded
    model.load_state_dict(final, strict=True)
    loaded_count = sum(1 for k in current if k in state)
    logger.info("transferred %d entries (%d ignored, %d initialised)", loaded_count, len(ignored), len(initialised))
    return TransferReport(loaded_count, channel_report, head_report, ignored, initialised)
