"""The brain mask: which voxels hold the (skull-stripped) brain, found from the border.

Skull-stripped MRI has a constant background, but not always zero: data that were z-scored
before distribution (e.g. the DeepMedic BraTS 2015 cases) have a negative constant background,
and 8-bit slice data can have a background of any grey value. The rule used everywhere in
brainseg (fingerprint, preprocessing, cropping):

1. Per channel, the *background value* is the constant that fills the volume's border: the most
   common value of each face of the array is a candidate; a candidate's coverage is the mean over
   the ``2 * D`` faces of the fraction of that face's voxels equal to it (each face weighs the
   same, so a thin slab of slices does not let its two large faces decide alone). The best
   candidate is the background when its coverage is at least ``min_border_fraction`` (0.5);
   otherwise the channel has no background (e.g. an un-stripped head or a noisy background).
2. A voxel is brain when any channel that has a background differs from it.
3. Holes are filled in 3-D, and slice by slice along ``slice_axis`` when given (dark CSF inside the
   brain can equal the background value of 8-bit data).
4. When no channel has a background, or the mask would be empty, every voxel is brain.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: A background candidate must cover at least this mean fraction of the border faces.
MIN_BORDER_FRACTION = 0.5


def _faces(array: np.ndarray) -> list[np.ndarray]:
    """The ``2 * D`` border faces of a D-dimensional array (first and last index along each axis)."""
    faces = []
    for axis in range(array.ndim):
        for index in (0, array.shape[axis] - 1):
            faces.append(array[(slice(None),) * axis + (index,)])
    return faces


def _mode(values: np.ndarray) -> float:
    """Most common value of an array (the smallest one on ties)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[int(np.argmax(counts))])


def background_value(channel: np.ndarray, *, min_border_fraction: float = MIN_BORDER_FRACTION) -> float | None:
    """The constant value that fills the border of one channel, or ``None`` when there is none.

    Args:
        channel: one channel, ``(X, Y, Z)`` or ``(X, Y)``.
        min_border_fraction: the mean fraction of each border face the value must cover.

    Returns:
        The background value (a float equal to the stored voxel value), or ``None``.
    """
    arr = np.asarray(channel)
    if arr.size == 0:
        return None
    faces = _faces(arr)
    candidates = sorted({_mode(face) for face in faces if face.size})
    best, best_cov = None, -1.0
    for cand in candidates:
        cov = float(np.mean([np.count_nonzero(face == arr.dtype.type(cand)) / face.size for face in faces if face.size]))
        if cov > best_cov:
            best, best_cov = cand, cov
    if best is None or best_cov < min_border_fraction:
        return None
    return best


def background_values(data: np.ndarray, *, min_border_fraction: float = MIN_BORDER_FRACTION) -> list[float | None]:
    """Per-channel background values of ``data`` ``(C, X, Y[, Z])`` (see :func:`background_value`)."""
    return [background_value(c, min_border_fraction=min_border_fraction) for c in np.asarray(data)]


def _slice_structure(ndim: int, slice_axis: int) -> np.ndarray:
    """Connectivity that links voxels only within slices perpendicular to ``slice_axis``."""
    from scipy import ndimage

    struct = ndimage.generate_binary_structure(ndim, 1)
    index = [slice(None)] * ndim
    for off in (0, 2):
        index[slice_axis] = off
        struct[tuple(index)] = False
    return struct


def brain_mask(
    data: np.ndarray,
    *,
    backgrounds: Sequence[float | None] | None = None,
    slice_axis: int | None = None,
    fill_holes: bool = True,
    min_border_fraction: float = MIN_BORDER_FRACTION,
) -> np.ndarray:
    """The brain mask of a multi-channel image (rule in the module docstring).

    Args:
        data: ``(C, X, Y, Z)`` (or ``(C, X, Y)``) voxels of one case, any numeric dtype.
        backgrounds: per-channel background values if already known (``None`` entries: no
            background); computed with :func:`background_values` when omitted.
        slice_axis: also fill holes slice by slice along this spatial axis (0-based, of X, Y, Z).
        fill_holes: fill holes (3-D, plus per slice when ``slice_axis`` is given).
        min_border_fraction: see :func:`background_value`.

    Returns:
        Boolean array ``(X, Y, Z)`` (or ``(X, Y)``): True inside the brain.
    """
    from scipy import ndimage

    data = np.asarray(data)
    spatial = data.shape[1:]
    if backgrounds is None:
        backgrounds = background_values(data, min_border_fraction=min_border_fraction)
    # The mask takes the channels' memory layout (Fortran order for arrays read by SimpleITK), so
    # the comparisons below stream through memory instead of striding across it (4x faster).
    mask = np.zeros_like(data[0], dtype=bool) if len(data) else np.zeros(spatial, dtype=bool)
    used = 0
    for channel, bg in zip(data, backgrounds):
        if bg is None:
            continue
        used += 1
        mask |= channel != channel.dtype.type(bg)
    if used == 0 or not mask.any():
        return np.ones(spatial, dtype=bool)
    if fill_holes:
        # Holes lie inside the bounding box: fill there only (much faster on padded volumes).
        box = tuple(slice(max(a - 1, 0), min(b + 1, n)) for (a, b), n in zip(bounding_box(mask), spatial))
        sub = ndimage.binary_fill_holes(mask[box])
        if slice_axis is not None and len(spatial) == 3:
            sub = ndimage.binary_fill_holes(sub, structure=_slice_structure(3, slice_axis))
        mask[box] = sub
    return mask


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Smallest box holding every True voxel of ``mask``, as ``((start, stop), ...)`` per axis.

    An empty mask gives the whole array.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return tuple((0, int(n)) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)
