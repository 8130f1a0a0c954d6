"""The dataset layout: nnU-Net v2 raw format plus brainseg's ``"brainseg"`` block (docs/DEFINITIONS.md §1-2).

```
<dataset>/imagesTr/<case>_<cccc><file_ending>   one 3-D file per channel, cccc = 0000, 0001, ...
<dataset>/labelsTr/<case><file_ending>          integer labels, 0 = background, consecutive
<dataset>/imagesTs/<case>_<cccc><file_ending>   optional, unlabelled cases
<dataset>/dataset.json                          channel_names, labels, numTraining, file_ending
```

:func:`load_dataset` reads both datasets written by ``brainseg convert`` and plain nnU-Net v2 raw
datasets (no ``"brainseg"`` key; channel names that match no canonical alias are kept as given,
with a warning). Decathlon / nnU-Net v1 ``dataset.json`` files (``"modality"`` instead of
``"channel_names"``) are refused with a hint to convert them (``brainseg convert msd``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.data.channels import find_canonical_channel
from brainseg_cli.errors import InputError
from brainseg_cli.io import Image, atomic_write, read_image

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset in nnU-Net v2 raw layout, as described by its ``dataset.json`` and files.

    Attributes:
        root: the dataset folder (holds ``dataset.json``).
        name: ``dataset.json``'s ``"name"``, else the folder name.
        channels: channel names in file order (``_0000`` first); canonical names where the
            dataset's names match an alias, else the names as given.
        labels: class name -> int, including ``"background": 0``; values are 0..K-1.
        regions: evaluation region name -> list of label ints (from ``"brainseg"``; ``{}`` if none).
        file_ending: file name ending of every image and label (e.g. ``".nii.gz"``).
        training_cases: case ids with a label in ``labelsTr``, sorted.
        test_cases: case ids found only in ``imagesTs``, sorted.
        extra: the ``"brainseg"`` block of ``dataset.json`` (source, label mapping, spacing
            decision, tool version, ...); ``{}`` for a plain nnU-Net dataset.
    """

    root: Path
    name: str
    channels: tuple[str, ...]
    labels: dict[str, int]
    regions: dict[str, list[int]]
    file_ending: str
    training_cases: tuple[str, ...]
    test_cases: tuple[str, ...]
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        """Number of channels (image files per case)."""
        return len(self.channels)

    @property
    def cases(self) -> tuple[str, ...]:
        """Training cases followed by test cases."""
        return self.training_cases + self.test_cases

    def _check_case(self, case: str) -> bool:
        """Return True for a training case, False for a test case; InputError for an unknown case."""
        if case in self._training_set:
            return True
        if case in self._test_set:
            return False
        raise InputError(f"{self.root}: no case '{case}' in this dataset "
                         f"({len(self.training_cases)} training, {len(self.test_cases)} test cases)")

    @property
    def _training_set(self) -> frozenset[str]:
        return frozenset(self.training_cases)

    @property
    def _test_set(self) -> frozenset[str]:
        return frozenset(self.test_cases)

    def image_paths(self, case: str) -> list[Path]:
        """The image files of ``case``, one per channel, in channel order.

        Args:
            case: a training or test case id.

        Returns:
            ``[<root>/imagesTr/<case>_0000<ending>, ...]`` (``imagesTs`` for a test case).

        Raises:
            InputError: ``case`` is not in the dataset.
        """
        folder = IMAGES_TR if self._check_case(case) else IMAGES_TS
        return [self.root / folder / f"{case}_{i:04d}{self.file_ending}" for i in range(self.num_channels)]

    def label_path(self, case: str) -> Path:
        """The label file of training case ``case`` (``<root>/labelsTr/<case><ending>``).

        Raises:
            InputError: ``case`` is not in the dataset, or is a test case (which has no label).
        """
        if not self._check_case(case):
            raise InputError(f"{self.root}: case '{case}' is a test case (imagesTs) and has no label")
        return self.root / LABELS_TR / f"{case}{self.file_ending}"


# ---------------------------------------------------------------------------------------------
# reading dataset.json


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path.parent}: no {DATASET_JSON} (not a dataset folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_channels(path: Path, raw: Any) -> tuple[str, ...]:
    """``{"0": "T1", "1": "t1ce"}`` -> ``("T1", "T1c")``; unknown names kept with a warning."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{path}: 'channel_names' must be a non-empty object like {{\"0\": \"T1\"}}, got {raw!r}")
    try:
        indexed = sorted((int(k), v) for k, v in raw.items())
    except ValueError:
        raise InputError(f"{path}: 'channel_names' keys must be channel indices 0, 1, ...; got {list(raw)}") from None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise InputError(f"{path}: 'channel_names' keys must be 0..{len(indexed) - 1}; got {list(raw)}")
    names: list[str] = []
    for i, given in indexed:
        if not isinstance(given, str) or not given.strip():
            raise InputError(f"{path}: channel {i} has no name ({given!r})")
        canonical = find_canonical_channel(given)
        if canonical is None:
            logger.warning("%s: channel %d name '%s' matches no canonical channel name; kept as given", path, i, given)
            canonical = given
        if canonical in names:
            raise InputError(f"{path}: channels {names.index(canonical)} and {i} are both '{canonical}'")
        names.append(canonical)
    return tuple(names)


def _parse_labels(path: Path, raw: Any) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Return ``(labels, regions_from_labels)``.

    nnU-Net region-based datasets give some labels as lists (``"whole tumor": [1, 2, 3]``); those
    become regions, and the classes become ``label_<k>`` for every int the regions use.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{path}: 'labels' must be a non-empty object like {{\"background\": 0}}, got {raw!r}")
    classes: dict[str, int] = {}
    regions: dict[str, list[int]] = {}
    for name, value in raw.items():
        if _is_int(value):
            classes[name] = value
        elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            regions[name] = [int(v) for v in value]
        else:
            raise InputError(f"{path}: label '{name}' must be an integer (or a list of integers), got {value!r}")
    if regions:
        # Region-based nnU-Net dataset: the ints used anywhere are the classes; names are generic.
        used = sorted({0, *classes.values(), *(v for r in regions.values() for v in r)})
        for name, value in classes.items():
            if value != 0:
                regions[name] = [value]
        classes = {("background" if v == 0 else f"label_{v}"): v for v in used}
    values = sorted(classes.values())
    if values != list(range(len(values))):
        raise InputError(f"{path}: label values must be consecutive from 0 (background); got {values}")
    return classes, regions


def _parse_regions(path: Path, raw: Any, labels: Mapping[str, int]) -> dict[str, list[int]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{path}: 'brainseg.regions' must be an object name -> [labels], got {raw!r}")
    valid = {v for v in labels.values() if v != 0}
    regions: dict[str, list[int]] = {}
    for name, members in raw.items():
        if not isinstance(members, (list, tuple)) or not members or not all(_is_int(v) for v in members):
            raise InputError(f"{path}: region '{name}' must be a non-empty list of label integers, got {members!r}")
        unknown = sorted(set(members) - valid)
        if unknown:
            raise InputError(f"{path}: region '{name}' uses labels {unknown} that are not foreground labels {sorted(valid)}")
        regions[name] = [int(v) for v in members]
    return regions


_HIDDEN = re.compile(r"^\.")  # AppleDouble ._*, atomic-write .tmp-*, .DS_Store ...


def _files(folder: Path, ending: str) -> list[str]:
    """Names in ``folder`` ending with ``ending``, skipping hidden files; ``[]`` if no folder."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(ending) and not _HIDDEN.match(p.name) and p.is_file())


def _image_cases(folder: Path, ending: str, num_channels: int) -> dict[str, set[int]]:
    """Case id -> channel indices present, from ``<case>_<cccc><ending>`` names in ``folder``."""
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + r"$")
    cases: dict[str, set[int]] = {}
    for name in _files(folder, ending):
        m = pattern.match(name)
        if m is None:
            raise InputError(f"{folder / name}: not named <case>_<cccc>{ending} (nnU-Net image naming)")
        ch = int(m["ch"])
        if ch >= num_channels:
            raise InputError(f"{folder / name}: channel {ch} but dataset.json declares {num_channels} channel(s)")
        cases.setdefault(m["case"], set()).add(ch)
    return cases


def _check_complete(folder: Path, cases: Mapping[str, set[int]], num_channels: int, ending: str) -> None:
    for case, present in sorted(cases.items()):
        missing = sorted(set(range(num_channels)) - present)
        if missing:
            files = ", ".join(f"{case}_{i:04d}{ending}" for i in missing)
            raise InputError(f"case {case}: missing image file(s) {files} in {folder}")


def load_dataset(root: str | Path) -> DatasetInfo:
    """Read and validate a dataset folder in nnU-Net v2 raw layout.

    Checks that ``dataset.json`` has ``channel_names``, ``labels`` (consecutive ints from 0),
    ``file_ending`` and ``numTraining``; that every label in ``labelsTr`` has one image per
    channel in ``imagesTr`` and every image has a label; that ``numTraining`` equals the number
    of labels; and that every case in ``imagesTs`` has all its channels. Hidden files (``._*``,
    ``.tmp-*``) are ignored. Image contents are not read (see :func:`read_case`).

    Args:
        root: the dataset folder.

    Returns:
        The :class:`DatasetInfo`.

    Raises:
        InputError: a missing or malformed ``dataset.json`` (one line naming the file and the
            offending value), a Decathlon/v1 ``dataset.json``, or missing/extra files naming the case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder does not exist")
    path = root / DATASET_JSON
    meta = _read_json(path)
    if "channel_names" not in meta:
        if "modality" in meta:
            raise InputError(f"{path}: a Decathlon / nnU-Net v1 dataset.json ('modality', no 'channel_names'); "
                             f"convert it first: brainseg convert msd {root}")
        raise InputError(f"{path}: missing 'channel_names'")
    channels = _parse_channels(path, meta["channel_names"])
    if "labels" not in meta:
        raise InputError(f"{path}: missing 'labels'")
    labels, label_regions = _parse_labels(path, meta["labels"])
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{path}: 'file_ending' must be a file ending such as \".nii.gz\", got {ending!r}")
    if "dataset" in meta:
        raise InputError(f"{path}: lists its files explicitly ('dataset' key); only the imagesTr/labelsTr naming is supported")
    extra = meta.get("brainseg", {})
    if not isinstance(extra, dict):
        raise InputError(f"{path}: 'brainseg' must be an object, got {extra!r}")
    regions = _parse_regions(path, extra.get("regions"), labels) or label_regions

    label_cases = [name[: -len(ending)] for name in _files(root / LABELS_TR, ending)]
    image_cases = _image_cases(root / IMAGES_TR, ending, len(channels))
    for case in label_cases:
        if case not in image_cases:
            raise InputError(f"case {case}: label {LABELS_TR}/{case}{ending} has no images in {root / IMAGES_TR}")
    unlabelled = sorted(set(image_cases) - set(label_cases))
    if unlabelled:
        raise InputError(f"case {unlabelled[0]}: images in {root / IMAGES_TR} without a label in {LABELS_TR} "
                         f"({len(unlabelled)} such case(s); unlabelled cases belong in {IMAGES_TS})")
    _check_complete(root / IMAGES_TR, image_cases, len(channels), ending)
    num_training = meta.get("numTraining")
    if not _is_int(num_training):
        raise InputError(f"{path}: 'numTraining' must be an integer, got {num_training!r}")
    if num_training != len(label_cases):
        raise InputError(f"{path}: numTraining is {num_training} but {root / LABELS_TR} holds {len(label_cases)} label file(s)")
    test_cases = _image_cases(root / IMAGES_TS, ending, len(channels))
    _check_complete(root / IMAGES_TS, test_cases, len(channels), ending)
    both = sorted(set(test_cases) & set(label_cases))
    if both:
        raise InputError(f"case {both[0]}: in both {IMAGES_TR} and {IMAGES_TS}")

    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else root.name
    return DatasetInfo(root=root, name=name, channels=channels, labels=labels, regions=regions, file_ending=ending,
                       training_cases=tuple(sorted(label_cases)), test_cases=tuple(sorted(test_cases)), extra=extra)


# ---------------------------------------------------------------------------------------------
# reading cases


def label_values_to_uint8(array: np.ndarray, *, what: str, allowed: Sequence[int] | None = None) -> np.ndarray:
    """Check a label array and return it as uint8.

    Args:
        array: label voxels, any numeric dtype; float arrays must hold integral values.
        what: names the case/file in error messages.
        allowed: the valid label values (``None``: any value 0..255).

    Returns:
        ``array`` as uint8 (same shape).

    Raises:
        InputError: non-integral, non-finite, negative or > 255 values, or values not in ``allowed``
            (the message lists the unexpected values and their voxel counts).
    """
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(f"{what}: label contains NaN or infinite values")
        rounded = np.rint(array)
        bad = rounded != array
        if np.any(bad):
            examples = np.unique(array[bad])[:5].tolist()
            raise InputError(f"{what}: label has non-integer values {examples}")
        array = rounded
    elif array.dtype.kind not in "iub":
        raise InputError(f"{what}: label has non-numeric dtype {array.dtype}")
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    flat = array.ravel(order=order)  # a view for contiguous arrays
    if flat.size and array.dtype.kind in "iub" and int(flat.min()) >= 0 and int(flat.max()) < 256:
        counts = np.bincount(flat.astype(np.uint8, copy=False), minlength=256)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(flat, return_counts=True)
    valid = set(range(256)) if allowed is None else {int(v) for v in allowed}
    unexpected = [(v, int(c)) for v, c in zip(values.tolist(), counts.tolist()) if not (float(v).is_integer() and int(v) in valid)]
    if unexpected:
        listing = ", ".join(f"{_fmt(v)} ({c} voxels)" for v, c in unexpected)
        expected = "0..255" if allowed is None else str(sorted(valid))
        raise InputError(f"{what}: unexpected label values {listing}; expected {expected}")
    return array.astype(np.uint8, copy=False)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and math.isfinite(value) else str(value)


def read_case(info: DatasetInfo, case: str, *, with_label: bool = True):
    """Read one case: all channels stacked, and its label.

    Args:
        info: the dataset (from :func:`load_dataset`).
        case: a training or test case id.
        with_label: also read the label (ignored for test cases, which have none).

    Returns:
        ``(image, label)``: ``image`` is an :class:`~brainseg_cli.io.Image` with a float32 array
        ``(C, X, Y, Z)`` in ``info.channels`` order; ``label`` is an Image with a uint8 array
        ``(X, Y, Z)`` on the same grid, or ``None`` (``with_label=False`` or a test case).

    Raises:
        InputError: a file is missing or unreadable; label values are not integral or not in
            ``info.labels``.
        GeometryError: a channel or the label is on another grid than channel 0 (names the case).
    """
    paths = info.image_paths(case)
    channels = []
    for i, path in enumerate(paths):
        img = read_image(path)
        if img.has_channels:
            raise InputError(f"case {case}: {path.name} has {img.num_channels} channels; expected one 3-D volume per file")
        if channels:
            img.check_same_grid(channels[0], what=f"case {case}: {info.channels[i]} ({path.name}) vs {info.channels[0]}")
        channels.append(img)
    image = Image.stack(channels)
    if image.array.dtype != np.float32:
        image = image.with_array(image.array.astype(np.float32))
    label = None
    if with_label and case in info.training_cases:
        path = info.label_path(case)
        lab = read_image(path)
        lab.check_same_grid(channels[0], what=f"case {case}: label ({path.name}) vs {info.channels[0]}")
        array = label_values_to_uint8(np.asarray(lab.array), what=f"case {case} ({path.name})",
                                      allowed=sorted(info.labels.values()))
        label = lab.with_array(array)
    return image, label


# ---------------------------------------------------------------------------------------------
# writing dataset.json


def write_dataset_json(
    root: str | Path,
    *,
    channels: Sequence[str],
    labels: Mapping[str, int],
    num_training: int,
    file_ending: str = ".nii.gz",
    brainseg: Mapping[str, Any],
) -> Path:
    """Write ``<root>/dataset.json`` (atomically) in the nnU-Net v2 format plus the ``"brainseg"`` block.

    Args:
        root: the dataset folder (created if missing).
        channels: channel names in file order (``_0000`` first).
        labels: class name -> int, consecutive from 0 (background).
        num_training: number of labelled cases in ``labelsTr``.
        file_ending: ending of every image and label file.
        brainseg: brainseg's own metadata (source format, source labels and mapping, ``regions``,
            spacing decision, tool version); JSON-serialisable.

    Returns:
        The path of the written ``dataset.json``.

    Raises:
        InputError: labels not consecutive from 0, repeated channel names, or a negative count.
    """
    root = Path(root)
    values = sorted(int(v) for v in labels.values())
    if values != list(range(len(values))):
        raise InputError(f"{root}: label values must be consecutive from 0 (background); got {values}")
    if len(set(channels)) != len(channels) or not channels:
        raise InputError(f"{root}: channel names must be non-empty and distinct; got {list(channels)}")
    if num_training < 0:
        raise InputError(f"{root}: numTraining must be >= 0, got {num_training}")
    meta = {
        "channel_names": {str(i): str(c) for i, c in enumerate(channels)},
        "labels": {str(k): int(v) for k, v in sorted(labels.items(), key=lambda kv: kv[1])},
        "numTraining": int(num_training),
        "file_ending": file_ending,
        "brainseg": dict(brainseg),
    }
    text = json.dumps(meta, indent=2) + "\n"
    path = root / DATASET_JSON
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
