"""``brainseg demo``: the whole pipeline on synthetic brains, nothing to download.

:func:`run_demo` writes everything into one output folder:

1. **Tumour source set.** Phantom brains with tumours (:mod:`brainseg_cli.data.phantom`) written as
   BraTS 2018 case folders (T1, T1c, T2, FLAIR; labels 1 NCR/NET, 2 ED, 4 ET), or with ``data``
   the cases of a real BraTS folder. The cases are split (by the seed) into training and held-out
   cases; each part is linked (symbolic links: the source is never written to) into a case folder
   that is converted with ``convert brats`` (:func:`brainseg_cli.data.convert.convert_dataset`)
   into the dataset layout with canonical labels and the WT/TC/ET regions. Real cases are
   trained at a coarse isotropic spacing (``data_spacing``) so that they fit the budget.
2. **Pretraining** (:func:`brainseg_cli.training.pretrain.pretrain`) of a small 3-D U-Net on the
   tumour set, for a fixed number of optimiser steps (never a wall-clock budget, so a seed gives
   the same network), with deterministic algorithms.
3. **Tissue target set.** Phantom brains without tumours in the dataset layout with other channels
   (T1, FLAIR, IR) and tissue labels (CSF, grey matter, white matter), split into training and
   held-out cases the same way (linked datasets).
4. **Fine-tuning** (:func:`brainseg_cli.training.finetune.finetune`) of the pretrained checkpoint
   on the tissue set with ``freeze first3``: the first three encoder stages keep their pretrained
   weights, T1 and FLAIR filters are matched by name, IR starts from their mean, the head is new.
5. **Prediction** of both held-out sets (:func:`brainseg_cli.inference.predict.predict_folder`),
   **evaluation** (:func:`brainseg_cli.metrics.evaluation.evaluate_folders`: Dice and HD95; the
   tumour set also over the WT/TC/ET regions) and two **HTML reports**
   (:func:`brainseg_cli.viz.report.write_report`): ``report.html`` (tissue model, with the
   fine-tuning curves) and ``tumour_report.html`` (tumour model, with the pretraining curves).
6. **Export** (:func:`brainseg_cli.inference.export.export_model`) of the tumour model to ONNX and a
   prediction of the first held-out tumour case on ONNX Runtime (``predict --engine onnxruntime``),
   compared voxel by voxel with the PyTorch prediction of step 5.

Output folder layout::

    sources/tumour_phantoms/                        BraTS-layout phantom cases (not with --data)
    sources/tumour_train/ sources/tumour_test/      links to the training and held-out cases
    sources/tissue_phantoms/                        tissue phantoms in the dataset layout
    datasets/tumour/ datasets/tumour_test/          converted (convert brats)
    datasets/tissue/ datasets/tissue_test/          links to the training and held-out tissue cases
    runs/pretrain/ runs/finetune/                   run folders (best.pt, metrics.csv, ...)
    predictions/tumour/ predictions/tissue/         predicted label maps
    export/tumour.onnx predictions/tumour_onnx/     the exported tumour model and its prediction
    evaluation/{tumour,tissue}_results.{json,csv}   brainseg evaluate output
    report.html tumour_report.html                  self-contained HTML reports
    demo_summary.json                               the DemoSummary (Dice, paths, timings)

An existing output folder is replaced only when it holds a previous demo (the
``.brainseg-demo`` marker) and nothing else; anything else is refused. Every number depends only
on the seed and the budget fields (on one machine and one thread count): two runs with the same
:class:`DemoConfig` give the same Dice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli import __version__
from brainseg_cli.data.convert import ConvertConfig, convert_dataset
from brainseg_cli.data.converters import SourceOptions, get_converter
from brainseg_cli.data.layout import DATASET_JSON, IMAGES_TR, IMAGES_TS, LABELS_TR, load_dataset
from brainseg_cli.data.phantom import write_phantom_brats, write_phantom_dataset
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.inference.export import ExportConfig, export_model
from brainseg_cli.inference.predict import PredictConfig, predict_folder
from brainseg_cli.io import atomic_dir, atomic_write, read_image
from brainseg_cli.metrics.evaluation import FOREGROUND_MEAN, EvaluateConfig, evaluate_folders
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.finetune import FinetuneConfig, finetune
from brainseg_cli.training.pretrain import pretrain
from brainseg_cli.viz.overlays import OverlayInputs
from brainseg_cli.viz.report import ReportConfig, write_report

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: Marker file that identifies a demo output folder (so a rerun may replace it).
MARKER = ".brainseg-demo"
#: Entries the demo writes into its output folder (what a rerun removes).
OWN_ENTRIES: frozenset[str] = frozenset({MARKER, "sources", "datasets", "runs", "predictions", "evaluation", "export",
                                         "report.html", "tumour_report.html", "demo_summary.json"})
SUMMARY_FILE = "demo_summary.json"
#: Freeze preset of the fine-tuning step.
FREEZE = "first3"
#: Stages of the demo, in order (progress descriptions and :attr:`DemoSummary.stage_seconds`).
STAGES: tuple[str, ...] = ("tumour data", "convert", "pretrain", "tissue data", "finetune", "predict",
                           "evaluate", "report", "export")


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``brainseg demo``. The defaults finish within a few minutes on two CPU cores.

    The budget fields exist so that tests can run a smaller demo; the defaults are tuned so that the
    phantom demo reaches a meaningful Dice (whole tumour and tissue mean above 0.7).
    """

    output_dir: Path
    """Folder receiving everything (created; a previous demo output there is replaced)."""
    seed: int = 0
    """Seed of the phantoms, the held-out split, weight initialisation and patch sampling."""
    data: Path | None = None
    """A real BraTS folder (any generation ``convert brats`` reads) used as the tumour source set
    instead of phantoms; None: phantoms."""
    source_cases: int = 16
    """Tumour phantoms for pretraining (training and validation)."""
    target_cases: int = 8
    """Tissue phantoms for fine-tuning (training and validation)."""
    test_cases: int = 3
    """Held-out phantoms per set (tumour and tissue; with ``data`` the tissue set only) that are
    predicted and evaluated."""
    val_cases: int = 2
    """Validation cases of each training run (they pick the best epoch)."""
    shape: tuple[int, int, int] = (48, 48, 40)
    """Voxels (X, Y, Z) of every phantom (1 mm)."""
    patch_size: tuple[int, int, int] = (32, 32, 32)
    """Training patch (voxels) of both runs; a multiple of 8 (the network's size divisor)."""
    batch_size: int = 2
    """Training batch size of both runs."""
    base_features: int = 8
    """Features of the network's first stage (doubling per stage)."""
    pretrain_epochs: int = 8
    """Pretraining epochs (each ``iterations`` optimiser steps)."""
    finetune_epochs: int = 5
    """Fine-tuning epochs (each ``iterations`` optimiser steps)."""
    iterations: int = 40
    """Optimiser steps per epoch."""
    data_spacing: float = 4.0
    """With ``data``: isotropic spacing (mm) the real cases are trained at."""
    data_test_cases: int = 2
    """With ``data``: real cases held out for prediction and evaluation."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict."""
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        out["data"] = None if self.data is None else str(self.data)
        out["shape"], out["patch_size"] = list(self.shape), list(self.patch_size)
        return out


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"demo option {name} must be an integer >= {low}, got {value!r}")


def validate(config: DemoConfig) -> None:
    """Check the option values (not the files).

    Raises:
        ConfigError: one line naming the option and the offending value.
    """
    _int_at_least("seed", config.seed, 0)
    for name in ("source_cases", "target_cases"):
        _int_at_least(name, getattr(config, name), 3)
    for name in ("test_cases", "val_cases", "batch_size", "base_features", "pretrain_epochs", "finetune_epochs",
                 "iterations", "data_test_cases"):
        _int_at_least(name, getattr(config, name), 1)
    for name in ("source_cases", "target_cases"):
        if getattr(config, name) <= config.val_cases:
            raise ConfigError(f"demo option {name} ({getattr(config, name)}) must exceed val_cases "
                              f"({config.val_cases}) so that some cases are left to train on")
    if len(config.shape) != 3 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 16
                                     for n in config.shape):
        raise ConfigError(f"demo option shape must be three sizes >= 16, got {config.shape}")
    if len(config.patch_size) != 3 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 8
                                          or n % 8 for n in config.patch_size):
        raise ConfigError(f"demo option patch_size must be three multiples of 8, got {config.patch_size}")
    if not (isinstance(config.data_spacing, (int, float)) and math.isfinite(config.data_spacing)
            and config.data_spacing > 0):
        raise ConfigError(f"demo option data_spacing must be a positive number of mm, got {config.data_spacing!r}")


@dataclass(frozen=True)
class ModelResult:
    """Evaluation of one model on its held-out cases.

    Attributes:
        dice: label or region name -> mean Dice over the held-out cases (labels first, then regions).
        hd95: label or region name -> mean HD95 in mm.
        mean_dice: mean Dice over the foreground labels (``foreground_mean`` of the evaluation).
        cases: the held-out cases.
        results_json: the evaluation's ``results.json``.
        checkpoint: the checkpoint that predicted them.
        val_dice: mean validation Dice of the checkpoint's best epoch.
        epochs: epochs trained.
        seconds: wall time of the training run.
    """

    dice: dict[str, float]
    hd95: dict[str, float]
    mean_dice: float
    cases: tuple[str, ...]
    results_json: Path
    checkpoint: Path
    val_dice: float
    epochs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["results_json"], out["checkpoint"] = str(self.results_json), str(self.checkpoint)
        out["cases"] = list(self.cases)
        return _json_safe(out)


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`run_demo` did.

    Attributes:
        output_dir: the output folder.
        source: ``"phantoms"`` or the real BraTS folder used as the tumour source set.
        tumour: the pretrained tumour model on the held-out tumour cases.
        tissue: the fine-tuned tissue model on the held-out tissue phantoms.
        report: the main HTML report (tissue model, fine-tuning curves).
        tumour_report: the tumour model's HTML report (pretraining curves).
        summary_json: ``demo_summary.json``.
        export: the ONNX export of the tumour model and its check: ``{"model", "case", "prediction",
            "equal_voxels"}`` (the share of the case's voxels whose ONNX Runtime label equals PyTorch's).
        stage_seconds: stage name (:data:`STAGES`) -> wall seconds.
        seconds: wall time of the whole demo.
        config: the resolved :class:`DemoConfig` as a dict.
    """

    output_dir: Path
    source: str
    tumour: ModelResult
    tissue: ModelResult
    report: Path
    tumour_report: Path
    summary_json: Path
    export: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``demo_summary.json``."""
        return {
            "tool_version": __version__,
            "output_dir": str(self.output_dir),
            "source": self.source,
            "tumour": self.tumour.to_dict(),
            "tissue": self.tissue.to_dict(),
            "report": str(self.report),
            "tumour_report": str(self.tumour_report),
            "export": _json_safe(self.export),
            "stage_seconds": {k: round(v, 2) for k, v in self.stage_seconds.items()},
            "seconds": round(self.seconds, 2),
            "config": self.config,
        }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- helpers
def stream_seed(seed: int, stream: str) -> int:
    """An independent seed for one named random stream of the demo (phantom sets, case split)."""
    key = [int(seed)] + [ord(ch) for ch in stream]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def check_data_folder(data: Path) -> list[str]:
    """List the labelled BraTS cases of ``data`` (``--data``; without reading voxels).

    Returns:
        The labelled case ids, sorted.

    Raises:
        InputError: ``data`` is not a folder, holds no BraTS cases, has invalid cases, or has
            fewer than 4 labelled cases (training, validation and held-out cases are needed).
    """
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"--data {data}: not a folder")
    try:
        source = get_converter("brats").discover(data, SourceOptions())
    except InputError as exc:
        raise InputError(f"--data: {exc}") from None
    invalid = [c for c in source.cases if c.problem]
    if invalid:
        raise InputError(f"--data {data}: {invalid[0].problem}")
    labelled = sorted(c.case_id for c in source.cases if c.has_label)
    if len(labelled) < 4:
        raise InputError(f"--data {data}: {len(labelled)} labelled BraTS case(s); the demo needs at least 4 "
                         "(training, validation and held-out cases)")
    return labelled


def split_cases_for_test(cases: Sequence[str], *, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """Split case ids into training and held-out cases, deterministically for ``seed``.

    Returns:
        ``(train, test)``, each sorted.

    Raises:
        ConfigError: fewer than 3 cases would remain for training and validation.
    """
    cases = sorted(cases)
    if len(cases) - n_test < 3:
        raise ConfigError(f"holding out {n_test} case(s) leaves {len(cases) - n_test} of {len(cases)} for training "
                          "and validation; at least 3 are needed")
    order = np.random.default_rng(stream_seed(seed, "held-out split")).permutation(len(cases))
    test = sorted(cases[i] for i in order[:n_test])
    return [c for c in cases if c not in test], test


def _symlink(link: Path, target: Path, *, base: Path) -> None:
    """Link ``link`` to the existing file ``target``: with a relative path when ``target`` lies
    inside ``base`` (so a demo output folder can be moved), with its absolute path otherwise."""
    target = target.resolve()
    base = base.resolve()
    if base in target.parents:
        link.symlink_to(os.path.relpath(target, link.parent.resolve()))
    else:
        link.symlink_to(target)


def link_cases(data: Path, case_ids: Sequence[str], target: Path, *, base: Path) -> Path:
    """Make a BraTS-layout folder holding symbolic links to the files of some cases of ``data``.

    Each source file of a case is linked at its path relative to ``data`` (so every BraTS layout
    keeps its shape); ``data`` itself is never written to. Files inside ``base`` are linked with
    relative paths, others with absolute ones.

    Returns:
        ``target``.
    """
    wanted = set(case_ids)
    source = get_converter("brats").discover(data, SourceOptions())
    root = data.resolve()
    with atomic_dir(target) as tmp:
        for case in source.cases:
            if case.case_id not in wanted:
                continue
            for path in case.files:
                path = Path(path).resolve()
                link = tmp / path.relative_to(root)
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    _symlink(link, path, base=base)
    return target


def link_dataset_cases(root: Path, case_ids: Sequence[str], target: Path, *, base: Path) -> Path:
    """Make a dataset (nnU-Net v2 raw layout) holding symbolic links to some training cases of ``root``.

    ``dataset.json`` is copied with ``numTraining`` set and the cases recorded under
    ``brainseg.subset_of``; ``root`` is never written to. Files inside ``base`` are linked with
    relative paths, others with absolute ones.

    Returns:
        ``target``.
    """
    info = load_dataset(root)
    meta = json.loads((Path(root) / DATASET_JSON).read_text(encoding="utf-8"))
    with atomic_dir(target) as tmp:
        for case in case_ids:
            for path in [*info.image_paths(case), info.label_path(case)]:
                folder = tmp / (LABELS_TR if path.parent.name == LABELS_TR else IMAGES_TR)
                folder.mkdir(exist_ok=True)
                _symlink(folder / path.name, Path(path), base=base)
        (tmp / IMAGES_TS).mkdir()
        meta["numTraining"] = len(case_ids)
        meta.setdefault("brainseg", {})["subset_of"] = {"dataset": str(Path(root).resolve()), "cases": list(case_ids)}
        (tmp / DATASET_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


def prepare_output(output: Path) -> None:
    """Create the output folder, or empty a previous demo output.

    Raises:
        ConfigError: ``output`` is a file, or a non-empty folder that is not a demo output (or holds
            entries the demo did not write).
    """
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder")
    entries = sorted(output.iterdir()) if output.is_dir() else []
    if entries:
        if not (output / MARKER).is_file():
            raise ConfigError(f"output folder {output} is not empty and holds no earlier demo; choose a new "
                              "or empty folder")
        foreign = [p.name for p in entries if p.name not in OWN_ENTRIES and not p.name.startswith(".tmp-")]
        if foreign:
            raise ConfigError(f"output folder {output} holds '{foreign[0]}', which brainseg demo did not write; "
                              "remove it or choose another folder")
        logger.info("%s: replacing the previous demo output", output)
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text(f"brainseg {__version__} demo output\n", encoding="utf-8")


class _Stages:
    """Times the stages and forwards progress as ``"[k/N] stage: detail"``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.current = ""
        self._start = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self.current = name
        self._start = time.perf_counter()
        logger.info("demo step %d/%d: %s", STAGES.index(name) + 1, len(STAGES), name)
        self.report("", 0, 1)

    def stop(self) -> None:
        if self.current:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - self._start
            self.current = ""

    def report(self, detail: str, done: int, total: int) -> None:
        if self.progress is not None:
            k = STAGES.index(self.current) + 1
            text = f"[{k}/{len(STAGES)}] {self.current}" + (f": {detail}" if detail else "")
            self.progress(text, done, total)


def _means(result: Any, metric: str, names: Sequence[str]) -> dict[str, float]:
    out = {}
    for name in names:
        stats = result.summary.get(name, {}).get(metric)
        mean = stats.get("mean") if isinstance(stats, Mapping) else None
        out[name] = float("nan") if mean is None else float(mean)
    return out


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- the demo
def _train_config(config: DemoConfig, *, epochs: int) -> Any:
    # Adam at 3e-3 with cosine decay converges within the few hundred steps of the budget; no
    # spatial/intensity augmentation (held-out phantoms come from the training distribution).
    return TrainConfig(epochs=epochs, iterations_per_epoch=config.iterations, val_cases=config.val_cases,
                       optimizer="adam", lr=3e-3, augment=False, deterministic=True, seed=config.seed,
                       workers=0, device="auto")


def _predict_and_evaluate(*, stages: _Stages, checkpoint: Path, test_dataset: Path, pred_dir: Path,
                          eval_dir: Path, name: str, regions: bool) -> Any:
    stages.start("predict")
    predict_folder(config=PredictConfig(models=(checkpoint,), input=test_dataset, output=pred_dir),
                   progress=lambda case, done, total: stages.report(f"{name} {case}", done, total))
    stages.start("evaluate")
    return evaluate_folders(
        config=EvaluateConfig(ref=test_dataset, pred=pred_dir, metrics=("dice", "hd95"),
                              regions="dataset" if regions else None, strict=True,
                              output=eval_dir / f"{name}_results.json", csv=eval_dir / f"{name}_results.csv"),
        progress=lambda case, done, total: stages.report(f"{name} {case}", done, total))


def _export_and_check(checkpoint: Path, *, test_dataset: Path, out: Path) -> dict[str, Any]:
    """Export ``checkpoint`` to ONNX, predict the first held-out case with it and compare with PyTorch's labels."""
    exported = export_model(ExportConfig(checkpoint=checkpoint, output=out / "export" / "tumour.onnx"))
    info = load_dataset(test_dataset)
    case = info.training_cases[0]
    images = out / "export" / "input"
    images.mkdir(parents=True, exist_ok=True)
    for file in sorted((test_dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{info.file_ending}")):
        (images / file.name).symlink_to(os.path.relpath(file.resolve(), images))
    pred_dir = out / "predictions" / "tumour_onnx"
    predict_folder(config=PredictConfig(models=(exported.output,), input=images, output=pred_dir,
                                        engine="onnxruntime", device="cpu"))
    onnx_labels = np.asarray(read_image(pred_dir / f"{case}{info.file_ending}").array)
    torch_labels = np.asarray(read_image(out / "predictions" / "tumour" / f"{case}{info.file_ending}").array)
    return {"model": str(exported.output), "case": case, "prediction": str(pred_dir / f"{case}{info.file_ending}"),
            "equal_voxels": float((onnx_labels == torch_labels).mean()),
            "max_logit_difference": exported.max_logit_difference}


def _model_result(evaluation: Any, *, train: Any, test_dataset: Path, results_json: Path) -> ModelResult:
    names = list(evaluation.labels) + [r for r in evaluation.regions if r not in evaluation.labels]
    mean = _means(evaluation, "dice", [FOREGROUND_MEAN])[FOREGROUND_MEAN]
    return ModelResult(dice=_means(evaluation, "dice", names), hd95=_means(evaluation, "hd95", names),
                       mean_dice=mean, cases=tuple(load_dataset(test_dataset).training_cases),
                       results_json=results_json, checkpoint=train.best_checkpoint, val_dice=train.best_val_dice,
                       epochs=train.epochs_completed, seconds=train.seconds)


def run_demo(*, config: DemoConfig, progress: Progress | None = None) -> DemoSummary:
    """Run the whole pipeline (module docstring) and write ``demo_summary.json``.

    Args:
        config: output folder, seed, optional real BraTS folder and the budget.
        progress: optional callback ``(description, done, total)``; descriptions start with
            ``"[k/9] <stage>"``.

    Returns:
        The :class:`DemoSummary` (Dice per label and region of both models, report paths, timings).

    Raises:
        ConfigError: invalid options, or an output folder that is neither empty nor a demo output.
        InputError: ``config.data`` is not a BraTS folder with at least 4 labelled cases (checked
            before anything is written).
    """
    validate(config)
    start = time.perf_counter()
    if config.data is not None:
        data = Path(config.data)
        real_cases = check_data_folder(data)
        split = split_cases_for_test(real_cases, n_test=config.data_test_cases, seed=config.seed)
        resolved = config.output_dir.resolve()
        if resolved == data.resolve() or data.resolve() in resolved.parents:
            raise ConfigError(f"output folder {config.output_dir} is inside --data {data}; choose another")
    out = config.output_dir
    prepare_output(out)
    stages = _Stages(progress)
    sources, datasets, runs = out / "sources", out / "datasets", out / "runs"

    # 1. the tumour source set: phantoms in the BraTS 2018 layout, or the real folder; split into
    #    training and held-out cases (linked, so every case id is unique)
    stages.start("tumour data")
    if config.data is None:
        data = write_phantom_brats(sources / "tumour_phantoms", n_cases=config.source_cases + config.test_cases,
                                   seed=stream_seed(config.seed, "tumour phantoms"), shape=config.shape)
        split = split_cases_for_test(check_data_folder(data), n_test=config.test_cases, seed=config.seed)
    train_ids, test_ids = split
    logger.info("tumour cases: %d for training and validation, held out: %s", len(train_ids), ", ".join(test_ids))
    link_cases(data, train_ids, sources / "tumour_train", base=out)
    link_cases(data, test_ids, sources / "tumour_test", base=out)

    # 2. convert brats
    stages.start("convert")
    for part, name in (("tumour_train", "tumour"), ("tumour_test", "tumour_test")):
        convert_dataset(config=ConvertConfig(source="brats", input=sources / part, output=datasets / name,
                                             name=name),
                        progress=lambda d, done, total, n=name: stages.report(n, done, total))

    # 3. pretrain on the tumour set
    stages.start("pretrain")
    # softmax labels: on the phantoms' few steps they segment every label; region-based outputs (the
    # default for BraTS-like data, tuned on real scans) left the small non-enhancing label empty
    overrides: dict[str, Any] = {"config": "3d", "model": "unet", "patch_size": config.patch_size,
                                 "batch_size": config.batch_size, "regions": "none",
                                 "model_config": {"base_features": config.base_features}}
    if config.data is not None:
        overrides["target_spacing"] = (float(config.data_spacing),) * 3
    pre = pretrain(dataset_dir=datasets / "tumour", run_dir=runs / "pretrain",
                   train_config=_train_config(config, epochs=config.pretrain_epochs), plan_overrides=overrides,
                   progress=stages.report)

    # 4. the tissue target set (other channels, other labels), split the same way
    stages.start("tissue data")
    tissue_all = write_phantom_dataset(sources / "tissue_phantoms", n_cases=config.target_cases + config.test_cases,
                                       seed=stream_seed(config.seed, "tissue phantoms"), kind="tissue",
                                       shape=config.shape)
    tissue_train, tissue_test = split_cases_for_test(load_dataset(tissue_all).training_cases,
                                                     n_test=config.test_cases, seed=config.seed)
    link_dataset_cases(tissue_all, tissue_train, datasets / "tissue", base=out)
    link_dataset_cases(tissue_all, tissue_test, datasets / "tissue_test", base=out)

    # 5. fine-tune with the first three encoder stages frozen
    stages.start("finetune")
    fine = finetune(dataset_dir=datasets / "tissue", run_dir=runs / "finetune",
                    finetune_config=FinetuneConfig(checkpoint=pre.best_checkpoint, freeze=FREEZE),
                    train_config=_train_config(config, epochs=config.finetune_epochs),
                    plan_overrides={"patch_size": config.patch_size, "batch_size": config.batch_size},
                    progress=stages.report)

    # 6-7. predict and evaluate the held-out cases of both sets
    eval_dir = out / "evaluation"
    tumour_eval = _predict_and_evaluate(stages=stages, checkpoint=pre.best_checkpoint,
                                        test_dataset=datasets / "tumour_test", pred_dir=out / "predictions" / "tumour",
                                        eval_dir=eval_dir, name="tumour", regions=True)
    tissue_eval = _predict_and_evaluate(stages=stages, checkpoint=fine.best_checkpoint,
                                        test_dataset=datasets / "tissue_test", pred_dir=out / "predictions" / "tissue",
                                        eval_dir=eval_dir, name="tissue", regions=False)

    # 8. the reports
    stages.start("report")
    reports = {}
    for name, run in (("tissue", fine), ("tumour", pre)):
        html = out / ("report.html" if name == "tissue" else "tumour_report.html")
        test = datasets / f"{name}_test"
        inputs = OverlayInputs(images=test, pred=out / "predictions" / name, ref=test)
        reports[name] = write_report(config=ReportConfig(inputs=inputs, output=html,
                                                         results=eval_dir / f"{name}_results.json",
                                                         run_dir=run.run_dir),
                                     progress=lambda d, done, total, n=name: stages.report(f"{n} {d}", done, total))

    # 9. export the tumour model and predict one held-out case on ONNX Runtime
    stages.start("export")
    export = _export_and_check(pre.best_checkpoint, test_dataset=datasets / "tumour_test", out=out)
    stages.stop()

    summary = DemoSummary(
        output_dir=out,
        source="phantoms" if config.data is None else str(config.data),
        tumour=_model_result(tumour_eval, train=pre, test_dataset=datasets / "tumour_test",
                             results_json=eval_dir / "tumour_results.json"),
        tissue=_model_result(tissue_eval, train=fine, test_dataset=datasets / "tissue_test",
                             results_json=eval_dir / "tissue_results.json"),
        report=reports["tissue"],
        tumour_report=reports["tumour"],
        summary_json=out / SUMMARY_FILE,
        export=export,
        stage_seconds=dict(stages.seconds),
        seconds=time.perf_counter() - start,
        config=config.to_dict(),
    )
    _write_json(summary.summary_json, summary.to_dict())
    logger.info("demo finished in %.0f s: tumour WT Dice %.3f, tissue mean Dice %.3f", summary.seconds,
                summary.tumour.dice.get("WT", float("nan")), summary.tissue.mean_dice)
    return summary


__all__ = ["DemoConfig", "DemoSummary", "ModelResult", "run_demo"]
