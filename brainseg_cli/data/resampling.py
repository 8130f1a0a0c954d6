"""Resampling arrays between voxel grids that cover the same field of view.

Every function maps voxel *centres* the pixel-centred way (``align_corners=False`` in PyTorch
terms, ``grid_mode=True`` in SciPy): output index ``i`` along an axis of ``n_in -> n_out`` samples
reads input coordinate ``(i + 0.5) * n_in / n_out - 0.5``. The grid therefore keeps its extent:
the new spacing is ``spacing * n_in / n_out`` and the new origin moves by half the change of one
voxel. Images, labels and probabilities use the same mapping, so the inverse of a resampling
lands on the original voxel centres.

Anisotropic data follow nnU-Net (``resample_data_or_seg``): when the spacing (current, else
target) has one axis more than ``anisotropy_threshold`` (3) times coarser than the finest axis,
that low-resolution axis is resampled separately: in-plane with the requested spline order, and
along the low-resolution axis with nearest neighbour (order 0), so slices are never blended.

- :func:`resample_images`: cubic (order 3) B-spline per channel (``scipy.ndimage.zoom``).
- :func:`resample_labels`: nearest neighbour (a separable index gather: exact and fast; nnU-Net's
  one-hot linear resampling is smoother on upsampling but costs K interpolations per case).
- :func:`resample_linear`: separable linear interpolation in float32 for probability maps
  ``(K, ...)`` (predict's hot path: a few vectorised gathers per axis, no coordinate arrays).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: nnU-Net's threshold: an axis is "low resolution" when its spacing exceeds this times the finest.
ANISOTROPY_THRESHOLD = 3.0


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxel counts that cover the same extent at ``new_spacing``: ``round(shape * spacing / new_spacing)``, at least 1."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def lowres_axis(spacing: Sequence[float], *, threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The single axis whose spacing is more than ``threshold`` times the finest, else ``None``."""
    sp = np.asarray(spacing, dtype=float)
    if sp.max() / sp.min() <= threshold:
        return None
    worst = np.flatnonzero(np.isclose(sp, sp.max()))
    return int(worst[0]) if len(worst) == 1 else None


def separate_axis(
    spacing: Sequence[float], new_spacing: Sequence[float], *, threshold: float = ANISOTROPY_THRESHOLD
) -> int | None:
    """The axis to resample separately (nnU-Net's rule): low-res axis of ``spacing``, else of ``new_spacing``."""
    axis = lowres_axis(spacing, threshold=threshold)
    if axis is None:
        axis = lowres_axis(new_spacing, threshold=threshold)
    return axis


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Input index of the nearest centre for each of ``n_out`` pixel-centred output samples."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.clip(idx, 0, n_in - 1)


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of linear, pixel-centred, edge-clamped interpolation."""
    coord = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    coord = np.clip(coord, 0.0, n_in - 1)
    lo = np.floor(coord).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (coord - lo).astype(np.float32)


def _nearest_along(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    return np.take(array, _nearest_index(n_in, n_out), axis=axis)


def _linear_along(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    lo, hi, w = _linear_weights(n_in, n_out)
    shape = [1] * array.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    a = np.take(array, lo, axis=axis)
    b = np.take(array, hi, axis=axis)
    # a + (b - a) * w, in place on the gathered copies.
    b -= a
    b *= w
    a += b
    return a


def resample_labels(labels: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label array ``(X, Y[, Z])`` to ``new_shape`` (same dtype)."""
    out = np.asarray(labels)
    for axis, n_out in enumerate(new_shape):
        out = _nearest_along(out, axis, int(n_out))
    return out


def resample_linear(
    data: np.ndarray, new_shape: Sequence[int], *, separate: int | None = None
) -> np.ndarray:
    """Separable linear resampling of ``data`` ``(K, X, Y[, Z])`` to ``(K, *new_shape)``, float32.

    Args:
        data: channels-first array (probabilities, or any float data).
        new_shape: target spatial shape.
        separate: spatial axis resampled with nearest neighbour instead (the low-resolution axis
            of anisotropic data, see :func:`separate_axis`), or ``None``.

    Returns:
        ``(K, *new_shape)`` float32 (``data`` itself, as float32, when the shape is unchanged).
    """
    out = np.asarray(data, dtype=np.float32)
    for axis, n_out in enumerate(new_shape):
        if axis == separate:
            out = _nearest_along(out, axis + 1, int(n_out))
        else:
            out = _linear_along(out, axis + 1, int(n_out))
    return out


def _zoom(channel: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    from scipy import ndimage

    factors = [n_out / n_in for n_out, n_in in zip(new_shape, channel.shape)]
    out = np.empty(tuple(int(n) for n in new_shape), dtype=np.float32)
    ndimage.zoom(channel.astype(np.float32, copy=False), factors, output=out, order=order,
                 mode="nearest", grid_mode=True, prefilter=order > 1)
    return out


def resample_images(
    data: np.ndarray, new_shape: Sequence[int], *, order: int = 3, separate: int | None = None
) -> np.ndarray:
    """Spline resampling of images ``(C, X, Y[, Z])`` to ``(C, *new_shape)``, float32.

    Args:
        data: channels-first image data.
        new_shape: target spatial shape.
        order: spline order in the (in-plane) resampling: 3 cubic (default), 1 linear, 0 nearest.
        separate: spatial axis resampled separately: in-plane with ``order`` slice by slice, then
            along ``separate`` with nearest neighbour (nnU-Net ``order_z=0``); ``None`` for a joint
            resampling of all axes.

    Returns:
        ``(C, *new_shape)`` float32; ``data`` as float32 when the shape is unchanged.
    """
    data = np.asarray(data)
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c, channel in enumerate(data):
        if separate is None:
            out[c] = _zoom(channel, new_shape, order)
            continue
        plane_shape = [n for a, n in enumerate(new_shape) if a != separate]
        moved = np.moveaxis(channel, separate, 0)
        if tuple(moved.shape[1:]) == tuple(plane_shape):
            planes = moved.astype(np.float32, copy=False)
        else:
            planes = np.stack([_zoom(s, plane_shape, order) for s in moved])
        planes = _nearest_along(planes, 0, new_shape[separate])
        out[c] = np.moveaxis(planes, 0, separate)
    return out
