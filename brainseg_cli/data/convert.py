"""Convert a source dataset into the dataset layout of docs/DEFINITIONS.md §1-2 (``brainseg convert``).

:func:`convert_dataset` lists the source cases with the chosen converter
(:mod:`brainseg_cli.data.converters`), then for every case, in parallel worker processes:
reads it, validates it (all channels present; channels and label on one grid to 1e-4 mm; label
values in the source's known set), maps the labels to canonical ones and writes
``imagesTr/<case>_<cccc>.nii.gz`` (channels in canonical order, voxels and dtype untouched) and
``labelsTr/<case>.nii.gz`` (uint8), or ``imagesTs/`` for cases without a label. Every file of a
case is written with the grid of its first channel, so a case's files share one geometry exactly.
``dataset.json`` is written last.

Interruptions. A case's files are written into ``OUTPUT/.brainseg-convert/staging/<case>/`` and
moved into place (label last) only when all are written; a marker then records the case as done.
``dataset.json`` exists only once every case is in place. Re-running the same command on an
interrupted OUTPUT resumes it (converted cases are kept); ``dataset.json``'s presence means the
dataset is complete.

Default OUTPUT: ``./<NAME>_converted`` in the current folder, or with ``nnunet_id``
``DatasetNNN_<NAME>`` inside OUTPUT, else inside ``$nnUNet_raw``, else in the current folder.
NAME defaults to INPUT's folder name without a Decathlon ``TaskNN_`` prefix, with characters
other than letters, digits, ``-`` and ``_`` replaced by ``_``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from brainseg_cli import __version__
from brainseg_cli.data.converters import SourceCase, SourceDataset, SourceOptions, get_converter
from brainseg_cli.data.labelmaps import LabelMap, used_labels
from brainseg_cli.data.layout import DATASET_JSON, IMAGES_TR, IMAGES_TS, LABELS_TR, write_dataset_json
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.io import atomic_write, write_image

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
STATE_DIR = ".brainseg-convert"
#: Entries of OUTPUT that ``--overwrite`` may delete (everything ``convert`` writes).
OWN_ENTRIES = frozenset({IMAGES_TR, LABELS_TR, IMAGES_TS, DATASET_JSON, STATE_DIR})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ConvertConfig:
    """Options of one conversion.

    Attributes:
        source: converter name: ``lgg``, ``brats``, ``msd``, ``mrbrains18`` or ``nifti``.
        input: the source folder (never modified).
        output: the dataset folder to create; with ``nnunet_id`` the folder that receives
            ``DatasetNNN_<name>``; ``None`` for the default (module docstring).
        name: dataset name (letters, digits, ``-``, ``_``); ``None``: from INPUT's folder name.
        nnunet_id: nnU-Net dataset id 1-999; names the folder ``DatasetNNN_<name>``.
        workers: cases converted in parallel (this process and ``workers - 1`` worker processes).
        overwrite: replace an existing non-empty OUTPUT (only if it holds nothing but a dataset).
        skip_invalid: skip invalid cases (reported in the summary) instead of stopping.
        spacing: voxel size (mm, X Y Z) for sources without spacing (``lgg``); ``None``: 1 mm.
        channel_patterns: ``(channel name, glob)`` pairs for source ``nifti``.
        label_pattern: glob of the label files for source ``nifti``.
        label_map: label mapping for source ``nifti``: a preset name or ``"src:dst,..."`` pairs.
    """

    source: str
    input: Path
    output: Path | None = None
    name: str | None = None
    nnunet_id: int | None = None
    workers: int = 1
    overwrite: bool = False
    skip_invalid: bool = False
    spacing: tuple[float, float, float] | None = None
    channel_patterns: tuple[tuple[str, str], ...] = ()
    label_pattern: str | None = None
    label_map: str | None = None

    def source_options(self) -> SourceOptions:
        """The source-specific options handed to the converter."""
        return SourceOptions(spacing=self.spacing, channel_patterns=tuple(self.channel_patterns),
                             label_pattern=self.label_pattern, label_map=self.label_map)


@dataclass(frozen=True)
class CaseResult:
    """One converted case.

    Attributes:
        case: case id.
        split: ``"training"`` (has a label) or ``"test"``.
        shape: spatial shape ``(X, Y, Z)``.
        spacing: voxel size in mm ``(X, Y, Z)``.
        label_counts: canonical label -> voxel count (``{}`` for test cases).
    """

    case: str
    split: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    label_counts: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**asdict(self), "label_counts": {str(k): v for k, v in self.label_counts.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> CaseResult:
        return cls(str(data["case"]), str(data["split"]), tuple(int(v) for v in data["shape"]),
                   tuple(float(v) for v in data["spacing"]), {int(k): int(v) for k, v in data["label_counts"].items()})


@dataclass(frozen=True)
class ConvertSummary:
    """What :func:`convert_dataset` did.

    Attributes:
        output: the dataset folder.
        dataset_json: path of the written ``dataset.json``.
        source_format: the detected source format (one line).
        channels: channel names in file order.
        labels: class name -> value, as written to ``dataset.json``.
        regions: evaluation regions written to ``dataset.json`` (``{}`` if none).
        cases: every converted case (training and test), sorted by id.
        skipped: ``(case, reason)`` for cases skipped under ``skip_invalid``.
        resumed: cases kept from an interrupted earlier run of the same conversion.
    """

    output: Path
    dataset_json: Path
    source_format: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    regions: dict[str, list[int]]
    cases: tuple[CaseResult, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    resumed: int = 0

    @property
    def num_training(self) -> int:
        """Number of labelled cases."""
        return sum(c.split == "training" for c in self.cases)

    @property
    def num_test(self) -> int:
        """Number of unlabelled cases (``imagesTs``)."""
        return sum(c.split == "test" for c in self.cases)

    @property
    def label_voxels(self) -> dict[int, int]:
        """Canonical label -> voxel count summed over the training cases."""
        total: dict[int, int] = {v: 0 for v in self.labels.values()}
        for case in self.cases:
            for k, n in case.label_counts.items():
                total[k] = total.get(k, 0) + n
        return total

    @property
    def spacing_range(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-axis minimum and maximum spacing (mm) over all cases."""
        arr = np.array([c.spacing for c in self.cases], dtype=float)
        return tuple(arr.min(axis=0).tolist()), tuple(arr.max(axis=0).tolist())


# ---------------------------------------------------------------------------------------------
# names and paths


def dataset_name(config: ConvertConfig) -> str:
    """The dataset name: ``config.name``, else INPUT's folder name cleaned (see module docstring).

    Raises:
        ConfigError: ``config.name`` has characters other than letters, digits, ``-`` and ``_``.
    """
    if config.name is not None:
        if not _NAME.match(config.name):
            raise ConfigError(f"--name '{config.name}': use letters, digits, '-' and '_' (starting with a letter or digit)")
        return config.name
    base = re.sub(r"^Task\d+_", "", Path(config.input).resolve().name)
    base = re.sub(r"[^A-Za-z0-9_\-]+", "_", base).strip("_-")
    return base or "dataset"


def resolve_output(config: ConvertConfig, *, cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The dataset folder a conversion writes (see the module docstring for the defaults).

    Args:
        config: the conversion options.
        cwd: folder for relative defaults (default: the current folder).
        environ: environment for ``nnUNet_raw`` (default: ``os.environ``, read now).

    Raises:
        ConfigError: ``nnunet_id`` outside 1-999, or a bad ``name``.
    """
    cwd = Path.cwd() if cwd is None else cwd
    environ = os.environ if environ is None else environ
    name = dataset_name(config)
    if config.nnunet_id is None:
        return Path(config.output) if config.output is not None else cwd / f"{name}_converted"
    if not 1 <= config.nnunet_id <= 999:
        raise ConfigError(f"--nnunet-id {config.nnunet_id}: nnU-Net dataset ids are 1-999")
    folder = f"Dataset{config.nnunet_id:03d}_{name}"
    if config.output is not None:
        return Path(config.output) / folder
    raw = environ.get("nnUNet_raw")
    return (Path(raw) if raw else cwd) / folder


def _check_paths(input_dir: Path, output: Path, nnunet_id: int | None) -> None:
    inp, out = input_dir.resolve(), output.resolve()
    if out == inp or inp in out.parents:
        raise ConfigError(f"OUTPUT {output} is inside INPUT {input_dir}; choose a folder outside the source data")
    if out in inp.parents:
        raise ConfigError(f"INPUT {input_dir} is inside OUTPUT {output}; choose another OUTPUT")
    if nnunet_id is not None and out.parent.is_dir():
        prefix = f"Dataset{nnunet_id:03d}_"
        taken = [p.name for p in out.parent.iterdir() if p.name.startswith(prefix) and p.name != out.name and p.is_dir()]
        if taken:
            raise ConfigError(f"--nnunet-id {nnunet_id} is already used by {out.parent / taken[0]}")


def _fingerprint(config: ConvertConfig, name: str) -> dict:
    return {"source": config.source, "input": str(Path(config.input).resolve()), "name": name,
            "nnunet_id": config.nnunet_id, "skip_invalid": config.skip_invalid,
            "spacing": list(config.spacing) if config.spacing else None,
            "channel_patterns": [list(p) for p in config.channel_patterns], "label_pattern": config.label_pattern,
            "label_map": config.label_map, "tool_version": __version__}


def _read_json_or_none(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _prepare_output(output: Path, fingerprint: dict, *, overwrite: bool) -> dict[str, CaseResult]:
    """Create or resume OUTPUT; return the cases already converted by an interrupted run."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"OUTPUT {output} exists and is not a folder")
    entries = sorted(output.iterdir()) if output.is_dir() else []
    state = output / STATE_DIR
    if entries:
        resumable = (state.is_dir() and not (output / DATASET_JSON).exists()
                     and _read_json_or_none(state / "config.json") == fingerprint)
        if resumable:
            logger.info("%s: resuming an interrupted conversion", output)
        elif overwrite:
            foreign = [p.name for p in entries if p.name not in OWN_ENTRIES and not p.name.startswith(".tmp-")]
            if foreign:
                raise ConfigError(f"OUTPUT {output} holds '{foreign[0]}', which brainseg convert did not write; "
                                  "--overwrite only replaces a dataset folder (remove it yourself or choose another OUTPUT)")
            logger.info("%s: removing the existing dataset (--overwrite)", output)
            for p in entries:
                _remove(p)
        elif state.is_dir() and not (output / DATASET_JSON).exists():
            raise ConfigError(f"OUTPUT {output} holds an interrupted conversion with other options; "
                              "rerun it with the same options to resume, or pass --overwrite to start over")
        else:
            raise ConfigError(f"OUTPUT {output} exists and is not empty; pass --overwrite to replace it")
    (state / "done").mkdir(parents=True, exist_ok=True)
    _remove(state / "staging")
    _write_json(state / "config.json", fingerprint)
    done: dict[str, CaseResult] = {}
    for marker in sorted((state / "done").glob("*.json")):
        data = _read_json_or_none(marker)
        try:
            result = CaseResult.from_json(data) if data else None
        except (KeyError, TypeError, ValueError):
            result = None
        if result is not None:
            done[result.case] = result
    return done


# ---------------------------------------------------------------------------------------------
# one case


def _final_paths(output: Path, case: str, channels: tuple[str, ...], split: str) -> list[Path]:
    """Images (channel order) and, for training cases, the label last."""
    folder = output / (IMAGES_TR if split == "training" else IMAGES_TS)
    paths = [folder / f"{case}_{i:04d}{FILE_ENDING}" for i in range(len(channels))]
    if split == "training":
        paths.append(output / LABELS_TR / f"{case}{FILE_ENDING}")
    return paths


def convert_case(case: SourceCase, *, channels: tuple[str, ...], label_map: LabelMap, output: Path) -> CaseResult:
    """Read, validate, map and write one case (runs in a worker process).

    Args:
        case: the source case.
        channels: the output channels in order (every one must be present).
        label_map: the source -> canonical label mapping.
        output: the dataset folder.

    Returns:
        The :class:`CaseResult`.

    Raises:
        InputError: missing channel, unexpected label values (listed with the case); GeometryError
            when a channel or the label lies on another grid than the first channel. Nothing of
            the case is written then.
    """
    what = f"case {case.case_id}"
    loaded = case.load()
    missing = [c for c in channels if c not in loaded.channels]
    if missing:
        raise InputError(f"{what}: missing channel(s) {', '.join(missing)}")
    first = loaded.channels[channels[0]]
    for c in channels[1:]:
        loaded.channels[c].check_same_grid(first, f"{what}: {c} vs {channels[0]}", tol=1e-4)
    split = "training" if case.has_label else "test"
    label = None
    counts: dict[int, int] = {}
    if case.has_label:
        if loaded.label is None:
            raise InputError(f"{what}: label file could not be read")
        loaded.label.check_same_grid(first, f"{what}: label vs {channels[0]}", tol=1e-4)
        mapped, counts = label_map.map_and_count(np.asarray(loaded.label.array), what=what)
        label = first.with_array(mapped)
    staging = output / STATE_DIR / "staging" / case.case_id
    _remove(staging)
    staging.mkdir(parents=True)
    finals = _final_paths(output, case.case_id, channels, split)
    # Fortran order in (X, Y, Z) = C order in SimpleITK's (z, y, x): no strided copy when writing.
    images = [first.with_array(fortran_copy(loaded.channels[c].array)) for c in channels]
    if label is not None:
        label = label.with_array(fortran_copy(label.array))
    for image, final in zip(images + ([label] if label is not None else []), finals):
        write_image(image, staging / final.name)
    for final in finals:  # label last: a case is complete once its label is in place
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / final.name, final)
    _remove(staging)
    result = CaseResult(case.case_id, split, tuple(int(n) for n in first.spatial_shape),
                        tuple(float(s) for s in first.spacing), counts)
    _write_json(output / STATE_DIR / "done" / f"{case.case_id}.json", result.to_json())
    return result


def fortran_copy(array: np.ndarray, *, block: int = 32) -> np.ndarray:
    """``array`` in Fortran order (itself when it already is), copied in blocks along axis 0.

    Copying blocks of ``block`` rows keeps reads and writes in cache; a plain
    ``np.asfortranarray`` of a C-ordered volume is several times slower.
    """
    if array.flags.f_contiguous:
        return array
    out = np.empty(array.shape, dtype=array.dtype, order="F")
    for i in range(0, array.shape[0], block):
        out[i:i + block] = array[i:i + block]
    return out


def _worker_init() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@contextmanager
def _one_itk_thread() -> Iterator[None]:
    """SimpleITK limited to one thread in this process while it converts beside worker processes."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


# ---------------------------------------------------------------------------------------------
# the whole dataset


def _check_config(config: ConvertConfig) -> None:
    if config.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {config.workers}")
    if config.spacing is not None:
        if len(config.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in config.spacing):
            raise ConfigError(f"--spacing must be three positive numbers (mm, X Y Z), got {tuple(config.spacing)}")


def _run_cases(todo: list[SourceCase], *, source: SourceDataset, output: Path, workers: int, skip_invalid: bool,
               progress: Progress | None, done_before: int, total: int) -> tuple[list[CaseResult], list[tuple[str, str]]]:
    results: list[CaseResult] = []
    skipped: list[tuple[str, str]] = []
    kwargs = {"channels": source.channels, "label_map": source.label_map, "output": output}

    def report() -> None:
        if progress is not None:
            progress("Converting", done_before + len(results) + len(skipped), total)

    def handle(case: SourceCase, exc: InputError) -> None:
        if not skip_invalid:
            raise exc
        logger.warning("skipping %s", exc)
        skipped.append((case.case_id, str(exc)))

    report()
    if workers == 1 or len(todo) <= 1:
        for case in todo:
            try:
                results.append(convert_case(case, **kwargs))
            except InputError as exc:
                handle(case, exc)
            report()
        return results, skipped

    # This process converts cases too, beside workers - 1 spawned processes (spawned: SimpleITK's
    # thread pool does not survive a fork). A spawned worker needs a few tenths of a second to
    # start (interpreter, numpy, SimpleITK) and this process none, so the work is shared W ways
    # from the start. While many cases are left, each worker keeps two queued, so it never waits
    # while this process is busy with a case of its own; near the end only one, so that the last
    # cases are not stuck in a worker's queue while this process has nothing to do.
    pool_size = min(workers - 1, len(todo) - 1)
    pending: dict[Future, SourceCase] = {}
    handed_out = 0

    def collect(finished: set[Future]) -> None:
        for future in finished:
            case = pending.pop(future)
            try:
                results.append(future.result())
            except InputError as exc:
                handle(case, exc)
            report()

    with ProcessPoolExecutor(max_workers=pool_size, mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool, _one_itk_thread():
        try:
            while handed_out < len(todo) or pending:
                depth = 2 if len(todo) - handed_out >= 2 * workers else 1
                while handed_out < len(todo) and len(pending) < depth * pool_size:
                    case = todo[handed_out]
                    handed_out += 1
                    pending[pool.submit(convert_case, case, **kwargs)] = case
                collect({f for f in pending if f.done()})
                if handed_out < len(todo):
                    case = todo[handed_out]
                    handed_out += 1
                    try:
                        results.append(convert_case(case, **kwargs))
                    except InputError as exc:
                        handle(case, exc)
                    report()
                elif pending:
                    finished, _ = wait(set(pending), return_when=FIRST_COMPLETED)
                    collect(finished)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return results, skipped


def convert_dataset(*, config: ConvertConfig, progress: Progress | None = None) -> ConvertSummary:
    """Convert ``config.input`` into a dataset in nnU-Net v2 raw layout (docs/DEFINITIONS.md §1-2).

    Args:
        config: the conversion options.
        progress: optional callback ``(description, done, total)`` called as cases finish.

    Returns:
        The :class:`ConvertSummary` (cases, channels, label voxel counts, spacing range, path of
        ``dataset.json``).

    Raises:
        ConfigError: unknown source (with the closest name), options the source does not use,
            OUTPUT inside INPUT (or the reverse), an existing non-empty OUTPUT without
            ``overwrite``, bad name / id / spacing / patterns / label map.
        InputError: the source has no cases; an invalid case (missing channel, grids that differ,
            unknown label values; names the case) unless ``skip_invalid``.
    """
    converter = get_converter(config.source)
    options = config.source_options()
    converter.check_options(options)
    _check_config(config)
    input_dir = Path(config.input)
    if not input_dir.is_dir():
        raise InputError(f"INPUT {input_dir} is not a folder")
    name = dataset_name(config)
    output = resolve_output(config)
    _check_paths(input_dir, output, config.nnunet_id)

    source = converter.discover(input_dir, options)
    if not source.cases:
        raise InputError(f"{input_dir}: no cases found for source '{config.source}'")
    ids = [c.case_id for c in source.cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[0]
        raise InputError(f"{input_dir}: case id '{dup}' is given by several cases")
    invalid = [c for c in source.cases if c.problem]
    if invalid and not config.skip_invalid:
        more = f" (and {len(invalid) - 1} more invalid case(s); --skip-invalid converts the rest)" if len(invalid) > 1 else ""
        raise InputError(f"{invalid[0].problem}{more}")
    skipped = [(c.case_id, str(c.problem)) for c in invalid]
    for case_id, reason in skipped:
        logger.warning("skipping %s", reason)
    valid = [c for c in source.cases if not c.problem]

    done = _prepare_output(output, _fingerprint(config, name), overwrite=config.overwrite)
    kept: dict[str, CaseResult] = {}
    for case in valid:
        result = done.get(case.case_id)
        if result is not None and all(p.is_file() for p in _final_paths(output, case.case_id, source.channels, result.split)):
            kept[case.case_id] = result
    todo = [c for c in valid if c.case_id not in kept]
    results, failed = _run_cases(todo, source=source, output=output, workers=config.workers,
                                 skip_invalid=config.skip_invalid, progress=progress,
                                 done_before=len(kept) + len(skipped), total=len(source.cases))
    skipped += failed
    cases = tuple(sorted([*kept.values(), *results], key=lambda r: r.case))
    if not cases:
        raise InputError(f"{input_dir}: no case could be converted ({len(skipped)} skipped: {skipped[0][1]})")
    _sweep(output, cases, source.channels)

    totals: dict[int, int] = {}
    for case in cases:
        for k, n in case.label_counts.items():
            totals[k] = totals.get(k, 0) + n
    labels = used_labels(source.label_map, totals)
    regions = {r: v for r, v in source.label_map.regions.items() if set(v) <= set(labels.values())}
    spacing = np.array([c.spacing for c in cases])
    spacing_decision = source.spacing or {"source": "files", "min": spacing.min(axis=0).tolist(),
                                          "max": spacing.max(axis=0).tolist()}
    brainseg = {
        "source": source.source,
        "source_format": source.format,
        **source.extra,
        **source.label_map.to_json(),
        "regions": regions,
        "spacing": spacing_decision,
        "input": str(input_dir.resolve()),
        "tool_version": __version__,
    }
    if skipped:
        brainseg["skipped"] = [{"case": c, "reason": r} for c, r in skipped]
    num_training = sum(c.split == "training" for c in cases)
    path = write_dataset_json(output, channels=source.channels, labels=labels, num_training=num_training,
                              file_ending=FILE_ENDING, brainseg=brainseg)
    _remove(output / STATE_DIR)
    logger.info("wrote %s (%d training, %d test case(s))", path, num_training, len(cases) - num_training)
    return ConvertSummary(output=output, dataset_json=path, source_format=source.format, channels=source.channels,
                          labels=labels, regions=regions, cases=cases, skipped=tuple(skipped), resumed=len(kept))


def _sweep(output: Path, cases: tuple[CaseResult, ...], channels: tuple[str, ...]) -> None:
    """Remove files of OUTPUT's case folders that belong to no converted case (from an earlier interrupted run)."""
    expected = {p for c in cases for p in _final_paths(output, c.case, channels, c.split)}
    for folder in (IMAGES_TR, LABELS_TR, IMAGES_TS):
        if (output / folder).is_dir():
            for p in (output / folder).iterdir():
                if p not in expected:
                    logger.debug("removing stale %s", p)
                    _remove(p)
