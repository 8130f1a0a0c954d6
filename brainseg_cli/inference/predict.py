"""``brainseg predict``: predict every case of an input folder (or file) into an output folder.

Outputs, per case, in the input's format and geometry (same shape, spacing, origin, direction):

* ``<OUT>/<case><ending>``: the label map (NIfTI in, NIfTI out; ``.mha`` in, ``.mha`` out; ...);
  Kaggle-LGG input: ``<OUT>/<patient>/<patient>_<n>_mask.tif`` (0/255; any foreground label is 255);
* ``<OUT>/<case>_probabilities.npz`` with ``--save-probabilities``: ``probabilities`` float16
  ``(K, X, Y, Z)`` (classes by value, or the regions in order), ``names``, ``spacing``, ``origin``,
  ``direction`` (brainseg axis order, LPS);
* ``<OUT>/predictions.csv``: ``case`` and the predicted volume (mL) of each foreground label
  (``<label>_ml``), rewritten after every case;
* ``<OUT>/predict_config.json``: the resolved configuration and the checkpoints used.

A case whose outputs all exist is skipped unless ``overwrite`` (so an interrupted run continues);
every file is written atomically; the input is never written to.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli import __version__, choices
from brainseg_cli.bundles import resolve_model
from brainseg_cli.data.channels import canonical_channel
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.inference.inputs import discover_cases, load_case
from brainseg_cli.inference.postprocess import check_thresholds
from brainseg_cli.inference.predictor import ENGINES, LCC_MODES, Predictor
from brainseg_cli.io import atomic_dir, atomic_write, read_image, read_tiff, write_image
from brainseg_cli.io.atomic import remove_stale_temporaries
from brainseg_cli.io.slices import write_lgg_masks
from brainseg_cli.models.precision import PRECISIONS

logger = logging.getLogger(__name__)

#: ``labels`` choices: the checkpoint's label values, or the source dataset's convention.
LABEL_MODES: tuple[str, ...] = choices.LABEL_MODES
#: Name of the per-case volume table.
PREDICTIONS_CSV = "predictions.csv"
#: Name of the saved configuration.
CONFIG_JSON = "predict_config.json"
#: Suffix of the probability files (``<case>_probabilities.npz``).
PROBABILITIES_SUFFIX = "_probabilities.npz"


@dataclass(frozen=True)
class PredictConfig:
    """Options of ``brainseg predict``."""

    models: tuple[Path, ...]
    """Checkpoint files; several (e.g. the five folds) form an ensemble whose probabilities are averaged."""
    input: Path
    """An input folder (dataset layout, BraTS case folders, Kaggle-LGG, 4-D NIfTI files) or one file."""
    output: Path
    """Output folder (created); must not be the input or inside it."""
    tta: bool = False
    """Average the probabilities over mirrored inputs (all 2**D flips)."""
    lcc: str = "auto"
    """Keep-largest-component: ``auto`` (the checkpoint's decision), ``on`` (whole foreground), ``off``."""
    overlap: float = 0.5
    """Sliding-window overlap, in [0, 1)."""
    batch_size: int | None = None
    """Windows per network call; None: the engine's (8 on OpenVINO, else 2;
    :data:`~brainseg_cli.inference.engines.WINDOW_BATCH`)."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (autocast for the network)."""
    save_probabilities: bool = False
    """Also write ``<case>_probabilities.npz`` (float16 per-class probabilities)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    overwrite: bool = False
    """Predict cases whose outputs already exist (otherwise they are skipped)."""
    labels: str = "model"
    """Label values written: ``model`` (the checkpoint's) or ``source`` (the source dataset's, e.g. BraTS 1/2/4)."""
    channel_order: tuple[str, ...] | None = None
    """Channel names of position-only inputs (``_cccc`` files, 4-D files), overriding dataset.json."""
    skip_invalid: bool = False
    """Continue after a case that cannot be read or predicted, and list the failures at the end."""
    engine: str = "auto"
    """What runs the network: ``auto`` (each model file's own: ONNX exports on ONNX Runtime,
    checkpoints and TorchScript exports on PyTorch), ``torch``, ``onnxruntime`` or ``openvino``
    (CPU; the ONNX engines export a checkpoint to ONNX in memory)."""
    region_threshold: float | None = None
    """Region-based models: every region grows into the connected voxels above this value, in
    (0, 0.5] (0.5 = no growing); None = the checkpoint's ``region_thresholds`` (decided on its
    validation cases; 0.5 where it has none)."""

    def validate(self) -> None:
        """Check the option values (not the files).

        Raises:
            ConfigError: an invalid value or combination (one line).
        """
        if not self.models:
            raise ConfigError("give at least one --model checkpoint")
        if self.lcc not in LCC_MODES:
            raise ConfigError(f"invalid --lcc '{self.lcc}'; valid: {', '.join(LCC_MODES)}")
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"invalid --labels '{self.labels}'; valid: {', '.join(LABEL_MODES)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"invalid --engine '{self.engine}'; valid: {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"invalid --precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        if not (isinstance(self.overlap, (int, float)) and 0.0 <= self.overlap < 1.0):
            raise ConfigError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.region_threshold is not None:
            check_thresholds([self.region_threshold], count=1, what="--region-threshold")


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_folder` did."""

    output: Path
    """The output folder."""
    predicted: tuple[str, ...]
    """Cases predicted in this run."""
    skipped: tuple[str, ...]
    """Cases skipped because their outputs existed."""
    failed: tuple[tuple[str, str], ...]
    """``(case, error message)`` of cases that failed (only with ``skip_invalid``)."""
    csv: Path
    """The ``predictions.csv`` file."""
    seconds: float
    """Wall-clock time of the run."""
    volumes: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{case: {label name: mL}}`` for predicted and skipped cases."""


def _canonical_order(names: Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None

    out = tuple(canonical_channel(n, error=ConfigError) for n in names)
    if len(set(out)) != len(out):
        raise ConfigError(f"--channel-order names a channel twice: {', '.join(names)}")
    return out


def _check_paths(config: PredictConfig) -> tuple[Path, Path]:
    src = config.input.expanduser().resolve()
    out = config.output.expanduser().resolve()
    if not src.exists():
        raise InputError(f"{config.input}: input not found")
    folder = src if src.is_dir() else src.parent
    if out == folder:
        raise ConfigError(f"output folder {config.output} is the input folder; choose another (the input is never written to)")
    if src.is_dir() and folder in out.parents:
        raise ConfigError(f"output folder {config.output} is inside the input {config.input}; choose another")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {config.output} exists and is not a folder")
    return src, out


def _output_paths(case, out: Path, save_probabilities: bool) -> list[Path]:
    if case.layout == "lgg":
        main = out / case.case
    else:
        main = out / f"{case.case}{case.output_ext}"
    paths = [main]
    if save_probabilities:
        paths.append(out / f"{case.case}{PROBABILITIES_SUFFIX}")
    return paths


def _label_columns(labels: dict[str, int]) -> list[tuple[str, int]]:
    return [(name, v) for name, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]


def _volumes(labels: np.ndarray, spacing: Sequence[float], columns: list[tuple[str, int]]) -> dict[str, float]:
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0
    labels = np.asarray(labels)
    # One comparison per label: no int64 copy of the whole volume (bincount would make one).
    return {name: float(np.count_nonzero(labels == v)) * voxel_ml for name, v in columns}


def _read_previous_csv(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, float]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                case = row.pop("case", None)
                if case:
                    rows[case] = {k[:-3]: float(v) for k, v in row.items() if k and k.endswith("_ml") and v not in (None, "")}
    except (OSError, ValueError, csv.Error) as exc:
        logger.warning("%s: cannot read the previous table (%s); volumes of skipped cases are recomputed", path, exc)
        return {}
    return rows


def _volumes_from_output(case, main: Path, predictor, labels_mode: str, columns) -> dict[str, float]:
    """Volumes of a skipped case, read back from its label map."""
    if case.layout == "lgg":  # 0/255 masks at 1 mm: the volume of the foreground, for a one-label model
        if len(columns) != 1:
            return {}
        count = sum(int((read_tiff(p) > 0).sum()) for p in main.glob("*_mask.tif"))
        return {columns[0][0]: count / 1000.0}
    image = read_image(main)
    array = np.asarray(image.array)
    if labels_mode == "source":
        inverse = {v: k for k, v in predictor.source_label_map().items()}
        lut = np.zeros(int(array.max(initial=0)) + 1, dtype=np.int64)
        for src, canon in inverse.items():
            if src < lut.size:
                lut[src] = canon
        array = lut[array.astype(np.int64)]
    return _volumes(array, image.spacing, columns)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (``flock``; a no-op where the OS has none).

    Concurrent ``predict`` runs into one output folder take it around their read-merge-write of
    ``predictions.csv``, so no run's rows are lost to another's older copy of the table.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs into one folder are then last-writer-wins
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _update_csv(path: Path, volumes: dict[str, dict[str, float]], columns) -> None:
    """Merge this run's rows into the table as it is on disk now (other runs may have added theirs).

    Under the folder's lock no other run writes the table, so its temporaries there are a killed run's.
    """
    with _folder_lock(path.parent):
        remove_stale_temporaries(path)
        _write_csv(path, _read_previous_csv(path) | volumes, columns)


def _write_csv(path: Path, volumes: dict[str, dict[str, float]], columns) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", *(f"{name}_ml" for name, _ in columns)])
        for case in sorted(volumes):
            row = volumes[case]
            writer.writerow([case, *(f"{row[name]:.4f}" if name in row else "" for name, _ in columns)])


def _write_config(out: Path, config: PredictConfig, predictor) -> None:
    data: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    data["models"] = [str(p) for p in config.models]
    data["channel_order"] = list(config.channel_order) if config.channel_order else None
    data["tool_version"] = __version__
    data["device"] = str(predictor.device)
    data["batch_size"] = predictor.batch_size  # the engine's default when not given
    data["region_thresholds"] = predictor.thresholds()
    data["region_min_volumes"] = predictor.min_volumes()
    data["model_labels"] = dict(predictor.labels)  # the label scheme of the outputs (with labels = "model")
    data["largest_component_groups"] = predictor.largest_component_groups(config.lcc)
    data["checkpoints"] = [
        {"path": str(m.path), "model": m.checkpoint["model"]["name"], "tool_version": m.checkpoint.get("tool_version"),
         "epoch": (m.checkpoint.get("training") or {}).get("epoch"), "engine": m.engine}
        for m in predictor.members
    ]
    with atomic_write(out / CONFIG_JSON) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _write_probabilities(path: Path, probs: np.ndarray, names: Sequence[str], image) -> None:
    with atomic_write(path) as tmp:
        with tmp.open("wb") as fh:
            np.savez_compressed(
                fh, probabilities=probs.astype(np.float16), names=np.array(list(names)),
                spacing=np.asarray(image.spacing), origin=np.asarray(image.origin), direction=np.asarray(image.direction),
            )


class _Prefetcher:
    """Reads and prepares the cases to predict one ahead, in a background thread.

    Reading (decompressing NIfTI, decoding TIFF) and preprocessing (brain mask, normalisation,
    resampling: :meth:`~brainseg_cli.inference.predictor.Predictor.prepare`) of the next case then
    overlap with the network's work on the current one instead of adding to it: on a GPU they are
    hidden, on a CPU they share the cores. At most two cases are held: the one being predicted and
    the next. A case that cannot be read or prepared raises its error from :meth:`get`, in the
    caller's thread, when its turn comes.
    """

    def __init__(self, cases: Sequence, *, predictor, channel_order: Sequence[str] | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._cases = list(cases)
        self._predictor = predictor
        self._channel_order = channel_order
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainseg-read")
        self._ahead: dict[int, Any] = {}

    def _load(self, case):
        loaded = load_case(case, channels=self._predictor.channels, channel_order=self._channel_order)
        return loaded, self._predictor.prepare(loaded.image, case=case.case)

    def get(self, index: int):
        """``(loaded case, prepared case)`` of case ``index``; starts on the next one.

        Raises:
            InputError: case ``index`` cannot be read or prepared (names the case).
        """
        future = self._ahead.pop(index, None) or self._executor.submit(self._load, self._cases[index])
        if index + 1 < len(self._cases) and index + 1 not in self._ahead:
            self._ahead[index + 1] = self._executor.submit(self._load, self._cases[index + 1])
        return future.result()

    def close(self) -> None:
        """Drop what was read ahead and stop the thread."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        self._executor.shutdown(wait=True)


def predict_case(case, loaded, prepared, *, predictor, config: PredictConfig, out: Path,
                 columns) -> dict[str, float]:
    """Predict and write one case; return its volumes ``{label name: mL}``.

    Args:
        case: the case (from :func:`~brainseg_cli.inference.inputs.discover_cases`).
        loaded: the case as read by :func:`~brainseg_cli.inference.inputs.load_case`.
        prepared: ``loaded.image`` prepared by :meth:`~brainseg_cli.inference.predictor.Predictor.prepare`.

    Raises:
        InputError: the case cannot be predicted (names the case).
    """
    probs = predictor.predict_prepared(prepared)
    labels = predictor.labels_from_probabilities(probs, lcc=config.lcc, spacing=loaded.image.spacing)
    volumes = _volumes(labels, loaded.image.spacing, columns)
    paths = _output_paths(case, out, config.save_probabilities)
    if config.save_probabilities:
        _write_probabilities(paths[1], probs, predictor.output_names, loaded.image)
    del probs
    if case.layout == "lgg":
        with atomic_dir(paths[0]) as tmp:
            write_lgg_masks(tmp, patient=case.case, mask=(labels > 0).astype(np.uint8),
                            slice_numbers=loaded.slice_numbers or [])
    else:
        written = predictor.to_source_labels(labels) if config.labels == "source" else labels
        write_image(loaded.image.with_array(written), paths[0])
    return volumes


def predict_folder(
    *, config: PredictConfig, progress: Callable[[str, int, int], None] | None = None
) -> PredictSummary:
    """Predict every case of ``config.input`` into ``config.output``.

    Args:
        config: the options (see :class:`PredictConfig`).
        progress: called as ``progress(case, done, total)`` after each case (and once with
            ``done = 0`` before the first).

    Returns:
        A :class:`PredictSummary`.

    Raises:
        ConfigError: invalid options, output folder equal to or inside the input.
        CheckpointError: a foreign or damaged checkpoint, or checkpoints that disagree.
        InputError: no cases in the input; a case that cannot be read or predicted (unless
            ``skip_invalid``: then it is listed in the summary's ``failed``).
    """
    start = time.perf_counter()
    config.validate()
    config = PredictConfig(**{**asdict(config), "channel_order": _canonical_order(config.channel_order),
                              "models": tuple(resolve_model(m) for m in config.models)})
    src, out = _check_paths(config)
    cases = discover_cases(src)
    predictor = Predictor.from_checkpoints(config.models, device=config.device, precision=config.precision,
                                           tta=config.tta, overlap=config.overlap, batch_size=config.batch_size,
                                           region_threshold=config.region_threshold, engine=config.engine)
    if config.labels == "source":
        predictor.source_label_map()
    predictor.largest_component_groups(config.lcc)
    columns = _label_columns(predictor.labels)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _predict_cases(cases, config=config, predictor=predictor, out=out, columns=columns,
                              progress=progress, start=start)
    except BaseException:
        if created:
            _remove_if_unused(out)
        raise


def _remove_if_unused(out: Path) -> None:
    """Remove a folder this run created when the run failed before writing any case into it."""
    own = {CONFIG_JSON, PREDICTIONS_CSV}
    if any(p.name not in own for p in out.iterdir()):
        return  # a case was written: keep the folder, its config and table
    for name in own:
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError as exc:  # emptied above; a race with another process at most
        logger.warning("could not remove the output folder %s: %s", out, exc)


def _predict_cases(cases: Sequence, *, config: PredictConfig, predictor, out: Path, columns,
                   progress: Callable[[str, int, int], None] | None, start: float) -> PredictSummary:
    """The loop of :func:`predict_folder` over the discovered cases (the output folder exists)."""
    _write_config(out, config, predictor)
    csv_path = out / PREDICTIONS_CSV
    previous = _read_previous_csv(csv_path)
    volumes: dict[str, dict[str, float]] = {}
    predicted: list[str] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    total = len(cases)
    logger.info("predicting %d case(s) from %s into %s with %d checkpoint(s) on %s", total, config.input,
                config.output, len(predictor.members), predictor.device)
    if progress is not None:
        progress("", 0, total)
    # Cases whose outputs all exist are skipped (an interrupted run continues); the others are read
    # one ahead while the current one is predicted. position: index in cases -> index in todo.
    todo = [i for i, case in enumerate(cases)
            if config.overwrite or not all(p.exists() for p in _output_paths(case, out, config.save_probabilities))]
    position = {i: j for j, i in enumerate(todo)}
    reader = _Prefetcher([cases[i] for i in todo], predictor=predictor, channel_order=config.channel_order)
    try:
        for done, case in enumerate(cases, start=1):
            paths = _output_paths(case, out, config.save_probabilities)
            if done - 1 not in position:
                skipped.append(case.case)
                try:
                    volumes[case.case] = previous.get(case.case) or _volumes_from_output(
                        case, paths[0], predictor, config.labels, columns)
                except InputError as exc:
                    logger.warning("case %s: existing output kept, but its volumes could not be read: %s", case.case, exc)
                logger.info("case %s: output exists, skipped (use --overwrite to predict again)", case.case)
            else:
                t0 = time.perf_counter()
                try:
                    # No local names for the case's arrays: they are freed as soon as it is written.
                    volumes[case.case] = predict_case(case, *reader.get(position[done - 1]), predictor=predictor,
                                                      config=config, out=out, columns=columns)
                except InputError as exc:
                    if not config.skip_invalid:
                        raise
                    failed.append((case.case, str(exc)))
                    logger.error("case %s failed: %s", case.case, exc)
                else:
                    predicted.append(case.case)
                    logger.info("case %s: predicted in %.1f s", case.case, time.perf_counter() - t0)
                    _update_csv(csv_path, volumes, columns)
            if progress is not None:
                progress(case.case, done, total)
    finally:
        reader.close()
        if volumes or previous:
            _update_csv(csv_path, volumes, columns)
    return PredictSummary(output=out, predicted=tuple(predicted), skipped=tuple(skipped), failed=tuple(failed),
                          csv=csv_path, seconds=time.perf_counter() - start, volumes=volumes)
