"""Medical Segmentation Decathlon task folders (``brainseg convert msd``).

``<Task>/dataset.json`` (``modality``, ``labels``), ``imagesTr/<case>.nii.gz`` (4-D, channels last),
``labelsTr/<case>.nii.gz`` and ``imagesTs/<case>.nii.gz``. Each 4-D image is split into one 3-D
file per channel, named by ``modality`` (``FLAIR``, ``T1w``, ``t1gd``, ``T2w`` -> ``FLAIR``, ``T1``,
``T1c``, ``T2``) and written in canonical order; names matching no canonical alias are kept as
given (after the canonical ones) with a warning. Labels are kept: Task01's classes take the
canonical tumour names and the WT/TC/ET regions (label map ``msd``); other tasks keep the names
of their ``dataset.json`` and get no regions. Files that are not images (the AppleDouble ``._*``
files of the Decathlon archives) are skipped.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from brainseg_cli.data.channels import CANONICAL_CHANNELS, find_canonical_channel
from brainseg_cli.data.converters.base import LoadedCase, SourceCase, SourceDataset, SourceOptions, check_case_id, is_hidden
from brainseg_cli.data.labelmaps import LABEL_MAPS, LabelMap
from brainseg_cli.errors import InputError
from brainseg_cli.io import read_image

logger = logging.getLogger(__name__)

_TASK01_NAMES = ("background", "edema", "non-enhancing tumor", "enhancing tumour")


def _read_meta(input_dir: Path) -> dict:
    path = input_dir / "dataset.json"
    if not path.is_file():
        raise InputError(f"{input_dir}: no dataset.json (expected a Decathlon task folder such as Task01_BrainTumour)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("modality"), dict) or not meta["modality"]:
        raise InputError(f"{path}: no 'modality' object (not a Decathlon dataset.json)")
    if not isinstance(meta.get("labels"), dict) or not meta["labels"]:
        raise InputError(f"{path}: no 'labels' object")
    return meta


def _channels(path: Path, modality: dict) -> tuple[list[str], tuple[tuple[str, int], ...]]:
    """Output channel names in output order, and ``(name, index in the 4-D file)`` pairs."""
    try:
        indexed = sorted((int(k), str(v)) for k, v in modality.items())
    except ValueError:
        raise InputError(f"{path}: 'modality' keys must be channel indices, got {list(modality)}") from None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise InputError(f"{path}: 'modality' keys must be 0..{len(indexed) - 1}, got {list(modality)}")
    named: dict[str, int] = {}
    for i, given in indexed:
        canonical = find_canonical_channel(given)
        if canonical is None:
            logger.warning("%s: modality %d '%s' matches no canonical channel name; kept as given", path, i, given)
            canonical = given
        if canonical in named:
            raise InputError(f"{path}: modalities {named[canonical]} and {i} are both {canonical}")
        named[canonical] = i
    order = [c for c in CANONICAL_CHANNELS if c in named] + [c for c in named if c not in CANONICAL_CHANNELS]
    return order, tuple((c, named[c]) for c in order)


def _label_map(path: Path, labels: dict) -> LabelMap:
    try:
        indexed = sorted((int(k), str(v)) for k, v in labels.items())
    except ValueError:
        raise InputError(f"{path}: 'labels' keys must be label values, got {list(labels)}") from None
    values = [v for v, _ in indexed]
    if values != list(range(len(values))):
        raise InputError(f"{path}: label values must be consecutive from 0, got {values}")
    if tuple(n.lower() for _, n in indexed) == _TASK01_NAMES:
        return LABEL_MAPS["msd"]
    names = {("background" if v == 0 else n): v for v, n in indexed}
    return LabelMap("msd-task", f"Decathlon labels of {path}", dict(indexed), {v: v for v in values}, names)


def load_4d(image_file: Path, channel_index: tuple[tuple[str, int], ...], label_file: Path | None) -> LoadedCase:
    """Read a Decathlon 4-D image (``(C, X, Y, Z)`` in memory) and split it into named channels.

    Raises:
        InputError: the image's channel count differs from ``dataset.json``'s modalities.
    """
    image = read_image(image_file)
    n = image.num_channels
    if n != len(channel_index) or image.spatial_dims != 3:
        raise InputError(f"{image_file}: {n} channel(s) of shape {image.array.shape} but dataset.json lists "
                         f"{len(channel_index)} modalities")
    channels = {name: image.channel(i) for name, i in channel_index}
    label = read_image(label_file) if label_file is not None else None
    return LoadedCase(channels, label)


def _images(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if is_hidden(p.name):
            logger.debug("skipping %s (hidden / AppleDouble file, not an image)", p)
        elif p.is_file() and p.name.endswith((".nii.gz", ".nii")):
            out[p.name[: -len(".nii.gz")] if p.name.endswith(".gz") else p.name[: -len(".nii")]] = p
    return out


def discover(input_dir: Path, options: SourceOptions) -> SourceDataset:
    """List a Decathlon task folder's training (labelled) and test cases.

    Raises:
        InputError: no or a malformed ``dataset.json``, no images, or a label without an image.
    """
    meta = _read_meta(input_dir)
    path = input_dir / "dataset.json"
    order, channel_index = _channels(path, meta["modality"])
    label_map = _label_map(path, meta["labels"])
    train = _images(input_dir / "imagesTr")
    labels = _images(input_dir / "labelsTr")
    test = _images(input_dir / "imagesTs")
    orphans = sorted(set(labels) - set(train))
    if orphans:
        raise InputError(f"case {orphans[0]}: label {labels[orphans[0]]} has no image in {input_dir / 'imagesTr'}")
    if not train and not test:
        raise InputError(f"{input_dir}: no .nii.gz images in imagesTr or imagesTs")
    cases = []
    for case_id, image_file in sorted({**test, **train}.items()):
        label_file = labels.get(case_id) if case_id in train else None
        problem = check_case_id(case_id, input_dir)
        if case_id in train and label_file is None:
            problem = problem or f"case {case_id}: {image_file} has no label in {input_dir / 'labelsTr'}"
        if case_id in train and case_id in test:
            problem = problem or f"case {case_id}: in both imagesTr and imagesTs"
        cases.append(SourceCase(case_id, partial(load_4d, image_file, channel_index, label_file),
                                label_file is not None, (image_file,) + ((label_file,) if label_file else ()), problem))
    name = meta.get("name") if isinstance(meta.get("name"), str) else input_dir.name
    return SourceDataset(source="msd", format=f"Medical Segmentation Decathlon ({name}, 4-D NIfTI)",
                         channels=tuple(order), label_map=label_map, cases=tuple(cases),
                         extra={"source_channels": {str(k): str(v) for k, v in meta["modality"].items()}})
