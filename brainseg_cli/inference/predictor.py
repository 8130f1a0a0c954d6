"""The predictor: an ensemble of checkpoints that turns one input volume into probabilities and labels.

Per case (:meth:`Predictor.predict`, or :meth:`Predictor.prepare` then :meth:`Predictor.predict_prepared`):

1. each checkpoint's plan preprocesses the image exactly as in training
   (:func:`brainseg_cli.data.preprocessing.preprocess_case`: reorientation, brain crop,
   normalisation, resampling). Checkpoints whose plans preprocess identically share one pass;
2. the network predicts the preprocessed volume with :func:`sliding_window_predict` (Gaussian
   weighting, optional mirroring); a 2-D network runs slice by slice along the plan's
   ``slice_axis`` (an axis of the reoriented, preprocessed volume, so the input's own orientation
   does not matter);
3. the probabilities of checkpoints sharing a plan are averaged, taken back to the input grid by
   :func:`brainseg_cli.data.preprocessing.restore_to_original` (probabilities are resampled, not
   labels; the low-resolution axis of anisotropic data separately; the brain crop undone), and the
   groups averaged there (every checkpoint weighs the same);
4. argmax (softmax models) or the region order (sigmoid models), then largest-component
   post-processing (:meth:`Predictor.largest_component_groups`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli import choices
from brainseg_cli.checkpoint import REQUIRED_KEYS, build_model_from_checkpoint, load_checkpoint
from brainseg_cli.data.plan_schema import Plan
from brainseg_cli.data.preprocessing import preprocess_case, restore_to_original
from brainseg_cli.errors import CheckpointError, ConfigError, InputError
from brainseg_cli.inference import engines
from brainseg_cli.inference.postprocess import (
    agreed_groups,
    agreed_min_volumes,
    agreed_thresholds,
    apply_largest_component,
    check_min_volumes,
    check_thresholds,
    decided_groups,
    grow_regions,
    label_value_dtype,
    probabilities_to_labels,
    remove_small_regions,
)
from brainseg_cli.inference.sliding_window import sliding_window_predict
from brainseg_cli.io import Image
from brainseg_cli.models.precision import PRECISIONS

logger = logging.getLogger(__name__)

#: ``predict --engine`` choices: the model file's own engine, PyTorch, or ONNX Runtime.
ENGINES: tuple[str, ...] = choices.ENGINES
#: ``--lcc`` choices: the checkpoint's decision, every foreground voxel as one group, or none.
LCC_MODES: tuple[str, ...] = choices.LCC_MODES

#: Plan keys that preprocessing depends on (checkpoints equal in these share one preprocessing pass).
_PREPROCESSING_KEYS: tuple[str, ...] = (
    "channels", "orientation", "crop_to_brain", "normalization", "target_spacing", "config", "slice_axis",
    "resampling", "background",
)
_REQUIRED_PLAN_KEYS: tuple[str, ...] = ("config", "patch_size", "channels", "target_spacing", "normalization")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` into a torch device.

    ``"auto"`` is the first GPU when CUDA is available, else the CPU.

    Raises:
        ConfigError: an unknown device name, or a GPU that this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}' asked for, but CUDA is not available on this machine")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"invalid device '{device}' (use auto, cpu, cuda or cuda:N)") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    raise ConfigError(f"invalid device '{device}' (use auto, cpu, cuda or cuda:N)")


@dataclass(frozen=True, eq=False)
class EnsembleMember:
    """One loaded checkpoint.

    Attributes:
        path: the checkpoint file.
        checkpoint: the checkpoint dict without ``state_dict`` (and resume keys).
        network: the network, in eval mode, on the predictor's device (for ``onnxruntime`` an
            :class:`~brainseg_cli.inference.engines.OnnxRuntimeNetwork`).
        engine: ``torch`` or ``onnxruntime``: what runs ``network``.
    """

    path: Path
    checkpoint: dict[str, Any]
    network: nn.Module
    engine: str = "torch"

    @functools.cached_property
    def plan(self) -> Plan:
        """The checkpoint's plan (checked by :func:`load_member`)."""
        return Plan.from_dict(self.checkpoint["plan"], what=f"checkpoint {self.path}", required=_REQUIRED_PLAN_KEYS)


def _plan_key(plan: Plan) -> str:
    data = plan.to_dict()
    return json.dumps({k: data.get(k) for k in _PREPROCESSING_KEYS}, sort_keys=True, default=str)


def load_member(path: str | os.PathLike[str], *, device: torch.device, engine: str = "auto") -> EnsembleMember:
    """Load one model file, check what prediction needs, and build what runs its network.

    Args:
        path: a checkpoint (``best.pt``, read ``weights_only``) or a file written by ``brainseg export``
            (``.onnx``, or a TorchScript archive).
        device: where the network runs.
        engine: ``auto`` (the file's own: ONNX files on ONNX Runtime, the rest on PyTorch), ``torch`` or
            ``onnxruntime`` (a checkpoint is then exported to ONNX in memory).

    Raises:
        CheckpointError: foreign or damaged file, or metadata lacking what prediction needs (one line
            naming the file).
        ConfigError: an unknown engine, or one that cannot run this file.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; valid: {', '.join(ENGINES)}")
    path = Path(path)
    kind = engines.export_format(path)
    if kind == "onnx":
        if engine == "torch":
            raise ConfigError(f"{path}: an ONNX export runs on --engine onnxruntime or openvino (auto: onnxruntime), "
                              "not torch; give the checkpoint for the torch engine")
        meta, data = engines.read_onnx_metadata(path)
        _check_metadata(meta, path, required=[k for k in REQUIRED_KEYS if k != "state_dict"])
        chosen = "onnxruntime" if engine == "auto" else engine
        network: nn.Module = engines.onnx_network(chosen, data, device=device, source=str(path))
        return EnsembleMember(path=path, checkpoint=meta, network=network, engine=chosen)
    if kind == "torchscript":
        if engine in engines.ONNX_ENGINES:
            raise ConfigError(f"{path}: a TorchScript export runs on --engine torch (or auto); export to .onnx for "
                              "onnxruntime")
        meta, network = engines.read_torchscript(path, device=device)
        _check_metadata(meta, path, required=[k for k in REQUIRED_KEYS if k != "state_dict"])
        return EnsembleMember(path=path, checkpoint=meta, network=network, engine="torch")
    ckpt = load_checkpoint(path, map_location="cpu")
    _check_metadata(ckpt, path, required=[])
    network = build_model_from_checkpoint(ckpt, source=path)
    network.eval()
    meta = engines.without_weights(ckpt)
    if engine in engines.ONNX_ENGINES:
        graph = engines.onnx_bytes(network, engines.example_window(ckpt))
        return EnsembleMember(path=path, checkpoint=meta, network=engines.onnx_network(
            engine, graph, device=device, source=str(path)), engine=engine)
    return EnsembleMember(path=path, checkpoint=meta, network=network.to(device), engine="torch")


def _check_metadata(ckpt: Mapping[str, Any], path: Path, *, required: Sequence[str]) -> None:
    """What prediction reads from a checkpoint or an export's metadata must be there and sound."""
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: its metadata lacks {', '.join(missing)}")
    plan = ckpt["plan"]
    if not isinstance(plan, dict):
        raise CheckpointError(f"checkpoint {path}: 'plan' is a {type(plan).__name__}, not a dict")
    missing = [k for k in _REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise CheckpointError(f"checkpoint {path}: its plan lacks {', '.join(missing)}")
    if plan["config"] not in ("2d", "3d"):
        raise CheckpointError(f"checkpoint {path}: plan config is {plan['config']!r}, not '2d' or '3d'")
    if plan["config"] == "2d" and plan.get("slice_axis") not in (0, 1, 2):
        raise CheckpointError(f"checkpoint {path}: a 2-D plan needs slice_axis 0, 1 or 2, got {plan.get('slice_axis')!r}")
    context = plan.get("slice_context", 0)
    if isinstance(context, bool) or not isinstance(context, int) or context < 0 or (context and plan["config"] != "2d"):
        raise CheckpointError(f"checkpoint {path}: slice_context must be a non-negative integer (2-D plans only), "
                              f"got {context!r}")
    try:
        Plan.from_dict(plan, what=f"checkpoint {path}", required=_REQUIRED_PLAN_KEYS)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    if list(ckpt["channels"]) != list(plan["channels"]):
        raise CheckpointError(f"checkpoint {path}: channels {ckpt['channels']} differ from its plan's {plan['channels']}")
    _check_region_values(ckpt, path, "region_thresholds", check_thresholds)
    _check_region_values(ckpt, path, "region_min_volumes", check_min_volumes)


def _check_region_values(ckpt: Mapping[str, Any], path: Path, key: str, check: Any) -> None:
    """A checkpoint's per-region decision (``region_thresholds``: numbers in (0, 0.5]; ``region_min_volumes``:
    numbers >= 0) must name only its regions and hold valid values."""
    raw = ckpt.get(key)
    if raw is None:
        return
    regions = ckpt.get("regions") or {}
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path}: {key} is a {type(raw).__name__}, not a dict")
    for name in raw:
        if name not in regions:
            raise CheckpointError(f"checkpoint {path}: {key} names '{name}', which is not one of its "
                                  f"regions ({', '.join(map(str, regions)) or 'none'})")
    try:
        check(list(raw.values()), count=len(raw), what=f"checkpoint {path}: {key}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


@dataclass(frozen=True)
class PreparedCase:
    """One case checked and preprocessed by :meth:`Predictor.prepare`, ready for the network."""

    case: str
    """The case id."""
    groups: tuple[tuple[tuple[EnsembleMember, ...], np.ndarray, Any], ...]
    """Per group of checkpoints sharing a plan: the members, the network input ``(C, x, y, z)``
    float32 and the :class:`~brainseg_cli.data.preprocessing.PreprocessInfo` that undoes it."""


class Predictor:
    """An ensemble of checkpoints (one or more) ready to predict volumes.

    Build it with :meth:`from_checkpoints`. All members must share channels, labels and output
    kind (softmax classes or the same ordered sigmoid regions); their plans may differ.
    """

    def __init__(
        self,
        members: Sequence[EnsembleMember],
        *,
        device: torch.device,
        precision: str = "fp32",
        tta: bool = False,
        overlap: float = 0.5,
        batch_size: int | None = None,
        region_threshold: float | None = None,
    ) -> None:
        """Wrap loaded members (see :meth:`from_checkpoints` for the arguments)."""
        if not members:
            raise ConfigError("prediction needs at least one checkpoint")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size is None:
            batch_size = max(engines.WINDOW_BATCH[m.engine] for m in members)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        first = members[0]
        for m in members[1:]:
            for key in ("channels", "labels", "regions"):
                if _normalised(m.checkpoint[key]) != _normalised(first.checkpoint[key]):
                    raise CheckpointError(f"checkpoint {m.path}: {key} {m.checkpoint[key]} differ from "
                                          f"{first.path.name}'s {first.checkpoint[key]}; an ensemble must agree")
            if m.plan.region_based != first.plan.region_based:
                raise CheckpointError(f"checkpoint {m.path}: region-based outputs differ from {first.path.name}'s")
        on_onnx = [m.path.name for m in members if m.engine != "torch"]
        if on_onnx and precision != "fp32":
            raise ConfigError(f"--precision {precision}: the {members[0].engine} engine runs the exported graph in fp32 "
                              f"({', '.join(on_onnx)}); use --precision fp32 or --engine torch")
        self.members = list(members)
        self.device = device
        self.precision = precision
        self.tta = tta
        self.overlap = overlap
        self.batch_size = batch_size
        if region_threshold is not None:
            if not self.region_based:
                raise ConfigError(f"a region threshold ({region_threshold}) applies to region-based (sigmoid) "
                                  f"checkpoints only; {first.path.name} has softmax classes")
            check_thresholds([region_threshold], count=1, what="--region-threshold")
        self.region_threshold = region_threshold

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        tta: bool = False,
        overlap: float = 0.5,
        batch_size: int | None = None,
        region_threshold: float | None = None,
        engine: str = "auto",
    ) -> Predictor:
        """Load checkpoints (``torch.load(weights_only=True)``) into a predictor.

        Args:
            paths: one checkpoint, or several (e.g. the five folds): probabilities are averaged.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast for the network).
            tta: average over mirrored inputs.
            overlap: sliding-window overlap in [0, 1).
            batch_size: windows per network call; None: the engines' (:data:`~brainseg_cli.inference.engines.WINDOW_BATCH`,
                the largest over the members).
            region_threshold: one growing threshold in (0, 0.5] for every region of a region-based
                model, overriding the checkpoints' ``region_thresholds``; None = theirs (see
                :meth:`thresholds` and :meth:`labels_from_probabilities`).
            engine: ``auto`` (each file's own), ``torch`` or ``onnxruntime`` (see :func:`load_member`).

        Raises:
            CheckpointError: a foreign or damaged checkpoint, or checkpoints that disagree.
            ConfigError: invalid device, precision, overlap, batch size or region threshold (or a
                region threshold for a softmax model).
        """
        dev = resolve_device(device)
        members = [load_member(p, device=dev, engine=engine) for p in paths]
        return cls(members, device=dev, precision=precision, tta=tta, overlap=overlap, batch_size=batch_size,
                   region_threshold=region_threshold)

    # ------------------------------------------------------------------------------ properties
    @property
    def checkpoint(self) -> dict[str, Any]:
        """The first member's checkpoint metadata (channels, labels, regions, plan, ...)."""
        return self.members[0].checkpoint

    @property
    def channels(self) -> list[str]:
        """Canonical input channel names, in the network's input order."""
        return list(self.checkpoint["channels"])

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value (``background`` 0 included)."""
        return {str(k): int(v) for k, v in self.checkpoint["labels"].items()}

    @property
    def region_based(self) -> bool:
        """True when the network has one sigmoid output per region."""
        return self.members[0].plan.region_based

    @property
    def regions(self) -> dict[str, list[int]]:
        """Region name -> label values, in output order for region-based models."""
        return {str(k): [int(v) for v in vs] for k, vs in (self.checkpoint.get("regions") or {}).items()}

    def thresholds(self) -> dict[str, float] | None:
        """The growing threshold of each region (region-based models; None for softmax models).

        The ``region_threshold`` given to the predictor for every region; else the checkpoint's
        ``region_thresholds`` (0.5 for a region it does not name, e.g. a checkpoint written before
        the decision existed). An ensemble grows a region only where every member decided to grow it,
        to the highest of their thresholds (:func:`~brainseg_cli.inference.postprocess.agreed_thresholds`).

        Returns:
            ``{region name: threshold}`` in output order, or None.
        """
        if not self.region_based:
            return None
        if self.region_threshold is not None:
            return {name: float(self.region_threshold) for name in self.regions}
        return agreed_thresholds([m.checkpoint.get("region_thresholds") or {} for m in self.members],
                                 list(self.regions))

    def min_volumes(self) -> dict[str, float] | None:
        """The volume (mm³) under which each predicted region is removed (region-based models; None for softmax).

        The checkpoint's ``region_min_volumes`` (0 for a region it does not name, e.g. a checkpoint
        written before the decision existed: never removed); an ensemble removes a region only below
        the smallest of its members' minimums (:func:`~brainseg_cli.inference.postprocess.agreed_min_volumes`).

        Returns:
            ``{region name: mm³}`` in output order, or None.
        """
        if not self.region_based:
            return None
        return agreed_min_volumes([m.checkpoint.get("region_min_volumes") or {} for m in self.members],
                                  list(self.regions))

    @property
    def output_names(self) -> list[str]:
        """Name of each probability channel: the classes by value, or the regions in order."""
        if self.region_based:
            return list(self.regions)
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]

    @property
    def spatial_dims(self) -> int:
        """2 for 2-D networks (run slice by slice), 3 for 3-D networks."""
        return self.members[0].plan.spatial_dims

    def source_label_map(self) -> dict[int, int]:
        """``{canonical value: source value}`` from the plan's ``source_labels`` (for ``--labels source``).

        Raises:
            ConfigError: the checkpoint records no source label mapping, or it is malformed.
        """
        raw = self.members[0].plan.source_labels
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError(f"checkpoint {self.members[0].path} records no source label mapping "
                              "(plan['source_labels']); use --labels model")
        try:
            mapping = {int(k): int(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"checkpoint {self.members[0].path}: plan['source_labels'] is malformed: {dict(raw)}") from None
        mapping.setdefault(0, 0)
        missing = sorted(set(self.labels.values()) - set(mapping))
        if missing:
            raise ConfigError(f"checkpoint {self.members[0].path}: plan['source_labels'] has no value for label(s) {missing}")
        return mapping

    def largest_component_groups(self, lcc: str) -> list[list[int]]:
        """The label groups keep-largest-component is applied to, in order.

        Args:
            lcc: ``"auto"``: the checkpoint's ``postprocessing`` decision (label names -> their
                value; region names -> the region's labels as one group; ``"all foreground"`` ->
                every foreground label as one group), in the order stored; for an ensemble the
                groups every member decided on (:func:`~brainseg_cli.inference.postprocess.agreed_groups`),
                in the first member's order; ``"on"``: every
                foreground label together as one group (removes islands of the whole
                segmentation); ``"off"``: none.

        Returns:
            A list of label groups.
        """
        if lcc not in LCC_MODES:
            raise ConfigError(f"unknown --lcc mode '{lcc}'; valid: {', '.join(LCC_MODES)}")
        if lcc == "off":
            return []
        foreground = sorted(v for v in self.labels.values() if v != 0)
        if lcc == "on":
            return [foreground] if foreground else []
        return agreed_groups([decided_groups(m.checkpoint.get("postprocessing") or {}, labels=self.labels,
                                             regions=self.regions, source=f"checkpoint {m.path}")
                              for m in self.members])

    # ------------------------------------------------------------------------------ prediction
    def _predict_member(self, member: EnsembleMember, data: np.ndarray) -> np.ndarray:
        plan = member.plan
        two_d = plan.two_d
        probs = sliding_window_predict(
            member.network, torch.from_numpy(data), patch_size=plan.patch_size, overlap=self.overlap,
            batch_size=self.batch_size, tta=self.tta, precision=self.precision, device=self.device,
            activation="sigmoid" if self.region_based else "softmax",
            slice_axis=plan.slice_axis if two_d else None,
            slice_context=plan.slice_context if two_d else 0,
        )
        return probs.numpy()

    def prepare(self, image: Image, *, case: str = "<image>") -> PreparedCase:
        """Check one volume and preprocess it for every plan of the ensemble (no network involved).

        Separate from :meth:`predict_prepared` so that a caller can prepare the next case (in
        another thread) while the network predicts the current one.

        Args:
            image: ``(C, X, Y, Z)`` image with channels in :attr:`channels` order (a one-channel
                image may omit the channel axis).
            case: the case id, named in error messages.

        Returns:
            The :class:`PreparedCase`: per group of checkpoints sharing a plan, the network input
            ``(C, x, y, z)`` float32 and what undoes the preprocessing.

        Raises:
            InputError: wrong channel count, a 2-D image, or NaN/inf voxels.
        """
        if image.spatial_dims != 3:
            raise InputError(f"case {case}: a {image.spatial_dims}-D image, but the model predicts 3-D volumes")
        if image.num_channels != len(self.channels):
            raise InputError(f"case {case}: {image.num_channels} channel(s) but the model needs "
                             f"{len(self.channels)} ({', '.join(self.channels)})")
        if not np.isfinite(np.asarray(image.array)).all():
            raise InputError(f"case {case}: the image has NaN or infinite voxels")
        groups: dict[str, list[EnsembleMember]] = {}
        for m in self.members:
            groups.setdefault(_plan_key(m.plan), []).append(m)
        inputs = []
        for members in groups.values():
            data, _, info = preprocess_case(image, members[0].plan)
            logger.debug("case %s: preprocessed %s -> %s", case, image.spatial_shape, data.shape[1:])
            inputs.append((tuple(members), data, info))
        return PreparedCase(case=case, groups=tuple(inputs))

    def predict_prepared(self, prepared: PreparedCase) -> np.ndarray:
        """Ensemble probabilities of a case from :meth:`prepare`, on the input's own grid.

        Returns:
            ``(K, X, Y, Z)`` float32: softmax class probabilities (K = number of labels) or sigmoid
            region probabilities (K = number of regions), on the input's voxel grid.
        """
        total = np.zeros((0,), dtype=np.float32)
        for index, (members, data, info) in enumerate(prepared.groups):
            acc = self._predict_member(members[0], data)
            for m in members[1:]:
                acc += self._predict_member(m, data)
            acc /= len(members)
            restored = restore_to_original(acc, info, background_class=not self.region_based)
            del acc
            if len(prepared.groups) > 1:  # weigh each group by its number of members
                restored *= len(members) / len(self.members)
            total = restored if index == 0 else total + restored
        return total.astype(np.float32, copy=False)

    def predict_probabilities(self, image: Image, *, case: str = "<image>") -> np.ndarray:
        """Ensemble probabilities of one volume on its own grid: :meth:`prepare`, then :meth:`predict_prepared`.

        Args:
            image: ``(C, X, Y, Z)`` image with channels in :attr:`channels` order (a one-channel
                image may omit the channel axis).
            case: the case id, named in error messages.

        Returns:
            ``(K, X, Y, Z)`` float32 probabilities on the input's voxel grid.

        Raises:
            InputError: wrong channel count, a 2-D image, or NaN/inf voxels.
        """
        return self.predict_prepared(self.prepare(image, case=case))

    def labels_from_probabilities(self, probs: np.ndarray, *, lcc: str = "auto",
                                  spacing: Sequence[float] | None = None) -> np.ndarray:
        """Label map from probabilities: argmax or region order, largest-component post-processing, region growing.

        Region-based models: labels at 0.5, then keep-largest-component (``lcc``), then each region
        grows into the connected voxels above its threshold (:meth:`thresholds`;
        :func:`~brainseg_cli.inference.postprocess.grow_regions`), then a region whose volume is under
        its minimum (:meth:`min_volumes`) takes the label of the region enclosing it
        (:func:`~brainseg_cli.inference.postprocess.remove_small_regions`).

        Args:
            probs: ``(K, X, Y, Z)`` from :meth:`predict_probabilities`.
            lcc: ``"auto"``, ``"on"`` or ``"off"`` (see :meth:`largest_component_groups`).
            spacing: the voxel spacing of ``probs`` in mm (the input image's), which region volumes are
                measured in; None: the plan's target spacing.

        Returns:
            ``(X, Y, Z)`` label map in the checkpoint's label values (uint8 when they fit).
        """
        regions = list(self.regions.values()) if self.region_based else None
        labels = probabilities_to_labels(probs, regions=regions)
        groups = self.largest_component_groups(lcc)
        if groups:
            labels = apply_largest_component(labels, labels_to_process=groups)
        cuts = self.thresholds()
        if cuts is not None:
            labels = grow_regions(labels, probs, regions=regions, thresholds=list(cuts.values()))
        minimums = self.min_volumes()
        if minimums is not None and any(v > 0 for v in minimums.values()):
            spacing = self.members[0].plan.target_spacing if spacing is None else spacing
            labels = remove_small_regions(labels, regions=regions, min_volumes=list(minimums.values()),
                                          voxel_volume=math.prod(float(s) for s in spacing))
        return labels

    def to_source_labels(self, labels: np.ndarray) -> np.ndarray:
        """Map a label map from the checkpoint's values to the source convention (e.g. BraTS 1/2/4)."""
        mapping = self.source_label_map()
        lut = np.zeros(max(mapping) + 1, dtype=label_value_dtype(max(mapping.values())))
        for k, v in mapping.items():
            lut[k] = v
        return lut[labels]

    def predict(self, image: Image, *, case: str = "<image>", lcc: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels of one volume (see :meth:`predict_probabilities`).

        Returns:
            ``(labels (X, Y, Z), probabilities (K, X, Y, Z) float32)``.
        """
        probs = self.predict_probabilities(image, case=case)
        return self.labels_from_probabilities(probs, lcc=lcc, spacing=image.spacing), probs


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
