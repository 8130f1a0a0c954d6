"""Image file names: the supported endings and how a file name splits into a case name and its ending.

One place for what was written in several (``io.image``, ``inference.inputs``, ``metrics.sources``,
the converters, ``viz.overlays``). Endings are compared in lower case; the stem keeps its case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: 3-D volume formats, longest ending first where one ends another (``.nii.gz`` before ``.nii``).
VOLUME_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl.gz", ".gipl")
#: Every file ending :func:`brainseg_cli.io.read_image` / :func:`~brainseg_cli.io.write_image` handle.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (*VOLUME_ENDINGS, ".tif", ".tiff")
#: Endings the converters take as images of a case folder.
CONVERTER_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def split_ending(name: str | os.PathLike[str], endings: Sequence[str] = SUPPORTED_EXTENSIONS) -> tuple[str, str] | None:
    """``(stem, ending)`` of a file name whose ending is one of ``endings`` (the ending as written);
    ``None`` for another ending, a bare ending (``".nii.gz"``) or a hidden file (``.name``).

    ``"BRATS_001.nii.gz"`` -> ``("BRATS_001", ".nii.gz")``; ``"x.MHA"`` -> ``("x", ".MHA")``.
    """
    text = Path(name).name
    if text.startswith("."):
        return None
    lower = text.lower()
    for ending in endings:
        if lower.endswith(ending) and len(text) > len(ending):
            return text[: -len(ending)], text[len(text) - len(ending):]
    return None


def case_name(name: str | os.PathLike[str], endings: Sequence[str] = VOLUME_ENDINGS) -> str | None:
    """The case name of a volume file name (its stem), or None when it is not a volume file."""
    split = split_ending(name, endings)
    return None if split is None else split[0]
