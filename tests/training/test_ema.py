"""The moving average of the weights (``--ema``): the update rule, and the fit loop validating, saving and resuming it."""

from __future__ import annotations

import pytest
import torch
from helpers.synthetic import cube_cases, cube_plan
from torch import nn

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.ema import WeightAverage, effective_decay
from brainseg_cli.training.fit import fit
from brainseg_cli.training.validation import validate, validation_entities

TRAIN = ["case_000", "case_001", "case_002"]
VAL = ["case_003"]


def test_effective_decay_warms_up_to_the_decay():
    assert effective_decay(0.995, 0) == pytest.approx(0.1)
    assert effective_decay(0.995, 10) == pytest.approx(11 / 20)
    assert effective_decay(0.995, 10_000) == 0.995
    assert effective_decay(0.5, 0) == pytest.approx(0.1) and effective_decay(0.5, 9) == 0.5


def test_update_follows_the_formula_and_copies_buffers():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    net[0].bias.requires_grad_(False)  # a frozen parameter
    average = WeightAverage(net, 0.9)
    assert not average.module.training and not any(p.requires_grad for p in average.module.parameters())
    start = net[0].weight.detach().clone()
    history = []
    with torch.no_grad():
        for step in range(30):
            net[0].weight.add_(0.1 * (step + 1))
            net[1].running_mean.fill_(float(step))
            history.append(net[0].weight.detach().clone())
            average.update(net)
    expected = start.clone()
    for n, weight in enumerate(history):
        expected += (1 - effective_decay(0.9, n)) * (weight - expected)
    torch.testing.assert_close(average.module[0].weight, expected)
    assert not torch.equal(average.module[0].weight, net[0].weight)  # an average, not a copy
    assert torch.equal(average.module[0].bias, net[0].bias)  # frozen: unchanged
    assert torch.equal(average.module[1].running_mean, net[1].running_mean)  # buffers copied
    assert torch.equal(average.module[1].num_batches_tracked, net[1].num_batches_tracked)
    assert average.updates == 30 and average.state_dict() == {"decay": 0.9, "updates": 30}


def test_load_refuses_another_decay():
    net = nn.Linear(2, 2)
    average = WeightAverage(net, 0.99)
    with pytest.raises(CheckpointError, match=r"checkpoint x.pt averaged weights with decay 0.9, not 0.99"):
        average.load(net.state_dict(), {"decay": 0.9, "updates": 3}, source="x.pt")
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\), got 1.0"):
        WeightAverage(net, 1.0)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.2, True])
def test_config_refuses_a_decay_outside_0_1(bad):
    with pytest.raises(ConfigError, match=r"ema must be a decay in \(0, 1\)"):
        TrainConfig(ema=bad)


def test_the_average_is_on_by_default_and_0_turns_it_off():
    assert TrainConfig().ema == 0.995
    assert TrainConfig(ema=0).ema is None and TrainConfig(ema=0.0).ema is None and TrainConfig(ema=None).ema is None


def tiny_model():
    from brainseg_cli.models import build_model

    torch.manual_seed(0)
    return build_model("unet", spatial_dims=3, in_channels=2, num_classes=3, depth=2, base_features=8,
                       deep_supervision=True, norm="instance")


def run(tmp_path, name, *, model=None, epoch_hooks=(), **changes):
    options = {"epochs": 3, "iterations_per_epoch": 4, "workers": 0, "device": "cpu", "val_every": 1,
               "deterministic": True, "precision": "fp32", **changes}
    return fit(model=model or tiny_model(), plan=cube_plan(), dataset=cube_cases(4), train_cases=TRAIN, val_cases=VAL,
               run_dir=tmp_path / name, config=TrainConfig(**options), epoch_hooks=epoch_hooks)


def test_fit_validates_and_saves_the_average_and_keeps_the_trained_weights_for_resume(tmp_path):
    model = tiny_model()
    result = run(tmp_path, "ema", model=model, ema=0.9)
    plain = run(tmp_path, "plain")
    assert result.step_losses == plain.step_losses  # the average does not touch training
    last = load_checkpoint(result.last_checkpoint)
    best = load_checkpoint(result.best_checkpoint)
    trained = {k: v for k, v in model.state_dict().items()}
    assert all(torch.equal(last["train_state_dict"][k], trained[k]) for k in trained)
    assert not all(torch.equal(last["state_dict"][k], trained[k]) for k in trained)
    assert last["training"]["ema"] == {"decay": 0.9, "updates": 12} and "train_state_dict" not in best
    assert best["training"]["ema"]["updates"] == 4 * (result.best_epoch + 1)
    # The Dice that chose best.pt is the saved average's own.
    entities = validation_entities(labels=best["labels"], regions={}, region_based=False)
    dataset = cube_cases(4)
    own = validate(build_model_from_checkpoint(best), ((c, *dataset.load_case(c)) for c in VAL), plan=cube_plan(),
                   entities=entities, precision="fp32")
    assert own.mean == pytest.approx(result.best_val_dice, abs=1e-6)


def test_resume_with_ema_is_bit_identical(tmp_path):
    straight = run(tmp_path, "straight", ema=0.9)

    def crash(state):
        if state.epoch == 2 and not state.replay:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", ema=0.9, epoch_hooks=[crash])
    resumed = run(tmp_path, "resumed", ema=0.9, resume=True)
    assert resumed.step_losses == straight.step_losses[-4:]
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key in ("state_dict", "train_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert b["training"]["ema"] == {"decay": 0.9, "updates": 12}


def test_resume_refuses_a_checkpoint_without_the_trained_weights(tmp_path):
    def crash(state):
        if state.epoch == 1 and not state.replay:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "r", ema=0.9, epoch_hooks=[crash])
    path = tmp_path / "r" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["train_state_dict"]
    save_checkpoint(path, ckpt)
    with pytest.raises(CheckpointError, match=r"last.pt lacks the trained weights behind its average \(--ema\)"):
        run(tmp_path, "r", ema=0.9, resume=True)
    with pytest.raises(ConfigError, match=r"ema: 0.9 \(run\) vs 0.995 \(now\)"):
        run(tmp_path, "r", resume=True)
