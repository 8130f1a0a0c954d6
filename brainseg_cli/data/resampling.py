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

- :func:`resample_images`: cubic (order 3) B-spline, exactly ``scipy.ndimage.zoom`` (mode
  ``nearest``, ``grid_mode=True``, prefiltered) computed as one small matrix per axis: spline
  resampling is separable and linear, so along an axis of ``n_in -> n_out`` samples it is an
  ``(n_out, n_in)`` matrix, built once by zooming the identity and applied with torch's batched
  matrix product to every channel at once (equal to float32 rounding; about 1.25x faster than zooming
  4 BraTS channels one by one, 1 mm -> 2 mm, and multi-threaded).
- :func:`resample_labels`: nearest neighbour (a separable index gather: exact and fast; nnU-Net's
  one-hot linear resampling is smoother on upsampling but costs K interpolations per case).
- :func:`resample_linear`: linear interpolation in float32 for probability maps ``(K, ...)``
  (predict's hot path), by torch's ``interpolate`` (``align_corners=False``: the same mapping).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from brainseg_cli.errors import ConfigError

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


def _nearest_along(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    n_in = array.shape[axis]
    if n_in == n_out:
        return array
    return np.take(array, _nearest_index(n_in, n_out), axis=axis)


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

    Pixel-centred and edge-clamped (the module's mapping), computed by torch's multi-threaded
    ``interpolate`` (``align_corners=False`` is exactly this mapping).

    Args:
        data: channels-first array (probabilities, or any float data).
        new_shape: target spatial shape.
        separate: spatial axis resampled with nearest neighbour instead (the low-resolution axis
            of anisotropic data, see :func:`separate_axis`), or ``None``.

    Returns:
        ``(K, *new_shape)`` float32 (``data`` itself, as float32, when the shape is unchanged).
    """
    import torch
    from torch.nn import functional as F

    out = np.asarray(data, dtype=np.float32)
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(out.shape[1:]) == new_shape:
        return out
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    tensor = torch.from_numpy(np.ascontiguousarray(out))
    if separate is None:
        result = F.interpolate(tensor[None], size=new_shape, mode=modes[len(new_shape)], align_corners=False)[0]
        return result.numpy()
    plane = tuple(n for a, n in enumerate(new_shape) if a != separate)
    slices = tensor.movedim(separate + 1, 0)  # (S, K, *plane_in): the separate axis as the batch
    if tuple(slices.shape[2:]) != plane:
        slices = F.interpolate(slices.contiguous(), size=plane, mode=modes[len(plane)], align_corners=False)
    result = _nearest_along(slices.numpy(), 0, new_shape[separate])
    return np.ascontiguousarray(np.moveaxis(result, 0, separate + 1))


@lru_cache(maxsize=128)
def _spline_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float32 matrix of 1-D spline resampling (``scipy.ndimage.zoom`` of the identity).

    Column ``j`` is the zoom of the unit impulse at ``j``: the prefilter, the spline weights and the
    ``nearest`` boundary extension are all in it.
    """
    from scipy import ndimage

    eye = np.eye(n_in, dtype=np.float64)
    matrix = np.empty((n_out, n_in), dtype=np.float64)
    ndimage.zoom(eye, (n_out / n_in, 1.0), output=matrix, order=order, mode="nearest", grid_mode=True,
                 prefilter=order > 1)
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _spline_along(array: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Apply the 1-D spline resampling matrix along ``axis`` of a float32 array.

    The array is viewed as ``(before, n_in, after)``, so each axis costs one batched matrix product
    (``M @ x[b]`` for every leading index ``b``; ``x @ M.T`` for the last axis), done by torch
    (numpy's batched ``matmul`` with a broadcast matrix runs several times slower).
    """
    import torch

    shape = array.shape
    n_in = shape[axis]
    if n_in == n_out:
        return array
    matrix = torch.from_numpy(_spline_matrix(n_in, int(n_out), order).copy())
    before = int(np.prod(shape[:axis], dtype=np.int64))
    after = int(np.prod(shape[axis + 1:], dtype=np.int64))
    x = torch.from_numpy(np.ascontiguousarray(array))
    if after == 1:
        out = x.reshape(before, n_in) @ matrix.T
    else:
        out = torch.matmul(matrix, x.reshape(before, n_in, after))
    return out.numpy().reshape(*shape[:axis], int(n_out), *shape[axis + 1:])


def _spline_axes(array: np.ndarray, new_shape: Sequence[int], axes: Sequence[int], order: int) -> np.ndarray:
    """Spline-resample the listed spatial axes of a ``(C, ...)`` float32 array; most-shrinking axis first."""
    out = array
    for axis in sorted(axes, key=lambda a: new_shape[a] / max(out.shape[a + 1], 1)):
        out = _spline_along(out, axis + 1, int(new_shape[axis]), order)
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
    if order not in (0, 1, 2, 3, 4, 5):
        raise ConfigError(f"spline order must be 0-5, got {order}")
    out = np.asarray(data, dtype=np.float32)
    axes = [a for a in range(len(new_shape)) if a != separate]
    out = _spline_axes(out, new_shape, axes, order)
    if separate is not None:
        out = _nearest_along(out, separate + 1, new_shape[separate])
    return np.ascontiguousarray(out)
