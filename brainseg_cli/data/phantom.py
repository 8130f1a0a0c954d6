"""Synthetic brain MRI ("phantoms") with known tissue and tumour labels, for tests and the demo.

A phantom is drawn in normalised index coordinates ``u`` in ``[-1, 1]`` per axis (X = left-right,
Y = posterior-anterior, Z = inferior-superior), so the same seed gives the same anatomy at any
shape, spacing, direction or origin (those only set the world geometry of the result). The model:

- an ellipsoidal head; the brain fills it (``skull=False``, the skull-stripped BraTS look) or sits
  inside a skull and scalp shell (``skull=True``); outside the head every voxel is exactly 0;
- tissue labels (:data:`TISSUE_LABELS`): 0 background (and skull/scalp), 1 CSF (outer rim, sulci,
  interhemispheric fissure, lateral and third ventricles), 2 grey matter (cortex with a folded
  grey/white boundary, deep grey nuclei), 3 white matter;
- optionally 1-2 tumours, labelled canonically (docs/DEFINITIONS.md §1-2): 1 edema around, 3 an enhancing rim,
  2 a necrotic / non-enhancing core inside the rim (only the larger tumour has a core);
- per-modality intensities from :data:`CONTRASTS` (relative values times 1000), slight partial-
  volume blur, a smooth multiplicative bias field per channel and Rician noise.

Everything is deterministic for a given ``seed`` (numpy ``default_rng``). The writers produce the
nnU-Net v2 dataset layout (:func:`write_phantom_dataset`) and source layouts that the converters
read: BraTS case folders (:func:`write_phantom_brats`) and Kaggle-LGG TIFF slices
(:func:`write_phantom_lgg`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg_cli import __version__
from brainseg_cli.data.layout import write_dataset_json
from brainseg_cli.errors import ConfigError, InputError, look_up
from brainseg_cli.io import Image, atomic_dir, write_image, write_tiff

logger = logging.getLogger(__name__)

#: Tissue classes of a phantom (name -> label).
TISSUE_LABELS: dict[str, int] = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}
#: Canonical tumour classes (docs/DEFINITIONS.md §1-2).
TUMOUR_LABELS: dict[str, int] = {"background": 0, "edema": 1, "non-enhancing tumour": 2,
                                 "enhancing tumour": 3}
#: BraTS evaluation regions in canonical tumour labels.
TUMOUR_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}

#: Relative intensity of each tissue per modality (multiplied by :data:`INTENSITY_SCALE`).
#: T1: WM > GM > CSF; T1c: as T1 with a bright enhancing rim; T2: CSF > GM > WM, bright edema;
#: FLAIR: CSF suppressed, edema brightest; IR (T1 inversion recovery): strongest GM/WM contrast.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1":    {"CSF": 0.20, "grey matter": 0.55, "white matter": 0.80, "edema": 0.45,
              "necrosis": 0.25, "enhancing": 0.55, "skull": 0.08, "scalp": 0.90},
    "T1c":   {"CSF": 0.20, "grey matter": 0.55, "white matter": 0.80, "edema": 0.45,
              "necrosis": 0.22, "enhancing": 1.00, "skull": 0.08, "scalp": 0.90},
    "T2":    {"CSF": 1.00, "grey matter": 0.60, "white matter": 0.42, "edema": 0.85,
              "necrosis": 0.95, "enhancing": 0.68, "skull": 0.08, "scalp": 0.60},
    "FLAIR": {"CSF": 0.10, "grey matter": 0.62, "white matter": 0.48, "edema": 1.00,
              "necrosis": 0.55, "enhancing": 0.80, "skull": 0.08, "scalp": 0.70},
    "IR":    {"CSF": 0.05, "grey matter": 0.45, "white matter": 0.95, "edema": 0.30,
              "necrosis": 0.10, "enhancing": 0.40, "skull": 0.05, "scalp": 0.80},
}
#: Intensity of a relative value of 1.0 (arbitrary scanner-like units).
INTENSITY_SCALE = 1000.0

DEFAULT_CHANNELS: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")
TISSUE_CHANNELS: tuple[str, ...] = ("T1", "FLAIR", "IR")

# region codes of the intensity model (tissue labels 0-3, then these)
_SKULL, _SCALP, _EDEMA, _NECROSIS, _ENHANCING = 4, 5, 6, 7, 8
_REGION_NAMES = {1: "CSF", 2: "grey matter", 3: "white matter", _SKULL: "skull", _SCALP: "scalp",
                 _EDEMA: "edema", _NECROSIS: "necrosis", _ENHANCING: "enhancing"}
_SLICE_Z = 0.12  # normalised height of the axial plane of a 2-D phantom


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic case.

    Attributes:
        image: ``(C, X, Y, Z)`` (or ``(C, X, Y)``) float32 image, channels in ``channels`` order.
        labels: ``(X, Y[, Z])`` uint8 canonical tumour labels (all 0 without tumour).
        tissue: ``(X, Y[, Z])`` uint8 tissue labels (:data:`TISSUE_LABELS`), healthy anatomy.
        channels: canonical channel names of ``image``.
    """

    image: Image
    labels: Image
    tissue: Image
    channels: tuple[str, ...]


# ---------------------------------------------------------------------------------- fields
class _Field:
    """A smooth random function of normalised coordinates: a sum of random cosines."""

    def __init__(self, rng: np.random.Generator, *, n: int, freq: tuple[float, float]) -> None:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self.k = direction * rng.uniform(*freq, size=(n, 1)) * np.pi
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.norm = np.sqrt(n / 2.0)  # unit standard deviation

    def __call__(self, u: Sequence[np.ndarray]) -> np.ndarray:
        """Evaluate on the grid ``u`` (three coordinate vectors broadcast along X, Y and Z).

        The field is a rank-n separable sum, so it is computed as one small matrix product
        ``(X*Y, n) @ (n, Z)`` instead of n full-volume cosines.
        """
        xs, ys, zs = (np.ravel(c) for c in u)
        ex = np.exp(1j * self.k[:, 0:1] * xs[None, :])
        ey = np.exp(1j * self.k[:, 1:2] * ys[None, :])
        ez = np.exp(1j * (self.k[:, 2:3] * zs[None, :] + self.phase[:, None]))
        exy = (ex[:, :, None] * ey[:, None, :]).reshape(len(self.phase), -1)
        # Re(exy.T @ ez) as one real matrix product
        left = np.concatenate([exy.real, -exy.imag]).T / self.norm
        right = np.concatenate([ez.real, ez.imag])
        return (left @ right).reshape(len(xs), len(ys), len(zs))


def _ellipsoid(u: Sequence[np.ndarray], centre: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    """Ellipsoidal radius (1 on the surface) around ``centre`` with semi-axes ``axes``."""
    return np.sqrt(sum(((c - m) / a) ** 2 for c, m, a in zip(u, centre, axes)))


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Normalised coordinates of voxel centres in ``[-1, 1]``: three arrays broadcasting to
    ``(X, Y, Z)`` (a 2-D shape gets one plane, ``Z = 1``, at height ``_SLICE_Z``)."""
    axes = []
    for i, n in enumerate(shape):
        view = [1, 1, 1]
        view[i] = n
        axes.append(((np.arange(n) + 0.5) / n * 2.0 - 1.0).reshape(view))
    if len(shape) == 2:
        axes.append(np.full((1, 1, 1), _SLICE_Z))
    return axes


# ---------------------------------------------------------------------------------- anatomy
def _anatomy(rng: np.random.Generator, u: list[np.ndarray], *, skull: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (tissue labels, region codes incl. skull/scalp) on the grid ``u``."""
    shape = tuple(len(np.ravel(c)) for c in u)
    head_axes = np.array([0.80, 0.90, 0.86]) * rng.uniform(0.96, 1.04, size=3)
    brain_axes = head_axes * (0.86 if skull else 1.0)
    gyri = _Field(rng, n=40, freq=(6.0, 12.0))
    ventricle_scale = rng.uniform(0.85, 1.2)
    deep_scale = rng.uniform(0.9, 1.1)

    head = _ellipsoid(u, (0, 0, 0), head_axes)
    rho = _ellipsoid(u, (0, 0, 0), brain_axes)
    g = np.clip(gyri(u), -2.0, 2.0) / 2.0  # about [-1, 1]
    valley = np.clip(-g, 0.0, 1.0)

    tissue = np.zeros(shape, np.uint8)
    brain = rho <= 1.0
    tissue[brain] = 2
    tissue[brain & (rho < 0.74 + 0.10 * g)] = 3
    for sx in (-1, 1):  # deep grey nuclei: thalamus and lentiform nucleus
        for centre, axes in (((0.11, -0.08, -0.02), (0.08, 0.13, 0.08)),
                             ((0.25, 0.12, 0.02), (0.06, 0.15, 0.09))):
            c = (sx * centre[0], centre[1], centre[2])
            tissue[_ellipsoid(u, c, np.multiply(axes, deep_scale)) <= 1.0] = 2
    sulci = brain & ((rho > 0.95) | (rho > 0.97 - 0.22 * valley ** 2))
    fissure = brain & (np.abs(u[0]) < 0.022) & (u[2] > -0.15) & (rho > 0.45)
    ventricles = np.zeros(shape, bool)
    for sx in (-1, 1):
        ventricles |= _ellipsoid(u, (sx * 0.10, 0.0, 0.12),
                                 np.multiply((0.065, 0.30, 0.10), ventricle_scale)) <= 1.0
    ventricles |= _ellipsoid(u, (0.0, -0.02, -0.04), (0.018, 0.12, 0.07)) <= 1.0
    tissue[sulci | fissure | ventricles] = 1

    regions = tissue.copy()
    if skull:
        shell = (~brain) & (head <= 1.0)
        regions[shell] = _SKULL
        regions[shell & (head > 0.94)] = _SCALP
    return tissue, regions


def _tumours(rng: np.random.Generator, u: list[np.ndarray], tissue: np.ndarray,
             two_d: bool) -> np.ndarray:
    """Canonical tumour labels (0 background, 1 edema, 2 necrotic core, 3 enhancing rim)."""
    labels = np.zeros(tissue.shape, np.uint8)
    n_blobs = int(rng.integers(1, 3))
    side = rng.choice([-1.0, 1.0])
    main = np.array([side * rng.uniform(0.22, 0.40), rng.uniform(-0.35, 0.35), rng.uniform(0.0, 0.35)])
    reach = float(np.linalg.norm(main / [0.8, 0.9, 0.86]))
    if reach > 0.45:  # keep the main tumour's core inside the brain
        main *= 0.45 / reach
    blobs = [(main, rng.uniform(0.16, 0.22), rng.uniform(1.35, 1.7), 0.65)]
    if n_blobs == 2:
        offset = rng.normal(size=3)
        offset *= rng.uniform(0.25, 0.35) / np.linalg.norm(offset)
        satellite = main + offset
        reach = float(np.linalg.norm(satellite / [0.8, 0.9, 0.86]))
        if reach > 0.55:  # keep the satellite's core well inside the brain
            satellite *= 0.55 / reach
        blobs.append((satellite, rng.uniform(0.08, 0.11), rng.uniform(1.4, 1.7), 0.0))
    core = np.zeros(tissue.shape, bool)
    necrosis = np.zeros(tissue.shape, bool)
    edema = np.zeros(tissue.shape, bool)
    for centre, radius, edema_factor, necrotic_fraction in blobs:
        shape_field = _Field(rng, n=8, freq=(2.0, 4.0))
        if two_d:
            centre = np.array([centre[0], centre[1], _SLICE_Z])
        dist = _ellipsoid(u, centre, (radius, radius, radius))
        dist = dist * (1.0 + 0.15 * np.clip(shape_field(u), -2, 2))
        core |= dist < 1.0
        necrosis |= dist < necrotic_fraction
        edema |= dist < edema_factor
    from scipy.ndimage import binary_dilation

    brain = tissue > 0
    edema |= binary_dilation(core)  # at least one voxel of edema around every core
    labels[edema & brain] = 1
    labels[core & brain] = 3
    labels[necrosis & brain] = 2
    return labels


def _resolve_channels(channels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(channels, str) or not channels:
        raise ConfigError(f"channels must be a non-empty list of names, got {channels!r}")
    by_lower = {name.lower(): name for name in CONTRASTS}
    resolved = []
    for name in channels:
        canonical = look_up(str(name).lower(), by_lower, "phantom channel")
        if canonical in resolved:
            raise ConfigError(f"phantom channel {canonical} given twice in {list(channels)}")
        resolved.append(canonical)
    return tuple(resolved)


def make_phantom(
    *,
    seed: int,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] | None = None,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    tumour: bool = True,
    direction: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
    noise: float = 0.03,
    bias: float = 0.15,
    skull: bool = False,
) -> Phantom:
    """Make one synthetic brain.

    Args:
        seed: random seed; the same seed gives the same phantom (and the same anatomy at any
            shape).
        shape: ``(X, Y, Z)`` voxels, or ``(X, Y)`` for one axial slice; each at least 8.
        spacing: voxel size in mm, one value per axis of ``shape`` (default 1 mm).
        channels: modalities to simulate, names from :data:`CONTRASTS` (case-insensitive).
        tumour: add 1-2 tumours (edema, enhancing rim, necrotic core) to ``labels`` and intensities.
        direction: ITK/LPS direction matrix (default identity).
        origin: LPS origin in mm (default zeros).
        noise: Rician noise standard deviation relative to an intensity of 1.0 (0 = none).
        bias: strength of the smooth multiplicative bias field (0 = none; 0.15 is about +-15 %).
        skull: surround the brain with a skull (dark) and scalp (bright) shell, labelled 0.

    Returns:
        The :class:`Phantom`: image ``(C, X, Y[, Z])`` float32 (0 outside the head), tumour labels
        and tissue labels ``(X, Y[, Z])`` uint8, all on one grid.

    Raises:
        ConfigError: a bad shape, negative noise or bias, or an unknown channel name.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 8:
        raise ConfigError(f"phantom shape must be 2 or 3 sizes of at least 8, got {shape}")
    spacing = (1.0,) * len(shape) if spacing is None else tuple(float(v) for v in spacing)
    if len(spacing) != len(shape):
        raise ConfigError(f"phantom spacing {tuple(spacing)} does not match shape {shape}")
    if noise < 0 or bias < 0:
        raise ConfigError(f"phantom noise and bias must be >= 0, got noise={noise}, bias={bias}")
    names = _resolve_channels(channels)
    rng = np.random.default_rng(seed)
    anatomy_rng, tumour_rng, bias_rng, noise_rng = (np.random.default_rng(s) for s in
                                                    rng.bit_generator.seed_seq.spawn(4))
    u = _grid(shape)
    grid_shape = tuple(len(np.ravel(c)) for c in u)  # (X, Y, Z), Z = 1 for 2-D
    tissue, regions = _anatomy(anatomy_rng, u, skull=skull)
    labels = (_tumours(tumour_rng, u, tissue, len(shape) == 2) if tumour
              else np.zeros(grid_shape, np.uint8))
    regions[labels == 1] = _EDEMA
    regions[labels == 2] = _NECROSIS
    regions[labels == 3] = _ENHANCING
    inside = regions > 0

    from scipy.ndimage import gaussian_filter

    bias_fields = [_Field(bias_rng, n=6, freq=(0.3, 1.2)) for _ in names]
    out = np.empty((len(names), *grid_shape), np.float32)
    for c, name in enumerate(names):
        table = np.zeros(max(_REGION_NAMES) + 1, np.float32)
        for code, region in _REGION_NAMES.items():
            table[code] = CONTRASTS[name][region] * INTENSITY_SCALE
        volume = gaussian_filter(table[regions], sigma=(0.5, 0.5, 0.5 if len(shape) == 3 else 0.0))
        if bias:
            volume *= np.exp(bias * np.clip(bias_fields[c](u), -2.5, 2.5)).astype(np.float32)
        if noise:
            sigma = noise * INTENSITY_SCALE
            real = noise_rng.standard_normal(size=grid_shape, dtype=np.float32)
            real *= sigma
            real += volume
            imag = noise_rng.standard_normal(size=grid_shape, dtype=np.float32)
            imag *= sigma
            volume = np.sqrt(real * real + imag * imag)
        volume[~inside] = 0.0
        out[c] = volume
    out, labels, tissue = (a.reshape(a.shape[: a.ndim - 3] + shape) for a in (out, labels, tissue))
    image = Image(out, spacing, origin, direction)
    return Phantom(image=image, labels=image.with_array(labels), tissue=image.with_array(tissue),
                   channels=names)


# ---------------------------------------------------------------------------------- writers
def _case_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of case ``index`` of a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _check_target(root: Path, n: int, what: str) -> None:
    if n < 1:
        raise ConfigError(f"{what} must be at least 1, got {n}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(f"{root}: already exists and is not an empty folder; choose a new path")


def _write_dataset_json(root: Path, *, channels: Sequence[str], labels: Mapping[str, int],
                        num_training: int, brainseg: Mapping[str, object]) -> None:
    write_dataset_json(root, channels=channels, labels=labels, num_training=num_training,
                       file_ending=".nii.gz", brainseg=brainseg)


def write_phantom_dataset(
    root: str | os.PathLike[str],
    *,
    n_cases: int,
    seed: int,
    kind: str = "tumour",
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    channels: Sequence[str] | None = None,
) -> Path:
    """Write a phantom dataset in the nnU-Net v2 raw layout (docs/DEFINITIONS.md §1-2), atomically.

    ``imagesTr/phantom_NNN_CCCC.nii.gz`` (one file per channel), ``labelsTr/phantom_NNN.nii.gz``
    and ``dataset.json`` (``"brainseg": {"source": "phantom", "regions": ...}``).

    Args:
        root: the dataset folder to create (must not exist or be empty).
        n_cases: number of training cases.
        seed: dataset seed (each case gets its own seed derived from it).
        kind: ``"tumour"`` (canonical tumour labels, BraTS regions) or ``"tissue"`` (CSF / grey /
            white matter labels, no tumour, no regions).
        shape: voxels per case, ``(X, Y, Z)`` or ``(X, Y)``.
        spacing: voxel size in mm.
        channels: modalities; default T1, T1c, T2, FLAIR for tumours and T1, FLAIR, IR for tissue.

    Returns:
        ``root``.

    Raises:
        ConfigError: unknown ``kind`` or channel, ``n_cases < 1``.
        InputError: ``root`` exists and is not empty.
    """
    kinds = {"tumour": (TUMOUR_LABELS, DEFAULT_CHANNELS), "tissue": (TISSUE_LABELS, TISSUE_CHANNELS)}
    labels_def, default_channels = look_up(kind, kinds, "phantom kind")
    names = _resolve_channels(channels if channels is not None else default_channels)
    root = Path(root)
    _check_target(root, n_cases, "n_cases")
    with atomic_dir(root) as tmp:
        for i in range(n_cases):
            case = f"phantom_{i:03d}"
            ph = make_phantom(seed=_case_seed(seed, i), shape=shape, spacing=spacing,
                              channels=names, tumour=kind == "tumour")
            for c in range(len(names)):
                write_image(ph.image.channel(c), tmp / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            target = ph.labels if kind == "tumour" else ph.tissue
            write_image(target, tmp / "labelsTr" / f"{case}.nii.gz")
        extra: dict[str, object] = {"source": "phantom", "kind": kind, "seed": int(seed),
                                    "tool_version": __version__}
        if kind == "tumour":
            extra["regions"] = TUMOUR_REGIONS
        _write_dataset_json(tmp, channels=names, labels=labels_def, num_training=n_cases,
                            brainseg=extra)
        (tmp / "imagesTs").mkdir()
    logger.info("wrote %d phantom cases (%s) to %s", n_cases, kind, root)
    return root


@dataclass(frozen=True)
class BratsGeneration:
    """File naming and label values of one BraTS generation.

    Attributes:
        case: case-name pattern, formatted with the case index.
        files: canonical channel -> file suffix (``<case>_<suffix><ext>``); ``"seg"`` for labels.
        ext: file ending.
        label_values: canonical tumour label -> the generation's label value.
        dtype: voxel type of the images.
    """

    case: str
    files: dict[str, str]
    ext: str
    label_values: dict[int, int]
    dtype: str


#: BraTS generations :func:`write_phantom_brats` can imitate (docs/DEFINITIONS.md §1-2 mappings, inverted).
BRATS_GENERATIONS: dict[str, BratsGeneration] = {
    "2018": BratsGeneration("Brats18_Phantom_{i:03d}_1",
                            {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair", "seg": "seg"},
                            ".nii.gz", {0: 0, 1: 2, 2: 1, 3: 4}, "int16"),
    "2023": BratsGeneration("BraTS-GLI-{i:05d}-000",
                            {"T1": "t1n", "T1c": "t1c", "T2": "t2w", "FLAIR": "t2f", "seg": "seg"},
                            ".nii.gz", {0: 0, 1: 2, 2: 1, 3: 3}, "int16"),
    "2012": BratsGeneration("BRATS_HG{i:04d}",
                            {"T1": "T1", "T1c": "T1C", "T2": "T2", "FLAIR": "FLAIR", "seg": "truth"},
                            ".mha", {0: 0, 1: 1, 2: 2, 3: 2}, "int16"),
}


def write_phantom_brats(
    root: str | os.PathLike[str],
    *,
    n_cases: int,
    seed: int,
    generation: str = "2018",
    shape: Sequence[int] = (64, 64, 48),
) -> Path:
    """Write phantom cases as BraTS case folders of one generation, atomically.

    2018: ``Brats18_Phantom_001_1/Brats18_Phantom_001_1_{t1,t1ce,t2,flair,seg}.nii.gz`` with labels
    1 NCR/NET, 2 ED, 4 ET; 2023: ``BraTS-GLI-00001-000/BraTS-GLI-00001-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``
    with 1 NETC, 2 SNFH, 3 ET; 2012: ``BRATS_HG0001/BRATS_HG0001_{T1,T1C,T2,FLAIR,truth}.mha`` with
    1 edema, 2 active tumour. Images are int16 at 1 mm in the BraTS world geometry (LPS identity
    direction, origin ``(0, -(Y-1), 0)``, i.e. nibabel affine ``diag(-1, -1, 1)``).

    Args:
        root: folder to create (must not exist or be empty); case folders go directly inside.
        n_cases: number of cases (numbered from 1).
        seed: dataset seed.
        generation: ``"2018"``, ``"2023"`` or ``"2012"``.
        shape: ``(X, Y, Z)`` voxels per case.

    Returns:
        ``root``.
    """
    gen = look_up(str(generation), BRATS_GENERATIONS, "BraTS generation")
    if len(tuple(shape)) != 3:
        raise ConfigError(f"BraTS phantoms are 3-D; got shape {tuple(shape)}")
    root = Path(root)
    _check_target(root, n_cases, "n_cases")
    sep = "-" if generation == "2023" else "_"
    lut = np.zeros(4, np.uint8)
    for canonical, value in gen.label_values.items():
        lut[canonical] = value
    origin = (0.0, -(float(shape[1]) - 1.0), 0.0)
    with atomic_dir(root) as tmp:
        for i in range(1, n_cases + 1):
            case = gen.case.format(i=i)
            ph = make_phantom(seed=_case_seed(seed, i), shape=shape, channels=DEFAULT_CHANNELS,
                              origin=origin)
            for c, name in enumerate(ph.channels):
                voxels = np.rint(ph.image.array[c]).astype(gen.dtype)
                write_image(ph.image.with_array(voxels),
                            tmp / case / f"{case}{sep}{gen.files[name]}{gen.ext}")
            write_image(ph.labels.with_array(lut[ph.labels.array]),
                        tmp / case / f"{case}{sep}{gen.files['seg']}{gen.ext}")
    logger.info("wrote %d BraTS %s phantom cases to %s", n_cases, generation, root)
    return root


def write_phantom_lgg(
    root: str | os.PathLike[str],
    *,
    n_patients: int,
    seed: int,
    shape: Sequence[int] = (64, 64, 24),
) -> Path:
    """Write phantom patients in the Kaggle-LGG ``kaggle_3m`` layout, atomically.

    ``<root>/<patient>/<patient>_<n>.tif`` (RGB uint8: T1, FLAIR, T1c, each scaled to 0-255 by its
    99.5th percentile inside the head), ``<patient>_<n>_mask.tif`` (0/255 whole tumour), slices
    ``n = 1..Z`` along Z (TIFF rows = X, columns = Y), and ``data.csv`` listing the patients.

    Args:
        root: folder to create (must not exist or be empty).
        n_patients: number of patients, named ``TCGA_PH_<NNNN>_20000101``.
        seed: dataset seed.
        shape: ``(X, Y, Z)`` voxels per patient (Z = number of slices).

    Returns:
        ``root``.
    """
    if len(tuple(shape)) != 3:
        raise ConfigError(f"LGG phantoms are 3-D slice stacks; got shape {tuple(shape)}")
    root = Path(root)
    _check_target(root, n_patients, "n_patients")
    rows = ["Patient"]
    with atomic_dir(root) as tmp:
        for i in range(1, n_patients + 1):
            patient = f"TCGA_PH_{i:04d}_20000101"
            rows.append(patient.rsplit("_", 1)[0])
            ph = make_phantom(seed=_case_seed(seed, i), shape=shape, channels=("T1", "FLAIR", "T1c"))
            inside = ph.image.array[0] > 0
            rgb = np.empty(ph.image.array.shape, np.uint8)
            for c in range(3):
                channel = ph.image.array[c]
                top = float(np.percentile(channel[inside], 99.5)) if inside.any() else 1.0
                rgb[c] = np.clip(np.rint(channel / max(top, 1e-6) * 255.0), 0, 255)
            mask = np.where(ph.labels.array > 0, 255, 0).astype(np.uint8)
            for k in range(shape[2]):
                n = k + 1
                write_tiff(tmp / patient / f"{patient}_{n}.tif", np.ascontiguousarray(
                    np.moveaxis(rgb[:, :, :, k], 0, -1)), compress=True)
                write_tiff(tmp / patient / f"{patient}_{n}_mask.tif",
                           np.ascontiguousarray(mask[:, :, k]))
        (tmp / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    logger.info("wrote %d LGG phantom patients to %s", n_patients, root)
    return root
