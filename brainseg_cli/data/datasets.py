"""Training samples from the preprocessed cache: the training loop's cases and a torch Dataset.

:class:`CachedCases` implements :class:`brainseg_cli.training.batches.TrainingCases`:
``load_case(case)`` gives a whole preprocessed case (validation) and ``sample(case, rng=...,
force_foreground=..., augment=...)`` one training patch:

- 3-D plans: a ``plan.patch_size`` patch (:func:`brainseg_cli.data.sampling.choose_start`).
- 2-D plans: a slice along ``plan.slice_axis`` cut to the in-plane ``patch_size``. The slice is
  drawn with :func:`~brainseg_cli.data.sampling.slice_weights` (``plan.sampling``: uniform or
  foreground-weighted, optionally never the first/last slice); a foreground-forced sample takes
  the slice of a random foreground voxel and centres the patch on it. With ``plan.slice_context``
  ``k > 0`` (2.5-D) the image is :func:`context_slab`: the slice and its ``k`` neighbours on each side
  as channels; intensity augmentation treats the ``2k + 1`` channels of one modality alike.
- With ``augment=True``: the spatial transform is drawn first and applied while cutting, then
  intensity augmentation and mirroring (:mod:`brainseg_cli.data.augmentation`).

Case arrays are memory-mapped lazily in each process (worker processes open their own maps).
:class:`PatchDataset` is a map-style :class:`torch.utils.data.Dataset` over the same sampler:
item ``i`` is a pure function of ``(seed, rank, i)``, and foreground is forced on the items
where ``floor((i + 1) f) > floor(i f)`` (``f = plan.sampling.foreground_fraction``, i.e.
every third item by default), so exactly that fraction is oversampled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brainseg_cli.data.augmentation import AugmentConfig, augment_intensity, mirror, sample_spatial
from brainseg_cli.data.cache import PreprocessedCache
from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.data.sampling import choose_start, extract_patch, slice_weights
from brainseg_cli.errors import InputError

logger = logging.getLogger(__name__)


class CachedCases:
    """Patches and whole cases from a :class:`PreprocessedCache` (module docstring).

    Args:
        cache: the built cache.
        plan: the plan it was built for (``config``, ``slice_axis``, ``patch_size``, ``sampling``,
            ``orientation``).
        augment: the augmentation configuration used when ``sample(..., augment=True)``.
    """

    def __init__(self, cache: PreprocessedCache, plan: Plan | Mapping[str, Any], *,
                 augment: AugmentConfig = AugmentConfig()) -> None:
        plan = as_plan(plan)
        self.cache = cache
        self.plan = plan
        self.augment = augment
        self.two_d = plan.two_d
        self.slice_axis = int(plan.slice_axis) if self.two_d and plan.slice_axis is not None else None
        self.slice_context = int(plan.slice_context) if self.two_d else 0
        self.patch_size = tuple(int(p) for p in plan.patch_size)
        self.weighting = plan.sampling.slice_weighting
        self.drop_edges = bool(plan.sampling.drop_edge_slices)
        # Spatial axes of a sample, as axes of the preprocessed (x, y, z) grid.
        self.sample_axes = [a for a in range(3) if a != self.slice_axis] if self.two_d else [0, 1, 2]
        self.mirror_axes = self._mirror_axes(plan.orientation)
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._fg: dict[str, dict[int, np.ndarray]] = {}
        self._weights: dict[str, np.ndarray] = {}

    def _mirror_axes(self, orientation: str) -> tuple[int, ...]:
        n = len(self.sample_axes)
        if self.augment.mirror_left_right_only:
            lr = next(i for i, c in enumerate(orientation) if c in "LR")
            return tuple(k for k, a in enumerate(self.sample_axes) if a == lr)
        if self.augment.mirror_axes is None:
            return tuple(range(n))
        bad = [a for a in self.augment.mirror_axes if not 0 <= a < n]
        if bad:
            raise InputError(f"mirror axes {list(self.augment.mirror_axes)} do not fit {n}-D samples")
        return tuple(self.augment.mirror_axes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}
        return state

    @property
    def cases(self) -> tuple[str, ...]:
        """The cases of the cache."""
        return self.cache.cases

    def _arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        if case not in self._open:
            self._open[case] = self.cache.load(case, mmap=True)
        return self._open[case]

    def _foreground(self, case: str) -> dict[int, np.ndarray]:
        if case not in self._fg:
            self._fg[case] = self.cache.foreground(case)
        return self._fg[case]

    def load_case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, x, y, z) float32, label (x, y, z) uint8)`` of a whole case, in memory (writable)."""
        data, seg = self.cache.load(case, mmap=False)
        return data, seg

    def label_voxels(self, case: str) -> dict[int, int]:
        """``{label value: voxel count}`` of a case's reference in the plan's space (from the cache's properties)."""
        counts = self.cache.properties(case).get("label_voxels") or {}
        return {int(k): int(v) for k, v in counts.items()}

    def sample(self, case: str, *, rng: np.random.Generator, force_foreground: bool,
               augment: bool) -> tuple[np.ndarray, np.ndarray]:
        """One training sample ``(image (C, *patch) float32, label (*patch) uint8)``.

        Args:
            case: a case of the cache.
            rng: the sample's generator (every random choice comes from it).
            force_foreground: centre the patch on a foreground voxel (when the case has one).
            augment: apply the augmentation configuration.
        """
        data, seg = self._arrays(case)
        fg = self._foreground(case)
        transform = sample_spatial(self.augment, rng, self.patch_size) if augment else None
        if self.two_d:
            image, label = self._sample_slice(case, data, seg, fg, rng, force_foreground, transform)
        else:
            start, _ = choose_start(seg.shape, self.patch_size, rng, foreground=fg, force_foreground=force_foreground)
            image, label = extract_patch(data, seg, start, self.patch_size, transform=transform)
        if augment:
            image = augment_intensity(np.ascontiguousarray(image), self.augment, rng, group=2 * self.slice_context + 1)
            image, label = mirror(image, label, self.mirror_axes, self.augment.p_mirror, rng)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)

    def _slice_weights(self, case: str, n: int) -> np.ndarray:
        if case not in self._weights:
            counts = self.cache.properties(case).get("slice_foreground") or [0] * n
            self._weights[case] = slice_weights(counts, weighting=self.weighting, drop_edges=self.drop_edges)
        return self._weights[case]

    def _sample_slice(self, case: str, data: np.ndarray, seg: np.ndarray, fg: dict[int, np.ndarray],
                      rng: np.random.Generator, force_foreground: bool, transform: Any) -> tuple[np.ndarray, np.ndarray]:
        axis = self.slice_axis
        n = seg.shape[axis]
        plane_fg: dict[int, np.ndarray] | None = None
        if force_foreground and fg:
            lo, hi = (1, n - 1) if self.drop_edges and n >= 3 else (0, n)
            usable = {k: v[(v[:, axis] >= lo) & (v[:, axis] < hi)] for k, v in fg.items()}
            usable = {k: v for k, v in usable.items() if len(v)}
            if usable:
                classes = sorted(usable)
                coords = usable[classes[int(rng.integers(len(classes)))]]
                voxel = coords[int(rng.integers(len(coords)))]
                index = int(voxel[axis])
                plane_fg = {0: voxel[self.sample_axes][None, :]}
        if plane_fg is None:
            index = int(rng.choice(n, p=self._slice_weights(case, n)))
        sl: list[Any] = [slice(None)] * 3
        sl[axis] = index
        label_slice = seg[tuple(sl)]
        if self.slice_context:
            image_slice = context_slab(data, index, axis=axis, context=self.slice_context)
        else:
            image_slice = data[(slice(None), *sl)]
        plane = tuple(seg.shape[a] for a in self.sample_axes)
        start, _ = choose_start(plane, self.patch_size, rng, foreground=plane_fg, force_foreground=plane_fg is not None)
        return extract_patch(image_slice, label_slice, start, self.patch_size, transform=transform)


def context_slab(data: np.ndarray, index: int, *, axis: int, context: int) -> np.ndarray:
    """A 2.5-D input slice: every channel at slice ``index`` and ``context`` neighbours on each side.

    Args:
        data: ``(C, X, Y, Z)`` volume (may be a memory map: only the slab's slices are read).
        index: the slice, along spatial ``axis`` (0, 1 or 2).
        axis: the slice axis.
        context: neighbours on each side (slices beyond the volume repeat its first or last slice).

    Returns:
        ``(C * (2 * context + 1), a, b)`` float array, channel-major: channel ``c`` at offset ``o``
        (``-context..context``) is entry ``c * (2 * context + 1) + o + context``; ``(a, b)`` are
        the remaining spatial axes in order.
    """
    n = data.shape[axis + 1]
    picks = np.clip(np.arange(index - context, index + context + 1), 0, n - 1)
    slab = np.moveaxis(np.take(data, picks, axis=axis + 1), axis + 1, 1)  # (C, 2k+1, a, b)
    return slab.reshape(-1, *slab.shape[2:])


def forced_by_fraction(index: int, fraction: float) -> bool:
    """True on the items that make exactly ``fraction`` of ``0..i`` foreground-forced (``floor`` rule)."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def _torch_dataset_base() -> type:
    import torch.utils.data

    return torch.utils.data.Dataset


class PatchDataset(_torch_dataset_base()):
    """Map-style torch Dataset of training samples (module docstring).

    Args:
        cases_source: the :class:`CachedCases`.
        cases: the cases to draw from.
        seed: the run's seed.
        rank: the process rank (ranks draw different samples).
        length: ``len(dataset)`` (samples per epoch); any index >= 0 is valid.
        augment: apply augmentation.

    Items are ``{"image": float32 tensor (C, *patch), "label": int64 tensor (*patch), "case": str}``.
    """

    def __init__(self, cases_source: CachedCases, cases: Sequence[str], *, seed: int, rank: int = 0,
                 length: int = 250, augment: bool = True) -> None:
        if not cases:
            raise InputError("PatchDataset needs at least one case")
        self.source = cases_source
        self.case_list = list(cases)
        self.seed = int(seed)
        self.rank = int(rank)
        self.length = int(length)
        self.augment = augment
        self.fraction = float(cases_source.plan.sampling.foreground_fraction)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        case = self.case_list[int(rng.integers(len(self.case_list)))]
        image, label = self.source.sample(case, rng=rng, force_foreground=forced_by_fraction(int(index), self.fraction),
                                          augment=self.augment)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label.astype(np.int64)), "case": case}
