"""brainseg: brain-MRI segmentation with transfer learning.

The command-line tool ``brainseg`` is a thin layer over this package: every command builds a
config and calls one of the functions below, which can be called from Python just the same::

    import brainseg_cli as bs
    image = bs.read_image("case_0000.nii.gz")          # Image: array (X, Y, Z), LPS geometry
    bs.convert_dataset(config=bs.ConvertConfig(...))    # brainseg convert
    bs.pretrain(dataset_dir=..., run_dir=..., ...)       # brainseg pretrain
    bs.finetune(dataset_dir=..., run_dir=..., ...)       # brainseg finetune
    bs.predict_folder(config=bs.PredictConfig(...))      # brainseg predict
    bs.evaluate_folders(config=bs.EvaluateConfig(...))   # brainseg evaluate
    bs.write_report(config=bs.ReportConfig(...))         # brainseg visualize report
    bs.run_demo(config=bs.DemoConfig(...))               # brainseg demo

Names are imported lazily so that ``import brainseg_cli`` (and ``brainseg --help``) stay instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_API: dict[str, str] = {
    "Image": "brainseg_cli.io",
    "read_image": "brainseg_cli.io",
    "write_image": "brainseg_cli.io",
    "make_phantom": "brainseg_cli.data.phantom",
    "load_dataset": "brainseg_cli.data.layout",
    "ConvertConfig": "brainseg_cli.data.convert",
    "convert_dataset": "brainseg_cli.data.convert",
    "build_model": "brainseg_cli.models",
    "TrainConfig": "brainseg_cli.training.config",
    "pretrain": "brainseg_cli.training.pretrain",
    "FinetuneConfig": "brainseg_cli.training.finetune",
    "finetune": "brainseg_cli.training.finetune",
    "load_checkpoint": "brainseg_cli.checkpoint",
    "PredictConfig": "brainseg_cli.inference.predict",
    "predict_folder": "brainseg_cli.inference.predict",
    "EvaluateConfig": "brainseg_cli.metrics.evaluation",
    "evaluate_folders": "brainseg_cli.metrics.evaluation",
    "ReportConfig": "brainseg_cli.viz.report",
    "write_report": "brainseg_cli.viz.report",
    "DemoConfig": "brainseg_cli.demo",
    "run_demo": "brainseg_cli.demo",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brainseg_cli' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
