"""The plan as a typed, frozen value: :class:`Plan` and its parts.

A plan is made by :func:`brainseg_cli.data.plan.make_plan`, saved as ``plan.json`` and stored in
every checkpoint (and an export's metadata) as plain JSON data. :meth:`Plan.from_dict` reads that
data once, checks every key that training and prediction compute with (one line naming the file, the
key and its value), and fills what older files lack (``slice_context`` 0, sampling, loss and
resampling defaults, no source labels); :meth:`Plan.to_dict` writes the JSON data back in the key
order of ``plan.json``. Code reads plans through the attributes, never by string keys.

Keys (``plan.json``, docs/ARCHITECTURE.md "Planning and preprocessing"): ``format_version``,
``dataset``, ``config`` (``2d``/``3d``), ``channels``, ``labels``, ``num_classes``, ``regions``,
``region_based``, ``source_labels``, ``orientation``, ``target_spacing`` (mm, 3 values),
``slice_axis`` (2-D), ``slice_context`` (2.5-D neighbours per side), ``patch_size``, ``batch_size``,
``normalization`` (one entry per channel), ``crop_to_brain``, ``background``, ``resampling``,
``sampling``, ``loss``, ``model``, and the records ``budget``, ``fingerprint``, ``decisions`` and
(fine-tuning) ``transfer``, which are kept as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainseg_cli import choices
from brainseg_cli.errors import InputError, did_you_mean

#: The plan format this version writes and reads.
PLAN_VERSION = 1
#: Plan configurations.
CONFIGS: tuple[str, ...] = choices.CONFIGS
#: Default share of foreground-centred patches (nnU-Net: one third).
DEFAULT_FOREGROUND_FRACTION = 1.0 / 3.0
#: Keys every plan file must hold.
REQUIRED_KEYS: tuple[str, ...] = ("format_version", "config", "channels", "labels", "orientation", "target_spacing",
                                  "slice_axis", "patch_size", "batch_size", "normalization", "crop_to_brain", "model",
                                  "sampling", "region_based", "regions")
#: Keys a checkpoint's (or an export's) plan must hold for prediction (older checkpoints lack ``sampling``).
PREDICTION_KEYS: tuple[str, ...] = tuple(k for k in REQUIRED_KEYS if k != "sampling")
#: Plan keys that change the preprocessed data (the cache is keyed on them).
PREPROCESSING_KEYS: tuple[str, ...] = ("config", "channels", "orientation", "target_spacing", "slice_axis",
                                       "normalization", "crop_to_brain", "background", "resampling")


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_positive_number(value: Any) -> bool:
    """A finite number > 0 (not a bool)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class Normalization:
    """How one channel is normalised (:mod:`brainseg_cli.data.preprocessing`)."""

    channel: str | None
    scheme: str = "zscore"
    lower_pct: float = 10.0
    upper_pct: float = 99.0

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "scheme": self.scheme, "lower_pct": self.lower_pct, "upper_pct": self.upper_pct}


@dataclass(frozen=True)
class Resampling:
    """Interpolation orders and the anisotropy threshold of resampling."""

    image_order: int = 3
    label_order: int = 0
    probability_order: int = 1
    anisotropy_threshold: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Sampling:
    """How training patches are drawn (:mod:`brainseg_cli.data.datasets`)."""

    foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION
    slice_weighting: str = "uniform"
    drop_edge_slices: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LossSpec:
    """Loss options the plan fixes.

    Attributes:
        batch_dice: Dice over the whole batch (one per channel) instead of per sample.
        region_weights: region-based plans: weight of each region's loss terms (Dice and binary
            cross-entropy), ``{region name: weight >= 0}``; regions left out weigh 1; ``None`` or empty
            = all equal. The loss divides by the weights' sum, so its scale does not change.
    """

    batch_dice: bool = False
    region_weights: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON data; ``region_weights`` only when set (plans without it read as before)."""
        data: dict[str, Any] = {"batch_dice": self.batch_dice}
        if self.region_weights:
            data["region_weights"] = dict(self.region_weights)
        return data


@dataclass(frozen=True)
class ModelSpec:
    """The planned network: a registered architecture and its keyword arguments."""

    name: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "config": json_data(self.config)}


@dataclass(frozen=True)
class Plan:
    """A training plan (module docstring). Build it with :meth:`from_dict` or ``make_plan``."""

    config: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    orientation: str
    target_spacing: tuple[float, float, float]
    slice_axis: int | None
    patch_size: tuple[int, ...]
    batch_size: int
    normalization: tuple[Normalization, ...]
    model: ModelSpec
    format_version: int = PLAN_VERSION
    dataset: str = ""
    num_classes: int | None = None
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    region_based: bool = False
    source_labels: dict[str, Any] = field(default_factory=dict)
    """``{canonical value: source value}`` (checked where it is used: ``predict --labels source``)."""
    slice_context: int = 0
    crop_to_brain: bool = True
    background: str = "border"
    resampling: Resampling = Resampling()
    sampling: Sampling = Sampling()
    loss: LossSpec = LossSpec()
    budget: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None
    decisions: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept so that a plan round-trips unchanged."""

    # ------------------------------------------------------------------------------- derived
    @property
    def spatial_dims(self) -> int:
        """2 for a 2-D plan, 3 for a 3-D plan."""
        return 2 if self.config == "2d" else 3

    @property
    def two_d(self) -> bool:
        return self.config == "2d"

    @property
    def fingerprint_hash(self) -> str | None:
        """The dataset fingerprint's hash (None when the plan records no fingerprint)."""
        return (self.fingerprint or {}).get("hash")

    @property
    def region_lists(self) -> list[list[int]]:
        """The regions' label lists in output order."""
        return [list(v) for v in self.regions.values()]

    def replace(self, **changes: Any) -> Plan:
        """A copy with ``changes`` (field names to new values)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON data, keys in ``plan.json`` order (records only when present)."""
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "config": self.config,
            "channels": list(self.channels),
            "labels": dict(self.labels),
            "num_classes": self.num_classes if self.num_classes is not None else len(self.labels),
            "regions": {k: list(v) for k, v in self.regions.items()},
            "region_based": self.region_based,
            "source_labels": dict(self.source_labels),
            "orientation": self.orientation,
            "target_spacing": list(self.target_spacing),
            "slice_axis": self.slice_axis,
            "slice_context": self.slice_context,
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "normalization": [n.to_dict() for n in self.normalization],
            "crop_to_brain": self.crop_to_brain,
            "background": self.background,
            "resampling": self.resampling.to_dict(),
            "sampling": self.sampling.to_dict(),
            "loss": self.loss.to_dict(),
            "model": self.model.to_dict(),
        }
        for key in ("budget", "fingerprint", "decisions", "transfer"):
            if getattr(self, key) is not None:
                data[key] = json_data(getattr(self, key))
        data.update(json_data(self.extra))
        return data

    def preprocessing_key(self) -> dict[str, Any]:
        """The part of the plan the preprocessed data depend on (JSON data)."""
        data = self.to_dict()
        return {k: data[k] for k in PREPROCESSING_KEYS}

    @classmethod
    def from_dict(cls, data: Any, *, what: str = "plan", required: Sequence[str] = REQUIRED_KEYS) -> Plan:
        """Read and check plan data (``plan.json``, a checkpoint's ``plan``).

        Args:
            data: the JSON data.
            what: where it came from, named in error messages (a file, ``checkpoint X``).
            required: the keys it must hold (:data:`REQUIRED_KEYS`; a checkpoint's plan:
                :data:`PREDICTION_KEYS`).

        Raises:
            InputError: not a mapping, a missing key, an unsupported version or configuration, or a
                value training or prediction cannot compute with (one line naming ``what`` and the key).
        """
        if isinstance(data, Plan):
            return data
        if not isinstance(data, Mapping):
            raise InputError(f"{what}: a plan must be a JSON object, got {type(data).__name__}")
        missing = [k for k in required if k not in data]
        if missing:
            raise InputError(f"{what}: plan is missing key(s) {', '.join(missing)}")
        if data.get("format_version", PLAN_VERSION) != PLAN_VERSION:
            raise InputError(f"{what}: plan format_version {data['format_version']!r} is not supported "
                             f"(expected {PLAN_VERSION})")
        if data["config"] not in CONFIGS:
            raise InputError(f"{what}: plan config {data['config']!r} is not 2d or 3d")
        check_plan_values(data, what=what)

        def bad(key: str, expected: str) -> InputError:
            return InputError(f"{what}: plan key {key} must be {expected}, got {data.get(key)!r:.120}")

        model = data["model"]
        try:
            spec = ModelSpec(name=str(model["name"]), spatial_dims=int(model.get("spatial_dims", 2 if data["config"] == "2d"
                                                                                 else 3)),
                             in_channels=int(model.get("in_channels", len(data["channels"]))),
                             num_classes=int(model.get("num_classes", len(data["labels"]))),
                             config=dict(model["config"]))
        except (TypeError, ValueError):
            raise bad("model", "{'name': str, 'spatial_dims': int, 'in_channels': int, 'num_classes': int, "
                               "'config': {...}}") from None
        sampling = data.get("sampling") or {}
        resampling = data.get("resampling") or {}
        loss = data.get("loss") or {}
        for key, section in (("sampling", sampling), ("resampling", resampling), ("loss", loss)):
            if not isinstance(section, Mapping):
                raise bad(key, "a mapping")
        try:
            sampling_spec = Sampling(**{f.name: sampling[f.name] for f in dataclasses.fields(Sampling)
                                        if f.name in sampling})
            resampling_spec = Resampling(**{f.name: resampling[f.name] for f in dataclasses.fields(Resampling)
                                            if f.name in resampling})
            loss_spec = LossSpec(batch_dice=bool(loss.get("batch_dice", False)),
                                 region_weights=_region_weights(loss.get("region_weights"), data["regions"], what))
            normalization = tuple(Normalization(channel=n.get("channel"), scheme=str(n.get("scheme", "zscore")),
                                                lower_pct=float(n.get("lower_pct", 10.0)),
                                                upper_pct=float(n.get("upper_pct", 99.0)))
                                  for n in data["normalization"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what}: plan sampling, resampling or normalization is malformed ({exc})") from None
        source = data.get("source_labels") or {}  # checked where it is used (predict --labels source)
        for key in ("budget", "fingerprint", "decisions", "transfer"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise bad(key, "a mapping")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        slice_axis = data.get("slice_axis") if data["config"] == "2d" else None
        return cls(
            format_version=int(data.get("format_version", PLAN_VERSION)),
            dataset=str(data.get("dataset") or ""),
            config=str(data["config"]),
            channels=tuple(str(c) for c in data["channels"]),
            labels={str(k): int(v) for k, v in data["labels"].items()},
            num_classes=int(data["num_classes"]) if is_int(data.get("num_classes")) else None,
            regions={str(k): tuple(int(x) for x in v) for k, v in data["regions"].items()},
            region_based=bool(data["region_based"]),
            source_labels=dict(source) if isinstance(source, Mapping) else {},
            orientation=str(data["orientation"]),
            target_spacing=tuple(float(s) for s in data["target_spacing"]),  # type: ignore[arg-type]
            slice_axis=None if slice_axis is None else int(slice_axis),
            slice_context=int(data.get("slice_context", 0)),
            patch_size=tuple(int(p) for p in data["patch_size"]),
            batch_size=int(data["batch_size"]),
            normalization=normalization,
            crop_to_brain=bool(data["crop_to_brain"]),
            background=str(data.get("background", "border")),
            resampling=resampling_spec,
            sampling=sampling_spec,
            loss=loss_spec,
            model=spec,
            budget=None if data.get("budget") is None else dict(data["budget"]),
            fingerprint=None if data.get("fingerprint") is None else dict(data["fingerprint"]),
            decisions=None if data.get("decisions") is None else dict(data["decisions"]),
            transfer=None if data.get("transfer") is None else dict(data["transfer"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def as_plan(plan: Plan | Mapping[str, Any], *, what: str = "plan", required: Sequence[str] = PREDICTION_KEYS) -> Plan:
    """``plan`` as a :class:`Plan` (plan data is read with :meth:`Plan.from_dict`; ``sampling`` may be absent)."""
    return plan if isinstance(plan, Plan) else Plan.from_dict(plan, what=what, required=required)


def region_weights_problem(value: Any, regions: Sequence[str] | None = None) -> str | None:
    """What is wrong with ``loss.region_weights`` for a plan with ``regions``, or None when nothing is.

    Args:
        value: the given weights (``{region name: weight}``).
        regions: the plan's region names in output order; None checks only the type and values.
    """
    if not (isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(w, (int, float, np.integer, np.floating))
            and not isinstance(w, (bool, np.bool_)) and math.isfinite(w) and w >= 0 for k, w in value.items())):
        return f"must be a mapping of region names to numbers >= 0, got {value!r:.120}"
    if regions is None:
        return None
    unknown = sorted(set(value) - set(regions))
    if unknown:
        return (f"name region(s) {unknown} that the plan does not have; its regions: {', '.join(regions) or 'none'}"
                f"{did_you_mean(unknown[0], list(regions))}")
    if sum(float(value.get(r, 1.0)) for r in regions) <= 0:
        return f"give every region weight 0: {dict(value)}"
    return None


def _region_weights(value: Any, regions: Mapping[str, Any], what: str) -> dict[str, float] | None:
    """The plan's ``loss.region_weights`` checked against its regions (``None`` when absent or empty)."""
    if value is None or (isinstance(value, Mapping) and not value):
        return None
    problem = region_weights_problem(value, [str(r) for r in regions])
    if problem:
        raise InputError(f"{what}: plan key loss.region_weights {problem}")
    return {str(k): float(v) for k, v in value.items()}


def check_plan_values(plan: Mapping[str, Any], *, what: str = "plan") -> None:
    """Check the value of every plan key that prediction and training compute with.

    Args:
        plan: plan data (keys as written by ``make_plan``).
        what: the file it came from, named in the message.

    Raises:
        InputError: one line naming ``what``, the key and its value.
    """
    def bad(key: str, expected: str) -> InputError:
        return InputError(f"{what}: plan key {key} must be {expected}, got {plan.get(key)!r:.120}")

    dims = 2 if plan.get("config") == "2d" else 3
    patch = plan.get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) != dims or not all(is_int(p) and p > 0 for p in patch):
        raise bad("patch_size", f"{dims} positive integers (a {plan.get('config')} plan)")
    if not (is_int(plan.get("batch_size")) and plan["batch_size"] > 0):
        raise bad("batch_size", "a positive integer")
    spacing = plan.get("target_spacing")
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(is_positive_number(v) for v in spacing):
        raise bad("target_spacing", "3 positive, finite spacings in mm")
    axis = plan.get("slice_axis")
    if (dims == 2 or axis is not None) and (axis not in (0, 1, 2) or isinstance(axis, bool)):
        raise bad("slice_axis", "0, 1 or 2" + ("" if dims == 2 else " (or null for a 3-D plan)"))
    context = plan.get("slice_context", 0)
    if not (is_int(context) and 0 <= context and (context == 0 or dims == 2)):
        raise bad("slice_context", "a non-negative integer (2-D plans only)")
    channels = plan.get("channels")
    if not isinstance(channels, (list, tuple)) or not channels or not all(isinstance(c, str) and c for c in channels):
        raise bad("channels", "a non-empty list of channel names")
    labels = plan.get("labels")
    if not isinstance(labels, Mapping) or not labels or not all(is_int(v) and v >= 0 for v in labels.values()):
        raise bad("labels", "a mapping of label names to non-negative integers")
    orientation = plan.get("orientation")
    if not (isinstance(orientation, str) and len(orientation) == 3):
        raise bad("orientation", "three axis codes such as 'RAS'")
    if not isinstance(plan.get("crop_to_brain"), bool):
        raise bad("crop_to_brain", "true or false")
    if not isinstance(plan.get("region_based"), bool):
        raise bad("region_based", "true or false")
    regions = plan.get("regions")
    if not isinstance(regions, Mapping) or not all(
            isinstance(v, (list, tuple)) and v and all(is_int(x) for x in v) for v in regions.values()):
        raise bad("regions", "a mapping of region names to lists of labels")
    norm = plan.get("normalization")
    if not isinstance(norm, (list, tuple)) or len(norm) != len(channels) or not all(isinstance(n, Mapping) for n in norm):
        raise bad("normalization", f"one entry per channel ({len(channels)})")
    model = plan.get("model")
    if not (isinstance(model, Mapping) and isinstance(model.get("name"), str) and isinstance(model.get("config"), Mapping)):
        raise bad("model", "{'name': str, 'config': {...}, ...}")


def json_data(value: Any) -> Any:
    """JSON data: mappings as dicts with string keys, sequences as lists, NumPy scalars as numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_data(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def plan_data(plan: Plan | Mapping[str, Any]) -> dict[str, Any]:
    """Plan JSON data from a :class:`Plan` or plan data (used where plans are stored: files, checkpoints)."""
    return plan.to_dict() if isinstance(plan, Plan) else json_data(plan)


__all__ = ["CONFIGS", "LossSpec", "ModelSpec", "Normalization", "PLAN_VERSION", "PREDICTION_KEYS", "PREPROCESSING_KEYS",
           "Plan", "REQUIRED_KEYS", "Resampling", "Sampling", "as_plan", "check_plan_values", "is_int", "json_data",
           "is_positive_number", "plan_data", "region_weights_problem"]
