"""``brainseg export``: a checkpoint's network as a self-describing ONNX or TorchScript file.

The file holds the network (ONNX: dynamic batch and spatial axes) and, as JSON metadata, everything
prediction needs beside the graph (:func:`brainseg_cli.inference.engines.checkpoint_metadata`), so
``brainseg predict -m MODEL.onnx`` preprocesses, windows, post-processes and restores geometry
exactly as with the checkpoint. After writing, the export is checked: the exported graph and the
PyTorch network predict the same random window of the plan's patch size, and the largest absolute
difference of their logits is reported (and must stay below :data:`MAX_LOGIT_DIFFERENCE`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.inference.engines import (
    EXPORT_FORMATS,
    OnnxRuntimeNetwork,
    checkpoint_metadata,
    example_window,
    onnx_bytes,
    read_torchscript,
    torchscript_bytes,
    with_metadata,
)
from brainseg_cli.io.atomic import atomic_write

logger = logging.getLogger(__name__)

#: Largest absolute logit difference between the export and the PyTorch network that passes the check.
MAX_LOGIT_DIFFERENCE = 1e-2


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``brainseg export``."""

    checkpoint: Path
    """The checkpoint (``best.pt``) to export."""
    output: Path
    """The file to write (its ending decides the format unless :attr:`format` is given)."""
    format: str | None = None
    """``onnx`` or ``torchscript``; None: from the output's ending (``.onnx``, ``.ts``/``.pt``)."""
    opset: int = 17
    """ONNX opset version."""

    def resolved_format(self) -> str:
        """The format to write.

        Raises:
            ConfigError: an unknown format, or an output ending that does not say which.
        """
        if self.format is not None:
            if self.format not in EXPORT_FORMATS:
                raise ConfigError(f"unknown export format '{self.format}'; valid: {', '.join(EXPORT_FORMATS)}")
            return self.format
        suffix = self.output.suffix.lower()
        if suffix == ".onnx":
            return "onnx"
        if suffix in (".ts", ".pt", ".pts"):
            return "torchscript"
        raise ConfigError(f"{self.output}: cannot tell the format from the ending '{suffix}'; name it .onnx or .ts, "
                          "or give --format onnx|torchscript")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    output: Path
    format: str
    bytes: int
    seconds: float
    max_logit_difference: float
    """Largest absolute difference of the export's logits from PyTorch's on one random window."""


def export_model(config: ExportConfig) -> ExportResult:
    """Export a checkpoint's network with its metadata, atomically, and check the export.

    Raises:
        CheckpointError: an unreadable or foreign checkpoint, or an export whose logits differ from
            PyTorch's by more than :data:`MAX_LOGIT_DIFFERENCE`.
        ConfigError: an unknown format, or the output is the checkpoint itself.
        OutputError: the file cannot be written (named).
    """
    fmt = config.resolved_format()
    if config.output.resolve() == config.checkpoint.resolve():
        raise ConfigError(f"--output {config.output} is the checkpoint itself; name another file")
    start = time.perf_counter()
    ckpt = load_checkpoint(config.checkpoint, map_location="cpu")
    network = build_model_from_checkpoint(ckpt, source=config.checkpoint).eval()
    meta = checkpoint_metadata(ckpt)
    meta["exported_from"] = config.checkpoint.name
    example = example_window(ckpt, seed=0)
    with torch.no_grad():
        reference = network(example)
        reference = reference[0] if isinstance(reference, (list, tuple)) else reference
    if fmt == "onnx":
        data = with_metadata(onnx_bytes(network, example, opset=config.opset), meta)
    else:
        data = torchscript_bytes(network, example, meta)
    with atomic_write(config.output) as tmp:
        tmp.write_bytes(data)
    # check what was written, read back from its final name
    if fmt == "onnx":
        exported = OnnxRuntimeNetwork(config.output, device="cpu", source=str(config.output))
    else:
        _, exported = read_torchscript(config.output, device=torch.device("cpu"))
    with torch.no_grad():
        out = exported(example)
        out = out[0] if isinstance(out, (list, tuple)) else out
    difference = float((out.float() - reference.float()).abs().max())
    if not difference <= MAX_LOGIT_DIFFERENCE:
        config.output.unlink(missing_ok=True)
        raise CheckpointError(f"{config.output}: the exported network's logits differ from PyTorch's by {difference:.3g} "
                              f"(allowed {MAX_LOGIT_DIFFERENCE:g}); the export was removed")
    logger.info("exported %s to %s (%s, %.1f MB); logits within %.2g of PyTorch's", config.checkpoint, config.output,
                fmt, len(data) / 1e6, difference)
    return ExportResult(output=config.output, format=fmt, bytes=len(data), seconds=time.perf_counter() - start,
                        max_logit_difference=difference)
