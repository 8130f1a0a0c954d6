"""What every converter returns: the cases of a source dataset, ready to load one at a time.

A converter's ``discover(input, options)`` only lists files (cheap, no voxels read) and returns a
:class:`SourceDataset`. Each :class:`SourceCase` carries a picklable ``load`` callable (a
``functools.partial`` of a module-level function) that worker processes call to read the case.
Problems found while listing (a missing channel, two files for one channel) are recorded on the
case (``problem``) so that ``convert --skip-invalid`` can skip it and the default can stop before
anything is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainseg_cli.data.labelmaps import LabelMap
from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.io import read_image
from brainseg_cli.io.names import CONVERTER_ENDINGS

#: Image file endings the converters recognise (lower case).
IMAGE_ENDINGS: tuple[str, ...] = CONVERTER_ENDINGS

# Suffixes that browsers and archive tools add to downloaded file names: "x_flair (1).nii.gz",
# "x_t1ce.nii(1).gz", "x_t2 - Copy.nii.gz", "x_seg copy.nii.gz".
_DOWNLOAD_SUFFIX = re.compile(r"\s*\(\d+\)|\s*-\s*copy\b|\s+copy\b", re.IGNORECASE)


@dataclass(frozen=True)
class LoadedCase:
    """One case read from the source.

    Attributes:
        channels: canonical channel name -> single-channel 3-D :class:`~brainseg_cli.io.Image`
            (array ``(X, Y, Z)``), voxels and dtype as in the source.
        label: the source label image ``(X, Y, Z)`` with *source* label values, or ``None``.
    """

    channels: dict[str, Any]
    label: Any | None


@dataclass(frozen=True)
class SourceCase:
    """A case found in the source, not yet read.

    Attributes:
        case_id: the output case id (file-name prefix in the dataset).
        load: picklable zero-argument callable returning a :class:`LoadedCase`.
        has_label: the case has a segmentation (goes to ``labelsTr``; else ``imagesTs``).
        files: the source files of the case (for messages and logs).
        problem: why the case cannot be converted, found while listing files (``None`` if fine).
    """

    case_id: str
    load: Callable[[], LoadedCase]
    has_label: bool
    files: tuple[Path, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class SourceDataset:
    """A source dataset as listed by a converter.

    Attributes:
        source: converter name (``"brats"``, ...).
        format: one line describing the detected format (e.g. ``"BraTS 2017-2021 (NIfTI)"``).
        channels: canonical channel names in canonical order (the output's ``_0000``, ...).
        label_map: source -> canonical label mapping for every case.
        cases: the cases, sorted by id.
        spacing: the spacing decision for sources whose files carry no spacing (``None`` when the
            files' own spacing is used).
        extra: more facts for ``dataset.json["brainseg"]`` (e.g. the source's channel names).
    """

    source: str
    format: str
    channels: tuple[str, ...]
    label_map: LabelMap
    cases: tuple[SourceCase, ...]
    spacing: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceOptions:
    """Source-specific options of ``convert`` (each converter declares which it uses).

    Attributes:
        spacing: voxel size (mm, X Y Z) for sources without spacing (``lgg``); ``None`` = default.
        channel_patterns: ``(canonical channel, glob)`` pairs (``nifti``).
        label_pattern: glob of the label files (``nifti``).
        label_map: preset name or ``"src:dst,..."`` pairs (``nifti``).
    """

    spacing: tuple[float, float, float] | None = None
    channel_patterns: tuple[tuple[str, str], ...] = ()
    label_pattern: str | None = None
    label_map: str | None = None

    def given(self) -> list[str]:
        """Names of the options that were set."""
        return [name for name, value in (("spacing", self.spacing), ("channel_patterns", self.channel_patterns),
                                         ("label_pattern", self.label_pattern), ("label_map", self.label_map))
                if value]


#: Option name -> command-line flag, for messages.
OPTION_FLAGS = {"spacing": "--spacing", "channel_patterns": "--channel", "label_pattern": "--label",
                "label_map": "--label-map"}


@dataclass(frozen=True)
class Converter:
    """A registered source converter.

    Attributes:
        name: the SOURCE name on the command line.
        description: one line for ``--help``.
        discover: ``discover(input: Path, options: SourceOptions) -> SourceDataset``.
        options: names of the :class:`SourceOptions` fields this converter uses.
    """

    name: str
    description: str
    discover: Callable[[Path, SourceOptions], SourceDataset]
    options: frozenset[str] = frozenset()

    def check_options(self, options: SourceOptions) -> None:
        """Raise ConfigError for options this converter does not use (they would do nothing)."""
        unused = [OPTION_FLAGS[o] for o in options.given() if o not in self.options]
        if unused:
            raise ConfigError(f"{', '.join(unused)} cannot be used with source '{self.name}'")


def clean_file_name(name: str) -> str:
    """Drop download suffixes (``" (1)"``, ``"(2)"``, ``" - Copy"``) from a file name.

    ``"x_flair (1).nii.gz"`` -> ``"x_flair.nii.gz"``; ``"x_t1ce.nii(1).gz"`` -> ``"x_t1ce.nii.gz"``.
    """
    return _DOWNLOAD_SUFFIX.sub("", name)


def split_image_name(name: str) -> tuple[str, str] | None:
    """Split a (cleaned) file name into ``(stem, ending)`` for image endings (the ending in lower case);
    ``None`` otherwise."""
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def is_hidden(name: str) -> bool:
    """True for hidden entries: AppleDouble ``._*``, ``.DS_Store``, temporary ``.tmp-*``."""
    return name.startswith(".")


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root`` (hidden folders are not entered), in sorted order.

    Symbolic links to folders are followed (a selection of cases is often a folder of links), each
    real folder at most once, so a link cycle cannot loop.
    """
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in sorted(files):
            if not is_hidden(name):
                yield Path(folder) / name


def check_case_id(case_id: str, where: Path) -> str | None:
    """Return a problem message when ``case_id`` cannot name output files, else ``None``."""
    if not case_id or case_id.startswith(".") or "/" in case_id or "\\" in case_id:
        return f"{where}: case id '{case_id}' cannot be used as a file name prefix"
    return None


def load_channel_files(channel_files: tuple[tuple[str, Path], ...], label_file: Path | None) -> LoadedCase:
    """Read one 3-D file per channel and an optional label file (the ``load`` of most converters).

    Args:
        channel_files: ``(canonical channel, path)`` pairs.
        label_file: the source label file, or ``None``.

    Returns:
        The :class:`LoadedCase` (voxels as stored in the files).

    Raises:
        InputError: a file is unreadable, or is not a single-channel 3-D image (names the file).
    """
    channels = {}
    for name, path in channel_files:
        channels[name] = _read_3d(path, read_image)
    label = _read_3d(label_file, read_image) if label_file is not None else None
    return LoadedCase(channels, label)


def _read_3d(path: Path, read_image: Callable[..., Any]) -> Any:
    image = read_image(path)
    if image.has_channels or image.spatial_dims != 3:
        raise InputError(f"{path}: expected one 3-D volume, got an array of shape {image.array.shape}")
    return image
