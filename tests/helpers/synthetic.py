"""Tiny in-memory training data for tests of the fit loop.

:class:`ArrayCases` implements the :class:`brainseg_cli.training.batches.TrainingCases` protocol over
NumPy arrays: random crops (foreground-centred when forced) and, with ``augment``, random flips.
Cases are noisy volumes with a bright cube (label 1) and a brighter inner cube (label 2), so a small
network learns them within tens of steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_cube_case(seed: int, *, shape: Sequence[int] = (32, 32, 32), channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: ``(image (C, *shape) float32, label (*shape) uint8)`` with labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    label = np.zeros(shape, dtype=np.uint8)
    size = [max(4, s // 3) for s in shape]
    start = [int(rng.integers(2, s - z - 1)) for s, z in zip(shape, size)]
    outer = tuple(slice(a, a + z) for a, z in zip(start, size))
    label[outer] = 1
    inner = tuple(slice(a + z // 4, a + z - z // 4) for a, z in zip(start, size))
    label[inner] = 2
    image = rng.normal(0.0, 0.3, size=(channels, *shape)).astype(np.float32)
    for c in range(channels):
        image[c] += label * (1.0 + 0.5 * c)
    return image, label


class ArrayCases:
    """In-memory cases with patch sampling (see the module docstring).

    Args:
        cases: ``{case: (image (C, *spatial), label (*spatial))}``.
        patch_size: the patch size (as many axes as the spatial arrays).
    """

    def __init__(self, cases: dict[str, tuple[np.ndarray, np.ndarray]], patch_size: Sequence[int]) -> None:
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)

    def load_case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return self.cases[case]

    def label_voxels(self, case: str) -> dict[int, int]:
        counts = np.bincount(np.asarray(self.cases[case][1]).ravel().astype(np.int64))
        return {k: int(c) for k, c in enumerate(counts) if c}

    def sample(self, case: str, *, rng: np.random.Generator, force_foreground: bool,
               augment: bool) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.cases[case]
        shape = label.shape
        if force_foreground and label.any():
            fg = np.argwhere(label > 0)
            centre = fg[int(rng.integers(len(fg)))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch_size, shape)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch_size)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch_size))
        img, lab = image[(slice(None), *sl)], label[sl]
        if augment:
            for axis in range(lab.ndim):
                if rng.random() < 0.5:
                    img, lab = np.flip(img, axis + 1), np.flip(lab, axis)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def cube_cases(n: int, *, shape: Sequence[int] = (32, 32, 32), channels: int = 2, patch_size: Sequence[int] = (16, 16, 16),
               seed: int = 0) -> ArrayCases:
    """``n`` cube cases named ``case_000``, ... (see :func:`make_cube_case`)."""
    return ArrayCases({f"case_{i:03d}": make_cube_case(seed + i, shape=shape, channels=channels) for i in range(n)},
                      patch_size)


def cube_plan(*, patch_size: Sequence[int] = (16, 16, 16), batch_size: int = 2, channels: int = 2,
              region_based: bool = False) -> dict:
    """A minimal plan for :func:`cube_cases` (labels ``inner`` inside ``outer``)."""
    names = ["T1", "FLAIR"][:channels]
    regions = {"whole": [1, 2], "core": [2]} if region_based else {}
    plan = {
        "format_version": 1,
        "config": "3d" if len(patch_size) == 3 else "2d",
        "channels": names,
        "labels": {"background": 0, "outer": 1, "inner": 2},
        "regions": regions,
        "region_based": region_based,
        "orientation": "LPS",
        "target_spacing": [1.0, 1.0, 1.0],
        "slice_axis": None if len(patch_size) == 3 else 2,
        "patch_size": list(patch_size),
        "batch_size": batch_size,
        "normalization": [{"channel": c, "scheme": "zscore", "lower_pct": 10.0, "upper_pct": 99.0} for c in names],
        "crop_to_brain": True,
        "model": {"name": "unet", "spatial_dims": len(patch_size), "in_channels": channels,
                  "num_classes": len(regions) if region_based else 3, "config": {}},
    }
    return plan
