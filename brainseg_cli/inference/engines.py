"""Inference engines: what runs the network inside the sliding window (``predict --engine``).

* ``torch``: the checkpoint's PyTorch network (eager), or a TorchScript export.
* ``onnxruntime``: the network as an ONNX graph run by ONNX Runtime (``onnxruntime`` from PyPI),
  from an ``.onnx`` file written by ``brainseg export``, or exported in memory from a checkpoint.
* ``openvino``: the same ONNX graph compiled by OpenVINO for the CPU in fp32 (``pip install
  openvino``, optional; the fastest engine on this project's CPU).

An engine is wrapped as an :class:`torch.nn.Module` (:class:`OnnxRuntimeNetwork`) that takes and
returns torch tensors, so every engine runs inside the same sliding window, test-time mirroring,
probability averaging, post-processing and geometry code (:mod:`brainseg_cli.inference.predictor`):
only the network call differs.

An exported file describes itself: it carries the checkpoint's metadata (plan: spacing,
normalisation, patch, slice axis and context; channels in order; labels and regions; the
post-processing decisions and region thresholds; training record) as JSON under the key
:data:`METADATA_KEY` (ONNX ``metadata_props``; a TorchScript archive's extra file
``brainseg.json``). ``docs/DEFINITIONS.md`` §5 ("Exported model") lists the keys.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainseg_cli.data.plan_schema import PREDICTION_KEYS, Plan
from brainseg_cli.errors import CheckpointError, ConfigError

#: Engines that run an ONNX graph.
ONNX_ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
#: Windows per network call when ``predict --batch-size`` is not given, by engine. OpenVINO's static-shape
#: graphs run 8 windows per call faster than 2; torch eager is not faster with 8 on the CPU (slower on the
#: 3-D plan), so torch and ONNX Runtime keep 2 (``bench_engines.py``).
WINDOW_BATCH: dict[str, int] = {"torch": 2, "onnxruntime": 2, "openvino": 8}
#: ``brainseg export --format`` choices and the file ending each writes.
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".ts"}
#: Key of the JSON metadata in an exported file.
METADATA_KEY = "brainseg"
#: Version of the exported metadata layout.
EXPORT_VERSION = 1
#: Checkpoint keys that are not metadata (weights and resume state).
_NOT_METADATA = ("state_dict", "train_state_dict", "optimizer", "scheduler", "rng")


def without_weights(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint without weights and resume state: what prediction needs beside the network."""
    return {k: v for k, v in ckpt.items() if k not in _NOT_METADATA}


def checkpoint_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """What an export stores: :func:`without_weights` plus ``export_version``."""
    return {**without_weights(ckpt), "export_version": EXPORT_VERSION}


def example_window(ckpt: Mapping[str, Any], *, seed: int | None = None) -> torch.Tensor:
    """One network input window ``(1, C, *patch_size)`` of a checkpoint's plan (C counts the 2.5-D
    neighbour slices): zeros, or standard-normal values drawn with ``seed``."""
    plan = Plan.from_dict(ckpt["plan"], what="checkpoint", required=PREDICTION_KEYS)
    shape = (1, len(ckpt["channels"]) * (2 * plan.slice_context + 1), *plan.patch_size)
    if seed is None:
        return torch.zeros(shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _metadata_json(meta: Mapping[str, Any]) -> str:
    try:
        return json.dumps(meta, allow_nan=True)  # key order kept: regions are in output order
    except (TypeError, ValueError) as exc:  # checkpoints hold plain data only: a stranger's file
        raise CheckpointError(f"the checkpoint's metadata is not plain data ({exc})") from None


def export_format(path: Path) -> str | None:
    """The export format of ``path`` from its content (``"onnx"``, ``"torchscript"``) or None.

    A TorchScript archive is a zip file like a checkpoint; it is told apart by the
    ``brainseg.json`` extra file that ``brainseg export`` writes into it.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                if any(name.endswith("/extra/brainseg.json") for name in zf.namelist()):
                    return "torchscript"
        except zipfile.BadZipFile:
            return None
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx"
    return None


def _quiet_tracing() -> None:
    """Silence what tracing says about the networks' input checks (they pass for the traced shapes and
    are not part of the graph) and the exporter's deprecation notices; call inside ``catch_warnings``."""
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")


# ------------------------------------------------------------------------------------ ONNX
def onnx_bytes(network: nn.Module, example: torch.Tensor, *, opset: int = 17) -> bytes:
    """Export ``network`` to an ONNX graph with dynamic batch and spatial axes.

    Args:
        network: the segmentation network (put in eval mode; deep-supervision heads are dropped in
            eval mode, so the graph has one output).
        example: ``(B, C, *spatial)`` input used to trace the graph (shape only matters).
        opset: ONNX opset version.

    Returns:
        The serialised ``onnx.ModelProto``.
    """
    axes = {0: "batch", **{2 + i: f"spatial_{i}" for i in range(example.dim() - 2)}}
    network = network.eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        # The TorchScript-based exporter (dynamo=False) takes seconds where torch.export takes minutes.
        torch.onnx.export(network, (example,), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False)
    return buffer.getvalue()


def with_metadata(model_bytes: bytes, meta: Mapping[str, Any]) -> bytes:
    """The ONNX model ``model_bytes`` with ``meta`` as JSON in its ``metadata_props``."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, _metadata_json(meta)
    model.producer_name = "brainseg"
    return model.SerializeToString()


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime engine needs the onnxruntime package (pip install onnxruntime)") from None
    return onnxruntime


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX Runtime session behind the interface of a segmentation network.

    ``forward`` takes a float32 ``(B, C, *spatial)`` tensor and returns the logits
    ``(B, K, *spatial)`` as a float32 tensor on the input's device. The module has no parameters;
    ``eval()``/``train()`` change nothing in the graph (it was exported in eval mode).

    Args:
        model: the ONNX model (bytes) or a path to it.
        device: ``cpu`` or a CUDA device (ONNX Runtime's CUDA provider when it is installed).
        threads: intra-op threads (default: torch's thread count, so ``--threads`` applies).
        source: named in error messages.
    """

    def __init__(self, model: bytes | Path, *, device: torch.device | str = "cpu", threads: int | None = None,
                 source: str = "<onnx>") -> None:
        super().__init__()
        ort = _require_onnxruntime()
        device = torch.device(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(f"{source}: ONNX Runtime here has no CUDA provider (pip install onnxruntime-gpu), "
                                  "use --device cpu or --engine torch")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for every bad graph
            raise CheckpointError(f"{source}: ONNX Runtime cannot load the graph: {str(exc).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.source = source
        self.register_buffer("_device_marker", torch.empty(0, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self.session.run(None, {self.input_name: array})[:1]
        return torch.from_numpy(logits).to(x.device)


class OpenVinoNetwork(nn.Module):
    """An ONNX graph compiled by OpenVINO for the CPU, behind the interface of a segmentation network.

    Compiled with ``INFERENCE_PRECISION_HINT f32`` (OpenVINO would otherwise run bf16 on CPUs that
    have it, which changes labels as bf16 autocast does) and a latency hint. The graph's axes are
    dynamic; each input shape met (a sliding window meets one or two: the window batch and a smaller
    last batch) gets its own static-shape compilation, which OpenVINO runs faster than the dynamic
    one, kept for the network's lifetime. ``forward`` as :class:`OnnxRuntimeNetwork`.

    Args:
        model: the ONNX model (bytes) or a path to it.
        device: ``cpu`` only.
        threads: inference threads (default: torch's thread count).
        source: named in error messages.
    """

    #: Static-shape compilations kept (more distinct shapes fall back to the dynamic compilation).
    MAX_SHAPES = 4

    def __init__(self, model: bytes | Path, *, device: torch.device | str = "cpu", threads: int | None = None,
                 source: str = "<onnx>") -> None:
        super().__init__()
        try:
            import openvino
        except ImportError:
            raise ConfigError("the openvino engine needs the openvino package (pip install openvino)") from None
        if torch.device(device).type != "cpu":
            raise ConfigError(f"{source}: the openvino engine runs on the CPU; use --device cpu or another engine")
        self.core = openvino.Core()
        self.model = model if isinstance(model, bytes) else str(model)
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.source = source
        self.dynamic = self._compile(None)
        self.by_shape: dict[tuple[int, ...], Any] = {}

    def _compile(self, shape: tuple[int, ...] | None) -> Any:
        try:
            graph = self.core.read_model(model=self.model)
            if shape is not None:
                graph.reshape({graph.inputs[0]: list(shape)})
            return self.core.compile_model(graph, "CPU", self.config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise CheckpointError(f"{self.source}: OpenVINO cannot compile the graph: {str(exc).splitlines()[0]}") from None

    def _compiled_for(self, shape: tuple[int, ...]) -> Any:
        compiled = self.by_shape.get(shape)
        if compiled is None:
            if len(self.by_shape) >= self.MAX_SHAPES:
                return self.dynamic
            compiled = self.by_shape[shape] = self._compile(shape)
        return compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        compiled = self._compiled_for(tuple(array.shape))
        return torch.from_numpy(np.array(compiled({0: array})[compiled.output(0)])).to(x.device)


def onnx_network(engine: str, model: bytes | Path, *, device: torch.device | str, source: str) -> nn.Module:
    """The network of ``engine`` (one of :data:`ONNX_ENGINES`) for an ONNX graph."""
    if engine == "openvino":
        return OpenVinoNetwork(model, device=device, source=source)
    return OnnxRuntimeNetwork(model, device=device, source=source)


def read_onnx_metadata(path: Path) -> tuple[dict[str, Any], bytes]:
    """``(metadata, model bytes)`` of an ``.onnx`` file written by ``brainseg export``.

    Raises:
        CheckpointError: not an ONNX file, or one without brainseg's metadata (named).
    """
    import onnx

    try:
        data = path.read_bytes()
        model = onnx.load_from_string(data)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{path}: not an ONNX model (the file does not parse)") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise CheckpointError(f"{path}: an ONNX model without brainseg's metadata (export it with `brainseg export`)")
    return _parse_metadata(props[METADATA_KEY], path), data


def _parse_metadata(text: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its brainseg metadata is not JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its brainseg metadata is a {type(meta).__name__}, not an object")
    version = meta.get("export_version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise CheckpointError(f"{path}: export version {version!r}; this brainseg reads up to {EXPORT_VERSION}")
    return meta


# ----------------------------------------------------------------------------- TorchScript
def torchscript_bytes(network: nn.Module, example: torch.Tensor, meta: Mapping[str, Any]) -> bytes:
    """A traced TorchScript archive of ``network`` with ``meta`` as its ``brainseg.json`` extra file."""
    network = network.eval()
    with torch.no_grad(), warnings.catch_warnings():
        _quiet_tracing()
        traced = torch.jit.trace(network, (example,), check_trace=False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
        torch.jit.save(traced, buffer, _extra_files={"brainseg.json": _metadata_json(meta)})
    return buffer.getvalue()


def read_torchscript(path: Path, *, device: torch.device) -> tuple[dict[str, Any], nn.Module]:
    """``(metadata, module)`` of a TorchScript file written by ``brainseg export``.

    Raises:
        CheckpointError: the archive does not load, or holds no brainseg metadata.
    """
    extra = {"brainseg.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a loadable TorchScript archive ({str(exc).splitlines()[0]})") from None
    if not extra["brainseg.json"]:
        raise CheckpointError(f"{path}: a TorchScript archive without brainseg's metadata")
    return _parse_metadata(extra["brainseg.json"], path), module.eval()
