"""TrainConfig validation, options files and the resolved runtime."""

from __future__ import annotations

import json
import re

import pytest

from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.training.config import (
    TrainConfig,
    config_differences,
    read_options_file,
    resolve_options,
    resolve_runtime,
)


def test_defaults_and_docstrings():
    config = TrainConfig()
    assert config.optimizer == "sgd" and config.grad_clip == 12.0 and config.loss == "dice-ce"
    assert config.iterations_per_epoch == 50
    # Every field is documented (the attribute docstring convention of this codebase).
    import inspect

    source = inspect.getsource(TrainConfig)
    for name in config.to_dict():
        assert f"    {name}:" in source
        line = source.split(f"    {name}:")[1].splitlines()[1]
        assert line.strip().startswith('"""'), name


def test_validation_interval_defaults_to_two_epochs_with_a_time_budget():
    """The 20-minute BraTS protocol validates every 2 epochs: that is the default of a time-budgeted run."""
    assert TrainConfig().validation_every == 1
    assert TrainConfig(max_time_min=20).validation_every == 2
    assert TrainConfig(max_time_min=20, val_every=1).validation_every == 1
    assert TrainConfig(val_every=3).validation_every == 3
    with pytest.raises(ConfigError, match=r"val_every must be an integer >= 1, got 0"):
        TrainConfig(val_every=0)
    # a resume compares the interval meant: an explicit default matches, another interval does not
    assert config_differences(TrainConfig(val_every=1).to_dict(), TrainConfig()) == []
    assert config_differences(TrainConfig(max_time_min=20, val_every=2).to_dict(), TrainConfig(max_time_min=20)) == []
    assert config_differences(TrainConfig().to_dict(), TrainConfig(val_every=4)) == ["val_every: 1 (run) vs 4 (now)"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
        ({"optimizer": "adamw"}, r"optimizer must be one of sgd, adam, got 'adamw' \(did you mean 'adam'\?\)"),
        ({"schedule": "step"}, r"schedule must be one of poly, cosine"),
        ({"val_cases": 2, "fold": 1}, r"choose one of --val-cases, --val-split and --fold, got val_cases and fold"),
        ({"fold": 5, "folds": 5}, r"fold 5 does not exist with --folds 5 \(folds are 0..4\)"),
        ({"val_split": 1.5}, r"val_split must be in \(0, 1\), got 1.5"),
        ({"device": "gpu"}, r"device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"precision": "fp64"}, r"precision must be one of auto, fp32, bf16, fp16"),
        ({"lr": -1.0}, r"lr must be positive, got -1.0"),
        ({"max_time_min": 0}, r"max_time_min must be a positive number of minutes"),
        ({"epochs": 10**30}, r"epochs must be at most 1000000, got 1000000000000000000000000000000"),
        ({"iterations_per_epoch": 10**7}, r"iterations_per_epoch must be at most 1000000"),
        ({"max_time_min": float("inf")}, r"max_time_min must be a positive number of minutes \(at most 1000000\), got inf"),
        ({"augment_preset": "brat"},
         r"augment_preset must be one of default, brats, lgg, got 'brat' \(did you mean 'brats'\?\)"),
    ],
)
def test_invalid_values(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**changes)


def test_options_file_json_and_toml_cli_overrides(tmp_path):
    js = tmp_path / "opts.json"
    js.write_text(json.dumps({"epochs": 7, "lr": 0.1, "max-time-min": 3, "patch_size": [32, 32, 32], "config": "3d"}))
    config, plan = resolve_options(file_options=read_options_file(js), cli_options={"lr": 0.5, "epochs": None})
    assert config.epochs == 7 and config.lr == 0.5 and config.max_time_min == 3
    assert plan == {"patch_size": [32, 32, 32], "config": "3d"}

    toml = tmp_path / "opts.toml"
    toml.write_text('optimizer = "adam"\nschedule = "poly"\nregions = "brats"\n')
    config, plan = resolve_options(file_options=read_options_file(toml))
    assert config.optimizer == "adam" and config.schedule == "poly" and plan == {"regions": "brats"}

    weights = tmp_path / "weights.toml"
    weights.write_text('regions = "brats"\n[region_weights]\nTC = 2\nET = 2.5\n')
    _, plan = resolve_options(file_options=read_options_file(weights))
    assert plan == {"regions": "brats", "region_weights": {"TC": 2, "ET": 2.5}}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"lr": {"value": 1}}))
    with pytest.raises(ConfigError, match=r"table\.json: option 'lr' must be a value, got a table"):
        read_options_file(table)
    negative = tmp_path / "negative.json"
    negative.write_text(json.dumps({"region_weights": {"ET": -2}}))
    with pytest.raises(ConfigError, match=r"negative\.json: region_weights must be a mapping of region names to numbers"):
        read_options_file(negative)


def test_options_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"epocs": 3}')
    with pytest.raises(ConfigError, match=r"bad\.json: unknown option 'epocs' \(did you mean 'epochs'\?\)"):
        read_options_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(InputError, match=r"broken\.json is not valid json"):
        read_options_file(broken)
    with pytest.raises(InputError, match=r"missing\.json: cannot read it"):
        read_options_file(tmp_path / "missing.json")


def test_fp16_on_cpu_is_a_usage_error():
    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA device") as info:
        resolve_runtime(TrainConfig(precision="fp16", device="cpu"))
    assert info.value.exit_code == 2
    runtime = resolve_runtime(TrainConfig(device="cpu", workers=0))
    assert runtime.device == "cpu" and runtime.workers == 0


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, native):
    from brainseg_cli.training import config as config_module

    monkeypatch.setattr(config_module, "cpu_supports_bf16", lambda: native)
    auto = resolve_runtime(TrainConfig(device="cpu", workers=0))
    assert auto.precision == ("bf16" if native else "fp32") and auto.notes == ()
    forced = resolve_runtime(TrainConfig(device="cpu", workers=0, precision="bf16"))
    assert forced.precision == "bf16" and bool(forced.notes) is not native  # emulated bf16 is flagged
    assert resolve_runtime(TrainConfig(device="cpu", workers=0, precision="fp32")).precision == "fp32"


def test_auto_precision_is_fp32_for_an_architecture_that_diverges_in_bf16(monkeypatch):
    """Issue #23: unet3d's default plan diverges in bf16, so auto trains it in fp32; an explicit bf16 is obeyed."""
    import brainseg_cli.training.config as config_module
    from brainseg_cli.models import MODEL_NAMES, model_info

    monkeypatch.setattr(config_module, "cpu_supports_bf16", lambda: True)
    auto = resolve_runtime(TrainConfig(device="cpu", workers=0), model="unet3d")
    assert auto.precision == "fp32" and any("fp32 for unet3d, which diverges in bf16" in n for n in auto.notes)
    assert resolve_runtime(TrainConfig(device="cpu", workers=0, precision="bf16"), model="unet3d").precision == "bf16"
    for name in MODEL_NAMES:
        expected = "bf16" if model_info(name).reduced_precision else "fp32"
        assert resolve_runtime(TrainConfig(device="cpu", workers=0), model=name).precision == expected
    assert [n for n in MODEL_NAMES if not model_info(n).reduced_precision] == ["unet3d"]


def test_auto_precision_on_cuda_is_fp16(monkeypatch):
    """fp16 with loss scaling: measured faster than bf16 and fp32 on an H200 (benchmarks/gpu_check.sh)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    auto = resolve_runtime(TrainConfig(device="auto", workers=0), local_rank=1)
    assert (auto.device, auto.precision) == ("cuda:1", "fp16")
    assert resolve_runtime(TrainConfig(device="cuda:0", workers=0, precision="bf16")).precision == "bf16"


def test_cuda_unavailable_is_a_usage_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device cuda:1 asked for, but CUDA is not available"):
        resolve_runtime(TrainConfig(device="cuda:1"))


def test_resume_differences():
    saved = TrainConfig(lr=0.01).to_dict()
    assert config_differences(saved, TrainConfig(lr=0.01, resume=True, workers=3, patience=4)) == []
    # the learning-rate schedule depends on the epoch count: it may not change on resume
    assert config_differences(saved, TrainConfig(lr=0.01, epochs=9)) == ["epochs: 100 (run) vs 9 (now)"]
    assert config_differences(saved, TrainConfig(lr=0.1)) == ["lr: 0.01 (run) vs 0.1 (now)"]


@pytest.mark.parametrize(("content", "match"), [
    ({"patch_size": "banana", "epochs": 3}, r"patch_size must be 2 \(2-D\) or 3 \(3-D\) positive integers, got 'banana'"),
    ({"epochs": -3}, r"epochs must be an integer >= 1, got -3"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"target_spacing": [1, 0, 1]}, r"target_spacing must be 3 positive, finite spacings in mm, got \(1, 0, 1\)"),
    ({"crop_to_brain": "yes"}, r"crop_to_brain must be true or false, got 'yes'"),
    ({"foreground_fraction": 2}, r"foreground_fraction must be a number in \[0, 1\], got 2"),
    ({"fold": 7}, r"fold 7 does not exist with --folds 5"),
])
@pytest.mark.fault
def test_options_file_values_are_checked_naming_the_file(tmp_path, content, match):
    """Issue #20: ``{"patch_size": "banana", "epochs": -3}`` failed later with "'>' not supported ...", no key, no file."""
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=rf"^options file {re.escape(str(path))}: {match}"):
        read_options_file(path)


def test_options_file_checks_related_values_together(tmp_path):
    path = tmp_path / "opts.json"
    path.write_text(json.dumps({"fold": 7, "folds": 10, "patch_size": [64, 64]}))
    assert read_options_file(path) == {"fold": 7, "folds": 10, "patch_size": [64, 64]}
