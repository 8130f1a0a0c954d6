"""Every set of named choices a user can give, in one place (no heavy imports: the CLI reads it at start-up).

The library's registries are keyed by these names (``tests/test_choices.py`` checks each registry
against its tuple), and the CLI builds its option choices from them, so a name exists in both or in
neither. Order is the order ``--help`` lists them.
"""

from __future__ import annotations

#: ``convert SOURCE`` (the converter registry, :data:`brainseg_cli.data.converters.CONVERTERS`).
CONVERT_SOURCES: tuple[str, ...] = ("lgg", "brats", "msd", "mrbrains18", "nifti")

#: ``--config`` of ``pretrain`` (2-D or 3-D networks).
CONFIGS: tuple[str, ...] = ("2d", "3d")
#: ``--regions`` of ``pretrain``/``finetune``: a preset, the dataset's own, or softmax over the labels.
REGION_CHOICES: tuple[str, ...] = ("brats", "dataset", "none")
#: ``--slice-weighting`` of 2-D plans.
SLICE_WEIGHTINGS: tuple[str, ...] = ("uniform", "foreground")

#: ``--optimizer`` presets (:data:`brainseg_cli.training.optim.PRESETS`).
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: ``--schedule`` (:data:`brainseg_cli.training.optim.SCHEDULE_FACTORS`).
SCHEDULES: tuple[str, ...] = ("poly", "cosine")
#: ``--loss`` (training losses; the loss registry also holds ``bce-dice``, which ``dice-ce`` becomes for
#: region-based sigmoid outputs).
TRAINING_LOSSES: tuple[str, ...] = ("dice-ce", "dice")
#: ``--aug-preset`` (:data:`brainseg_cli.data.augmentation.AUGMENT_PRESETS`, which also holds ``none``
#: for ``--no-aug``).
AUGMENT_PRESETS: tuple[str, ...] = ("default", "brats", "lgg")
#: ``predict --precision``: the precisions a network runs in (:mod:`brainseg_cli.models.precision`).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: ``pretrain``/``finetune --precision``: the above and ``auto``.
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)
#: ``finetune --select`` (:data:`brainseg_cli.training.selection.SELECT_METHODS`).
SELECT_METHODS: tuple[str, ...] = ("random", "lesion-balanced")

#: ``predict --lcc``: the checkpoint's decision, every foreground voxel as one group, or none.
LCC_MODES: tuple[str, ...] = ("auto", "on", "off")
#: ``predict --engine``: the model file's own engine, PyTorch, ONNX Runtime or OpenVINO.
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
#: ``predict --labels``: the checkpoint's label values or the source dataset's.
LABEL_MODES: tuple[str, ...] = ("model", "source")
#: ``export --format``.
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")

#: ``evaluate --hd95`` (docs/DEFINITIONS.md §3).
HD95_MODES: tuple[str, ...] = ("max", "pooled")
#: ``evaluate --empty`` (docs/DEFINITIONS.md §3).
EMPTY_POLICIES: tuple[str, ...] = ("brats", "nan")
