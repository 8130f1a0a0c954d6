"""torch.hub entry points: one per registered brainseg model (``brainseg_cli.models.MODEL_NAMES``).

Usage::

    import torch
    # a fresh network (training mode), any architecture option as a keyword:
    net = torch.hub.load("/path/to/brainseg", "unet", source="local",
                         spatial_dims=3, in_channels=4, num_classes=4, deep_supervision=True)
    # a trained network (eval mode), rebuilt from the checkpoint's own model config:
    net = torch.hub.load("/path/to/brainseg", "unet", source="local", weights="runs/x/best.pt")

Hyphenated names (``unet2d-classic``) work with ``torch.hub.load``; the underscore spellings
(``unet2d_classic``) are also defined for direct imports. Checkpoints are read with the same safe
loader as ``brainseg predict`` (``torch.load(weights_only=True)``, format validated).
"""

from __future__ import annotations

from collections.abc import Callable as _Callable
from typing import Any as _Any

from brainseg_cli import errors as _errors
from brainseg_cli import models as _models

dependencies = ["torch", "numpy"]


def _entry_point(name: str) -> _Callable[..., _Any]:
    def load(weights: str | None = None, **kwargs: _Any) -> _Any:
        if weights is None:
            return _models.build_model(name, **kwargs)
        if kwargs:
            raise _errors.ConfigError(
                f"hub model '{name}': weights= rebuilds the model from the checkpoint's config; "
                f"do not also pass {', '.join(sorted(kwargs))}"
            )
        from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint

        ckpt = load_checkpoint(weights)
        stored = ckpt["model"]["name"]
        if stored != name:
            raise _errors.CheckpointError(f"checkpoint {weights} holds model '{stored}', not '{name}'; load it as '{stored}'")
        return build_model_from_checkpoint(ckpt, source=weights)

    load.__name__ = name.replace("-", "_")
    load.__qualname__ = load.__name__
    load.__doc__ = (
        f"brainseg model '{name}'.\n\n"
        "Args:\n"
        "    weights: a brainseg checkpoint (best.pt / last.pt) to load, or None for fresh weights.\n"
        "    **kwargs: without weights: spatial_dims, in_channels, num_classes and architecture options\n"
        "        (see brainseg_cli.models.build_model).\n\n"
        "Returns:\n"
        "    The network (eval mode when loaded from a checkpoint, training mode otherwise)."
    )
    return load


for _name in _models.MODEL_NAMES:
    globals()[_name] = _entry_point(_name)
    globals()[_name.replace("-", "_")] = globals()[_name]
