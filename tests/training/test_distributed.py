"""Data-parallel training: 2 gloo processes match one process; launcher errors; env parsing."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.ddp import fail_with_config_error as _fails
from helpers.ddp import train_cubes

from brainseg_cli.errors import BrainsegError, ConfigError
from brainseg_cli.training import distributed as D


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """InstanceNorm, no augmentation, same global batch: the first 20 losses agree within 1e-3."""
    one = np.array(train_cubes(str(tmp_path / "one"), epochs=2, iterations=10, batch_size=4))
    two = np.array(D.launch(train_cubes, nproc=2, kwargs={"run_dir": str(tmp_path / "two"), "epochs": 2,
                                                          "iterations": 10, "batch_size": 4}))
    assert one.shape == two.shape == (20,)
    assert np.all(np.abs(two - one) <= 1e-3 * np.abs(one))
    assert one[-1] < one[0]
    # Only rank 0 wrote the run folder.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv",
                                                                     "tensorboard"]  # rank 0 only wrote


@pytest.mark.slow
def test_two_processes_average_the_weights_as_one_process(tmp_path):
    """--ema under DDP: every rank averages the same weights, so rank 0 saves what one process saves."""
    import torch

    from brainseg_cli.checkpoint import load_checkpoint

    kwargs = {"epochs": 1, "iterations": 8, "batch_size": 4, "ema": 0.9}
    train_cubes(str(tmp_path / "one"), **kwargs)
    D.launch(train_cubes, nproc=2, kwargs={"run_dir": str(tmp_path / "two"), **kwargs})
    one, two = (load_checkpoint(tmp_path / name / "last.pt") for name in ("one", "two"))
    assert two["training"]["ema"] == {"decay": 0.9, "updates": 8}
    for key in ("state_dict", "train_state_dict"):
        for name, value in one[key].items():
            torch.testing.assert_close(two[key][name], value, rtol=1e-3, atol=1e-5)
    assert not all(torch.equal(one["state_dict"][k], one["train_state_dict"][k]) for k in one["state_dict"])


def test_env_parsing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert D.env_world() is None and D.init_from_env(use_cuda=False) == D.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert D.init_from_env(use_cuda=False) == D.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="RANK/WORLD_SIZE/LOCAL_RANK must be integers"):
        D.env_world()


@pytest.mark.slow
def test_launch_reports_a_failed_process():
    with pytest.raises(BrainsegError, match="a training process failed: ConfigError: bad option") as info:
        D.launch(_fails, nproc=2, kwargs={"message": "bad option"})
    assert info.value.exit_code == 2


def test_launch_needs_two_processes():
    with pytest.raises(ConfigError, match="--nproc must be >= 2"):
        D.launch(_fails, nproc=1, kwargs={"message": "x"})
