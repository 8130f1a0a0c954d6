"""``hubconf.py``: torch.hub entry points for every registered model, with and without weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from brainseg_cli.checkpoint import FORMAT_VERSION, save_checkpoint
from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.models import MODEL_NAMES, build_model

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "unet2d-classic": {"spatial_dims": 2, "base_filters": 2},
    "unet": {"spatial_dims": 3, "base_features": 2, "depth": 2},
    "unet3d": {"spatial_dims": 3, "base_filters": 2},
    "unetr": {"spatial_dims": 3, "preset": "tiny", "feature_size": 2, "img_size": [16, 16, 16]},
    "ratlesnet": {"spatial_dims": 3, "filters": 2},
}


def _payload(model) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": "0.1.0",
        "model": {"name": model.name, "config": model.config},
        "plan": {},
        "channels": ["T1", "FLAIR"],
        "labels": {"background": 0, "edema": 1, "core": 2},
        "regions": {},
        "postprocessing": {},
        "training": {"epoch": 1},
        "state_dict": model.state_dict(),
    }


def test_hub_lists_every_model() -> None:
    # torch.hub.list only reads GitHub repositories: import the file the way hub does.
    spec = importlib.util.spec_from_file_location("brainseg_hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in MODEL_NAMES:
        assert callable(getattr(module, name))
        assert getattr(module, name.replace("-", "_")) is getattr(module, name)
    assert module.dependencies == ["torch", "numpy"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hub_load_fresh_model(name: str) -> None:
    assert set(TINY) == set(MODEL_NAMES)
    model = torch.hub.load(str(REPO), name, source="local", in_channels=2, num_classes=3, **TINY[name])
    assert model.name == name and model.in_channels == 2 and model.num_classes == 3
    assert model.training


def test_hub_load_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build_model("unet", in_channels=2, num_classes=3, **TINY["unet"])
    path = save_checkpoint(tmp_path / "best.pt", _payload(trained))
    model = torch.hub.load(str(REPO), "unet", source="local", weights=str(path))
    assert not model.training
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match=r"holds model 'unet', not 'unet3d'; load it as 'unet'"):
        torch.hub.load(str(REPO), "unet3d", source="local", weights=str(path))
    with pytest.raises(ConfigError, match="do not also pass in_channels"):
        torch.hub.load(str(REPO), "unet", source="local", weights=str(path), in_channels=2)
    with pytest.raises(CheckpointError, match="not found"):
        torch.hub.load(str(REPO), "unet", source="local", weights=str(tmp_path / "missing.pt"))
