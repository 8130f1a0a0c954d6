"""Optimiser presets and per-iteration schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from brainseg_cli.errors import ConfigError
from brainseg_cli.training.optim import (
    StepSchedule,
    build_optimizer,
    cosine_factor,
    poly_factor,
    resolved_optimizer_settings,
    steps_left_in_budget,
)


def test_presets():
    net = nn.Linear(2, 2)
    sgd = build_optimizer(net.parameters(), name="sgd")
    group = sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)
    adam = build_optimizer(net.parameters(), name="adam", lr=3e-4)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 3e-4
    assert resolved_optimizer_settings(name="adam", lr=None, schedule=None, weight_decay=None) == {
        "optimizer": "adam", "lr": 1e-4, "schedule": "cosine", "weight_decay": 0.0}
    assert resolved_optimizer_settings(name="sgd", lr=0.1, schedule="cosine", weight_decay=0.0)["schedule"] == "cosine"


def test_frozen_parameters_are_left_out():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].weight.requires_grad_(False)
    opt = build_optimizer([{"params": list(net[0].parameters()), "lr": 1e-3}, {"params": list(net[1].parameters())}],
                          name="sgd", lr=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 2]
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.1]
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(net.parameters(), name="sgd")


def test_schedule_factors():
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert poly_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert cosine_factor(50, 100) == pytest.approx(0.5) and cosine_factor(100, 100) == pytest.approx(0.0)


def test_step_schedule_is_per_iteration_and_covers_added_groups():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = build_optimizer(net[0].parameters(), name="sgd", lr=0.1)
    schedule = StepSchedule(opt, name="poly", total_steps=10)
    for _ in range(5):
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)
    opt.add_param_group({"params": list(net[1].parameters()), "lr": 0.01})  # e.g. unfrozen by a hook
    schedule.apply()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    state = schedule.state_dict()
    other = StepSchedule(build_optimizer(net[0].parameters(), name="sgd", lr=0.1), name="poly", total_steps=10)
    other.load_state_dict(state)
    assert other.optimizer.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    with pytest.raises(ConfigError, match=r"saved schedule \(poly, 10 steps\) differs from this run's \(cosine, 10 steps\)"):
        StepSchedule(opt, name="cosine", total_steps=10).load_state_dict(state)
    assert not math.isnan(opt.param_groups[0]["lr"])


def test_schedule_follows_a_time_budget():
    # 1000 planned steps, but after 10 the budget allows only 20 more: poly ends at 0 after 30.
    opt = build_optimizer(nn.Linear(2, 2).parameters(), name="sgd", lr=0.1)
    schedule = StepSchedule(opt, name="poly", total_steps=1000)
    for _ in range(10):
        schedule.step()
    assert schedule.progress == pytest.approx(0.01)
    schedule.retarget(20)
    lrs = []
    for _ in range(20):
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 0.0 and lrs[-2] > 0.0
    # It never lags the step count: an --epochs limit that comes first still ends the schedule.
    late = StepSchedule(build_optimizer(nn.Linear(2, 2).parameters(), name="sgd", lr=0.1), name="cosine", total_steps=10)
    late.retarget(10_000)
    for _ in range(10):
        late.step()
    assert late.progress == 1.0 and late.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # Its state survives a resume, and an old state without progress reads as step / total.
    again = StepSchedule(build_optimizer(nn.Linear(2, 2).parameters(), name="sgd", lr=0.1), name="poly", total_steps=1000)
    again.load_state_dict({**schedule.state_dict()})
    assert (again.progress, again.remaining) == (schedule.progress, schedule.remaining) == (1.0, 0)
    again.load_state_dict({"name": "poly", "total_steps": 1000, "step": 250})
    assert again.progress == 0.25 and again.remaining is None


def test_steps_left_in_budget():
    # Epochs of 10 s and 14 s (validated every 2nd): 12 s on average; 50 s left fit 4 epochs.
    assert steps_left_in_budget(budget_seconds=100, elapsed=50, epoch_seconds=[10, 14] * 3, iterations=5,
                                val_every=2) == 20
    assert steps_left_in_budget(budget_seconds=100, elapsed=120, epoch_seconds=[10], iterations=5, val_every=1) == 0
    assert steps_left_in_budget(budget_seconds=100, elapsed=0, epoch_seconds=[], iterations=5, val_every=1) == 0
