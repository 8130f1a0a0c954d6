"""The fit loop on tiny synthetic cases: learning, files, resume, stopping, hooks, options."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers.synthetic import cube_cases, cube_plan
from torch import nn

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.errors import ConfigError
from brainseg_cli.models import build_model
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.fit import fit

TRAIN = ["case_000", "case_001", "case_002"]
VAL = ["case_003"]


def tiny_model(*, deep_supervision=True, norm="instance", num_classes=3):
    torch.manual_seed(0)
    return build_model("unet", spatial_dims=3, in_channels=2, num_classes=num_classes, depth=2, base_features=8,
                       deep_supervision=deep_supervision, norm=norm)


def run(tmp_path, name="run", *, model=None, plan=None, **changes):
    options = {"epochs": 3, "iterations_per_epoch": 10, "workers": 0, "device": "cpu", **changes}
    return fit(model=model or tiny_model(), plan=plan or cube_plan(), dataset=cube_cases(4), train_cases=TRAIN,
               val_cases=VAL, run_dir=tmp_path / name, config=TrainConfig(**options))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    torch.set_num_threads(1)
    return run(tmp, epochs=3, iterations_per_epoch=10)


def test_loss_falls_and_files_are_written(trained):
    losses = trained.step_losses
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    run_dir = trained.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv", "tensorboard"]
    assert list((run_dir / "tensorboard").iterdir())  # an event file
    assert trained.epochs_completed == 3 and trained.stop_reason == "epochs"
    assert 0.0 <= trained.best_val_dice <= 1.0 and set(trained.val_dice) == {"outer", "inner"}


def test_metrics_csv_columns(trained):
    with open(trained.run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_dice_outer", "val_dice_inner", "val_dice_mean",
                             "lr", "seconds", "data_seconds"]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[-1]["lr"]) == 0.0  # poly schedule ends at 0
    assert float(rows[0]["lr"]) == pytest.approx(1e-2 * (1 - 10 / 30) ** 0.9, rel=1e-4)
    means = [float(r["val_dice_mean"]) for r in rows]
    assert max(means) == pytest.approx(trained.best_val_dice, rel=1e-5)


def test_checkpoints_are_self_describing_and_loadable(trained):
    best = load_checkpoint(trained.best_checkpoint)
    last = load_checkpoint(trained.last_checkpoint)
    assert best["model"]["name"] == "unet" and best["labels"] == {"background": 0, "outer": 1, "inner": 2}
    assert best["channels"] == ["T1", "FLAIR"] and best["regions"] == {}
    assert list(best["postprocessing"]) == ["all foreground", "outer", "inner"]
    assert best["postprocessing"] == trained.postprocessing
    assert list(last["postprocessing"]) == list(best["postprocessing"])
    assert best["training"]["epoch"] == trained.best_epoch and best["training"]["seed"] == 0
    assert best["training"]["config"]["iterations_per_epoch"] == 10
    assert "optimizer" not in best and {"optimizer", "scheduler", "rng"} <= set(last)
    model = build_model_from_checkpoint(best)
    assert not model.training
    out = model(torch.zeros(1, 2, 16, 16, 16))
    assert out.shape == (1, 3, 16, 16, 16)
    config = json.loads((trained.run_dir / "config.json").read_text())
    assert config["train_config"]["epochs"] == 3 and config["val_cases"] == VAL
    assert config["optimizer"] == {"optimizer": "sgd", "lr": 0.01, "schedule": "poly", "weight_decay": 3e-5}


def test_each_checkpoint_decides_postprocessing_on_its_own_predictions(tmp_path, monkeypatch):
    from brainseg_cli.training import decisions as fit_module
    from brainseg_cli.training.validation import validate, validation_entities

    seen = []
    real = fit_module.decide_postprocessing

    def spy(predictions, references, **kwargs):
        seen.append({case: pred.copy() for case, pred in predictions.items()})
        return real(predictions, references, **kwargs)

    monkeypatch.setattr(fit_module, "decide_postprocessing", spy)
    # An lr this high makes the first epoch the best of four (deterministic fp32 on one thread), so
    # the two checkpoints hold different weights.
    result = run(tmp_path, epochs=4, iterations_per_epoch=3, val_every=1, lr=1.0, precision="fp32",
                 deterministic=True)
    assert result.best_epoch < 3 and len(seen) == 2  # best.pt, then last.pt
    labels = {"background": 0, "outer": 1, "inner": 2}
    entities = validation_entities(labels=labels, regions={}, region_based=False)
    dataset = cube_cases(4)
    for ckpt_path, predictions in zip((result.best_checkpoint, result.last_checkpoint), seen):
        ckpt = load_checkpoint(ckpt_path)
        own = validate(build_model_from_checkpoint(ckpt), ((c, *dataset.load_case(c)) for c in VAL), plan=cube_plan(),
                       entities=entities, precision=ckpt["training"]["precision"]).predictions
        assert set(own) == set(predictions) == set(VAL)
        for case in VAL:
            np.testing.assert_array_equal(own[case], predictions[case])


def test_postprocessing_decided_once_when_the_best_epoch_is_the_last(tmp_path, monkeypatch):
    from brainseg_cli.training import decisions as fit_module

    calls = []
    real = fit_module.decide_postprocessing
    monkeypatch.setattr(fit_module, "decide_postprocessing", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = run(tmp_path, epochs=4, iterations_per_epoch=3, val_every=1, lr=0.05, precision="fp32",
                 deterministic=True)
    assert result.best_epoch == 3 and len(calls) == 1
    best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
    assert best["postprocessing"] == last["postprocessing"] == result.postprocessing


def test_region_thresholds_decided_per_checkpoint_on_its_own_probabilities(tmp_path, monkeypatch):
    from brainseg_cli.training import decisions as fit_module
    from brainseg_cli.training.validation import THRESHOLD_CANDIDATES, validate, validation_entities

    seen = []
    real = fit_module.decide_region_thresholds

    def spy(probabilities, predictions, references, **kwargs):
        seen.append({case: p.copy() for case, p in probabilities.items()})
        return real(probabilities, predictions, references, **kwargs)

    monkeypatch.setattr(fit_module, "decide_region_thresholds", spy)
    plan = cube_plan(region_based=True)
    result = run(tmp_path, model=tiny_model(num_classes=2), plan=plan, epochs=4, iterations_per_epoch=3, val_every=1,
                 lr=1.0, precision="fp32", deterministic=True)
    paths = [result.best_checkpoint] + ([result.last_checkpoint] if result.best_epoch < 3 else [])
    assert len(seen) == len(paths)
    entities = validation_entities(labels=plan["labels"], regions=plan["regions"], region_based=True)
    dataset = cube_cases(4)
    for path, probabilities in zip(paths, seen):
        ckpt = load_checkpoint(path)
        assert list(ckpt["region_thresholds"]) == ["whole", "core"]
        assert set(ckpt["region_thresholds"].values()) <= set(THRESHOLD_CANDIDATES)
        own = validate(build_model_from_checkpoint(ckpt), ((c, *dataset.load_case(c)) for c in VAL), plan=plan,
                       entities=entities, keep_probabilities=True).probabilities
        for case in VAL:
            np.testing.assert_array_equal(own[case], probabilities[case])
    assert load_checkpoint(result.best_checkpoint)["region_thresholds"] == result.region_thresholds
    assert "region_thresholds" in load_checkpoint(result.last_checkpoint)
    for path in (result.best_checkpoint, result.last_checkpoint):
        assert list(load_checkpoint(path)["region_min_volumes"]) == ["whole", "core"]
    assert load_checkpoint(result.best_checkpoint)["region_min_volumes"] == result.region_min_volumes


def test_region_thresholds_decided_after_a_resume(tmp_path):
    # The best epoch's validation predates the resume: its checkpoint predicts the validation case again.
    plan = cube_plan(region_based=True)
    options = {"epochs": 3, "iterations_per_epoch": 3, "deterministic": True, "val_every": 1}

    def crash(state):
        if state.epoch == 2 and not state.replay:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model=tiny_model(num_classes=2), plan=plan, dataset=cube_cases(4), train_cases=TRAIN, val_cases=VAL,
            run_dir=tmp_path / "r", config=TrainConfig(workers=0, device="cpu", **options), epoch_hooks=[crash])
    assert "region_thresholds" not in load_checkpoint(tmp_path / "r" / "best.pt")
    resumed = run(tmp_path, "r", model=tiny_model(num_classes=2), plan=plan, resume=True, **options)
    assert list(resumed.region_thresholds) == ["whole", "core"]
    for path in (resumed.best_checkpoint, resumed.last_checkpoint):
        assert list(load_checkpoint(path)["region_thresholds"]) == ["whole", "core"]


def test_softmax_checkpoints_have_no_region_thresholds(trained):
    assert trained.region_thresholds == {}
    assert "region_thresholds" not in load_checkpoint(trained.best_checkpoint)


def test_resume_after_interruption_is_bit_identical(tmp_path):
    options = {"epochs": 3, "iterations_per_epoch": 4, "deterministic": True}
    straight = run(tmp_path, "straight", **options)

    def crash(state):
        if state.epoch == 2 and not state.replay:
            raise KeyboardInterrupt  # as if killed in the middle of epoch 2

    with pytest.raises(KeyboardInterrupt):
        fit(model=tiny_model(), plan=cube_plan(), dataset=cube_cases(4), train_cases=TRAIN, val_cases=VAL,
            run_dir=tmp_path / "resumed", config=TrainConfig(workers=0, device="cpu", **options), epoch_hooks=[crash])
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["training"]["epoch"] == 1
    resumed = run(tmp_path, "resumed", model=tiny_model(deep_supervision=True), resume=True, **options)
    assert resumed.epochs_completed == 3 and len(resumed.step_losses) == 4  # only epoch 2 ran again
    assert resumed.step_losses == straight.step_losses[-4:]
    a = load_checkpoint(straight.last_checkpoint)["state_dict"]
    b = load_checkpoint(resumed.last_checkpoint)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "resumed" / "tensorboard"))
    events.Reload()
    # One event file per segment (their order is by file name: creation second, then host and pid).
    assert sorted(e.step for e in events.Scalars("train/loss")) == [0, 1, 2]


def test_run_dir_rules(tmp_path, trained):
    with pytest.raises(ConfigError, match=r"run folder .*run is not empty .*continue it with --resume or choose a new folder"):
        run(trained.run_dir.parent, "run")
    with pytest.raises(ConfigError, match=r"--resume: nothing to resume in .*fresh"):
        run(tmp_path, "fresh", resume=True)
    with pytest.raises(ConfigError, match=r"options that differ from the run .*lr: None \(run\) vs 0.1 \(now\)"):
        run(trained.run_dir.parent, "run", resume=True, lr=0.1)


def test_patience_and_time_budget_stop_early(tmp_path):
    # A learning rate of ~0 never improves after the first validation.
    result = run(tmp_path, "patience", epochs=6, iterations_per_epoch=2, lr=1e-12, patience=2)
    assert result.stop_reason == "patience" and result.epochs_completed == 3 and result.best_epoch == 0
    budget = run(tmp_path, "budget", epochs=5, iterations_per_epoch=2, max_time_min=1e-6)
    assert budget.stop_reason == "max_time" and budget.epochs_completed == 1
    rows = list(csv.DictReader(open(tmp_path / "budget" / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["val_dice_mean"] != ""  # the last epoch is always validated


def test_time_budget_ends_an_epoch_within_a_step(tmp_path, monkeypatch):
    # A clock that moves 1 s each time it is read: a 30 s budget is spent a few steps into the
    # first epoch of 200 steps, which then ends early, is validated and is the last.
    from brainseg_cli.training import run as run_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(run_module.time, "perf_counter", lambda: float(next(ticks)))
    result = run(tmp_path, "budget", epochs=3, iterations_per_epoch=200, max_time_min=0.5)
    assert result.stop_reason == "max_time" and result.epochs_completed == 1
    assert 1 <= len(result.step_losses) < 30
    rows = list(csv.DictReader(open(tmp_path / "budget" / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["val_dice_mean"] != ""


def test_val_every(tmp_path):
    run(tmp_path, "every", epochs=3, iterations_per_epoch=2, val_every=2)
    rows = list(csv.DictReader(open(tmp_path / "every" / "metrics.csv")))
    assert [r["val_dice_mean"] != "" for r in rows] == [False, True, True]


def test_workers_and_seed(tmp_path):
    base = run(tmp_path, "w0", epochs=1, iterations_per_epoch=3)
    workers = run(tmp_path, "w1", epochs=1, iterations_per_epoch=3, workers=1)
    assert workers.step_losses == base.step_losses  # batches depend only on (seed, step)
    other = run(tmp_path, "s1", epochs=1, iterations_per_epoch=3, seed=1)
    assert other.step_losses != base.step_losses


def test_grad_clip_bounds_the_first_step(tmp_path):
    def first_step_change(name, clip):
        model = tiny_model(deep_supervision=False)
        before = [p.detach().clone() for p in model.parameters()]
        run(tmp_path, name, model=model, epochs=1, iterations_per_epoch=1, grad_clip=clip, weight_decay=0.0)
        return torch.sqrt(sum(((p.detach().cpu() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))

    clipped = first_step_change("clip", 1e-3)
    # SGD with Nesterov momentum 0.99 moves the first step by lr * 1.99 * gradient.
    assert clipped <= 1e-2 * 1.99 * 1e-3 * 1.001
    assert first_step_change("noclip", None) > 10 * clipped


def test_hooks_region_based_and_bf16(tmp_path):
    model = tiny_model(deep_supervision=False, norm="batch", num_classes=2)
    # Freeze encoder stage 0 (BatchNorm included) and unfreeze it at epoch 1.
    frozen = [p for n, p in model.named_parameters() if n.startswith("encoder.0")]
    for p in frozen:
        p.requires_grad_(False)
    bn = next(m for n, m in model.named_modules() if n.startswith("encoder.0") and isinstance(m, nn.BatchNorm3d))
    stats = bn.running_mean.clone()
    seen_modes = []

    def keep_bn_eval(m):
        if frozen[0].requires_grad is False:
            bn.eval()
        seen_modes.append(bn.training)

    def unfreeze(state):
        if state.epoch == 1:
            for p in frozen:
                p.requires_grad_(True)
            state.optimizer.add_param_group({"params": frozen, "lr": 1e-3})

    plan = cube_plan(region_based=True)
    weights_before = frozen[0].detach().clone()
    result = fit(model=model, plan=plan, dataset=cube_cases(4), train_cases=TRAIN, val_cases=VAL,
                 run_dir=tmp_path / "hooks", param_groups=[{"params": [p for p in model.parameters() if p.requires_grad]}],
                 epoch_hooks=[unfreeze], train_mode_hook=keep_bn_eval,
                 config=TrainConfig(epochs=2, iterations_per_epoch=2, workers=0, device="cpu", precision="bf16"))
    assert seen_modes[0] is False  # frozen BatchNorm stayed in eval mode during epoch 0 ...
    assert not torch.equal(frozen[0].detach().cpu(), weights_before)  # ... and trained after unfreezing
    assert not torch.equal(bn.running_mean.cpu(), stats)
    assert set(result.val_dice) == {"whole", "core"}
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["regions"] == {"whole": [1, 2], "core": [2]} and ckpt["training"]["precision"] == "bf16"
    assert all(np.isfinite(result.step_losses))


def test_model_outputs_must_match_the_plan(tmp_path):
    with pytest.raises(ConfigError, match=r"the model has 3 outputs but the plan needs 2 regions \(whole, core\)"):
        run(tmp_path, "mismatch", plan=cube_plan(region_based=True))


def test_deterministic_flag_sets_torch_state(tmp_path):
    run(tmp_path, "det", epochs=1, iterations_per_epoch=1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    run(tmp_path, "nondet", epochs=1, iterations_per_epoch=1)
    assert not torch.are_deterministic_algorithms_enabled()


def test_compile_wraps_the_network(tmp_path, monkeypatch):
    calls = []

    def fake_compile(network):
        calls.append(network)
        return network  # torch.compile itself is exercised by the benchmark, not by a unit test (minutes on a CPU)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny_model()
    run(tmp_path, "compiled", model=model, epochs=1, iterations_per_epoch=1, compile=True)
    assert calls == [model]
    run(tmp_path, "plain", epochs=1, iterations_per_epoch=1)
    assert len(calls) == 1


def test_training_loss_weighs_the_plans_regions_in_output_order():
    from brainseg_cli.losses import DeepSupervisionLoss
    from brainseg_cli.training.targets import training_loss

    plan = cube_plan(region_based=True)  # regions whole, core: output channels 0, 1
    weighted = dict(plan, loss={"batch_dice": False, "region_weights": {"core": 3}})
    deep = training_loss("dice-ce", plan=weighted, model=tiny_model())
    assert isinstance(deep, DeepSupervisionLoss) and deep.loss.channel_weights == (1.0, 3.0)
    assert training_loss("dice-ce", plan=plan, model=tiny_model()).loss.channel_weights is None


def test_training_loss_follows_the_plans_batch_dice():
    from brainseg_cli.losses import DeepSupervisionLoss
    from brainseg_cli.training.targets import training_loss

    plan = cube_plan()
    model = tiny_model(deep_supervision=False)
    assert training_loss("dice-ce", plan=dict(plan, loss={"batch_dice": True}), model=model).batch_dice is True
    assert training_loss("dice-ce", plan=dict(plan, loss={"batch_dice": False}), model=model).batch_dice is False
    # A plan written before the key existed trains with per-sample Dice, as it did then.
    old = {k: v for k, v in plan.items() if k != "loss"}
    assert training_loss("dice", plan=old, model=model).batch_dice is False
    deep = training_loss("dice-ce", plan=dict(plan, loss={"batch_dice": True}), model=tiny_model())
    assert isinstance(deep, DeepSupervisionLoss) and deep.loss.batch_dice is True

    # The two differ on a batch whose second sample holds a sliver of the structure: per sample it
    # weighs as much as the first, over the batch by its voxels.
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    target = torch.zeros(2, 8, 8, 8, dtype=torch.int64)
    target[0, :4] = 1
    target[1, 0, 0, 0] = 2
    per_sample = training_loss("dice", plan=dict(plan, loss={"batch_dice": False}), model=model)(logits, target)
    batch = training_loss("dice", plan=dict(plan, loss={"batch_dice": True}), model=model)(logits, target)
    assert not torch.isclose(per_sample, batch)
