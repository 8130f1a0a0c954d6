"""The training plan: configuration, resolution, patch and batch size, normalisation and network.

``make_plan`` turns a dataset fingerprint into a JSON-able plan (saved as ``plan.json`` and in
every checkpoint). Every value can be overridden (:class:`PlanOverrides`); ``plan["decisions"]``
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

from brainseg_cli.data.preprocessing import NORMALIZATION_SCHEMES, check_orientation, reorient_values
from brainseg_cli.data.resampling import ANISOTROPY_THRESHOLD
from brainseg_cli.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
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
#: Foreground-oversampled share of 3-D patches (nnU-Net: one third).
DEFAULT_FOREGROUND_FRACTION = 1.0 / 3.0
#: Region sets known by name (canonical labels, docs/DEFINITIONS.md §1-2).
REGION_PRESETS: dict[str, dict[str, list[int]]] = {"brats": {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}}
CONFIGS = ("2d", "3d")
SLICE_WEIGHTINGS = ("uniform", "foreground")


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
                                          and all(_is_int(p) and p > 0 for p in ov.patch_size)):
        raise bad("patch_size", "2 (2-D) or 3 (3-D) positive integers")
    if ov.batch_size is not None and not (_is_int(ov.batch_size) and ov.batch_size > 0):
        raise bad("batch_size", "a positive integer")
    if ov.target_spacing is not None and not (sequence(ov.target_spacing) and len(ov.target_spacing) == 3
                                              and all(_is_positive_number(v) for v in ov.target_spacing)):
        raise bad("target_spacing", "3 positive, finite spacings in mm")
    if ov.slice_axis is not None and not (_is_int(ov.slice_axis) and ov.slice_axis in (0, 1, 2)):
        raise bad("slice_axis", "0, 1 or 2")
    if ov.slice_context is not None and not (_is_int(ov.slice_context) and 0 <= ov.slice_context <= MAX_SLICE_CONTEXT):
        raise bad("slice_context", f"an integer in 0..{MAX_SLICE_CONTEXT}")
    for name in ("memory_gb", "step_seconds", "cpu_gflops"):
        if getattr(ov, name) is not None and not _is_positive_number(getattr(ov, name)):
            raise bad(name, "a positive, finite number")
    for name in ("crop_to_brain", "deep_supervision", "drop_edge_slices", "batch_dice"):
        if getattr(ov, name) is not None and not isinstance(getattr(ov, name), (bool, np.bool_)):
            raise bad(name, "true or false")
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
    from brainseg_cli.models import img_size_multiple, model_options, plan_unet_topology

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
    key = (name, dims, in_ch, k, json.dumps(_jsonable(config), sort_keys=True))
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

    from brainseg_cli.models import build_model

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


def make_plan(
    *,
    fingerprint: Mapping[str, Any],
    info: Any,
    overrides: PlanOverrides = PlanOverrides(),
    device: str = "cpu",
) -> dict[str, Any]:
    """Make the training plan (rules in the module docstring).

    Args:
        fingerprint: from :func:`brainseg_cli.data.fingerprint.compute_fingerprint`.
        info: the :class:`~brainseg_cli.data.layout.DatasetInfo` (channels, labels, regions).
        overrides: user choices.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the device type decides the budget).

    Returns:
        The plan dict (keys in docs/ARCHITECTURE.md, "Planning and preprocessing (as built)").

    Raises:
        ConfigError: an invalid override or combination (one line naming the value).
    """
    from brainseg_cli.models import model_info  # the registry imports torch

    ov = overrides
    decisions: dict[str, str] = {}
    device_type = str(device).split(":")[0]
    if device_type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda or cuda:N")
    gpu = device_type == "cuda"
    weighting = ov.slice_weighting or "uniform"
    if weighting not in SLICE_WEIGHTINGS:
        raise ConfigError(f"unknown slice weighting '{weighting}'; valid: {', '.join(SLICE_WEIGHTINGS)}")

    # --- orientation, spacing, shapes (in the plan orientation's axes)
    fp_orient = fingerprint["orientation"]
    orientation = check_orientation(ov.orientation) if ov.orientation else fp_orient
    decisions["orientation"] = ("given" if ov.orientation else "the majority orientation of the cases")
    spacing = np.array(reorient_values(fingerprint["spacing_median"], fp_orient, orientation), dtype=float)
    spacing10 = np.array(reorient_values(fingerprint["spacing_10th"], fp_orient, orientation), dtype=float)
    shape = np.array(reorient_values(fingerprint["shape_median"], fp_orient, orientation), dtype=float)
    eight_bit = all(c.get("eight_bit", False) for c in fingerprint["intensity"])
    ratio = float(spacing.max() / spacing.min())
    anisotropic = ratio > ANISOTROPY_THRESHOLD

    # --- configuration
    model_dims = model_info(ov.model).dims if ov.model else (2, 3)
    if ov.config is not None:  # values and types of every override: check_overrides
        config = ov.config
        decisions["config"] = "given"
    elif ov.patch_size is not None:
        config = f"{len(ov.patch_size)}d"
        decisions["config"] = f"{config}: the given patch size has {len(ov.patch_size)} values"
    elif len(model_dims) == 1:
        config = f"{model_dims[0]}d"
        decisions["config"] = f"{config}: model '{ov.model}' is {config} only"
    elif anisotropic:
        config = "2d"
        decisions["config"] = f"2d: anisotropic spacing (max/min {ratio:.2f} > {ANISOTROPY_THRESHOLD:g})"
    elif eight_bit:
        config = "2d"
        decisions["config"] = "2d: 8-bit slice data (every channel integer-valued in [0, 255])"
    elif not gpu:
        config = "2d"
        decisions["config"] = ("2d: training on a CPU (the cross-validated CPU recipe is 2-D; a GPU would get 3d for "
                               f"this near-isotropic spacing, max/min {ratio:.2f}; --config 3d to choose it)")
    else:
        config = "3d"
        decisions["config"] = f"3d: near-isotropic spacing (max/min {ratio:.2f} <= {ANISOTROPY_THRESHOLD:g})"
    dims = 2 if config == "2d" else 3

    # --- slice axis
    slice_axis: int | None = None
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
                slice_axis = _axial_axis(orientation)
                decisions["slice_axis"] = f"axial (the S/I axis of orientation {orientation}); no axis is coarsest"
    elif ov.slice_axis is not None:
        raise ConfigError("a slice axis is only meaningful for a 2d plan (config is 3d)")
    slice_context = 0
    if ov.slice_context is not None:
        if config != "2d" and ov.slice_context:
            raise ConfigError("a slice context is only meaningful for a 2d plan (config is 3d)")
        slice_context = int(ov.slice_context)
        decisions["slice_context"] = "given"

    # --- target spacing
    if ov.target_spacing is not None:
        target = np.array([float(t) for t in ov.target_spacing])
        decisions["target_spacing"] = "given"
    else:
        target = spacing.copy()
        decisions["target_spacing"] = "median spacing"
        worst = int(np.argmax(target))
        others = [a for a in range(3) if a != worst]
        sizes = shape * spacing / target
        if target[worst] > ANISOTROPY_THRESHOLD * max(target[others]) and \
                sizes[worst] * ANISOTROPY_THRESHOLD < min(sizes[others]):
            target[worst] = max(spacing10[worst], max(target[others]))
            decisions["target_spacing"] = (f"median spacing; low-resolution axis {worst} set to the 10th percentile "
                                           "of its spacings (nnU-Net anisotropy rule)")

    # --- labels, regions, classes
    labels = dict(info.labels)
    regions: dict[str, list[int]] = {}
    region_based = False
    if ov.regions == "none":
        regions = {k: list(v) for k, v in info.regions.items()}
        decisions["regions"] = "given: softmax over the labels"
    elif ov.regions is not None:
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
        region_based = True
        decisions["regions"] = "given"
    else:
        regions = {k: list(v) for k, v in info.regions.items()}
        region_based = nested_regions(regions)
        decisions["regions"] = (
            "region-based (sigmoid outputs): the dataset's regions nest, as BraTS's WT > TC > ET (nnU-Net's BraTS "
            "recipe; better tumour core and enhancing tumour in cross-validation)" if region_based
            else "softmax over the labels: the dataset defines no nested regions")
    num_outputs = len(regions) if region_based else len(labels)
    # 2.5-D: every channel at the slice and its `slice_context` neighbours on each side (channel-major).
    in_channels = len(info.channels) * (2 * slice_context + 1)

    # --- normalisation
    if ov.normalization is not None:
        if ov.normalization not in NORMALIZATION_SCHEMES:
            raise ConfigError(f"unknown normalization '{ov.normalization}'; valid: {', '.join(NORMALIZATION_SCHEMES)}")
        scheme = ov.normalization
        decisions["normalization"] = "given"
    else:
        scheme = "clip_zscore" if eight_bit else "zscore"
        decisions["normalization"] = ("clip_zscore: 8-bit slice data" if eight_bit
                                      else "zscore inside the brain mask")
    normalization = [{"channel": c, "scheme": scheme, "lower_pct": 10.0, "upper_pct": 99.0} for c in info.channels]

    # --- model
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

    # --- budget
    memory_gb = float(ov.memory_gb) if ov.memory_gb is not None else DEFAULT_MEMORY_GB
    step_target = float(ov.step_seconds) if ov.step_seconds is not None else DEFAULT_STEP_SECONDS
    gflops = float(ov.cpu_gflops) if ov.cpu_gflops is not None else CPU_GFLOPS
    spatial_axes = [a for a in range(3) if a != slice_axis] if dims == 2 else [0, 1, 2]

    costs: dict[tuple, tuple[dict, dict]] = {}

    def estimate(patch: Sequence[int], batch: int, sp: Sequence[float]) -> tuple[dict, dict]:
        key = (tuple(int(p) for p in patch), tuple(float(v) for v in sp))
        if key not in costs:
            cfg_k = _model_config(model_name, dims, patch, sp, base_cfg)
            costs[key] = (cfg_k, network_cost(model_name, spatial_dims=dims, in_channels=in_channels,
                                              num_classes=num_outputs, config=cfg_k, patch_size=patch))
        cfg, cost = costs[key]
        if gpu:
            mem = (batch * cost["activations"] * GPU_BYTES_PER_ACTIVATION + cost["parameters"] * 16) / 1e9 + GPU_OVERHEAD_GB
        else:
            mem = (batch * cost["activations"] * CPU_BYTES_PER_ACTIVATION + cost["parameters"] * 16) / 1e9
        seconds = 3.0 * cost["flops"] * batch / (gflops * 1e9)
        return cfg, {"memory_gb": mem, "step_seconds": seconds}

    def fits(est: Mapping[str, float]) -> bool:
        if est["memory_gb"] > memory_gb:
            return False
        return gpu or est["step_seconds"] <= step_target

    def fitted_patch(sp: np.ndarray, start: Sequence[int], limit: Sequence[float], batch: int) -> tuple[list[int], dict, dict]:
        """Pad ``start`` to the divisor and shrink it until ``batch`` samples fit the budget."""
        sp_axes = [float(sp[a]) for a in spatial_axes]
        patch = [max(1, int(p)) for p in start]
        cfg = _model_config(model_name, dims, patch, sp_axes, base_cfg)
        patch = _pad_up(patch, _divisor(model_name, dims, in_channels, num_outputs, cfg))
        cfg, est = estimate(patch, batch, sp_axes)
        for _ in range(200):
            if fits(est):
                break
            div = _divisor(model_name, dims, in_channels, num_outputs, cfg)
            rel = [p / max(m, 1.0) for p, m in zip(patch, limit)]
            order = sorted(range(dims), key=lambda a: (-rel[a], -patch[a]))
            axis = next((a for a in order if patch[a] - div[a] >= div[a]), None)
            if axis is None:
                break
            patch[axis] -= div[axis]
            cfg = _model_config(model_name, dims, patch, sp_axes, base_cfg)
            patch = _pad_up(patch, _divisor(model_name, dims, in_channels, num_outputs, cfg))
            cfg, est = estimate(patch, batch, sp_axes)
        return patch, cfg, est

    def median_shape_at(sp: np.ndarray) -> np.ndarray:
        return np.maximum(1.0, shape * spacing / sp)

    min_batch = 2
    batch_given = ov.batch_size
    if ov.patch_size is not None:
        if len(ov.patch_size) != dims:
            raise ConfigError(f"a {config} patch size needs {dims} positive values, got {list(ov.patch_size)}")

    # CPU 3-D: lower resolution when the whole median brain box does not fit the step budget.
    if not gpu and dims == 3 and ov.target_spacing is None and ov.patch_size is None:
        full = [int(math.ceil(v)) for v in median_shape_at(target)]
        cfg0 = _model_config(model_name, dims, full, list(target), base_cfg)
        full = _pad_up(full, _divisor(model_name, dims, in_channels, num_outputs, cfg0))
        _, est_full = estimate(full, batch_given or min_batch, list(target))
        coarse = np.maximum(target, CPU_LOWRES_SPACING_MM)
        if not fits(est_full) and np.any(coarse > target):
            decisions["target_spacing"] += (
                f"; CPU: the median brain box {full} at {_round(target, 3)} mm needs "
                f"{est_full['step_seconds']:.2f} s per step (> {step_target:g} s), so every axis is at least "
                f"{CPU_LOWRES_SPACING_MM:g} mm (3d lowres; --config 2d keeps full in-plane resolution)")
            target = coarse

    plane_target = [float(target[a]) for a in spatial_axes]
    median_plane = [float(median_shape_at(target)[a]) for a in spatial_axes]
    if ov.patch_size is not None:
        patch = [int(p) for p in ov.patch_size]
        try:
            cfg = _model_config(model_name, dims, patch, plane_target, base_cfg)
            padded = _pad_up(patch, _divisor(model_name, dims, in_channels, num_outputs, cfg))
            if padded != patch:
                decisions["patch_size"] = f"given {patch}, padded to {padded} (multiple of the size divisor)"
            else:
                decisions["patch_size"] = "given"
            patch = padded
            cfg, est = estimate(patch, batch_given or min_batch, plane_target)
        except ConfigError as exc:
            raise ConfigError(f"patch size {'x'.join(map(str, ov.patch_size))} does not fit model '{model_name}' "
                              f"at {'x'.join(f'{s:g}' for s in plane_target)} mm: {exc}") from None
    else:
        sp_iso = 1.0 / np.asarray(plane_target)
        volume = 256.0 ** 3 if dims == 3 else 2048.0 ** 2
        start = sp_iso * (volume / np.prod(sp_iso)) ** (1.0 / dims)
        start = [int(round(min(s, m))) for s, m in zip(start, median_plane)]
        patch, cfg, est = fitted_patch(np.asarray(target), start, median_plane, batch_given or min_batch)
        decisions["patch_size"] = (f"largest patch (capped at the median shape {[round(m) for m in median_plane]}) "
                                   f"whose batch of {batch_given or min_batch} fits the "
                                   f"{'memory' if gpu else 'step-time'} budget")

    # --- batch size
    if batch_given is not None:
        batch = int(batch_given)
        decisions["batch_size"] = "given"
        cfg, est = estimate(patch, batch, plane_target)
    else:
        batch = min_batch
        total_voxels = float(np.prod(median_shape_at(target))) * int(fingerprint["num_cases"])
        cap = max(min_batch, int(MAX_BATCH_DATASET_FRACTION * total_voxels / float(np.prod(patch))))
        grow = gpu or dims == 2
        while grow and batch < min(cap, MAX_BATCH):
            _, nxt = estimate(patch, batch + 1, plane_target)
            if not fits(nxt):
                break
            batch += 1
            est = nxt
        decisions["batch_size"] = (f"{batch}: " + ("largest that fits the budget" if grow else "nnU-Net's 3-D batch")
                                   + (f" (capped at 5% of the dataset's voxels: {cap})" if batch == cap else ""))
    cfg, est = estimate(patch, batch, plane_target)
    budget = {
        "kind": "gpu-memory" if gpu else "cpu-time",
        "device": str(device),
        "memory_gb": memory_gb,
        "estimated_memory_gb": round(est["memory_gb"], 3),
        "step_seconds_target": None if gpu else step_target,
        "estimated_step_seconds": None if gpu else round(est["step_seconds"], 3),
        "cpu_gflops": None if gpu else gflops,
        "assumes": "mixed-precision training" if gpu else "fp32 training",
    }
    if not fits(est):
        logger.warning("plan exceeds its %s budget: %s", budget["kind"], est)
        decisions["budget"] = f"over budget with the given values: {est}"
    else:
        decisions["budget"] = ("GPU memory decided patch and batch" if gpu
                               else "CPU step time decided resolution, patch and batch; memory only caps")

    # --- sampling
    sampling = {
        "foreground_fraction": DEFAULT_FOREGROUND_FRACTION if ov.foreground_fraction is None else float(ov.foreground_fraction),
        "slice_weighting": weighting,
        "drop_edge_slices": bool(ov.drop_edge_slices) if ov.drop_edge_slices is not None else False,
    }
    # --- loss: Dice per sample unless asked. nnU-Net plans batch Dice for 2-D; on BraTS 2-D region-based
    # training it made the models under-segment (README, "Results": the held-out HGG case's WT Dice fell
    # from 0.89 to 0.71, recall 0.57), since it also charges false positives on slices without tumour.
    if ov.batch_dice is not None:
        batch_dice = bool(ov.batch_dice)
        decisions["batch_dice"] = "given"
    else:
        batch_dice = False
        decisions["batch_dice"] = "Dice per sample (default)"
    fp_summary = {k: v for k, v in fingerprint.items() if k != "cases"}
    plan = {
        "format_version": PLAN_VERSION,
        "dataset": info.name,
        "config": config,
        "channels": list(info.channels),
        "labels": labels,
        "num_classes": len(labels),
        "regions": regions,
        "region_based": region_based,
        "source_labels": source_labels(info.extra),
        "orientation": orientation,
        "target_spacing": _round(target, 5),
        "slice_axis": slice_axis,
        "slice_context": slice_context,
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "normalization": normalization,
        "crop_to_brain": True if ov.crop_to_brain is None else bool(ov.crop_to_brain),
        "background": "border",
        "resampling": {"image_order": 3, "label_order": 0, "probability_order": 1,
                       "anisotropy_threshold": ANISOTROPY_THRESHOLD},
        "sampling": sampling,
        "loss": {"batch_dice": batch_dice},
        "model": {"name": model_name, "spatial_dims": dims, "in_channels": in_channels, "num_classes": num_outputs,
                  "config": _jsonable(cfg)},
        "budget": budget,
        "fingerprint": fp_summary,
        "decisions": decisions,
    }
    return plan


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


#: Plan keys that change the preprocessed data (the cache is keyed on them).
PREPROCESSING_KEYS = ("config", "channels", "orientation", "target_spacing", "slice_axis", "normalization",
                      "crop_to_brain", "background", "resampling")


def preprocessing_key(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``plan`` the preprocessed data depend on."""
    return {k: plan[k] for k in PREPROCESSING_KEYS}


_REQUIRED = ("format_version", "config", "channels", "labels", "orientation", "target_spacing", "slice_axis",
             "patch_size", "batch_size", "normalization", "crop_to_brain", "model", "sampling", "region_based",
             "regions")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value) and value > 0)


def check_plan_values(plan: Mapping[str, Any], *, what: str = "plan") -> None:
    """Check the value of every plan key that prediction and training compute with.

    Args:
        plan: a plan dict (keys as written by :func:`make_plan`).
        what: the file it came from, named in the message.

    Raises:
        InputError: one line naming ``what``, the key and its value.
    """
    def bad(key: str, expected: str) -> InputError:
        return InputError(f"{what}: plan key {key} must be {expected}, got {plan.get(key)!r:.120}")

    dims = 2 if plan.get("config") == "2d" else 3
    patch = plan.get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) != dims or not all(_is_int(p) and p > 0 for p in patch):
        raise bad("patch_size", f"{dims} positive integers (a {plan.get('config')} plan)")
    if not (_is_int(plan.get("batch_size")) and plan["batch_size"] > 0):
        raise bad("batch_size", "a positive integer")
    spacing = plan.get("target_spacing")
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(_is_positive_number(v) for v in spacing):
        raise bad("target_spacing", "3 positive, finite spacings in mm")
    axis = plan.get("slice_axis")
    if (dims == 2 or axis is not None) and (axis not in (0, 1, 2) or isinstance(axis, bool)):
        raise bad("slice_axis", "0, 1 or 2" + ("" if dims == 2 else " (or null for a 3-D plan)"))
    context = plan.get("slice_context", 0)
    if not (_is_int(context) and 0 <= context and (context == 0 or dims == 2)):
        raise bad("slice_context", "a non-negative integer (2-D plans only)")
    channels = plan.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) and c for c in channels):
        raise bad("channels", "a non-empty list of channel names")
    labels = plan.get("labels")
    if not isinstance(labels, Mapping) or not labels or not all(_is_int(v) and v >= 0 for v in labels.values()):
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
            isinstance(v, list) and v and all(_is_int(x) for x in v) for v in regions.values()):
        raise bad("regions", "a mapping of region names to lists of labels")
    norm = plan.get("normalization")
    if not isinstance(norm, list) or len(norm) != len(channels) or not all(isinstance(n, Mapping) for n in norm):
        raise bad("normalization", f"one entry per channel ({len(channels)})")
    model = plan.get("model")
    if not (isinstance(model, Mapping) and isinstance(model.get("name"), str) and isinstance(model.get("config"), Mapping)):
        raise bad("model", "{'name': str, 'config': {...}, ...}")


def validate_plan(plan: Any, *, what: str = "plan") -> dict[str, Any]:
    """Check that ``plan`` has the keys and value types of a plan; return it as a dict.

    Raises:
        InputError: a key is missing, a value is invalid (:func:`check_plan_values`) or the
            version/config is unsupported (names ``what``).
    """
    if not isinstance(plan, dict):
        raise InputError(f"{what}: a plan must be a JSON object, got {type(plan).__name__}")
    missing = [k for k in _REQUIRED if k not in plan]
    if missing:
        raise InputError(f"{what}: plan is missing key(s) {', '.join(missing)}")
    if plan["format_version"] != PLAN_VERSION:
        raise InputError(f"{what}: plan format_version {plan['format_version']!r} is not supported (expected {PLAN_VERSION})")
    if plan["config"] not in CONFIGS:
        raise InputError(f"{what}: plan config {plan['config']!r} is not 2d or 3d")
    dims = 2 if plan["config"] == "2d" else 3
    if not isinstance(plan["patch_size"], (list, tuple)) or len(plan["patch_size"]) != dims:
        raise InputError(f"{what}: a {plan['config']} plan needs {dims} patch sizes, got {plan['patch_size']}")
    check_plan_values(plan, what=what)
    return plan


def save_plan(plan: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``plan`` as indented JSON, atomically; return the path."""
    from brainseg_cli.io import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(plan), indent=2) + "\n", encoding="utf-8")
    return path


def load_plan(path: str | Path) -> dict[str, Any]:
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
