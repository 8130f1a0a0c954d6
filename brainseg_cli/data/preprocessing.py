"""Preprocessing of one case as a plan prescribes, and its exact inverse for predictions.

``preprocess_case`` runs, in this order (every step recorded in :class:`PreprocessInfo`):

1. **Reorient** (exact, no interpolation): permute and flip the index axes so that they point
   along ``plan.orientation`` (ITK/LPS axis codes, e.g. ``"LPS"``: axis 0 towards Left, 1
   towards Posterior, 2 towards Superior). Every case, whatever its stored orientation, reaches the
   network the same way; a 2-D plan's ``slice_axis`` and in-plane orientation therefore mean the
   same anatomy for any input volume. Oblique directions use the closest axis.
2. **Brain mask** (:func:`brainseg_cli.data.brainmask.brain_mask`: the constant border value per
   channel, or a given mask) and, if ``plan.crop_to_brain``, **crop** to its bounding box.
3. **Normalise** each channel inside the brain mask (``plan.normalization``): ``zscore``
   subtracts the mean and divides by the standard deviation of the brain voxels; ``clip_zscore``
   first clips to the ``[lower_pct, upper_pct]`` percentiles of the brain voxels. Voxels outside
   the mask are set to 0.
4. **Resample** to ``plan.target_spacing`` (:mod:`brainseg_cli.data.resampling`): images with
   ``plan.resampling.image_order`` (3 = cubic), labels nearest neighbour; anisotropic data
   (max/min spacing > 3) resample the low-resolution axis separately with nearest neighbour. A
   2-D plan resamples only in-plane: the slice axis keeps each case's own spacing and count.

``restore_to_original`` inverts steps 4-1 on a probability map: linear resampling back to the
cropped shape exactly (nearest along the separately handled axis), uncropping (outside the crop:
background probability 1 for class 0, or 0 for every channel), un-flipping and un-permuting.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brainseg_cli.data.brainmask import background_values, bounding_box, brain_mask
from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.data.resampling import (
    compute_new_shape,
    resample_images,
    resample_labels,
    resample_linear,
    separate_axis,
)
from brainseg_cli.errors import ConfigError, GeometryError, InputError

logger = logging.getLogger(__name__)

#: Axis code letters of ITK/LPS world axes: (code of +axis, code of -axis).
_CODES = (("L", "R"), ("P", "A"), ("S", "I"))
NORMALIZATION_SCHEMES = ("zscore", "clip_zscore")


# ---------------------------------------------------------------------------------------------
# orientation


def axis_codes(direction: np.ndarray) -> str:
    """ITK/LPS axis codes of a 3x3 direction matrix, e.g. ``"LPS"`` for the identity.

    Index axis k gets the letter of the world axis its direction column is closest to (largest
    absolute cosine; ties and oblique matrices are resolved greedily, largest cosine first, so
    each world axis is used once): ``L``/``R`` for +x/-x, ``P``/``A`` for +y/-y, ``S``/``I`` for +z/-z.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    order = sorted(((abs(d[w, k]), k, w) for k in range(3) for w in range(3)), reverse=True)
    world_of: dict[int, int] = {}
    for _, k, w in order:
        if k not in world_of and w not in world_of.values():
            world_of[k] = w
    return "".join(_CODES[world_of[k]][0 if d[world_of[k], k] >= 0 else 1] for k in range(3))


def _world_axis(code: str) -> tuple[int, bool]:
    for w, pair in enumerate(_CODES):
        if code in pair:
            return w, code == pair[0]
    raise ConfigError(f"invalid axis code '{code}' in orientation; use three of L/R, P/A, S/I")


def check_orientation(codes: str) -> str:
    """Validate three axis codes covering the three world axes once (e.g. ``"RAS"``); return them upper-case."""
    codes = str(codes).upper()
    if len(codes) != 3 or sorted(_world_axis(c)[0] for c in codes) != [0, 1, 2]:
        raise ConfigError(f"invalid orientation '{codes}'; expected three axis codes such as 'LPS' or 'RAS'")
    return codes


def orientation_transform(codes_from: str, codes_to: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Axis permutation and flips taking an array in ``codes_from`` to ``codes_to``.

    Returns:
        ``(axes, flips)``: target axis j is source axis ``axes[j]``, reversed when ``flips[j]``.
    """
    src = [_world_axis(c) for c in check_orientation(codes_from)]
    dst = [_world_axis(c) for c in check_orientation(codes_to)]
    axes, flips = [], []
    for w, positive in dst:
        k = next(i for i, (ws, _) in enumerate(src) if ws == w)
        axes.append(k)
        flips.append(src[k][1] != positive)
    return tuple(axes), tuple(flips)


def reorient_values(values: Sequence[Any], codes_from: str, codes_to: str) -> list[Any]:
    """Permute a per-axis sequence (spacing, shape) from ``codes_from`` axes to ``codes_to`` axes."""
    axes, _ = orientation_transform(codes_from, codes_to)
    return [values[a] for a in axes]


def _apply_orientation(array: np.ndarray, axes: Sequence[int], flips: Sequence[bool], lead: int) -> np.ndarray:
    """Permute then flip the last three axes of ``array`` (``lead`` leading non-spatial axes)."""
    out = np.transpose(array, (*range(lead), *(a + lead for a in axes)))
    flip_axes = tuple(j + lead for j, f in enumerate(flips) if f)
    return np.flip(out, axis=flip_axes) if flip_axes else out


def _undo_orientation(array: np.ndarray, axes: Sequence[int], flips: Sequence[bool], lead: int) -> np.ndarray:
    flip_axes = tuple(j + lead for j, f in enumerate(flips) if f)
    out = np.flip(array, axis=flip_axes) if flip_axes else array
    inverse = np.argsort(axes)
    return np.transpose(out, (*range(lead), *(int(a) + lead for a in inverse)))


# ---------------------------------------------------------------------------------------------
# the record of one preprocessing


@dataclass(frozen=True)
class PreprocessInfo:
    """Everything :func:`restore_to_original` needs to map network output back to the input grid.

    Attributes:
        original_shape: spatial shape of the input image, in its own index axes ``(X, Y, Z)``
            (``(X, Y)`` for a 2-D input).
        spacing: input voxel spacing (mm, own axes).
        origin: input origin (LPS mm).
        direction: input direction matrix, row-major nested tuples.
        axes: reorientation: preprocessed axis j is input axis ``axes[j]``.
        flips: reorientation: preprocessed axis j is reversed.
        bbox: crop in the reoriented grid, ``((start, stop), ...)`` per axis.
        cropped_shape: spatial shape after cropping.
        resampled_shape: spatial shape of the preprocessed arrays ``(x, y, z)``.
        spacing_preprocessed: voxel spacing of the preprocessed grid (mm, reoriented axes).
        separate_axis: spatial axis resampled with nearest neighbour (anisotropic data), or None.
        backgrounds: per-channel background values found on the border (None: none found).
    """

    original_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    bbox: tuple[tuple[int, int], ...]
    cropped_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    spacing_preprocessed: tuple[float, float, float]
    separate_axis: int | None
    backgrounds: tuple[float | None, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists instead of tuples)."""
        return _listify(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(
            original_shape=tuple(int(v) for v in data["original_shape"]),
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(tuple(float(v) for v in row) for row in data["direction"]),
            axes=tuple(int(v) for v in data["axes"]),
            flips=tuple(bool(v) for v in data["flips"]),
            bbox=tuple((int(a), int(b)) for a, b in data["bbox"]),
            cropped_shape=tuple(int(v) for v in data["cropped_shape"]),
            resampled_shape=tuple(int(v) for v in data["resampled_shape"]),
            spacing_preprocessed=tuple(float(v) for v in data["spacing_preprocessed"]),
            separate_axis=None if data["separate_axis"] is None else int(data["separate_axis"]),
            backgrounds=tuple(None if v is None else float(v) for v in data["backgrounds"]),
        )


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# normalisation


def normalize_channel(channel: np.ndarray, mask: np.ndarray, *, scheme: str, lower_pct: float = 10.0,
                      upper_pct: float = 99.0) -> np.ndarray:
    """Normalise one channel inside ``mask``; voxels outside the mask become 0.

    Args:
        channel: ``(X, Y, Z)`` voxels.
        mask: ``(X, Y, Z)`` boolean brain mask.
        scheme: ``"zscore"`` or ``"clip_zscore"`` (clip to the brain's [lower_pct, upper_pct]
            percentiles first).
        lower_pct: lower clipping percentile (``clip_zscore``).
        upper_pct: upper clipping percentile (``clip_zscore``).

    Returns:
        ``(X, Y, Z)`` float32.
    """
    if scheme not in NORMALIZATION_SCHEMES:
        raise ConfigError(f"unknown normalization scheme '{scheme}'; valid: {', '.join(NORMALIZATION_SCHEMES)}")
    out = np.asarray(channel, dtype=np.float32).copy()
    values = out[mask].astype(np.float64)
    if values.size == 0:
        return np.zeros_like(out)
    if scheme == "clip_zscore":
        lo, hi = np.percentile(values, [lower_pct, upper_pct])
        np.clip(out, lo, hi, out=out)
        values = np.clip(values, lo, hi)
    mean = float(values.mean())
    std = float(values.std())
    out -= np.float32(mean)
    out /= np.float32(std if std > 1e-8 else 1.0)
    out[~mask] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# preprocessing and its inverse


def _as_3d(image: Any) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Array ``(C, X, Y, Z)``, spacing and 3x3 direction of an Image (2-D images get Z = 1)."""
    arr = np.asarray(image.array)
    if not image.has_channels:
        arr = arr[None]
    spacing = tuple(image.spacing)
    direction = np.asarray(image.direction, dtype=float)
    if image.spatial_dims == 2:
        arr = arr[..., None]
        spacing = (*spacing, 1.0)
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    return arr, spacing, direction


def preprocess_case(
    image: Any,
    plan: Plan | Mapping[str, Any],
    *,
    label: Any | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, PreprocessInfo]:
    """Preprocess one case for the network (steps in the module docstring).

    Args:
        image: :class:`~brainseg_cli.io.Image` with ``(C, X, Y, Z)`` voxels in
            ``plan.channels`` order (a single-channel image may omit the channel axis; a 2-D
            image ``(C, X, Y)`` is treated as one slice with Z = 1).
        plan: the :class:`~brainseg_cli.data.plan_schema.Plan` (or plan data); read: ``channels``,
            ``orientation``, ``crop_to_brain``, ``normalization``, ``target_spacing``, ``config``,
            ``slice_axis``, ``resampling``.
        label: optional label Image ``(X, Y, Z)`` on the same grid.
        mask: optional brain mask ``(X, Y, Z)`` (bool, the input's own axes) used instead of the
            border rule (e.g. a dataset's brain mask file).

    Returns:
        ``(data, seg, info)``: ``data`` ``(C, x, y, z)`` float32 C-contiguous, ``seg`` ``(x, y, z)``
        uint8 or ``None``, and the :class:`PreprocessInfo`.

    Raises:
        InputError: the channel count differs from the plan's.
        GeometryError: the label or mask is not on the image's grid.
    """
    plan = as_plan(plan)
    data, spacing, direction = _as_3d(image)
    channels = list(plan.channels)
    if data.shape[0] != len(channels):
        raise InputError(f"image has {data.shape[0]} channel(s) but the plan expects {len(channels)} "
                         f"({', '.join(channels)})")
    if label is not None:
        if label.has_channels:
            raise InputError(f"label must be a single-channel image, got shape {label.array.shape}")
        label.check_same_grid(image.channel(0) if image.has_channels else image, "label vs image")
    lab = None if label is None else np.asarray(label.array).reshape(data.shape[1:])
    if mask is not None and tuple(np.shape(mask)) != tuple(image.spatial_shape):
        raise GeometryError(f"brain mask shape {tuple(np.shape(mask))} differs from the image's {image.spatial_shape}")

    # 1. reorient
    axes, flips = orientation_transform(axis_codes(direction), plan.orientation)
    data = _apply_orientation(data, axes, flips, 1)
    sp = tuple(float(spacing[a]) for a in axes)
    if lab is not None:
        lab = _apply_orientation(lab, axes, flips, 0)

    # 2. brain mask and crop
    config = plan.config
    slice_axis = plan.slice_axis if config == "2d" else None
    backgrounds = tuple(background_values(data))
    if mask is not None:
        m = _apply_orientation(np.asarray(mask, dtype=bool).reshape(data.shape[1:]), axes, flips, 0)
    else:
        m = brain_mask(data, backgrounds=backgrounds, slice_axis=slice_axis)
    if plan.crop_to_brain:
        bbox = bounding_box(m)
    else:
        bbox = tuple((0, int(n)) for n in data.shape[1:])
    box = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *box)]
    m = m[box]
    if lab is not None:
        lab = lab[box]
    cropped_shape = tuple(int(n) for n in data.shape[1:])

    # 3. normalise
    norm = {n.channel: n for n in plan.normalization}
    normed = np.empty(data.shape, dtype=np.float32)
    for c, name in enumerate(channels):
        spec = norm.get(name)
        if spec is None:
            raise ConfigError(f"plan has no normalization entry for channel '{name}'")
        normed[c] = normalize_channel(data[c], m, scheme=spec.scheme, lower_pct=spec.lower_pct,
                                      upper_pct=spec.upper_pct)

    # 4. resample
    target = [float(t) for t in plan.target_spacing]
    if config == "2d" and slice_axis is not None:
        target[slice_axis] = sp[slice_axis]
    new_shape = compute_new_shape(cropped_shape, sp, target)
    if config == "2d" and slice_axis is not None:
        new_shape = tuple(cropped_shape[a] if a == slice_axis else n for a, n in enumerate(new_shape))
    threshold = float(plan.resampling.anisotropy_threshold)
    sep = separate_axis(sp, target, threshold=threshold) if new_shape != cropped_shape else None
    out = resample_images(normed, new_shape, order=int(plan.resampling.image_order), separate=sep)
    seg = None
    if lab is not None:
        seg = resample_labels(lab.astype(np.uint8, copy=False), new_shape)
        seg = np.ascontiguousarray(seg, dtype=np.uint8)
    sp_new = tuple(s * n / k for s, n, k in zip(sp, cropped_shape, new_shape))
    info = PreprocessInfo(
        original_shape=tuple(int(n) for n in image.spatial_shape),
        spacing=tuple(float(s) for s in image.spacing),
        origin=tuple(float(o) for o in image.origin),
        direction=tuple(tuple(float(v) for v in row) for row in np.asarray(image.direction)),
        axes=tuple(int(a) for a in axes),
        flips=tuple(bool(f) for f in flips),
        bbox=tuple((int(a), int(b)) for a, b in bbox),
        cropped_shape=cropped_shape,
        resampled_shape=tuple(int(n) for n in new_shape),
        spacing_preprocessed=tuple(float(s) for s in sp_new),
        separate_axis=sep,
        backgrounds=backgrounds,
    )
    return np.ascontiguousarray(out, dtype=np.float32), seg, info


def restore_to_original(probs: np.ndarray, info: PreprocessInfo, *, background_class: bool = True) -> np.ndarray:
    """Map network probabilities from the preprocessed grid back onto the input image's grid.

    Args:
        probs: ``(K, x, y, z)`` probabilities (or any per-class scores) on the preprocessed grid,
            shape ``info.resampled_shape``; numpy array or a CPU torch tensor.
        info: the :class:`PreprocessInfo` from :func:`preprocess_case`.
        background_class: softmax outputs whose channel 0 is background: outside the crop,
            channel 0 is 1 and the others 0. ``False`` (sigmoid regions): 0 everywhere outside.

    Returns:
        ``(K, X, Y, Z)`` float32 on the input's grid (``(K, X, Y)`` for a 2-D input).

    Raises:
        InputError: ``probs``' spatial shape is not ``info.resampled_shape``.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or tuple(probs.shape[1:]) != tuple(info.resampled_shape):
        raise InputError(f"probabilities of shape {tuple(probs.shape)} do not match the preprocessed grid "
                         f"(K, {', '.join(map(str, info.resampled_shape))})")
    k = probs.shape[0]
    back = resample_linear(probs, info.cropped_shape, separate=info.separate_axis)
    full_shape = tuple(b[1] - b[0] for b in info.bbox)  # the cropped region
    reoriented_shape = tuple(info.original_shape[a] if a < len(info.original_shape) else 1 for a in info.axes)
    if full_shape != tuple(info.cropped_shape):
        raise InputError(f"preprocessing record is inconsistent: bbox {info.bbox} vs cropped shape {info.cropped_shape}")
    out = np.zeros((k, *reoriented_shape), dtype=np.float32)
    if background_class and k > 0:
        out[0] = 1.0
    out[(slice(None), *(slice(a, b) for a, b in info.bbox))] = back
    out = _undo_orientation(out, info.axes, info.flips, 1)
    if len(info.original_shape) == 2:
        out = out[..., 0]
    return np.ascontiguousarray(out)
