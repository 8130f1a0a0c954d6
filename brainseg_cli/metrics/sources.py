"""Where the label volumes of an evaluation come from: discovering and reading cases.

A reference or prediction path is one of:

- a dataset folder in nnU-Net v2 raw layout (``dataset.json`` + ``labelsTr/``): its labelled cases,
  with label names and regions from ``dataset.json``;
- a ``labelsTr`` / ``labelsTs`` folder inside such a dataset (names and regions from the parent's
  ``dataset.json``);
- a flat folder of label files (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``,
  ``.gipl(.gz)``): the case id is the file name without its ending (``.nii.gz`` aware);
- a Kaggle-LGG ``kaggle_3m`` folder: one case per patient, ``<patient>_<n>_mask.tif`` slices (0/255)
  stacked in slice-number order into an ``(X, Y, Z)`` 0/1 volume. The mask files may sit in
  ``<root>/<patient>/`` or directly in ``<root>``; image slices are not needed for predictions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainseg_cli.data.layout import DATASET_JSON, LABELS_TR, load_dataset
from brainseg_cli.errors import GeometryError, InputError
from brainseg_cli.io import Image, read_image, read_tiff
from brainseg_cli.io.names import VOLUME_ENDINGS, case_name
from brainseg_cli.io.slices import read_lgg_patient, slice_files

logger = logging.getLogger(__name__)

#: Label names of a Kaggle-LGG mask (docs/DEFINITIONS.md §1-2: 255 -> 1 "FLAIR abnormality").
LGG_LABELS: dict[str, int] = {"background": 0, "FLAIR abnormality": 1}
#: Voxel size assumed for Kaggle-LGG slices (TIFF carries no spacing); ``read_lgg_patient``'s default.
LGG_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)

_MASK_RE = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)_mask\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True)
class LabelSource:
    """The label volumes of one side (reference or prediction) of an evaluation.

    Attributes:
        root: the path the user gave.
        kind: ``"volumes"`` (one label file per case) or ``"lgg"`` (Kaggle-LGG mask slices).
        cases: case id -> label file (``volumes``) or the folder holding the patient's masks (``lgg``).
        labels: label name -> value when the source names its labels (``dataset.json``, LGG), else None.
        regions: region name -> label values from ``dataset.json`` (``{}`` if it defines none),
            None without a ``dataset.json``.
        description: how the source was recognised, for messages and logs.
    """

    root: Path
    kind: str
    cases: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, int] | None = None
    regions: dict[str, list[int]] | None = None
    description: str = ""


def volume_case_id(name: str) -> str | None:
    """The case id of a label file name (``BRATS_001.nii.gz`` -> ``BRATS_001``), or None if not a volume."""
    return case_name(name)


def _volume_files(folder: Path, *, ending: str | None = None) -> dict[str, Path]:
    cases: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if ending is not None:
            case = entry.name[: -len(ending)] if entry.name.endswith(ending) else None
        else:
            case = volume_case_id(entry.name)
        if case is None:
            continue
        if case in cases:
            raise InputError(f"{folder}: case {case} has two label files: {cases[case].name} and {entry.name}")
        cases[case] = entry
    return cases


def _lgg_mask_folders(root: Path) -> dict[str, Path]:
    """Patient id -> folder holding its ``<patient>_<n>_mask.tif`` files (root or its subfolders)."""
    found: dict[str, Path] = {}
    folders = [root] + [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in folders:
        for entry in folder.iterdir():
            match = _MASK_RE.match(entry.name)
            if match is None or not entry.is_file():
                continue
            patient = match["patient"]
            if folder != root and patient != folder.name:
                continue
            previous = found.setdefault(patient, folder)
            if previous != folder:
                raise InputError(f"patient {patient}: mask slices in both {previous} and {folder}")
    return found


def open_source(path: Path, *, role: str) -> LabelSource:
    """Recognise the layout of a reference or prediction path and list its cases.

    Args:
        path: a dataset folder, a ``labelsTr`` folder, a flat folder of label files, or a Kaggle-LGG folder.
        role: ``"reference"`` or ``"prediction"``, for messages.

    Returns:
        The :class:`LabelSource`.

    Raises:
        InputError: the path does not exist, is not a folder, or holds no label files.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} {path}: not found")
    if not path.is_dir():
        raise InputError(f"{role} {path}: expected a folder of label files, a dataset folder or a Kaggle-LGG folder")
    if (path / DATASET_JSON).is_file() and (path / LABELS_TR).is_dir():
        info = load_dataset(path)
        cases = {case: info.label_path(case) for case in info.training_cases}
        return LabelSource(root=path, kind="volumes", cases=cases, labels=dict(info.labels),
                           regions={k: list(v) for k, v in info.regions.items()},
                           description=f"dataset {info.name} ({len(cases)} labelled cases)")
    if path.name in (LABELS_TR, "labelsTs") and (path.parent / DATASET_JSON).is_file():
        info = load_dataset(path.parent)
        cases = _volume_files(path, ending=info.file_ending)
        return LabelSource(root=path, kind="volumes", cases=cases, labels=dict(info.labels),
                           regions={k: list(v) for k, v in info.regions.items()},
                           description=f"{path.name} of dataset {info.name} ({len(cases)} cases)")
    masks = _lgg_mask_folders(path)
    if masks:
        return LabelSource(root=path, kind="lgg", cases=masks, labels=dict(LGG_LABELS), regions=None,
                           description=f"Kaggle-LGG slices ({len(masks)} patients)")
    cases = _volume_files(path)
    if not cases:
        raise InputError(f"{role} {path}: no label files ({', '.join(VOLUME_ENDINGS)}), no dataset.json "
                         "with labelsTr/, and no Kaggle-LGG *_mask.tif slices")
    return LabelSource(root=path, kind="volumes", cases=cases, description=f"folder of {len(cases)} label files")


def as_label_array(array: np.ndarray, *, what: str) -> np.ndarray:
    """Check that ``array`` holds non-negative integer labels; return it with an integer dtype.

    Args:
        array: voxels of a label image, any numeric dtype (float arrays must hold whole numbers).
        what: names the case and file in messages.

    Returns:
        The array (unchanged when already unsigned; uint8/uint16/int64 for converted floats).

    Raises:
        InputError: non-numeric dtype, non-integer, non-finite or negative values.
    """
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{what}: label image holds NaN or infinite values")
        rounded = np.rint(arr)
        if np.any(rounded != arr):
            bad = np.unique(arr[rounded != arr])[:3].tolist()
            raise InputError(f"{what}: label image holds non-integer values, e.g. {bad}")
        hi = float(rounded.max()) if rounded.size else 0.0
        arr = rounded.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int64)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"{what}: label image has non-numeric type {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise InputError(f"{what}: label image holds negative value {int(arr.min())}")
    return arr


def read_volume_labels(path: Path, *, case: str, role: str):
    """Read one label file as an :class:`~brainseg_cli.io.Image` with an integer ``(X, Y, Z)`` array.

    Raises:
        InputError: unreadable file, several channels, or non-integer values (names the case).
    """
    image = read_image(path)
    if image.has_channels:
        raise InputError(f"case {case}: {role} {path} has {image.num_channels} channels; expected one label volume")
    return image.with_array(as_label_array(image.array, what=f"case {case}: {role} {path}"))


def _read_mask_slices(folder: Path, patient: str) -> tuple[np.ndarray, list[int]]:
    """Stack ``<patient>_<n>_mask.tif`` (0/255) in ``folder`` into an ``(X, Y, Z)`` 0/1 uint8 array."""
    files = slice_files(folder, patient)[1]
    numbers = sorted(files)
    planes = []
    for n in numbers:
        data = np.asarray(read_tiff(files[n]))
        if data.ndim != 2:
            raise InputError(f"{files[n]}: expected a 2-D mask slice, got shape {data.shape}")
        if planes and data.shape != planes[0].shape:
            raise InputError(f"{files[n]}: mask shape {data.shape} differs from {planes[0].shape} of "
                             f"{files[numbers[0]].name}")
        bad = np.setdiff1d(np.unique(data), (0, 255))
        if bad.size:
            raise InputError(f"{files[n]}: mask values must be 0/255, found {bad[:5].tolist()}")
        planes.append(data)
    return (np.stack(planes, axis=-1) == 255).astype(np.uint8), numbers


def read_case_pair(case: str, ref: LabelSource, pred: LabelSource | None):
    """Read the reference and prediction of one case on the same grid.

    Args:
        case: the case (patient) id.
        ref: the reference source (must hold ``case``).
        pred: the prediction source, or None for a missing prediction (scored as an empty one).

    Returns:
        ``(ref_image, pred_array)``: the reference :class:`~brainseg_cli.io.Image` (integer
        ``(X, Y, Z)`` labels with geometry) and the prediction's integer ``(X, Y, Z)`` array.

    Raises:
        InputError: unreadable files or invalid label values (names the case).
        GeometryError: the prediction's grid (shape, spacing, origin, direction; LGG: slice
            numbers) differs from the reference's (names the case).
    """
    if ref.kind == "lgg":
        patient = read_lgg_patient(ref.cases[case], spacing=LGG_SPACING)
        if patient.mask is None:
            raise InputError(f"case {case}: reference {ref.cases[case]} has no *_mask.tif slices")
        ref_image = patient.mask
        if pred is None:
            return ref_image, np.zeros(ref_image.array.shape, dtype=np.uint8)
        pred_array, numbers = _read_mask_slices(pred.cases[case], case)
        if numbers != list(patient.slice_numbers):
            extra = sorted(set(numbers) - set(patient.slice_numbers))
            absent = sorted(set(patient.slice_numbers) - set(numbers))
            raise GeometryError(f"case {case}: prediction slices differ from the reference's "
                                f"(missing {absent[:5]}, extra {extra[:5]}) in {pred.cases[case]}")
        ref_image.check_same_grid(Image(pred_array, LGG_SPACING),
                                  what=f"case {case}: prediction {pred.cases[case]} vs reference")
        return ref_image, pred_array
    ref_image = read_volume_labels(ref.cases[case], case=case, role="reference")
    if pred is None:
        return ref_image, np.zeros(ref_image.array.shape, dtype=np.uint8)
    pred_image = read_volume_labels(pred.cases[case], case=case, role="prediction")
    ref_image.check_same_grid(pred_image, what=f"case {case}: prediction {pred.cases[case].name} vs reference "
                                               f"{ref.cases[case].name}")
    return ref_image, pred_image.array
