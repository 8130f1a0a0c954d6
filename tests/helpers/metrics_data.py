"""Real BraTS labels in canonical form and realistic wrong predictions, for the metrics and evaluate tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: BraTS 2017-2021 label values -> canonical (docs/DEFINITIONS.md §2: 2->1, 1->2, 4->3).
BRATS18_TO_CANONICAL = np.zeros(256, dtype=np.uint8)
BRATS18_TO_CANONICAL[[1, 2, 4]] = [2, 1, 3]

BRATS_CASES = ("Brats18_2013_20_1", "Brats18_CBICA_AQN_1")


def load_brats_canonical(shared_data: Path, case: str, *, margin: int = 6) -> np.ndarray:
    """A BraTS 2018 segmentation in canonical labels, cropped to the tumour box plus ``margin`` voxels."""
    from brainseg_cli.io import read_image

    image = read_image(shared_data / "brats2018_deepbrainseg" / case / f"{case}_seg.nii.gz")
    labels = BRATS18_TO_CANONICAL[np.asarray(image.array)]
    hits = [np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    box = tuple(slice(max(h[0] - margin, 0), h[-1] + 1 + margin) for h in hits)
    return np.ascontiguousarray(labels[box])


def perturbations(ref: np.ndarray, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic wrong predictions of a canonical label map ``(X, Y, Z)``.

    eroded (every label eroded by one voxel), dilated (the tumour grown by one voxel as edema, the
    core grown into the edema), shifted (rolled by (2, -1, 1) voxels), islands (the reference plus
    a false-positive blob of each label), mixed (ET shifted, the tumour
    boundary flipped at random in a one-voxel band).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    eroded = np.zeros_like(ref)
    for v in (1, 2, 3):
        eroded[ndimage.binary_erosion(ref == v)] = v
    out["eroded"] = eroded
    dilated = ref.copy()
    dilated[(ref == 0) & ndimage.binary_dilation(ref > 0)] = 1
    dilated[(ref == 1) & ndimage.binary_dilation(ref >= 2)] = 2
    out["dilated"] = dilated
    out["shifted"] = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    islands = ref.copy()
    for v in (1, 2, 3):
        x, y, z = (int(rng.integers(2, n - 6)) for n in ref.shape)
        islands[x:x + 4, y:y + 3, z:z + 3] = v
    out["islands"] = islands
    mixed = ref.copy()
    fg = ref > 0
    band = ndimage.binary_dilation(fg) & ~ndimage.binary_erosion(fg)
    flip = band & (rng.random(ref.shape) < 0.3)
    mixed[flip & fg] = 0
    mixed[flip & ~fg] = 1
    et = ref == 3
    mixed[et] = 2
    mixed[np.roll(et, 1, axis=1)] = 3
    out["mixed"] = mixed
    return out
