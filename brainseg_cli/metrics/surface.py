"""Surface distances: HD95 (``max`` and ``pooled``), HD, ASSD and NSD (docs/DEFINITIONS.md §3).

The surface of a mask is the mask XOR its binary erosion with the face-connected cross (scipy's
``generate_binary_structure(ndim, 1)``); the erosion treats everything outside the image as
background, so mask voxels on the image border are surface voxels. A directed distance set holds,
for each surface voxel of one mask, the Euclidean distance in mm (voxel centres scaled by the
spacing) to the nearest surface voxel of the other mask.

This is what MONAI (``get_mask_edges`` + ``get_surface_distance``) and medpy
(``__surface_distances``) compute. It is computed here on the bounding box of both masks plus a
one-voxel margin (clipped at the image border, where the outside counts as background anyway). A
voxel on both surfaces is at distance 0; a voxel whose nearest surface voxel is one of its
3^ndim neighbours at a distance <= 2 x the smallest spacing is resolved by lookups (that distance is
then provably the nearest); the rest query a k-d tree over the other surface's voxels (exact
Euclidean). Distances are float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from brainseg_cli import choices

HD95Mode = Literal["max", "pooled"]
HD95_MODES: tuple[str, ...] = choices.HD95_MODES


def bounding_box(mask: np.ndarray, *, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every nonzero voxel, grown by ``margin`` and clipped to the array.

    Args:
        mask: array of any dimension (e.g. ``(X, Y, Z)``); nonzero = inside.
        margin: voxels added on every side (before clipping at the array border).

    Returns:
        One slice per axis, or ``None`` when the mask is empty.
    """
    m = np.asarray(mask)
    if m.ndim == 0:
        raise ValueError("bounding_box needs an array with at least one axis")
    if m.ndim == 1:
        hits = np.flatnonzero(m)
        if hits.size == 0:
            return None
        return (slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, m.shape[0])),)
    # One pass over the array for the leading axes, then only the sub-box for the last axis.
    lead = bounding_box(m.any(axis=-1), margin=margin)
    if lead is None:
        return None
    last = bounding_box(m[lead].any(axis=tuple(range(m.ndim - 1))), margin=margin)
    return lead + last  # type: ignore[operator]


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion by the face-connected cross.

    Equals ``mask ^ scipy.ndimage.binary_erosion(mask)`` (border voxels count as surface).

    Args:
        mask: boolean array, 2-D ``(X, Y)`` or 3-D ``(X, Y, Z)``.

    Returns:
        Boolean array of the same shape.
    """
    m = np.asarray(mask, dtype=bool)
    interior = m.copy()
    for axis in range(m.ndim):
        head = [slice(None)] * m.ndim
        tail = [slice(None)] * m.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        interior[tuple(head)] &= m[tuple(tail)]
        interior[tuple(tail)] &= m[tuple(head)]
        edge = [slice(None)] * m.ndim
        edge[axis] = 0
        interior[tuple(edge)] = False
        edge[axis] = -1
        interior[tuple(edge)] = False
    return m & ~interior


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance from each row of ``points`` to its nearest row of ``targets`` (both ``(N, ndim)`` mm)."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return np.zeros(0, dtype=np.float64)
    tree = cKDTree(targets, leafsize=32, balanced_tree=False, compact_nodes=False)
    return tree.query(points, k=1)[0].astype(np.float64, copy=False)


@dataclass(frozen=True)
class SurfaceDistances:
    """The two directed surface-distance sets of a prediction/reference pair (mm, float64).

    Attributes:
        pred_to_ref: one distance per prediction surface voxel, to the nearest reference surface voxel.
        ref_to_pred: one distance per reference surface voxel, to the nearest prediction surface voxel.
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        """Both directed sets concatenated."""
        return np.concatenate([self.pred_to_ref, self.ref_to_pred])

    def hd95(self, mode: HD95Mode | str = "max") -> float:
        """95th-percentile Hausdorff distance (linear interpolation, ``numpy.percentile``'s default).

        Args:
            mode: ``"max"``: the larger of the two directed 95th percentiles (MONAI
                ``HausdorffDistanceMetric(percentile=95)``); ``"pooled"``: the 95th percentile of both
                sets pooled (medpy ``hd95``).

        Returns:
            HD95 in mm.

        Raises:
            ValueError: unknown mode.
        """
        if mode == "max":
            return float(max(np.percentile(self.pred_to_ref, 95), np.percentile(self.ref_to_pred, 95)))
        if mode == "pooled":
            return float(np.percentile(self.pooled, 95))
        raise ValueError(f"unknown HD95 mode {mode!r}; valid: {', '.join(HD95_MODES)}")

    def hd(self) -> float:
        """Hausdorff distance: the larger of the two directed maxima (mm)."""
        return float(max(self.pred_to_ref.max(), self.ref_to_pred.max()))

    def assd(self) -> float:
        """Average symmetric surface distance: the mean of both sets pooled (mm)."""
        n = self.pred_to_ref.size + self.ref_to_pred.size
        return float((self.pred_to_ref.sum() + self.ref_to_pred.sum()) / n)

    def nsd(self, tolerance: float) -> float:
        """Normalised surface distance: the fraction of pooled distances <= ``tolerance`` mm."""
        n = self.pred_to_ref.size + self.ref_to_pred.size
        close = np.count_nonzero(self.pred_to_ref <= tolerance) + np.count_nonzero(self.ref_to_pred <= tolerance)
        return float(close / n)


def surface_distances(pred_mask: np.ndarray, ref_mask: np.ndarray, *, spacing: Sequence[float]) -> SurfaceDistances | None:
    """Directed surface distances between two masks.

    The masks must be whole images, or crops whose sides are either image borders or lie at least
    one background voxel away from both masks (the array border is treated as the image border).

    Args:
        pred_mask: predicted mask ``(X, Y, Z)`` or ``(X, Y)``; nonzero = inside.
        ref_mask: reference mask, same shape.
        spacing: voxel size in mm per axis, same axis order.

    Returns:
        The :class:`SurfaceDistances`, or ``None`` when either mask is empty (the empty-case policy
        decides those values).

    Raises:
        ValueError: shapes differ, or ``spacing`` has the wrong length.
    """
    p = np.asarray(pred_mask).astype(bool, copy=False)
    g = np.asarray(ref_mask).astype(bool, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {g.shape}")
    scale = np.asarray(spacing, dtype=np.float64)
    if scale.shape != (p.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match a {p.ndim}-D mask")
    box = bounding_box(p | g, margin=1)
    if box is None:
        return None
    # Pad by one background voxel so every surface voxel has all its neighbours inside the array
    # (outside the image counts as background, so padding leaves the surfaces unchanged).
    p, g = np.ascontiguousarray(np.pad(p[box], 1)), np.ascontiguousarray(np.pad(g[box], 1))
    sp, sg = surface(p).ravel(), surface(g).ravel()
    idx_p, idx_g = np.flatnonzero(sp), np.flatnonzero(sg)
    if idx_p.size == 0 or idx_g.size == 0:
        return None
    return SurfaceDistances(
        pred_to_ref=_directed(idx_p, idx_g, sg, shape=p.shape, scale=scale),
        ref_to_pred=_directed(idx_g, idx_p, sp, shape=p.shape, scale=scale),
    )


def _neighbour_offsets(shape: Sequence[int], scale: np.ndarray) -> list[tuple[float, int]]:
    """(distance mm, flat offset) of the neighbours in the 3^ndim block whose distance is exact.

    A neighbour at distance ``d`` found first (in increasing ``d``) is the nearest surface voxel
    when ``d <= 2 * min(spacing)``: every voxel outside the block is at least that far away.
    """
    bound = 2.0 * float(scale.min())
    strides = np.cumprod((list(shape[1:]) + [1])[::-1])[::-1]
    out = []
    for offset in np.ndindex(*(3,) * len(shape)):
        step = np.asarray(offset) - 1
        if not step.any():
            continue
        d = float(np.sqrt(np.sum((step * scale) ** 2)))
        if d <= bound:
            out.append((d, int(np.dot(step, strides))))
    return sorted(out)


def _directed(idx_from: np.ndarray, idx_to: np.ndarray, to_surface: np.ndarray, *, shape: Sequence[int],
              scale: np.ndarray) -> np.ndarray:
    """Distances (mm) from the surface voxels ``idx_from`` to the nearest of ``idx_to``.

    Flat indices into a C-ordered array of ``shape`` whose border is background. Voxels on both
    surfaces are at 0; voxels whose nearest target is a close neighbour are resolved by lookups;
    the rest by a k-d tree over the target voxels.
    """
    pending = idx_from[~to_surface[idx_from]]
    found = [np.zeros(idx_from.size - pending.size, dtype=np.float64)]
    for distance, offset in _neighbour_offsets(shape, scale):
        if pending.size == 0:
            break
        hit = to_surface[pending + offset]
        n_hit = int(np.count_nonzero(hit))
        if n_hit:
            found.append(np.full(n_hit, distance, dtype=np.float64))
            pending = pending[~hit]
    if pending.size:

        def coords(flat: np.ndarray) -> np.ndarray:
            return np.stack(np.unravel_index(flat, shape), axis=1) * scale

        found.append(_nearest(coords(pending), coords(idx_to)))
    return np.concatenate(found)
