"""The training plan: configuration, resolution, patch and batch size, normalisation and network.

``make_plan`` turns a dataset fingerprint into a :class:`~brainseg_cli.data.plan_schema.Plan`
(saved as ``plan.json`` and in every checkpoint), one named rule (a ``_..._rule`` function) per
decision. Every value can be overridden (:class:`PlanOverrides`); ``plan.decisions``
says why each automatic value was chosen. The rules:

- **Orientation**: the fingerprint's majority orientation (ITK axis codes); every case is
  permuted/flipped to it before preprocessing (exact), so spacings and shapes below are in its axes.
- **Configuration** (``config``): ``"2d"`` when the data are anisotropic (the coarsest median
  spacing is more than 3x the finest, nnU-Net's threshold) or are 8-bit slice data (every channel
  integer-valued in [0, 255], e.g. TIFF/PNG slices); ``"3d"`` otherwise.
- **Slice axis** (2-D): the single coarsest axis (median spacing at least 1.25x the next), else the
  axial axis (the axis along S/I in the plan orientation). ``slice_context`` (default 0) gives a
  2-D network the ``k`` neighbouring slices on each side as extra channels (2.5-D): channel ``c`` at
  offset ``o`` in ``-k..k`` is input channel ``c * (2k + 1) + o + k``; slices beyond the volume repeat
  its first or last slice.
- **Target spacing**: the median spacing; for anisotropic data (coarsest > 3x the others' max
  *and* its median voxel count < 1/3 of the others' min: nnU-Net's rule) the coarse axis uses the
  10th percentile of its spacings, but no finer than the other axes. 2-D plans keep each case's
  own spacing along the slice axis.
- **Normalisation**: ``clip_zscore`` (clip to brain percentiles [10, 99], then z-score) for 8-bit
  slice data, ``zscore`` inside the brain mask otherwise.
- **Budget** on a GPU (``gpu-memory``): the patch starts as a 256^3 mm-isotropic (2-D: 2048^2)
  box capped at the median shape, and the axis largest relative to the median shape shrinks until
  the estimated training memory of batch 2 fits ``memory_gb`` (default 8, nnU-Net's reference);
  then the batch grows while it fits, up to 5 % of the dataset's voxels per batch (nnU-Net).
  Memory = batch x activation elements x :data:`GPU_BYTES_PER_ACTIVATION` + parameters x 16 bytes
  + :data:`GPU_OVERHEAD_GB`, calibrated so nnU-Net's BraTS 3d_fullres (128^3, batch 2, 32-320
  features) needs about 8.5 GB under mixed precision.
- **Budget** on a CPU (``cpu-time``): a step must take about ``step_seconds`` (default 0.5 s, so a
  20-minute run makes over two thousand steps). Step time = 3 x forward FLOPs x batch /
  (``cpu_gflops`` x 1e9); :data:`CPU_GFLOPS` = 120 is a documented constant measured for fp32
  training of ``unet`` with 2 threads on the reference 2-core machine (plans do not depend on the
  machine they are made on; override it with ``cpu_gflops``). The network is narrower
  (:data:`CPU_BASE_FEATURES` = 16 instead of 32). A 3-D plan whose whole median brain box does not
  fit the step budget at the native target spacing is made at lower resolution: every axis at
  least :data:`CPU_LOWRES_SPACING_MM` (2 mm) ("3d lowres"; ``--config 2d`` is the alternative at full
  in-plane resolution). The patch then shrinks as on a GPU, with memory (``memory_gb``, default 8)
  only as a cap; 2-D plans then grow the batch while a step stays in budget (at most 64).
- FLOPs and activations come from one forward pass of the real network on PyTorch's ``meta``
  device (shapes only, no computation): convolutions and linear layers count, attention does not.
- **Network**: ``unet`` (:mod:`brainseg_cli.models.unet`) with :func:`plan_unet_topology`'s kernels
  and strides for the patch and target spacing, instance norm, deep supervision; patch sizes are
  padded up to multiples of the network's size divisor.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli import choices
from brainseg_cli.data.plan_schema import (
    CONFIGS,
    DEFAULT_FOREGROUND_FRACTION,
    PLAN_VERSION,
    LossSpec,
    ModelSpec,
    Normalization,
    Plan,
    Resampling,
    Sampling,
    as_plan,
    is_int,
    is_positive_number,
    json_data,
    plan_data,
    region_weights_problem,
)
from brainseg_cli.data.preprocessing import NORMALIZATION_SCHEMES, check_orientation, reorient_values
from brainseg_cli.data.resampling import ANISOTROPY_THRESHOLD
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.io import atomic_write
from brainseg_cli.models import (
    build_model,
    img_size_multiple,
    model_info,  # the registry imports torch
    model_options,
    plan_unet_topology,
)

logger = logging.getLogger(__name__)

#: Largest 2.5-D slice context (neighbours on each side of the slice).
MAX_SLICE_CONTEXT = 3
#: Default GPU memory budget (GB): nnU-Net's reference.
DEFAULT_MEMORY_GB = 8.0
#: Bytes of GPU memory per activation element under mixed precision (calibrated, module docstring).
GPU_BYTES_PER_ACTIVATION = 3.2
#: Fixed GPU memory (GB): CUDA context, cuDNN workspaces, allocator slack.
GPU_OVERHEAD_GB = 1.0
#: Bytes of CPU memory per activation element in fp32 training (forward value plus its gradient).
CPU_BYTES_PER_ACTIVATION = 8.0
#: Effective CPU throughput for fp32 training (GFLOP/s), measured on the 2-core reference machine.
CPU_GFLOPS = 120.0
#: Default CPU step-time target (seconds per training step).
DEFAULT_STEP_SECONDS = 0.5
#: First-stage features of ``unet`` on a CPU (32 on a GPU, as nnU-Net).
CPU_BASE_FEATURES = 16
GPU_BASE_FEATURES = 32
#: Coarsest-axis spacing floor of a CPU "3d lowres" plan (mm).
CPU_LOWRES_SPACING_MM = 2.0
#: Largest batch a plan chooses on its own.
MAX_BATCH = 64
#: A batch covers at most this fraction of the dataset's voxels (nnU-Net).
MAX_BATCH_DATASET_FRACTION = 0.05
#: Region sets known by name (canonical labels, docs/DEFINITIONS.md §1-2).
REGION_PRESETS: dict[str, dict[str, list[int]]] = {"brats": {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}}
SLICE_WEIGHTINGS: tuple[str, ...] = choices.SLICE_WEIGHTINGS


@dataclass(frozen=True)
class PlanOverrides:
    """User choices that replace automatic plan values (``None``: let the planner decide)."""

    config: str | None = None
    """``"2d"`` or ``"3d"``."""
    model: str | None = None
    """Registered model name (default ``unet``)."""
    model_config: Mapping[str, Any] | None = None
    """Keyword arguments merged into the model config (e.g. ``{"base_features": 24}``)."""
    patch_size: tuple[int, ...] | None = None
    """Patch size (3 ints for 3-D, 2 in-plane ints for 2-D); padded up to the size divisor."""
    batch_size: int | None = None
    """Training batch size."""
    target_spacing: tuple[float, ...] | None = None
    """Target spacing in mm, three values in the plan orientation's axes."""
    slice_axis: int | None = None
    """2-D slice axis (0, 1 or 2, in the plan orientation's axes)."""
    slice_context: int | None = None
    """2-D: neighbouring slices on each side given to the network as extra channels (2.5-D; default 0)."""
    orientation: str | None = None
    """Axis codes every case is reoriented to (e.g. ``"RAS"``)."""
    memory_gb: float | None = None
    """Memory budget in GB (GPU: decides patch and batch; CPU: a cap)."""
    step_seconds: float | None = None
    """CPU step-time target in seconds."""
    cpu_gflops: float | None = None
    """CPU throughput assumed for the step-time estimate (GFLOP/s)."""
    normalization: str | None = None
    """Normalisation scheme for every channel: ``"zscore"`` or ``"clip_zscore"``."""
    crop_to_brain: bool | None = None
    """Crop each case to its brain bounding box."""
    regions: str | None = None
    """Region-based training: ``"dataset"`` (the dataset's regions), a preset name (``"brats"``) or
    ``"none"`` (softmax over the labels); None decides from the dataset (:func:`nested_regions`)."""
    deep_supervision: bool | None = None
    """Deep supervision for ``unet``."""
    foreground_fraction: float | None = None
    """Share of patches centred on a foreground voxel (default 1/3)."""
    slice_weighting: str | None = None
    """2-D slice sampling: ``"uniform"`` or ``"foreground"`` (weights grow with tumour area)."""
    drop_edge_slices: bool | None = None
    """2-D: never sample the first and last slice of a volume."""
    batch_dice: bool | None = None
    """Dice loss over the whole batch (one Dice per channel) instead of per sample (default: per sample)."""
    region_weights: Mapping[str, float] | None = None
    """Region-based plans: ``{region name: weight >= 0}`` for each region's loss terms (others 1; default all 1)."""

    def __post_init__(self) -> None:
        check_overrides(self)


def check_overrides(ov: PlanOverrides) -> None:
    """Check the type and range of every given override (values the planner would compute with).

    Raises:
        ConfigError: one line naming the option and its value.
    """
    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{name} must be {expected}, got {getattr(ov, name)!r:.120}")

    def sequence(value: Any) -> bool:
        return isinstance(value, (list, tuple))

    if ov.config is not None and ov.config not in CONFIGS:
        raise bad("config", "2d or 3d")
    for name in ("model", "orientation", "normalization", "regions", "slice_weighting"):
        if getattr(ov, name) is not None and not isinstance(getattr(ov, name), str):
            raise bad(name, "a name")
    if ov.model_config is not None and not isinstance(ov.model_config, Mapping):
        raise bad("model_config", "a mapping of model options")
    if ov.patch_size is not None and not (sequence(ov.patch_size) and len(ov.patch_size) in (2, 3)
                                          and all(is_int(p) and p > 0 for p in ov.patch_size)):
        raise bad("patch_size", "2 (2-D) or 3 (3-D) positive integers")
    if ov.batch_size is not None and not (is_int(ov.batch_size) and ov.batch_size > 0):
        raise bad("batch_size", "a positive integer")
    if ov.target_spacing is not None and not (sequence(ov.target_spacing) and len(ov.target_spacing) == 3
                                              and all(is_positive_number(v) for v in ov.target_spacing)):
        raise bad("target_spacing", "3 positive, finite spacings in mm")
    if ov.slice_axis is not None and not (is_int(ov.slice_axis) and ov.slice_axis in (0, 1, 2)):
        raise bad("slice_axis", "0, 1 or 2")
    if ov.slice_context is not None and not (is_int(ov.slice_context) and 0 <= ov.slice_context <= MAX_SLICE_CONTEXT):
        raise bad("slice_context", f"an integer in 0..{MAX_SLICE_CONTEXT}")
    for name in ("memory_gb", "step_seconds", "cpu_gflops"):
        if getattr(ov, name) is not None and not is_positive_number(getattr(ov, name)):
            raise bad(name, "a positive, finite number")
    for name in ("crop_to_brain", "deep_supervision", "drop_edge_slices", "batch_dice"):
        if getattr(ov, name) is not None and not isinstance(getattr(ov, name), (bool, np.bool_)):
            raise bad(name, "true or false")
    if ov.region_weights is not None and (problem := region_weights_problem(ov.region_weights)):
        raise ConfigError(f"region_weights {problem}")
    fraction = ov.foreground_fraction
    if fraction is not None and not (isinstance(fraction, (int, float, np.integer, np.floating))
                                     and not isinstance(fraction, (bool, np.bool_)) and 0.0 <= fraction <= 1.0):
        raise bad("foreground_fraction", "a number in [0, 1]")


# ---------------------------------------------------------------------------------------------
# network cost


def network_cost(name: str, *, spatial_dims: int, in_channels: int, num_classes: int, config: Mapping[str, Any],
                 patch_size: Sequence[int]) -> dict[str, float]:
    """FLOPs and activation count of one forward pass for one sample, from a ``meta``-device run.

    Returns:
        ``{"flops": forward FLOPs, "activations": output elements of every leaf module,
        "parameters": parameter count}`` per sample.
    """
    import torch

    net = _meta_model(name, spatial_dims, in_channels, num_classes, config)
    x = torch.empty(1, in_channels, *[int(p) for p in patch_size], device="meta")
    totals = {"flops": 0.0, "activations": 0.0}

    def hook(module: Any, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (list, tuple)) else output
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            w = module.weight.shape
            kv = math.prod(w[2:])
            if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
                totals["flops"] += 2.0 * inputs[0].numel() * w[1] * kv
            else:
                totals["flops"] += 2.0 * out.numel() * w[1] * kv
        elif isinstance(module, torch.nn.Linear):
            totals["flops"] += 2.0 * out.numel() * module.in_features
        totals["activations"] += float(out.numel())

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    totals["parameters"] = float(sum(p.numel() for p in net.parameters()))
    return totals


# ---------------------------------------------------------------------------------------------
# helpers


def _model_config(name: str, dims: int, patch: Sequence[int], spacing: Sequence[float], base: Mapping[str, Any]) -> dict:
    """The model config for a patch: ``unet`` gets nnU-Net topology, others their ``img_size`` if they take one."""
    config = dict(base)
    if name == "unet":
        if "strides" not in base and "depth" not in base:
            kernels, strides = plan_unet_topology(list(patch), list(spacing))
            config.setdefault("kernel_sizes", kernels)
            config["strides"] = strides
    elif "img_size" in model_options(name) and "img_size" not in base:
        multiple = img_size_multiple(name)
        config["img_size"] = [int(math.ceil(p / multiple) * multiple) for p in patch]
    return config


def _divisor(name: str, dims: int, in_ch: int, k: int, config: Mapping[str, Any]) -> tuple[int, ...]:
    """The network's size divisor (memoised on the config)."""
    key = (name, dims, in_ch, k, json.dumps(json_data(config), sort_keys=True))
    if key not in _DIVISORS:
        _DIVISORS[key] = _compute_divisor(name, dims, in_ch, k, config)
    return _DIVISORS[key]


_DIVISORS: dict[tuple, tuple[int, ...]] = {}


def _compute_divisor(name: str, dims: int, in_ch: int, k: int, config: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in _meta_model(name, dims, in_ch, k, config).size_divisor)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                   "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


def _meta_model(name: str, dims: int, in_ch: int, k: int, config: Mapping[str, Any]) -> Any:
    """Build a network on PyTorch's ``meta`` device (shapes only, no memory).

    Weight initialisation is skipped while building (``torch.nn.init`` functions return their tensor
    unchanged): on the meta device it computes nothing and is slow (PyTorch's reference decompositions).
    """
    import torch
    import torch.nn.init as init


    saved = {fn: getattr(init, fn) for fn in _INIT_FUNCTIONS if hasattr(init, fn)}
    try:
        for fn in saved:
            setattr(init, fn, _keep_tensor)
        with torch.device("meta"):
            return build_model(name, spatial_dims=dims, in_channels=in_ch, num_classes=k, **dict(config))
    finally:
        for fn, f in saved.items():
            setattr(init, fn, f)


def _keep_tensor(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def _pad_up(patch: Sequence[int], divisor: Sequence[int]) -> list[int]:
    return [int(math.ceil(p / d) * d) for p, d in zip(patch, divisor)]


def _round(values: Sequence[float], ndigits: int = 4) -> list[float]:
    return [round(float(v), ndigits) for v in values]


def _axial_axis(orientation: str) -> int:
    return next(i for i, c in enumerate(orientation) if c in "SI")


# ---------------------------------------------------------------------------------------------
# the planner


def source_labels(extra: Mapping[str, Any]) -> dict[str, int]:
    """``{canonical value: source value}`` undoing the mapping ``convert`` applied (``predict --labels source``).

    Args:
        extra: the ``"brainseg"`` block of ``dataset.json``, whose ``label_mapping`` is
            ``{source value: canonical value}`` (e.g. BraTS 2018 ``{"1": 2, "2": 1, "4": 3}``).

    Returns:
        The inverse map with string keys (JSON); where several source values were merged into one
        canonical label (BraTS 2015: necrosis 1 and non-enhancing 3 -> 2) the smallest source value is
        used. Empty when the dataset records no mapping.
    """
    mapping = extra.get("label_mapping") if isinstance(extra, Mapping) else None
    if not isinstance(mapping, Mapping):
        return {}
    inverse: dict[str, int] = {}
    for source, canonical in sorted(((int(k), int(v)) for k, v in mapping.items()), reverse=True):
        inverse[str(canonical)] = source
    return dict(sorted(inverse.items(), key=lambda kv: int(kv[0])))


def nested_regions(regions: Mapping[str, Sequence[int]]) -> bool:
    """Whether evaluation regions nest or overlap (a label belongs to more than one region).

    BraTS's WT = [1, 2, 3] ⊃ TC = [2, 3] ⊃ ET = [3] nest; regions that are single labels
    (``{"tumour": [1]}``) or disjoint do not. Nested regions are what region-based (sigmoid) training
    is for: each output learns one region, and the small inner regions get their own loss terms
    instead of sharing a softmax with the labels around them.
    """
    seen: set[int] = set()
    for members in regions.values():
        values = {int(v) for v in members}
        if seen & values:
            return True
        seen |= values
    return False


@dataclass(frozen=True)
class _Geometry:
    """The fingerprint's geometry in the plan orientation's axes."""

    orientation: str
    spacing: np.ndarray
    spacing10: np.ndarray
    shape: np.ndarray
    eight_bit: bool

    @property
    def ratio(self) -> float:
        return float(self.spacing.max() / self.spacing.min())

    @property
    def anisotropic(self) -> bool:
        return self.ratio > ANISOTROPY_THRESHOLD


def _orientation_rule(fingerprint: Mapping[str, Any], ov: PlanOverrides, decisions: dict[str, str]) -> _Geometry:
    """The orientation (given, else the cases' majority) and the fingerprint's spacings and shape in its axes."""
    fp_orient = fingerprint["orientation"]
    orientation = check_orientation(ov.orientation) if ov.orientation else fp_orient
    decisions["orientation"] = ("given" if ov.orientation else "the majority orientation of the cases")
    return _Geometry(
        orientation=orientation,
        spacing=np.array(reorient_values(fingerprint["spacing_median"], fp_orient, orientation), dtype=float),
        spacing10=np.array(reorient_values(fingerprint["spacing_10th"], fp_orient, orientation), dtype=float),
        shape=np.array(reorient_values(fingerprint["shape_median"], fp_orient, orientation), dtype=float),
        eight_bit=all(c.get("eight_bit", False) for c in fingerprint["intensity"]),
    )


def _config_rule(ov: PlanOverrides, geo: _Geometry, *, gpu: bool, decisions: dict[str, str]) -> str:
    """2-D or 3-D: given, implied by the patch or the model, anisotropy, 8-bit slices, the CPU recipe, else 3-D."""
    model_dims = model_info(ov.model).dims if ov.model else (2, 3)
    ratio = geo.ratio
    if ov.config is not None:  # values and types of every override: check_overrides
        config, why = ov.config, "given"
    elif ov.patch_size is not None:
        config = f"{len(ov.patch_size)}d"
        why = f"{config}: the given patch size has {len(ov.patch_size)} values"
    elif len(model_dims) == 1:
        config = f"{model_dims[0]}d"
        why = f"{config}: model '{ov.model}' is {config} only"
    elif geo.anisotropic:
        config, why = "2d", f"2d: anisotropic spacing (max/min {ratio:.2f} > {ANISOTROPY_THRESHOLD:g})"
    elif geo.eight_bit:
        config, why = "2d", "2d: 8-bit slice data (every channel integer-valued in [0, 255])"
    elif not gpu:
        config = "2d"
        why = ("2d: training on a CPU (the cross-validated CPU recipe is 2-D; a GPU would get 3d for "
               f"this near-isotropic spacing, max/min {ratio:.2f}; --config 3d to choose it)")
    else:
        config, why = "3d", f"3d: near-isotropic spacing (max/min {ratio:.2f} <= {ANISOTROPY_THRESHOLD:g})"
    decisions["config"] = why
    return config


def _slice_rule(ov: PlanOverrides, geo: _Geometry, config: str, decisions: dict[str, str]) -> tuple[int | None, int]:
    """``(slice_axis, slice_context)``: the coarsest axis, else the axial one (2-D); the given context."""
    slice_axis: int | None = None
    spacing = geo.spacing
    if config == "2d":
        if ov.slice_axis is not None:
            slice_axis = int(ov.slice_axis)
            decisions["slice_axis"] = "given"
        else:
            order = np.argsort(spacing)[::-1]
            if spacing[order[0]] >= 1.25 * spacing[order[1]]:
                slice_axis = int(order[0])
                decisions["slice_axis"] = f"the lowest-resolution axis ({spacing[order[0]]:.3g} mm)"
            else:
                slice_axis = _axial_axis(geo.orientation)
                decisions["slice_axis"] = (f"axial (the S/I axis of orientation {geo.orientation}); "
                                           "no axis is coarsest")
    elif ov.slice_axis is not None:
        raise ConfigError("a slice axis is only meaningful for a 2d plan (config is 3d)")
    slice_context = 0
    if ov.slice_context is not None:
        if config != "2d" and ov.slice_context:
            raise ConfigError("a slice context is only meaningful for a 2d plan (config is 3d)")
        slice_context = int(ov.slice_context)
        decisions["slice_context"] = "given"
    return slice_axis, slice_context


def _target_spacing_rule(ov: PlanOverrides, geo: _Geometry, decisions: dict[str, str]) -> np.ndarray:
    """The median spacing, with nnU-Net's rule for one coarse axis; or the given spacing."""
    if ov.target_spacing is not None:
        decisions["target_spacing"] = "given"
        return np.array([float(t) for t in ov.target_spacing])
    target = geo.spacing.copy()
    decisions["target_spacing"] = "median spacing"
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    sizes = geo.shape * geo.spacing / target
    if target[worst] > ANISOTROPY_THRESHOLD * max(target[others]) and \
            sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others]):
        target[worst] = max(geo.spacing10[worst], max(target[others]))
        decisions["target_spacing"] = (f"median spacing; low-resolution axis {worst} set to the 10th percentile "
                                       "of its spacings (nnU-Net anisotropy rule)")
    return target


def _regions_rule(ov: PlanOverrides, info: Any, decisions: dict[str, str]) -> tuple[dict[str, list[int]], bool]:
    """``(regions, region_based)``: given (a preset, the dataset's, or none), else region-based when they nest."""
    labels = dict(info.labels)
    if ov.regions == "none":
        decisions["regions"] = "given: softmax over the labels"
        return {k: list(v) for k, v in info.regions.items()}, False
    if ov.regions is not None:
        if ov.regions == "dataset":
            if not info.regions:
                raise ConfigError(f"dataset {info.name} defines no regions; use --regions brats or none")
            regions = {k: list(v) for k, v in info.regions.items()}
        elif ov.regions in REGION_PRESETS:
            regions = {k: list(v) for k, v in REGION_PRESETS[ov.regions].items()}
            missing = sorted({v for vs in regions.values() for v in vs} - set(labels.values()))
            if missing:
                raise ConfigError(f"regions '{ov.regions}' use label(s) {missing} that dataset {info.name} "
                                  f"does not define (labels: {labels})")
        else:
            raise ConfigError(f"unknown regions '{ov.regions}'; valid: dataset, none, {', '.join(REGION_PRESETS)}")
        decisions["regions"] = "given"
        return regions, True
    regions = {k: list(v) for k, v in info.regions.items()}
    region_based = nested_regions(regions)
    decisions["regions"] = (
        "region-based (sigmoid outputs): the dataset's regions nest, as BraTS's WT > TC > ET (nnU-Net's BraTS "
        "recipe; better tumour core and enhancing tumour in cross-validation)" if region_based
        else "softmax over the labels: the dataset defines no nested regions")
    return regions, region_based


def _normalization_rule(ov: PlanOverrides, info: Any, geo: _Geometry,
                        decisions: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per channel: ``clip_zscore`` for 8-bit slice data, else ``zscore``; or the given scheme."""
    if ov.normalization is not None:
        if ov.normalization not in NORMALIZATION_SCHEMES:
            raise ConfigError(f"unknown normalization '{ov.normalization}'; valid: {', '.join(NORMALIZATION_SCHEMES)}")
        scheme = ov.normalization
        decisions["normalization"] = "given"
    else:
        scheme = "clip_zscore" if geo.eight_bit else "zscore"
        decisions["normalization"] = ("clip_zscore: 8-bit slice data" if geo.eight_bit
                                      else "zscore inside the brain mask")
    return [{"channel": c, "scheme": scheme, "lower_pct": 10.0, "upper_pct": 99.0} for c in info.channels]


def _model_rule(ov: PlanOverrides, *, config: str, gpu: bool, decisions: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """``(model name, base config)``: ``unet`` (16 base features on a CPU, 32 on a GPU) unless given."""
    dims = 2 if config == "2d" else 3
    model_name = ov.model or "unet"
    if dims not in model_info(model_name).dims:
        raise ConfigError(f"model '{model_name}' does not support {config} (it is "
                          f"{'/'.join(f'{d}d' for d in model_info(model_name).dims)} only)")
    base_cfg: dict[str, Any] = {}
    if model_name == "unet":
        base_cfg = {"base_features": GPU_BASE_FEATURES if gpu else CPU_BASE_FEATURES, "norm": "instance",
                    "deep_supervision": True if ov.deep_supervision is None else bool(ov.deep_supervision)}
        decisions["model"] = (f"unet, {base_cfg['base_features']} base features "
                              f"({'GPU' if gpu else 'CPU: narrower for step time'}), nnU-Net topology")
    elif ov.deep_supervision is not None:
        raise ConfigError(f"deep supervision is a unet option; model '{model_name}' has none")
    else:
        decisions["model"] = "given"
    base_cfg.update(dict(ov.model_config or {}))
    return model_name, base_cfg


class _Budget:
    """The cost model of one network: memory and step time of a patch and batch, and the patch search."""

    def __init__(self, *, model_name: str, dims: int, in_channels: int, num_outputs: int, base_cfg: Mapping[str, Any],
                 spatial_axes: Sequence[int], gpu: bool, memory_gb: float, step_target: float, gflops: float) -> None:
        self.model_name, self.dims, self.in_channels, self.num_outputs = model_name, dims, in_channels, num_outputs
        self.base_cfg, self.spatial_axes, self.gpu = base_cfg, list(spatial_axes), gpu
        self.memory_gb, self.step_target, self.gflops = memory_gb, step_target, gflops
        self._costs: dict[tuple, tuple[dict, dict]] = {}

    def config_for(self, patch: Sequence[int], sp: Sequence[float]) -> dict[str, Any]:
        return _model_config(self.model_name, self.dims, patch, sp, self.base_cfg)

    def divisor(self, cfg: Mapping[str, Any]) -> tuple[int, ...]:
        return _divisor(self.model_name, self.dims, self.in_channels, self.num_outputs, cfg)

    def estimate(self, patch: Sequence[int], batch: int, sp: Sequence[float]) -> tuple[dict, dict]:
        """``(model config, {"memory_gb", "step_seconds"})`` of ``batch`` samples of ``patch`` at spacing ``sp``."""
        key = (tuple(int(p) for p in patch), tuple(float(v) for v in sp))
        if key not in self._costs:
            cfg_k = self.config_for(patch, sp)
            self._costs[key] = (cfg_k, network_cost(self.model_name, spatial_dims=self.dims,
                                                    in_channels=self.in_channels, num_classes=self.num_outputs,
                                                    config=cfg_k, patch_size=patch))
        cfg, cost = self._costs[key]
        if self.gpu:
            mem = (batch * cost["activations"] * GPU_BYTES_PER_ACTIVATION + cost["parameters"] * 16) / 1e9 + GPU_OVERHEAD_GB
        else:
            mem = (batch * cost["activations"] * CPU_BYTES_PER_ACTIVATION + cost["parameters"] * 16) / 1e9
        seconds = 3.0 * cost["flops"] * batch / (self.gflops * 1e9)
        return cfg, {"memory_gb": mem, "step_seconds": seconds}

    def fits(self, est: Mapping[str, float]) -> bool:
        if est["memory_gb"] > self.memory_gb:
            return False
        return self.gpu or est["step_seconds"] <= self.step_target

    def fitted_patch(self, sp: np.ndarray, start: Sequence[int], limit: Sequence[float],
                     batch: int) -> tuple[list[int], dict, dict]:
        """Pad ``start`` to the divisor and shrink it until ``batch`` samples fit the budget."""
        sp_axes = [float(sp[a]) for a in self.spatial_axes]
        patch = [max(1, int(p)) for p in start]
        cfg = self.config_for(patch, sp_axes)
        patch = _pad_up(patch, self.divisor(cfg))
        cfg, est = self.estimate(patch, batch, sp_axes)
        for _ in range(200):
            if self.fits(est):
                break
            div = self.divisor(cfg)
            rel = [p / max(m, 1.0) for p, m in zip(patch, limit)]
            order = sorted(range(self.dims), key=lambda a: (-rel[a], -patch[a]))
            axis = next((a for a in order if patch[a] - div[a] >= div[a]), None)
            if axis is None:
                break
            patch[axis] -= div[axis]
            cfg = self.config_for(patch, sp_axes)
            patch = _pad_up(patch, self.divisor(cfg))
            cfg, est = self.estimate(patch, batch, sp_axes)
        return patch, cfg, est


def _cpu_lowres_rule(ov: PlanOverrides, budget: _Budget, geo: _Geometry, target: np.ndarray, *, gpu: bool,
                     batch: int, decisions: dict[str, str]) -> np.ndarray:
    """CPU 3-D: every axis at least 2 mm when the whole median brain box does not fit the step budget."""
    if gpu or budget.dims != 3 or ov.target_spacing is not None or ov.patch_size is not None:
        return target
    full = [int(math.ceil(v)) for v in _median_shape_at(geo, target)]
    full = _pad_up(full, budget.divisor(budget.config_for(full, list(target))))
    _, est_full = budget.estimate(full, batch, list(target))
    coarse = np.maximum(target, CPU_LOWRES_SPACING_MM)
    if not budget.fits(est_full) and np.any(coarse > target):
        decisions["target_spacing"] += (
            f"; CPU: the median brain box {full} at {_round(target, 3)} mm needs "
            f"{est_full['step_seconds']:.2f} s per step (> {budget.step_target:g} s), so every axis is at least "
            f"{CPU_LOWRES_SPACING_MM:g} mm (3d lowres; --config 2d keeps full in-plane resolution)")
        return coarse
    return target


def _median_shape_at(geo: _Geometry, sp: np.ndarray) -> np.ndarray:
    return np.maximum(1.0, geo.shape * geo.spacing / sp)


def _patch_rule(ov: PlanOverrides, budget: _Budget, geo: _Geometry, target: np.ndarray, *, config: str, batch: int,
                decisions: dict[str, str]) -> list[int]:
    """The given patch padded to the size divisor, else the largest patch (from a 256 mm cube or 2048^2 square,
    capped at the median shape) whose batch fits the budget."""
    plane_target = [float(target[a]) for a in budget.spatial_axes]
    median_plane = [float(_median_shape_at(geo, target)[a]) for a in budget.spatial_axes]
    if ov.patch_size is not None:
        patch = [int(p) for p in ov.patch_size]
        try:
            padded = _pad_up(patch, budget.divisor(budget.config_for(patch, plane_target)))
            decisions["patch_size"] = (f"given {patch}, padded to {padded} (multiple of the size divisor)"
                                       if padded != patch else "given")
            budget.estimate(padded, batch, plane_target)
        except ConfigError as exc:
            raise ConfigError(f"patch size {'x'.join(map(str, ov.patch_size))} does not fit model "
                              f"'{budget.model_name}' at {'x'.join(f'{s:g}' for s in plane_target)} mm: {exc}") from None
        return padded
    sp_iso = 1.0 / np.asarray(plane_target)
    volume = 256.0 ** 3 if budget.dims == 3 else 2048.0 ** 2
    start = sp_iso * (volume / np.prod(sp_iso)) ** (1.0 / budget.dims)
    start = [int(round(min(s, m))) for s, m in zip(start, median_plane)]
    patch, _, _ = budget.fitted_patch(np.asarray(target), start, median_plane, batch)
    decisions["patch_size"] = (f"largest patch (capped at the median shape {[round(m) for m in median_plane]}) "
                               f"whose batch of {batch} fits the {'memory' if budget.gpu else 'step-time'} budget")
    return patch


def _batch_rule(ov: PlanOverrides, budget: _Budget, geo: _Geometry, target: np.ndarray, patch: Sequence[int], *,
                num_cases: int, min_batch: int, decisions: dict[str, str]) -> int:
    """The given batch, else (GPU and 2-D) the largest that fits the budget, up to 5 % of the dataset's voxels."""
    plane_target = [float(target[a]) for a in budget.spatial_axes]
    if ov.batch_size is not None:
        decisions["batch_size"] = "given"
        return int(ov.batch_size)
    batch = min_batch
    total_voxels = float(np.prod(_median_shape_at(geo, target))) * num_cases
    cap = max(min_batch, int(MAX_BATCH_DATASET_FRACTION * total_voxels / float(np.prod(patch))))
    grow = budget.gpu or budget.dims == 2
    while grow and batch < min(cap, MAX_BATCH):
        _, nxt = budget.estimate(patch, batch + 1, plane_target)
        if not budget.fits(nxt):
            break
        batch += 1
    decisions["batch_size"] = (f"{batch}: " + ("largest that fits the budget" if grow else "nnU-Net's 3-D batch")
                               + (f" (capped at 5% of the dataset's voxels: {cap})" if batch == cap else ""))
    return batch


def _loss_rule(ov: PlanOverrides, regions: Mapping[str, Any], region_based: bool,
               decisions: dict[str, str]) -> LossSpec:
    """Dice per sample unless asked; region weights only when given (all regions weigh the same).

    nnU-Net plans batch Dice for 2-D; on BraTS 2-D region-based training it made the models
    under-segment (the held-out HGG case's WT Dice fell from 0.89 to 0.71, recall 0.57), since it
    also charges false positives on slices without tumour.

    Raises:
        ConfigError: region weights for a plan without region-based outputs, or naming a region it lacks.
    """
    if ov.batch_dice is not None:
        decisions["batch_dice"] = "given"
        batch_dice = bool(ov.batch_dice)
    else:
        decisions["batch_dice"] = "Dice per sample (default)"
        batch_dice = False
    weights = None
    if ov.region_weights:
        if not region_based:
            raise ConfigError(f"region_weights {dict(ov.region_weights)} need region-based outputs; this plan trains "
                              "softmax labels (regions none or a dataset without nested regions)")
        problem = region_weights_problem(ov.region_weights, list(regions))
        if problem:
            raise ConfigError(f"region_weights {problem}")
        weights = {str(k): float(v) for k, v in ov.region_weights.items()}
        decisions["region_weights"] = "given"
    return LossSpec(batch_dice=batch_dice, region_weights=weights)


def make_plan(
    *,
    fingerprint: Mapping[str, Any],
    info: Any,
    overrides: PlanOverrides = PlanOverrides(),
    device: str = "cpu",
) -> Plan:
    """Make the training plan (rules in the module docstring, one function each).

    Args:
        fingerprint: from :func:`brainseg_cli.data.fingerprint.compute_fingerprint`.
        info: the :class:`~brainseg_cli.data.layout.DatasetInfo` (channels, labels, regions).
        overrides: user choices.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the device type decides the budget).

    Returns:
        The :class:`~brainseg_cli.data.plan_schema.Plan` (``plan.to_dict()`` is ``plan.json``).

    Raises:
        ConfigError: an invalid override or combination (one line naming the value).
    """
    ov = overrides
    decisions: dict[str, str] = {}
    device_type = str(device).split(":")[0]
    if device_type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda or cuda:N")
    gpu = device_type == "cuda"
    weighting = ov.slice_weighting or "uniform"
    if weighting not in SLICE_WEIGHTINGS:
        raise ConfigError(f"unknown slice weighting '{weighting}'; valid: {', '.join(SLICE_WEIGHTINGS)}")

    geo = _orientation_rule(fingerprint, ov, decisions)
    config = _config_rule(ov, geo, gpu=gpu, decisions=decisions)
    dims = 2 if config == "2d" else 3
    slice_axis, slice_context = _slice_rule(ov, geo, config, decisions)
    target = _target_spacing_rule(ov, geo, decisions)
    regions, region_based = _regions_rule(ov, info, decisions)
    labels = dict(info.labels)
    num_outputs = len(regions) if region_based else len(labels)
    # 2.5-D: every channel at the slice and its `slice_context` neighbours on each side (channel-major).
    in_channels = len(info.channels) * (2 * slice_context + 1)
    normalization = _normalization_rule(ov, info, geo, decisions)
    model_name, base_cfg = _model_rule(ov, config=config, gpu=gpu, decisions=decisions)

    budget = _Budget(model_name=model_name, dims=dims, in_channels=in_channels, num_outputs=num_outputs,
                     base_cfg=base_cfg, spatial_axes=[a for a in range(3) if a != slice_axis] if dims == 2 else [0, 1, 2],
                     gpu=gpu, memory_gb=float(ov.memory_gb) if ov.memory_gb is not None else DEFAULT_MEMORY_GB,
                     step_target=float(ov.step_seconds) if ov.step_seconds is not None else DEFAULT_STEP_SECONDS,
                     gflops=float(ov.cpu_gflops) if ov.cpu_gflops is not None else CPU_GFLOPS)
    min_batch = 2
    if ov.patch_size is not None and len(ov.patch_size) != dims:
        raise ConfigError(f"a {config} patch size needs {dims} positive values, got {list(ov.patch_size)}")
    target = _cpu_lowres_rule(ov, budget, geo, target, gpu=gpu, batch=ov.batch_size or min_batch, decisions=decisions)
    patch = _patch_rule(ov, budget, geo, target, config=config, batch=ov.batch_size or min_batch, decisions=decisions)
    batch = _batch_rule(ov, budget, geo, target, patch, num_cases=int(fingerprint["num_cases"]), min_batch=min_batch,
                        decisions=decisions)
    cfg, est = budget.estimate(patch, batch, [float(target[a]) for a in budget.spatial_axes])
    budget_record = {
        "kind": "gpu-memory" if gpu else "cpu-time",
        "device": str(device),
        "memory_gb": budget.memory_gb,
        "estimated_memory_gb": round(est["memory_gb"], 3),
        "step_seconds_target": None if gpu else budget.step_target,
        "estimated_step_seconds": None if gpu else round(est["step_seconds"], 3),
        "cpu_gflops": None if gpu else budget.gflops,
        "assumes": "mixed-precision training" if gpu else "fp32 training",
    }
    if not budget.fits(est):
        logger.warning("plan exceeds its %s budget: %s", budget_record["kind"], est)
        decisions["budget"] = f"over budget with the given values: {est}"
    else:
        decisions["budget"] = ("GPU memory decided patch and batch" if gpu
                               else "CPU step time decided resolution, patch and batch; memory only caps")
    sampling = Sampling(
        foreground_fraction=(DEFAULT_FOREGROUND_FRACTION if ov.foreground_fraction is None
                             else float(ov.foreground_fraction)),
        slice_weighting=weighting,
        drop_edge_slices=bool(ov.drop_edge_slices) if ov.drop_edge_slices is not None else False,
    )
    loss = _loss_rule(ov, regions, region_based, decisions)
    return Plan(
        format_version=PLAN_VERSION,
        dataset=info.name,
        config=config,
        channels=tuple(info.channels),
        labels=labels,
        num_classes=len(labels),
        regions={k: tuple(v) for k, v in regions.items()},
        region_based=region_based,
        source_labels=source_labels(info.extra),
        orientation=geo.orientation,
        target_spacing=tuple(_round(target, 5)),  # type: ignore[arg-type]
        slice_axis=slice_axis,
        slice_context=slice_context,
        patch_size=tuple(int(p) for p in patch),
        batch_size=int(batch),
        normalization=tuple(Normalization(**n) for n in normalization),
        crop_to_brain=True if ov.crop_to_brain is None else bool(ov.crop_to_brain),
        background="border",
        resampling=Resampling(anisotropy_threshold=ANISOTROPY_THRESHOLD),
        sampling=sampling,
        loss=loss,
        model=ModelSpec(name=model_name, spatial_dims=dims, in_channels=in_channels, num_classes=num_outputs,
                        config=json_data(cfg)),
        budget=budget_record,
        fingerprint={k: v for k, v in fingerprint.items() if k != "cases"},
        decisions=decisions,
    )


def preprocessing_key(plan: Plan | Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``plan`` the preprocessed data depend on (JSON data)."""
    return as_plan(plan).preprocessing_key()


def validate_plan(plan: Any, *, what: str = "plan") -> Plan:
    """Check that ``plan`` has the keys and value types of a plan; return it as a :class:`Plan`.

    Raises:
        InputError: a key is missing, a value is invalid (:func:`check_plan_values`) or the
            version/config is unsupported (names ``what``).
    """
    return Plan.from_dict(plan, what=what)


def save_plan(plan: Plan | Mapping[str, Any], path: str | Path) -> Path:
    """Write ``plan`` as indented JSON (``plan.json``), atomically; return the path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(plan_data(plan), indent=2) + "\n", encoding="utf-8")
    return path


def load_plan(path: str | Path) -> Plan:
    """Read and validate a ``plan.json``.

    Raises:
        InputError: unreadable file, invalid JSON, or not a plan.
    """
    path = Path(path)
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: plan file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read plan JSON: {exc}") from None
    return validate_plan(plan, what=str(path))


def override_fields() -> tuple[str, ...]:
    """Names of the :class:`PlanOverrides` fields (for CLI and options-file wiring)."""
    return tuple(f.name for f in fields(PlanOverrides))
