"""Finding the cases to predict in an input path, and reading them in the model's channel order.

Accepted inputs (``discover_cases`` decides in this order):

1. **Kaggle-LGG TIFF slices**: a ``kaggle_3m`` folder of patient folders, or one patient folder
   (``<patient>/<patient>_<n>.tif``). Channels T1, FLAIR, T1c (the RGB samples).
2. **A dataset root** (``dataset.json`` beside ``imagesTs/`` or ``imagesTr/``): the images of
   ``imagesTs`` when it holds any, else of ``imagesTr``, read as in 3. or 4.
3. **A folder in the dataset layout**: every image is ``<case>_<cccc><ending>`` (one 3-D file per
   channel, nnU-Net naming). Channel ``cccc`` is named by a ``dataset.json`` in the folder or its
   parent (``channel_names``, or Decathlon's ``modality``); without one, channel ``cccc`` is the
   checkpoint's channel ``cccc`` (``channel_order`` overrides both).
4. **A folder of image files named by modality** (``<case>_flair.nii.gz``, ``<case>-t1n.nii.gz``,
   ``T1c_subtrMeanDivStd.nii.gz``, ...): the last ``_ - .``-separated token of a file name that is a
   channel alias (docs/DEFINITIONS.md §1-2) names its channel, the text before it names the case (empty: the
   folder's name). Files naming no channel (``_seg``, ``brainmask``, ...) are ignored.
   A folder whose files name no channel at all holds **one case per file**: 4-D NIfTI files
   (channels last on disk, named like 3.) or 3-D files for a one-channel model.
5. **A folder of case folders** (BraTS): each sub-folder is one case named after the folder; its
   channel files are found by name as in 4., directly in it or (when none are there) one or two
   folder levels down (BraTS 2013 ``VSD.*`` folders, MRBrainS ``pre/``).
6. **A single file**: one case (4-D NIfTI, or 3-D for a one-channel model).

A case whose channels cannot be matched is not an error of the whole run: the problem is recorded
in its :class:`CaseSource` and raised (as a one-line :class:`InputError` naming the case) when the
case is loaded, so ``--skip-invalid`` can continue with the others.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg_cli.data.channels import find_canonical_channel
from brainseg_cli.errors import InputError
from brainseg_cli.io import SUPPORTED_EXTENSIONS, Image, read_image
from brainseg_cli.io.names import split_ending
from brainseg_cli.io.slices import LGG_CHANNELS, list_lgg_patients, read_lgg_patient

logger = logging.getLogger(__name__)

#: Layout names of :attr:`CaseSource.layout`.
LAYOUTS: tuple[str, ...] = ("dataset", "named", "4d", "lgg")

_INDEXED = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_MAX_CASE_DEPTH = 2


@dataclass(frozen=True)
class CaseSource:
    """One case found in the input, before reading.

    Attributes:
        case: the case id (output files are named after it).
        layout: ``"dataset"`` (one file per channel, indexed ``_cccc``), ``"named"`` (one file per
            channel, named by modality), ``"4d"`` (one file holding every channel) or ``"lgg"``
            (a Kaggle-LGG patient folder).
        paths: the channel files in channel-index order (``"dataset"``), the channel files
            (``"named"``), the one file (``"4d"``) or the patient folder (``"lgg"``).
        names: canonical channel name of each path (``"named"``), of each channel index
            (``"dataset"``/``"4d"`` with a ``dataset.json``), or ``None`` when channels are known
            only by position.
        output_ext: file ending of the label map to write (the input's format); ``""`` for LGG,
            whose output is a folder of TIFF masks.
        problem: why the case cannot be read (raised by :func:`load_case`), or ``None``.
    """

    case: str
    layout: str
    paths: tuple[Path, ...]
    names: tuple[str, ...] | None = None
    output_ext: str = ".nii.gz"
    problem: str | None = None


@dataclass(frozen=True, eq=False)
class LoadedCase:
    """A case read into memory.

    Attributes:
        source: where it came from.
        image: ``(C, X, Y, Z)`` float32 image in the model's channel order, with the input's geometry.
        slice_numbers: TIFF slice number of each Z index (LGG inputs), else ``None``.
    """

    source: CaseSource
    image: Image
    slice_numbers: list[int] | None = None


# --------------------------------------------------------------------------------------------- names


def _split_ext(path: Path) -> tuple[str, str] | None:
    """``(stem, ending)`` for a supported, non-hidden image file; ``None`` otherwise."""
    return split_ending(path)


def channel_from_name(stem: str) -> tuple[str, str] | None:
    """Find the channel a file name stem names.

    Args:
        stem: a file name without its ending, e.g. ``"Brats18_2013_20_1_t1ce"``.

    Returns:
        ``(canonical channel, case prefix)``, e.g. ``("T1c", "Brats18_2013_20_1")``: the last
        separator-delimited token that is a channel alias, and the text before it without trailing
        separators. ``None`` when no token names a channel.
    """
    found: tuple[str, str] | None = None
    for match in re.finditer(r"[^_\-.\s]+", stem):
        canonical = find_canonical_channel(match.group(0))
        if canonical is not None:
            found = (canonical, stem[: match.start()].rstrip("_-. "))
    return found


def _json_channel_names(*folders: Path) -> tuple[str, ...] | None:
    """Channel names by index from the first ``dataset.json`` found in ``folders`` (or None)."""
    for folder in folders:
        path = folder / "dataset.json"
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read JSON: {exc}") from None
        raw = meta.get("channel_names", meta.get("modality")) if isinstance(meta, dict) else None
        if not isinstance(raw, dict) or not raw:
            raise InputError(f"{path}: no 'channel_names' (or 'modality') object naming the channels")
        try:
            indexed = sorted((int(k), str(v)) for k, v in raw.items())
        except ValueError:
            raise InputError(f"{path}: channel keys must be indices 0, 1, ...; got {list(raw)}") from None
        if [i for i, _ in indexed] != list(range(len(indexed))):
            raise InputError(f"{path}: channel keys must be 0..{len(indexed) - 1}; got {list(raw)}")
        names = tuple(find_canonical_channel(v) or v for _, v in indexed)
        logger.debug("channel names from %s: %s", path, names)
        return names
    return None


def _image_files(folder: Path) -> list[tuple[Path, str, str]]:
    """``(path, stem, ending)`` of the supported image files directly in ``folder``, sorted."""
    out = []
    for path in sorted(folder.iterdir()):
        parts = _split_ext(path)
        if parts is not None and path.is_file():
            out.append((path, *parts))
    return out


# --------------------------------------------------------------------------------------------- discovery


def _indexed_cases(folder: Path, files: list[tuple[Path, str, str]], names: tuple[str, ...] | None) -> list[CaseSource]:
    groups: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path, stem, ext in files:
        m = _INDEXED.match(stem)
        if m is None:
            raise InputError(f"{path}: not named <case>_<cccc>{ext} like the other files in {folder}")
        groups.setdefault(m["case"], {})[int(m["ch"])] = path
        endings.setdefault(m["case"], ext)
    cases = []
    for case, channels in sorted(groups.items()):
        indices = sorted(channels)
        problem = None
        if indices != list(range(len(indices))):
            missing = sorted(set(range(max(indices) + 1)) - set(indices))
            problem = (f"case {case}: missing channel file(s) "
                       f"{', '.join(f'{case}_{i:04d}{endings[case]}' for i in missing)} in {folder}")
        cases.append(CaseSource(case=case, layout="dataset", paths=tuple(channels[i] for i in indices),
                                names=names, output_ext=endings[case], problem=problem))
    return cases


def _named_groups(files: list[tuple[Path, str, str]]) -> dict[str, list[tuple[str, Path, str]]]:
    """Group channel-named files by case prefix: prefix -> [(channel, path, ending)]."""
    groups: dict[str, list[tuple[str, Path, str]]] = {}
    for path, stem, ext in files:
        found = channel_from_name(stem)
        if found is None:
            logger.debug("ignoring %s (its name names no channel)", path)
            continue
        channel, prefix = found
        groups.setdefault(prefix, []).append((channel, path, ext))
    return groups


def _named_case(case: str, members: list[tuple[str, Path, str]]) -> CaseSource:
    seen: dict[str, Path] = {}
    problem = None
    for channel, path, _ in members:
        if channel in seen:
            problem = f"case {case}: two {channel} files, {seen[channel].name} and {path.name}"
            break
        seen[channel] = path
    return CaseSource(case=case, layout="named", paths=tuple(p for _, p, _ in members),
                      names=tuple(c for c, _, _ in members), output_ext=members[0][2], problem=problem)


def _case_folder(folder: Path) -> CaseSource | None:
    """One case from a case folder (channel files at the shallowest depth that has any).

    Returns None for a folder holding no image file at all (down to the search depth).
    """
    level = [folder]
    any_images = False
    for _ in range(_MAX_CASE_DEPTH + 1):
        files = [f for d in level for f in _image_files(d)]
        any_images = any_images or bool(files)
        groups = _named_groups(files)
        if groups:
            members = [m for prefix in sorted(groups) for m in groups[prefix]]
            return _named_case(folder.name, members)
        level = [d for parent in level for d in sorted(parent.iterdir())
                 if d.is_dir() and not d.name.startswith(".")]
        if not level:
            break
    if not any_images:
        logger.warning("ignoring folder %s: it holds no image files", folder)
        return None
    return CaseSource(case=folder.name, layout="named", paths=(), names=(), problem=(
        f"case {folder.name}: no image file named by a channel (e.g. {folder.name}_flair.nii.gz) in {folder}"))


def _is_lgg(root: Path) -> bool:
    if not any(root.glob("*.tif*")) and not any(root.glob("*/*.tif*")):
        return False
    try:
        list_lgg_patients(root)
    except InputError:
        return False
    return True


def _files_cases(folder: Path, files: list[tuple[Path, str, str]], json_dirs: tuple[Path, ...]) -> list[CaseSource]:
    if all(_INDEXED.match(stem) for _, stem, _ in files):
        return _indexed_cases(folder, files, _json_channel_names(*json_dirs))
    groups = _named_groups(files)
    if groups:
        return [_named_case(prefix or folder.name, members) for prefix, members in sorted(groups.items())]
    names = _json_channel_names(*json_dirs)
    return [CaseSource(case=stem, layout="4d", paths=(path,), names=names, output_ext=ext) for path, stem, ext in files]


def discover_cases(root: str | Path) -> list[CaseSource]:
    """Find the cases in an input file or folder (see the module docstring for the layouts).

    Args:
        root: the input path.

    Returns:
        The cases, sorted by case id; case ids are unique.

    Raises:
        InputError: ``root`` does not exist, holds no case, or two cases have the same id.
    """
    root = Path(root)
    if root.is_file():
        parts = _split_ext(root)
        if parts is None:
            raise InputError(f"{root}: not a supported image file ({', '.join(SUPPORTED_EXTENSIONS)})")
        stem, ext = parts
        m = _INDEXED.match(stem)
        case = m["case"] if m else stem
        names = None if m else _json_channel_names(root.parent, root.parent.parent)  # imagesTr/../dataset.json
        return [CaseSource(case=case, layout="4d", paths=(root,), names=names, output_ext=ext)]
    if not root.is_dir():
        raise InputError(f"{root}: input not found")
    if _is_lgg(root):
        cases = [CaseSource(case=p.name, layout="lgg", paths=(p,), output_ext="") for p in list_lgg_patients(root)]
        return _check_unique(root, cases)
    folder, json_dirs = root, (root, root.parent)
    if (root / "dataset.json").is_file():
        ts, tr = root / "imagesTs", root / "imagesTr"
        if ts.is_dir() and _image_files(ts):
            folder, json_dirs = ts, (root,)
        elif tr.is_dir():
            folder, json_dirs = tr, (root,)
        if folder is not root:
            logger.info("dataset %s: predicting the images of %s", root, folder.name)
    files = _image_files(folder)
    if files:
        cases = _files_cases(folder, files, json_dirs)
    else:
        subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        cases = [c for c in (_case_folder(d) for d in subdirs) if c is not None]
    if not cases:
        raise InputError(f"{root}: no input images found (expected image files, case folders or Kaggle-LGG TIFF slices)")
    return _check_unique(root, cases)


def _check_unique(root: Path, cases: list[CaseSource]) -> list[CaseSource]:
    seen: set[str] = set()
    for c in cases:
        if c.case in seen:
            raise InputError(f"{root}: case id '{c.case}' occurs twice")
        seen.add(c.case)
    return sorted(cases, key=lambda c: c.case)


# --------------------------------------------------------------------------------------------- loading


def _order(case: str, names: Sequence[str], channels: Sequence[str]) -> list[int]:
    """Index of each model channel in ``names``; InputError for a missing or extra channel."""
    missing = [c for c in channels if c not in names]
    extra = [n for n in names if n not in channels]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing channel(s) {', '.join(missing)}")
        if extra:
            parts.append(f"extra channel(s) {', '.join(extra)}")
        raise InputError(f"case {case}: {' and '.join(parts)}; found {', '.join(names) or 'none'}, "
                         f"the model needs {', '.join(channels)}")
    return [list(names).index(c) for c in channels]


def _positional_names(source: CaseSource, count: int, channels: Sequence[str],
                      channel_order: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(channel_order) if channel_order is not None else source.names
    if names is None:
        if count != len(channels):
            raise InputError(f"case {source.case}: {count} channel(s) but the model needs {len(channels)} "
                             f"({', '.join(channels)})")
        return tuple(channels)
    if len(names) != count:
        what = "--channel-order" if channel_order is not None else "dataset.json"
        raise InputError(f"case {source.case}: {count} channel(s) but {what} names {len(names)} ({', '.join(names)})")
    return names


def _read_one(source: CaseSource, path: Path) -> Image:
    img = read_image(path, allow_nonfinite=True)
    bad = int(np.size(img.array) - np.count_nonzero(np.isfinite(img.array)))
    if bad:
        raise InputError(f"case {source.case}: {path.name} has {bad} NaN or infinite voxel(s)")
    if img.spatial_dims != 3:
        raise InputError(f"case {source.case}: {path.name} is a {img.spatial_dims}-D image; prediction needs 3-D volumes")
    return img


def load_case(source: CaseSource, *, channels: Sequence[str],
              channel_order: Sequence[str] | None = None) -> LoadedCase:
    """Read a case and put its channels in the model's order.

    Args:
        source: a case from :func:`discover_cases`.
        channels: the model's canonical channel names, in input order.
        channel_order: names of the channels of position-only inputs (``_cccc`` files, 4-D files),
            overriding a ``dataset.json``; unused for inputs named by modality.

    Returns:
        The loaded case: image ``(C, X, Y, Z)`` float32 in ``channels`` order.

    Raises:
        InputError: the case's recorded problem; an unreadable file; a missing or extra channel;
            a 2-D image; NaN or infinite voxels (names the case).
        GeometryError: channel files on different grids.
    """
    if source.problem:
        raise InputError(source.problem)
    slice_numbers = None
    if source.layout == "lgg":
        patient = read_lgg_patient(source.paths[0])
        image = patient.image
        names: tuple[str, ...] = LGG_CHANNELS
        slice_numbers = list(patient.slice_numbers)
    elif source.layout == "4d":
        image = _read_one(source, source.paths[0])
        if not image.has_channels:
            image = image.with_array(image.array[None])
        names = _positional_names(source, image.num_channels, channels, channel_order)
    else:
        images = [_read_one(source, p) for p in source.paths]
        for path, img in zip(source.paths, images):
            if img.has_channels:
                raise InputError(f"case {source.case}: {path.name} has {img.num_channels} channels; "
                                 "expected one 3-D volume per file")
        for path, img in zip(source.paths[1:], images[1:]):
            img.check_same_grid(images[0], f"case {source.case}: {path.name} vs {source.paths[0].name}")
        image = Image.stack(images)
        if source.layout == "dataset":
            names = _positional_names(source, len(images), channels, channel_order)
        else:
            names = source.names or ()
    order = _order(source.case, names, channels)
    array = np.asarray(image.array)[order].astype(np.float32, copy=False)
    return LoadedCase(source=source, image=image.with_array(array), slice_numbers=slice_numbers)
