"""Training configuration: :class:`TrainConfig`, options files and the resolved device/precision.

``TrainConfig`` holds every training option of ``brainseg pretrain`` (and of ``finetune``, which
reuses the fit loop). Options that shape the *plan* (``--config``, ``--model``, ``--regions``,
``--patch-size``, ``--spacing``, ``--batch-size``, ``--memory-gb``) are not training options: they are
passed to the planner as a dict whose keys are :data:`PLAN_OVERRIDE_KEYS` (the fields of
:class:`brainseg_cli.data.plan.PlanOverrides`; ``--spacing`` is ``target_spacing``).

An options file (``--options-file``, JSON or TOML) is a flat mapping whose keys are
``TrainConfig`` field names or plan-override names; flags given on the command line override it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from brainseg_cli import choices
from brainseg_cli.data.augmentation import AUGMENT_PRESETS
from brainseg_cli.data.plan import PlanOverrides, override_fields
from brainseg_cli.errors import ConfigError, InputError, did_you_mean
from brainseg_cli.models import model_info
from brainseg_cli.models.precision import TRAIN_PRECISIONS

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = choices.OPTIMIZERS
SCHEDULES: tuple[str, ...] = choices.SCHEDULES
LOSSES: tuple[str, ...] = choices.TRAINING_LOSSES

def _plan_override_keys() -> tuple[str, ...]:
    return override_fields()


def _augment_preset_names() -> tuple[str, ...]:
    return tuple(name for name in AUGMENT_PRESETS if name != "none")


#: Augmentation presets a run may use (:data:`brainseg_cli.data.augmentation.AUGMENT_PRESETS` but
#: ``none``, which is ``--no-aug``).
AUGMENT_PRESET_NAMES: tuple[str, ...] = _augment_preset_names()


#: Names of the planner options (:class:`brainseg_cli.data.plan.PlanOverrides` fields) that an
#: options file may also hold.
PLAN_OVERRIDE_KEYS: tuple[str, ...] = _plan_override_keys()

#: TrainConfig fields that may differ between a run and its ``--resume`` (they do not change what
#: is computed, only how long and where).
RESUME_MAY_CHANGE: frozenset[str] = frozenset(
    {"max_time_min", "patience", "resume", "device", "workers", "nproc", "compile"}
)


def validation_interval(val_every: int | None, max_time_min: float | None) -> int:
    """Epochs between validations: ``val_every``, or by default 2 with a time budget, else 1."""
    if val_every is not None:
        return int(val_every)
    return 2 if max_time_min is not None else 1


#: Default ``--ema`` decay: an average over about the last 200 optimiser steps.
DEFAULT_EMA = 0.995

@dataclass(frozen=True)
class TrainConfig:
    """Every option of the training loop (``brainseg pretrain`` / ``finetune``).

    An *epoch* is a fixed number of optimiser steps (:attr:`iterations_per_epoch`), each on one
    batch of randomly sampled patches (nnU-Net's definition; it uses 250).
    """

    epochs: int = 100
    """Number of epochs to train (each :attr:`iterations_per_epoch` steps)."""
    iterations_per_epoch: int = 50
    """Optimiser steps per epoch (nnU-Net: 250; 50 keeps CPU epochs short)."""
    val_every: int | None = None
    """Validate every N epochs (and always after the last epoch); None: every 2 epochs with a time
    budget (:attr:`max_time_min`: a validation costs budget that training steps could use; the
    cross-validated 20-minute BraTS protocol measures this), else every epoch. See
    :attr:`validation_every`."""
    max_time_min: float | None = None
    """Wall-clock budget in minutes for the whole run (time before a ``--resume`` included); the
    loop stops before an epoch that would not fit, estimated from the mean epoch duration."""
    patience: int | None = None
    """Stop when the mean validation Dice has not improved for this many epochs (None: never)."""
    optimizer: str = "sgd"
    """``sgd`` (momentum 0.99, Nesterov, lr 1e-2, poly decay) or ``adam`` (lr 1e-4, cosine)."""
    lr: float | None = None
    """Initial learning rate; None uses the optimiser preset (sgd 1e-2, adam 1e-4)."""
    schedule: str | None = None
    """Learning-rate schedule ``poly`` (exponent 0.9) or ``cosine``, stepped every iteration;
    None uses the optimiser preset (sgd: poly, adam: cosine)."""
    weight_decay: float | None = None
    """L2 weight decay; None uses the preset (sgd 3e-5 as nnU-Net, adam 0)."""
    grad_clip: float | None = 12.0
    """Clip the gradient norm to this value (nnU-Net: 12); None or 0 disables clipping."""
    ema: float | None = DEFAULT_EMA
    """Validate, choose ``best.pt`` and save an exponential moving average of the weights with this
    decay, in (0, 1) (it spans about ``1 / (1 - ema)`` steps); None or 0 trains and saves the
    weights as they are (:mod:`brainseg_cli.training.ema`). The default, 0.995, is the recipe the
    cross-validated BraTS protocol measures (``benchmarks/brats_cv.py``)."""
    loss: str = "dice-ce"
    """``dice-ce`` (soft Dice + cross-entropy, or + BCE for regions) or ``dice``."""
    augment: bool = True
    """Spatial and intensity augmentation of training patches."""
    augment_preset: str = "default"
    """Which augmentation (when :attr:`augment`): ``default`` (nnU-Net v2's), ``brats`` (stronger, after
    nnU-Net's BraTS 2020 entry: more and wider scaling, rotation, elastic, brightness, contrast and
    gamma) or ``lgg`` (Buda et al. 2019)."""
    val_cases: int | None = None
    """Hold out this many cases for validation (deterministic choice)."""
    val_split: float | None = None
    """Hold out this fraction of the cases for validation (default 0.2 when no split is given)."""
    fold: int | None = None
    """Validate on fold K (0-based) of a deterministic case-level K-fold split."""
    folds: int = 5
    """Number of folds of the K-fold split (used with :attr:`fold`)."""
    precision: str = "auto"
    """``fp32``, ``bf16`` or ``fp16`` (CUDA only, with loss scaling); ``auto``: fp16 with loss
    scaling on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16), else fp32."""
    compile: bool = False
    """Compile the network with ``torch.compile``."""
    resume: bool = False
    """Continue the run in RUN_DIR from ``last.pt``."""
    deterministic: bool = False
    """Deterministic algorithms (bit-identical reruns and resumes on the same machine; slower)."""
    seed: int = 0
    """Seed of weights initialisation, patch sampling and augmentation."""
    device: str = "auto"
    """``auto`` (first CUDA device, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    workers: int | None = None
    """Data-loading worker processes; None: min(4, CPU cores - 1); 0 loads in the main process."""
    nproc: int = 1
    """Data-parallel processes on this machine (torch's elastic launcher); 1: no DDP unless the
    process was started by ``torchrun``."""

    @property
    def validation_every(self) -> int:
        """Epochs between validations: :attr:`val_every`, or its default (:func:`validation_interval`)."""
        return validation_interval(self.val_every, self.max_time_min)

    def __post_init__(self) -> None:
        if type(self.ema) in (int, float) and self.ema == 0:  # --ema 0: off, stored as None
            object.__setattr__(self, "ema", None)
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (field name -> value)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


#: Upper bound of counts (epochs, steps per epoch, ...): far above any run, below what the step
#: arithmetic (int64 step counters, float schedules) handles.
MAX_COUNT = 1_000_000


def _positive_int(name: str, value: Any, *, allow_zero: bool = False, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r:.60}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value!r:.60}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")


def validate(config: TrainConfig) -> None:
    """Check every field of ``config`` (types, ranges, exclusive options).

    Raises:
        ConfigError: one line naming the option and the offending value.
    """
    _positive_int("epochs", config.epochs, maximum=MAX_COUNT)
    _positive_int("iterations_per_epoch", config.iterations_per_epoch, maximum=MAX_COUNT)
    if config.val_every is not None:
        _positive_int("val_every", config.val_every, maximum=MAX_COUNT)
    if config.max_time_min is not None and not (isinstance(config.max_time_min, (int, float))
                                                and not isinstance(config.max_time_min, bool)
                                                and 0 < config.max_time_min <= MAX_COUNT):
        raise ConfigError(f"max_time_min must be a positive number of minutes (at most {MAX_COUNT}), "
                          f"got {config.max_time_min!r:.60}")
    if config.patience is not None:
        _positive_int("patience", config.patience, maximum=MAX_COUNT)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    if config.schedule is not None:
        _choice("schedule", config.schedule, SCHEDULES)
    if config.lr is not None and not config.lr > 0:
        raise ConfigError(f"lr must be positive, got {config.lr!r}")
    if config.weight_decay is not None and not config.weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay!r}")
    if config.grad_clip is not None and not config.grad_clip >= 0:
        raise ConfigError(f"grad_clip must be >= 0, got {config.grad_clip!r}")
    if config.ema is not None and (isinstance(config.ema, bool) or not 0.0 < config.ema < 1.0):
        raise ConfigError(f"ema must be a decay in (0, 1) such as 0.995, or 0 for none, got {config.ema!r}")
    _choice("loss", config.loss, LOSSES)
    _choice("augment_preset", config.augment_preset, AUGMENT_PRESET_NAMES)
    _choice("precision", config.precision, TRAIN_PRECISIONS)
    given = [name for name in ("val_cases", "val_split", "fold") if getattr(config, name) is not None]
    if len(given) > 1:
        raise ConfigError(f"choose one of --val-cases, --val-split and --fold, got {' and '.join(given)}")
    if config.val_cases is not None:
        _positive_int("val_cases", config.val_cases)
    if config.val_split is not None and not 0.0 < config.val_split < 1.0:
        raise ConfigError(f"val_split must be in (0, 1), got {config.val_split!r}")
    _positive_int("folds", config.folds)
    if config.folds < 2:
        raise ConfigError(f"folds must be >= 2, got {config.folds}")
    if config.fold is not None:
        _positive_int("fold", config.fold, allow_zero=True)
        if config.fold >= config.folds:
            raise ConfigError(f"fold {config.fold} does not exist with --folds {config.folds} (folds are 0..{config.folds - 1})")
    _positive_int("seed", config.seed, allow_zero=True)
    if config.workers is not None:
        _positive_int("workers", config.workers, allow_zero=True)
    _positive_int("nproc", config.nproc)
    device = config.device
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def train_config_fields() -> tuple[str, ...]:
    """Names of the :class:`TrainConfig` fields."""
    return tuple(f.name for f in fields(TrainConfig))


def read_options_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an options file (``.json`` or ``.toml``): a flat mapping of option names to values.

    Keys may be :class:`TrainConfig` field names or :data:`PLAN_OVERRIDE_KEYS`; dashes in keys are
    read as underscores (``max-time-min`` = ``max_time_min``).

    Raises:
        InputError: the file is unreadable or not a flat mapping.
        ConfigError: a key is not an option name (with a did-you-mean hint).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"options file {source}: cannot read it ({exc.strerror})") from None
    is_toml = source.suffix.lower() == ".toml"
    if is_toml and tomllib is None:  # pragma: no cover - Python 3.10
        raise ConfigError(f"options file {source}: TOML needs Python 3.11 or newer; use JSON")
    toml_error = tomllib.TOMLDecodeError if tomllib is not None else ValueError
    try:
        data = tomllib.loads(text) if is_toml else json.loads(text)
    except (json.JSONDecodeError, toml_error) as exc:
        message = " ".join(str(exc).split())
        raise InputError(f"options file {source} is not valid {source.suffix.lstrip('.') or 'JSON'}: {message}") from None
    if not isinstance(data, dict):
        raise InputError(f"options file {source} must hold a mapping of option names to values, got {type(data).__name__}")
    valid = set(train_config_fields()) | set(PLAN_OVERRIDE_KEYS)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in valid:
            raise ConfigError(f"options file {source}: unknown option '{key}'{did_you_mean(name, valid)}")
        if isinstance(value, dict) and name not in ("model_config", "region_weights"):
            raise ConfigError(f"options file {source}: option '{key}' must be a value, got a table")
        out[name] = value
    _check_option_values(out, source=source)
    return out


def _check_option_values(options: Mapping[str, Any], *, source: Path) -> None:
    """Check each value of an options file on its own, so that the message names the file and the key.

    Raises:
        ConfigError: ``options file FILE: KEY must be ..., got VALUE``.
    """
    train_names = set(train_config_fields())
    train = {k: v for k, v in options.items() if k in train_names}
    try:
        for name, value in train.items():
            if isinstance(value, list):
                raise ConfigError(f"{name} takes one value, got {value!r}")
        TrainConfig(**train)  # together: some checks relate two options (fold < folds)
        for name, value in options.items():
            if name not in train_names:
                PlanOverrides(**{name: tuple(value) if isinstance(value, list) else value})
    except ConfigError as exc:
        raise ConfigError(f"options file {source}: {exc}") from None


def resolve_options(
    *, file_options: Mapping[str, Any] | None = None, cli_options: Mapping[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """Merge an options file and command-line flags into a config and plan overrides.

    Args:
        file_options: from :func:`read_options_file` (or None).
        cli_options: option name -> value for flags given on the command line; ``None`` values
            mean "not given" and do not override the file.

    Returns:
        ``(train_config, plan_overrides)``; plan overrides hold only the keys that were given.

    Raises:
        ConfigError: a value is invalid or a name is unknown.
    """
    merged: dict[str, Any] = dict(file_options or {})
    for key, value in (cli_options or {}).items():
        if value is not None:
            merged[key] = value
    train_names = set(train_config_fields())
    unknown = [k for k in merged if k not in train_names and k not in PLAN_OVERRIDE_KEYS]
    if unknown:
        raise ConfigError(f"unknown option '{unknown[0]}'{did_you_mean(unknown[0], train_names | set(PLAN_OVERRIDE_KEYS))}")
    train = {k: v for k, v in merged.items() if k in train_names}
    plan = {k: v for k, v in merged.items() if k in PLAN_OVERRIDE_KEYS}
    for key, value in list(train.items()):
        if isinstance(value, list):
            raise ConfigError(f"option {key} takes one value, got {value!r}")
    try:
        config = TrainConfig(**train)
    except TypeError as exc:
        raise ConfigError(f"invalid training options: {exc}") from None
    return config, plan


def config_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Fields (outside :data:`RESUME_MAY_CHANGE`) whose value differs from a saved config.

    ``val_every`` is compared as the interval it means (:func:`validation_interval`), so a run saved
    with an explicit 1 and resumed without ``--val-every`` (default 1 without a time budget) matches.

    Returns:
        ``["lr: 0.01 (run) vs 0.1 (now)", ...]``; empty when the run can be resumed.
    """
    now = current.to_dict()
    out = []
    for name in train_config_fields():
        if name in RESUME_MAY_CHANGE or name not in saved:
            continue
        if name == "val_every":
            was = validation_interval(saved[name], saved.get("max_time_min"))
            if was != current.validation_every:
                out.append(f"val_every: {was!r} (run) vs {current.validation_every!r} (now)")
            continue
        if saved[name] != now[name]:
            out.append(f"{name}: {saved[name]!r} (run) vs {now[name]!r} (now)")
    return out


@dataclass(frozen=True)
class Runtime:
    """The concrete device and precision a config resolves to on this machine."""

    device: str
    """``cpu`` or ``cuda:N``."""
    precision: str
    """``fp32``, ``bf16`` or ``fp16``."""
    workers: int
    """Data-loading worker processes."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Human-readable decisions (logged)."""


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays off."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        return False
    if "AMX" in capability.upper():
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_runtime(config: TrainConfig, *, local_rank: int | None = None, model: str | None = None) -> Runtime:
    """Resolve ``device``, ``precision`` and ``workers`` for this machine.

    Args:
        config: the training config.
        local_rank: the process's rank on this machine under DDP (picks ``cuda:<local_rank>``
            when the device is ``auto`` or ``cuda``).
        model: the architecture to train: ``auto`` chooses a reduced precision only for one whose
            registry entry allows it (:attr:`~brainseg_cli.models.registry.ModelInfo.reduced_precision`).

    Raises:
        ConfigError: CUDA asked for but unavailable, a CUDA index out of range, or ``fp16`` on a
            CPU (a usage error).
    """
    import torch

    notes: list[str] = []
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device} asked for, but CUDA is not available on this machine")
        count = torch.cuda.device_count()
        index = int(device[5:]) if device.startswith("cuda:") else (local_rank or 0)
        if index >= count:
            raise ConfigError(f"device cuda:{index} asked for, but this machine has {count} CUDA device(s)")
        device = f"cuda:{index}"
    precision = config.precision
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError("--precision fp16 needs a CUDA device (loss scaling); on a CPU use bf16 or fp32")
        if precision == "auto":
            # bf16 autocast where the CPU computes in bf16 natively (AMX / AVX512-BF16): training
            # steps run about 2x faster (0.18 s vs 0.36 s for the 2-D BraTS CPU plan), so a
            # time-limited run makes twice the steps.
            precision = "bf16" if cpu_supports_bf16() else "fp32"
        elif precision == "bf16" and not cpu_supports_bf16():
            notes.append("this CPU has no native bf16: bf16 autocast will be emulated and may be slow")
    elif precision == "auto":
        # fp16 with loss scaling (as nnU-Net): on an H200 the 3-D GPU plan trained at 19.0 steps/s in
        # fp16, 17.1 in bf16 and 13.0 in fp32 with the same losses (benchmarks/gpu_check.sh), and
        # GPUs before Ampere have no bf16 at all.
        precision = "fp16"
    if config.precision == "auto" and precision != "fp32" and model is not None:
        if not model_info(model).reduced_precision:
            notes.append(f"--precision auto: fp32 for {model}, which diverges in {precision} with its default plan")
            precision = "fp32"
    workers = config.workers
    if workers is None:
        workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    return Runtime(device=device, precision=precision, workers=workers, notes=tuple(notes))
