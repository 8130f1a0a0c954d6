"""Checkpoint files: one format, one writer, one loader (docs/DEFINITIONS.md §5).

A checkpoint is one file written by :func:`torch.save` and read back with
``torch.load(path, weights_only=True)``, so loading a stranger's file never runs code: it holds only
dicts, lists, ``str``, ``int``, ``float``, ``bool``, ``None`` and tensors. :func:`save_checkpoint`
converts the usual near-misses (NumPy arrays and scalars, tuples, paths) and refuses anything else;
:func:`load_checkpoint` turns every way a file can be wrong (missing, not a torch file, truncated,
holding a foreign object, lacking a key, from a newer format) into one-line
:class:`~brainseg_cli.errors.CheckpointError` naming the file.

Keys (all checkpoints): ``format_version`` (int), ``tool_version`` (str), ``model``
(``{"name": str, "config": dict}``), ``plan`` (dict, as ``plan.json``), ``channels`` (list of
canonical channel names in input order), ``labels`` (``{name: int}``), ``regions``
(``{name: [int, ...]}``, in output order when the model is region-based, else ``{}`` or the
evaluation regions), ``postprocessing`` (``{label name: {"largest_component": bool}}`` for every
foreground label, decided on the validation cases at the end of training), optionally
``region_thresholds`` (``{region name: float in (0, 1)}``, region-based models: each region's
sigmoid threshold, decided on the validation cases at the end of training; absent = 0.5), optionally
``region_min_volumes`` (``{region name: float >= 0}``, region-based models: the volume in mm³ under
which a predicted region is removed, decided likewise; absent = 0, never),
``training`` (``{"epoch", "best_val_dice", "dataset_fingerprint", "seed", ...}``) and
``state_dict`` (``{str: tensor}``). ``last.pt`` adds ``optimizer``, ``scheduler`` and ``rng`` for
``--resume``.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli import __version__
from brainseg_cli.data.plan_schema import Plan, plan_data
from brainseg_cli.errors import BrainsegError, CheckpointError, OutputError
from brainseg_cli.io.atomic import atomic_write
from brainseg_cli.models import build_model

logger = logging.getLogger(__name__)

#: The checkpoint format this version writes and the newest it can read.
FORMAT_VERSION = 1

#: Keys every checkpoint must hold.
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version",
    "tool_version",
    "model",
    "plan",
    "channels",
    "labels",
    "regions",
    "postprocessing",
    "training",
    "state_dict",
)

#: Keys ``last.pt`` adds so that training can resume.
RESUME_KEYS: tuple[str, ...] = ("optimizer", "scheduler", "rng")


def to_safe(value: Any, *, where: str = "payload") -> Any:
    """Return ``value`` converted to types that ``torch.load(weights_only=True)`` accepts.

    Converts NumPy arrays to tensors, NumPy scalars to Python scalars, tuples to lists and
    :class:`~pathlib.PurePath` to ``str``; tensors are detached and moved to the CPU. Dict keys must
    be ``str`` or ``int`` (optimizer states are keyed by parameter index).

    Args:
        value: a nested structure of dicts, lists, tuples, scalars, tensors and arrays.
        where: the key path of ``value``, for the error message.

    Returns:
        The converted structure (new containers; tensors may share storage with the input when
        they already live on the CPU).

    Raises:
        CheckpointError: ``value`` holds an object of another type (names its key path and type).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise CheckpointError(f"checkpoint payload {where}: NumPy object arrays cannot be saved safely")
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, np.generic):
                key = key.item()
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise CheckpointError(
                    f"checkpoint payload {where}: key {key!r} of type {type(key).__name__} is not str or int"
                )
            out[key] = to_safe(item, where=f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_safe(item, where=f"{where}[{i}]") for i, item in enumerate(value)]
    raise CheckpointError(
        f"checkpoint payload {where}: value of type {type(value).__module__}.{type(value).__qualname__} "
        "cannot be loaded with weights_only=True"
    )


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (a temporary file in the same folder, then ``os.replace``).

    Args:
        path: the checkpoint file (``best.pt``, ``last.pt``, ...); its folder is created if needed.
        payload: the checkpoint dict (keys as in the module docstring). ``format_version`` is set
            to :data:`FORMAT_VERSION` when absent.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: the payload lacks a required key or holds a type that could not be loaded
            with ``weights_only=True``.
    """
    target = Path(path)
    data = dict(payload)
    data.setdefault("format_version", FORMAT_VERSION)
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {target}: payload lacks the keys {', '.join(missing)}")
    safe = to_safe(data)
    try:
        with atomic_write(target) as tmp:
            torch.save(safe, tmp)
    except RuntimeError as exc:  # torch's writer on a full disk: "... N requested and M written"
        message = " ".join(str(exc).split())[:200]
        raise OutputError(f"cannot write checkpoint {target}: {message} (is the disk full?)") from None
    logger.debug("wrote checkpoint %s", target)
    return target


# Errors torch.load raises for files that are not (intact) torch checkpoints.
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    ImportError,
    IndexError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    OSError,
)


#: Leading bytes of files people give by mistake, and what they are.
_FOREIGN_MAGIC = (
    (b"\x1f\x8b", "it is a gzip file (a .nii.gz image?)"),
    (b"\\\x01\x00\x00", "it is a NIfTI-1 image"),
    (b"\x00\x00\x01\\", "it is a NIfTI-1 image"),
    (b"\x89HDF", "it is an HDF5 file (a Keras/TensorFlow model?)"),
    (b"\x08", "it looks like a protobuf file (an ONNX model?)"),
    (b"ObjectType", "it is a MetaImage (.mha) file"),
    (b"{", "it is a JSON file"),
)


def _not_a_torch_file(path: Path) -> str | None:
    """Why ``path`` is not a ``torch.save`` file, judged from its first bytes; None when it may be one.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``; an empty archive ``PK\\x05\\x06``) or, in the
    legacy format, a pickle (protocol marker ``\\x80``).
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "the file is empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")):
        return None
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return what
    return f"it is not a torch file (it starts with {head[:8]!r})"


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint without unpickling arbitrary objects.

    Args:
        path: the checkpoint file.
        map_location: where tensors are placed (``torch.load``'s argument).

    Returns:
        The checkpoint dict (keys as in the module docstring).

    Raises:
        CheckpointError: the file is missing, is not a torch file, is damaged or truncated, holds
            objects that ``weights_only`` loading refuses, lacks a required key, or was written by a
            newer format version. The message is one line naming the file.
    """
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"checkpoint {source} not found")
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} is not a file")
    foreign = _not_a_torch_file(source)
    if foreign:
        raise CheckpointError(f"checkpoint {source} is not a brainseg checkpoint: {foreign}")
    try:
        with warnings.catch_warnings():
            # A foreign pickle may use a protocol torch warns about; the load fails or succeeds anyway.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            data = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.<>]+)", str(exc))
        if not found:  # not a refused object: bytes that are no pickle at all
            message = " ".join(str(exc).split())[-160:]
            raise CheckpointError(f"checkpoint {source} is not a brainseg checkpoint: it is not a readable torch "
                                  f"file ({message})") from None
        raise CheckpointError(
            f"checkpoint {source} holds objects that are not plain data and was refused (it refers to {found.group(1)})"
        ) from None
    except _LOAD_ERRORS as exc:
        message = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"checkpoint {source} is not a readable torch checkpoint (damaged or truncated?): "
            f"{type(exc).__name__}: {message}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {source} holds a {type(data).__name__}, not a brainseg checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {source} is not a brainseg checkpoint: it lacks {', '.join(missing)}")
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {source}: format_version is {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {source} has format_version {version}, newer than the supported {FORMAT_VERSION} "
            "(upgrade brainseg)"
        )
    if version < 1:
        raise CheckpointError(f"checkpoint {source} has an invalid format_version {version}")
    model = data["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(model.get("config"), dict):
        raise CheckpointError(f"checkpoint {source}: 'model' must be {{'name': str, 'config': dict}}, got {model!r:.120}")
    if not isinstance(data["state_dict"], dict):
        raise CheckpointError(f"checkpoint {source}: 'state_dict' is a {type(data['state_dict']).__name__}, not a dict")
    return data


def build_model_from_checkpoint(ckpt: Mapping[str, Any], *, source: str | os.PathLike[str] | None = None) -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights (strictly), in eval mode.

    Args:
        ckpt: a dict returned by :func:`load_checkpoint`.
        source: the checkpoint's file, named in error messages (``"<memory>"`` when omitted).

    Returns:
        The model (``build_model(ckpt["model"]["name"], **ckpt["model"]["config"])``) with
        ``state_dict`` loaded and ``eval()`` called; on the CPU.

    Raises:
        CheckpointError: the model name is unknown or the weights do not fit the architecture.
    """
    source = "<memory>" if source is None else str(source)
    spec = ckpt["model"]
    try:
        model = build_model(spec["name"], **spec["config"])
    except BrainsegError as exc:
        raise CheckpointError(f"checkpoint {source}: cannot rebuild model '{spec['name']}': {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {source}: model config does not fit '{spec['name']}': {exc}") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {source}: weights do not fit model '{spec['name']}': {summary}") from None
    model.eval()
    return model


# ----------------------------------------------------------------------------------- RNG state
def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python) as checkpoint-safe data."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_safe(np.random.get_state()),
        "python": _python_state_to_safe(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np.random.set_state(_numpy_state_from_safe(state["numpy"]))
    random.setstate(_python_state_from_safe(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)


def _numpy_state_to_safe(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_safe(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"]))


def _python_state_to_safe(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "state": list(internal), "gauss": gauss}


def _python_state_from_safe(state: Mapping[str, Any]) -> tuple:
    return (state["version"], tuple(int(v) for v in state["state"]), state["gauss"])


# ----------------------------------------------------------------------------------- payload
def bare_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tensors cloned to the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def checkpoint_payload(*, model: nn.Module, plan: Plan | Mapping[str, Any], labels: Mapping[str, int],
                       regions: Mapping[str, Any], postprocessing: Mapping[str, Mapping[str, bool]],
                       training: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                       resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One checkpoint's content in the key order of the module docstring.

    Args:
        model: the network (its ``name`` and ``config`` are stored; the weights come from ``state_dict``).
        plan: the run's plan (stored as ``plan``; its ``channels`` also as ``channels``).
        labels: ``{name: value}``.
        regions: ``{name: [label values]}``.
        postprocessing: ``{label name: {"largest_component": bool}}``.
        training: the ``training`` section.
        state_dict: the weights saved as ``state_dict`` (the weight average when there is one).
        resume: what ``last.pt`` adds for ``--resume`` (``optimizer``, ``scheduler``, ``rng`` and,
            with a weight average, ``train_state_dict``), or None.
    """
    stored = plan_data(plan)
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "model": {"name": getattr(model, "name", type(model).__name__), "config": dict(getattr(model, "config", {}))},
        "plan": stored,
        "channels": list(stored.get("channels", [])),
        "labels": dict(labels),
        "regions": dict(regions),
        "postprocessing": {k: dict(v) for k, v in postprocessing.items()},
        "training": dict(training),
        "state_dict": dict(state_dict),
    }
    data.update(resume or {})
    return data
