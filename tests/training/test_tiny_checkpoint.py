"""The shared briefly-trained checkpoint (tests/helpers/checkpoints.py) is a real, loadable checkpoint."""

from __future__ import annotations

import torch
from helpers.checkpoints import tiny_trained_checkpoint

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.data.layout import load_dataset


def test_tiny_trained_checkpoint(tmp_path):
    path = tiny_trained_checkpoint(tmp_path)
    assert path == tmp_path / "run" / "best.pt"
    ckpt = load_checkpoint(path)
    info = load_dataset(tmp_path / "dataset")
    assert ckpt["channels"] == list(info.channels) and ckpt["labels"] == info.labels
    assert ckpt["plan"]["region_based"] is False and set(ckpt["postprocessing"]) == {
        "all foreground", "edema", "non-enhancing tumour", "enhancing tumour"}
    model = build_model_from_checkpoint(ckpt)
    with torch.no_grad():
        assert model(torch.zeros(1, 4, 16, 16, 16)).shape == (1, 4, 16, 16, 16)
