"""Kaggle-LGG (``kaggle_3m``) TIFF slice stacks: one folder per patient, one TIFF per axial slice.

Layout::

    <root>/<patient>/<patient>_<n>.tif        256 x 256 x 3 uint8 RGB: T1 pre-contrast, FLAIR, T1c
    <root>/<patient>/<patient>_<n>_mask.tif   256 x 256 uint8, 0 / 255 (FLAIR abnormality)

Slice numbers ``n`` start at 1 and are not zero-padded, so slices are ordered numerically
(1, 2, ..., 10, not 1, 10, 2). Other files (``data.csv``, ``README.md``) are ignored.

A patient becomes a volume: ``image.array[c, x, y, k]`` is channel ``c`` of TIFF slice
``slice_numbers[k]`` at TIFF row ``x`` and column ``y``. TIFF stores no spacing; pass it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg_cli.errors import InputError
from brainseg_cli.io.image import Image, read_tiff, write_tiff

logger = logging.getLogger(__name__)

#: Channel names of a kaggle_3m RGB slice, in sample order (canonical names, docs/DEFINITIONS.md §1-2).
LGG_CHANNELS: tuple[str, ...] = ("T1", "FLAIR", "T1c")


@dataclass(frozen=True, eq=False)
class LggPatient:
    """One Kaggle-LGG patient read as a volume.

    Attributes:
        patient: the patient folder name (e.g. ``TCGA_CS_4941_19960909``).
        image: ``(3, X, Y, Z)`` uint8 image, channels :data:`LGG_CHANNELS` (T1, FLAIR, T1c).
        mask: ``(X, Y, Z)`` uint8 image with values 0/1, or None when the patient has no masks.
        slice_numbers: the TIFF slice number of each Z index, ascending.
    """

    patient: str
    image: Image
    mask: Image | None
    slice_numbers: list[int]


def slice_files(folder: Path, patient: str | None = None) -> tuple[dict[int, Path], dict[int, Path]]:
    """Map slice number -> image file and slice number -> mask file of a patient in ``folder``.

    The one parser of Kaggle-LGG slice names (``<patient>_<n>.tif``, ``<patient>_<n>_mask.tif``);
    ``patient`` defaults to the folder's name.

    Raises:
        InputError: two files give the same slice (e.g. ``P_1_mask.tif`` and ``P_01_mask.tiff``).
    """
    patient = folder.name if patient is None else patient
    image_re = re.compile(rf"^{re.escape(patient)}_(\d+)\.tiff?$", re.IGNORECASE)
    mask_re = re.compile(rf"^{re.escape(patient)}_(\d+)_mask\.tiff?$", re.IGNORECASE)
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        for regex, table in ((image_re, images), (mask_re, masks)):
            match = regex.match(entry.name)
            if match and entry.is_file():
                n = int(match.group(1))
                if n in table:
                    raise InputError(f"{entry}: slice {n} also given by {table[n].name}")
                table[n] = entry
                break
        else:
            logger.debug("ignoring %s (not a slice of patient %s)", entry, patient)
    return images, masks


def _is_patient_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(slice_files(folder)[0])


def list_lgg_patients(root: str | os.PathLike[str]) -> list[Path]:
    """Return the patient folders under ``root`` (sorted by name), or ``[root]`` if it is one.

    A patient folder holds at least one ``<folder name>_<n>.tif``. Other entries are ignored.

    Raises:
        InputError: ``root`` is missing or holds no patient folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    if _is_patient_folder(root):
        return [root]
    patients = [p for p in sorted(root.iterdir()) if _is_patient_folder(p)]
    if not patients:
        raise InputError(f"{root}: no Kaggle-LGG patient folders "
                         "(expected <patient>/<patient>_<n>.tif)")
    return patients


def read_lgg_patient(folder: str | os.PathLike[str], *,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> LggPatient:
    """Read one Kaggle-LGG patient folder into a volume.

    Args:
        folder: the patient folder (its name is the patient id and the file-name prefix).
        spacing: voxel size (mm) along X (TIFF rows), Y (TIFF columns) and Z (slices).

    Returns:
        The patient: image ``(3, X, Y, Z)`` uint8 (T1, FLAIR, T1c), mask ``(X, Y, Z)`` uint8 0/1
        or None when no slice has a mask, and the slice numbers in Z order.

    Raises:
        InputError: no slices; a slice is not RGB or has another size; a mask holds values other
            than 0/255, has another size, or only some slices have masks (names the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: patient folder not found")
    images, masks = slice_files(folder)
    if not images:
        raise InputError(f"{folder}: no slices named {folder.name}_<n>.tif")
    numbers = sorted(images)
    orphan = sorted(set(masks) - set(images))
    if orphan:
        raise InputError(f"{masks[orphan[0]]}: mask without the image slice "
                         f"{folder.name}_{orphan[0]}.tif")
    if masks and len(masks) != len(images):
        missing = [n for n in numbers if n not in masks]
        raise InputError(f"{folder}: {len(missing)} of {len(numbers)} slices have no mask, "
                         f"e.g. {folder.name}_{missing[0]}_mask.tif")
    slices = []
    for n in numbers:
        data = read_tiff(images[n])
        if data.ndim != 3 or data.shape[-1] != 3:
            raise InputError(f"{images[n]}: expected an RGB slice (rows, cols, 3), "
                             f"got shape {data.shape}")
        if slices and data.shape != slices[0].shape:
            raise InputError(f"{images[n]}: slice shape {data.shape} differs from "
                             f"{slices[0].shape} of {images[numbers[0]].name}")
        slices.append(data)
    volume = np.stack(slices, axis=-1)  # (X, Y, 3, Z)
    image = Image(np.moveaxis(volume, 2, 0), tuple(spacing))
    mask_image = None
    if masks:
        planes = []
        for n in numbers:
            data = read_tiff(masks[n])
            if data.shape != slices[0].shape[:2]:
                raise InputError(f"{masks[n]}: mask shape {data.shape} differs from the slice "
                                 f"shape {slices[0].shape[:2]}")
            values = np.unique(data)
            bad = values[(values != 0) & (values != 255)]
            if bad.size:
                raise InputError(f"{masks[n]}: mask values must be 0/255, found "
                                 f"{', '.join(str(v) for v in bad[:5])}")
            planes.append(data == 255)
        mask_image = image.with_array(np.stack(planes, axis=-1).astype(np.uint8))
    return LggPatient(patient=folder.name, image=image, mask=mask_image, slice_numbers=numbers)


def write_lgg_masks(folder: str | os.PathLike[str], *, patient: str,
                    mask: np.ndarray | Image, slice_numbers: Sequence[int]) -> None:
    """Write ``<patient>_<n>_mask.tif`` (uint8 0/255) for every slice, each file atomically.

    Args:
        folder: output folder (created if missing).
        patient: the patient id used as the file-name prefix.
        mask: ``(X, Y, Z)`` 0/1 (or bool) array or image; ``mask[..., k]`` is slice
            ``slice_numbers[k]``.
        slice_numbers: TIFF slice number of each Z index.

    Raises:
        InputError: the mask is not 3-D, holds values other than 0/1, or its Z size differs from
            the number of slice numbers.
    """
    array = np.asarray(mask.array if isinstance(mask, Image) else mask)
    if array.ndim != 3:
        raise InputError(f"patient {patient}: mask must be (X, Y, Z), got shape {array.shape}")
    if array.shape[2] != len(slice_numbers):
        raise InputError(f"patient {patient}: mask has {array.shape[2]} slices but "
                         f"{len(slice_numbers)} slice numbers were given")
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        raise InputError(f"patient {patient}: mask values must be 0/1, found "
                         f"{', '.join(str(v) for v in values[:6])}")
    folder = Path(folder)
    for k, n in enumerate(slice_numbers):
        plane = np.where(array[:, :, k] > 0, 255, 0).astype(np.uint8)
        write_tiff(folder / f"{patient}_{int(n)}_mask.tif", plane)
