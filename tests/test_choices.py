"""One source for each set of choices: the registries are keyed by :mod:`brainseg_cli.choices`, and the
CLI offers exactly those names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brainseg_cli import choices
from brainseg_cli.cli import convert as cli_convert
from brainseg_cli.cli import evaluate as cli_evaluate
from brainseg_cli.cli import export as cli_export
from brainseg_cli.cli import finetune as cli_finetune
from brainseg_cli.cli import predict as cli_predict
from brainseg_cli.cli import training_options as opts
from brainseg_cli.data.augmentation import AUGMENT_PRESETS
from brainseg_cli.data.converters import CONVERTERS
from brainseg_cli.data.plan import REGION_PRESETS
from brainseg_cli.inference.engines import EXPORT_FORMATS
from brainseg_cli.losses import LOSS_NAMES
from brainseg_cli.metrics.empty import EmptyPolicy
from brainseg_cli.models.precision import AUTOCAST_DTYPES
from brainseg_cli.training.optim import PRESETS, SCHEDULE_FACTORS


def test_registries_are_keyed_by_the_choices():
    assert tuple(CONVERTERS) == choices.CONVERT_SOURCES
    assert tuple(PRESETS) == choices.OPTIMIZERS
    assert tuple(SCHEDULE_FACTORS) == choices.SCHEDULES
    assert set(choices.TRAINING_LOSSES) <= set(LOSS_NAMES)
    assert tuple(p for p in AUGMENT_PRESETS if p != "none") == choices.AUGMENT_PRESETS
    assert tuple(AUTOCAST_DTYPES) == choices.PRECISIONS and choices.TRAIN_PRECISIONS == ("auto", *choices.PRECISIONS)
    assert tuple(EXPORT_FORMATS) == choices.EXPORT_FORMATS
    assert tuple(p.value for p in EmptyPolicy) == choices.EMPTY_POLICIES
    assert set(REGION_PRESETS) | {"dataset", "none"} == set(choices.REGION_CHOICES)


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (opts.Optimizer, choices.OPTIMIZERS), (opts.Schedule, choices.SCHEDULES),
        (opts.SliceWeighting, choices.SLICE_WEIGHTINGS), (opts.Loss, choices.TRAINING_LOSSES),
        (opts.AugmentPreset, choices.AUGMENT_PRESETS), (opts.Precision, choices.TRAIN_PRECISIONS),
        (opts.Config, choices.CONFIGS), (opts.Regions, choices.REGION_CHOICES),
        (cli_predict.Lcc, choices.LCC_MODES), (cli_predict.Precision, choices.PRECISIONS),
        (cli_predict.Engine, choices.ENGINES), (cli_predict.LabelValues, choices.LABEL_MODES),
        (cli_export.ExportFormat, choices.EXPORT_FORMATS), (cli_convert.Source, choices.CONVERT_SOURCES),
        (cli_finetune.Select, choices.SELECT_METHODS), (cli_evaluate.HD95Choice, choices.HD95_MODES),
        (cli_evaluate.EmptyChoice, choices.EMPTY_POLICIES),
    ],
)
def test_cli_options_offer_the_choices(enum, values):
    assert tuple(e.value for e in enum) == values
    assert all(isinstance(e, str) and e == e.value for e in enum)  # str enums: compare as their value


def test_help_does_not_import_torch():
    code = "import sys; import brainseg_cli.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
