"""Checkpoint safety: atomic writes, weights_only loading, one-line errors for bad files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brainseg_cli import checkpoint as ck
from brainseg_cli.checkpoint import FORMAT_VERSION, build_model_from_checkpoint, load_checkpoint, save_checkpoint
from brainseg_cli.errors import CheckpointError, OutputError


def _payload(**overrides):
    payload = {
        "format_version": FORMAT_VERSION,
        "tool_version": "0.1.0",
        "model": {"name": "tiny", "config": {"spatial_dims": 3, "in_channels": 2, "num_classes": 3}},
        "plan": {"config": "3d", "patch_size": (16, 16, 16), "target_spacing": np.array([1.0, 1.0, 2.0])},
        "channels": ["T1", "FLAIR"],
        "labels": {"background": 0, "edema": 1, "core": 2},
        "regions": {},
        "postprocessing": {"edema": {"largest_component": False}},
        "training": {"epoch": np.int64(3), "best_val_dice": np.float32(0.5), "seed": 0, "run_dir": Path("/x/run")},
        "state_dict": {"w": torch.arange(4.0)},
    }
    payload.update(overrides)
    return payload


def test_round_trip_converts_numpy_tuples_and_paths(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "best.pt", _payload())
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["plan"]["patch_size"] == [16, 16, 16]
    assert isinstance(ckpt["plan"]["target_spacing"], torch.Tensor)
    assert ckpt["plan"]["target_spacing"].tolist() == [1.0, 1.0, 2.0]
    assert type(ckpt["training"]["epoch"]) is int and ckpt["training"]["epoch"] == 3
    assert type(ckpt["training"]["best_val_dice"]) is float
    assert ckpt["training"]["run_dir"] == "/x/run"
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(4.0))
    # The file loads with plain torch.load(weights_only=True) too (docs/DEFINITIONS.md §5).
    assert torch.load(path, weights_only=True)["labels"]["core"] == 2
    # Nothing but the checkpoint is left in the folder (no temporary files).
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def test_rng_and_optimizer_states_survive(tmp_path):
    import random

    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    gen = np.random.default_rng(5)
    payload = _payload(
        optimizer=opt.state_dict(),
        scheduler={"last_epoch": 1},
        rng={"torch": torch.get_rng_state(), "numpy": gen.bit_generator.state, "python": random.getstate()},
    )
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "last.pt", payload))
    opt2 = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    gen2 = np.random.default_rng()
    gen2.bit_generator.state = ckpt["rng"]["numpy"]
    assert gen2.random() == gen.random()


def test_unsafe_payload_refused_before_writing(tmp_path):
    class Thing:
        pass

    target = tmp_path / "best.pt"
    with pytest.raises(CheckpointError, match=r"payload\['training'\]\['obj'\].*Thing"):
        save_checkpoint(target, _payload(training={"obj": Thing()}))
    with pytest.raises(CheckpointError, match="lacks the keys state_dict"):
        save_checkpoint(target, {k: v for k, v in _payload().items() if k != "state_dict"})
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    target = save_checkpoint(tmp_path / "last.pt", _payload())
    before = target.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(target))}: disk full"):
        save_checkpoint(target, _payload(tool_version="9"))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    def torch_full_disk(obj, f):  # what torch's zip writer raises when the disk fills (issue #20)
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; 844272 requested and 260064 written")

    monkeypatch.setattr(ck.torch, "save", torch_full_disk)
    with pytest.raises(OutputError, match=rf"cannot write checkpoint {re.escape(str(target))}: .*844272 requested "
                                          r"and 260064 written \(is the disk full\?\)"):
        save_checkpoint(target, _payload(tool_version="9"))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope\.pt not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.fault
def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am text\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a brainseg checkpoint: it is not a torch file "
                                              r"\(it starts with b'hello, I'\)") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, what", [
    (None, "it is a gzip file (a .nii.gz image?)"),
    (bytes(range(7, 250)) * 3, "it is not a torch file (it starts with b'\\x07\\x08"),
    (b"", "the file is empty"),
    (b'{"labels": {}}', "it is a JSON file"),
])
@pytest.mark.fault
def test_files_given_by_mistake_are_named(tmp_path, content, what):
    """Issue #20: ``--model`` given random bytes or a .nii.gz said it "holds objects that are not plain data"."""
    path = tmp_path / "model.pt"
    if content is None:
        import numpy as np

        from brainseg_cli.io import Image, write_image

        path = tmp_path / "image.nii.gz"
        write_image(Image(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0)), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint {path} is not a brainseg checkpoint: {what}")


@pytest.mark.fault
def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _payload())
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is not a readable torch checkpoint") as info:
        load_checkpoint(cut)
    assert "\n" not in str(info.value)


_SIDE_EFFECT = []


class Evil:
    """Unpickling this would call a function: weights_only loading must refuse it."""

    def __reduce__(self):
        return (_SIDE_EFFECT.append, ("code ran",))


class Plain:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("writer", ["torch", "pickle"])
@pytest.mark.parametrize("obj", [Evil, Plain])
def test_foreign_objects_refused_without_running_code(tmp_path, writer, obj):
    path = tmp_path / "foreign.pt"
    payload = _payload(training={"epoch": 1, "extra": obj()})
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match=r"foreign\.pt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert _SIDE_EFFECT == []


def test_missing_keys_and_not_a_dict(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a brainseg checkpoint: it lacks format_version"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=r"weights\.pt holds a list"):
        load_checkpoint(path)


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save(_payload(format_version=FORMAT_VERSION + 1, plan={}, training={}), path)
    with pytest.raises(CheckpointError, match=rf"future\.pt has format_version {FORMAT_VERSION + 1}, newer"):
        load_checkpoint(path)


def test_map_location(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _payload())
    ckpt = load_checkpoint(path, map_location=torch.device("meta"))
    assert ckpt["state_dict"]["w"].device.type == "meta"


class _Tiny(nn.Module):
    def __init__(self, *, spatial_dims, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, num_classes, 1) if spatial_dims == 3 else nn.Conv2d(in_channels, num_classes, 1)


@pytest.fixture
def fake_models(monkeypatch):
    """A stand-in for brainseg_cli.models.build_model with one model, ``tiny``."""
    from brainseg_cli.errors import look_up

    def build_model(name, **config):
        return look_up(name, {"tiny": _Tiny}, "model")(**config)

    import brainseg_cli.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "build_model", build_model)


def test_build_model_from_checkpoint(tmp_path, fake_models):
    net = _Tiny(spatial_dims=3, in_channels=2, num_classes=3)
    path = save_checkpoint(tmp_path / "best.pt", _payload(state_dict=net.state_dict()))
    model = build_model_from_checkpoint(load_checkpoint(path), source=path)
    assert not model.training
    assert torch.equal(model.conv.weight, net.conv.weight)

    bad = _payload(state_dict={"conv.weight": torch.zeros(1, 1, 1, 1, 1)})
    with pytest.raises(CheckpointError, match=r"best\.pt: weights do not fit model 'tiny'"):
        build_model_from_checkpoint(load_checkpoint(save_checkpoint(path, bad)), source=path)
    unknown = _payload(model={"name": "tinny", "config": {}})
    with pytest.raises(CheckpointError, match=r"cannot rebuild model 'tinny'.*did you mean 'tiny'"):
        build_model_from_checkpoint(unknown)
