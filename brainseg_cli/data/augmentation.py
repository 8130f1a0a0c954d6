"""On-the-fly data augmentation for training patches (numpy/scipy, on the CPU).

Spatial transforms (rotation, scaling, elastic deformation) are not applied to a patch after it
is cut: :func:`sample_spatial` draws them, and :mod:`brainseg_cli.data.sampling` reads the patch
from the case through the transformed coordinates (one ``grid_sample``: linear for images, nearest
neighbour for labels), so there are no border artefacts and
the cost is that of one interpolation. Then, as nnU-Net orders them: Gaussian noise, Gaussian blur,
multiplicative brightness, contrast, inverted gamma, gamma (:func:`augment_intensity`) and
mirroring (:func:`mirror`, image and label together). Labels only ever see the spatial transform
and mirroring, both nearest-neighbour or exact.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a sample is a pure
function of its generator's seed. Defaults are nnU-Net v2's; :meth:`AugmentConfig.preset` gives the
named sets (``"lgg"``: Buda et al. 2019, scale +-5 %, rotation +-15 degrees, left-right flip).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from brainseg_cli.errors import ConfigError, look_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (a probability of 0 turns one off)."""

    p_rotation: float = 0.2
    """Probability of a rotation."""
    rotation_degrees: float = 30.0
    """Largest absolute rotation angle (degrees), drawn uniformly per rotation axis (3-D: all three)."""
    p_scale: float = 0.2
    """Probability of an isotropic scaling."""
    scale_range: tuple[float, float] = (0.7, 1.4)
    """Range of the scale factor (> 1 magnifies)."""
    p_elastic: float = 0.0
    """Probability of an elastic deformation (off by default, as in nnU-Net v2)."""
    elastic_alpha: tuple[float, float] = (0.0, 900.0)
    """Range of the deformation magnitude (nnU-Net v1's alpha)."""
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    """Range of the deformation smoothness (Gaussian sigma in voxels)."""
    mirror_axes: tuple[int, ...] | None = None
    """Spatial axes of the sample that may be mirrored (``None``: all)."""
    mirror_left_right_only: bool = False
    """Mirror only the sample axis that runs left-right in the plan orientation (overrides ``mirror_axes``)."""
    p_mirror: float = 0.5
    """Probability of mirroring, per allowed axis."""
    p_noise: float = 0.1
    """Probability of additive Gaussian noise."""
    noise_variance: tuple[float, float] = (0.0, 0.1)
    """Range of the noise variance."""
    p_blur: float = 0.2
    """Probability of Gaussian blurring (then each channel with probability 0.5)."""
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    """Range of the blur sigma (voxels)."""
    p_brightness: float = 0.15
    """Probability of a multiplicative brightness change (per channel factor)."""
    brightness_range: tuple[float, float] = (0.75, 1.25)
    """Range of the brightness factor."""
    p_contrast: float = 0.15
    """Probability of a contrast change around the channel mean (range preserved)."""
    contrast_range: tuple[float, float] = (0.75, 1.25)
    """Range of the contrast factor."""
    p_gamma: float = 0.3
    """Probability of a gamma transform (statistics retained)."""
    p_gamma_inverted: float = 0.1
    """Probability of a gamma transform of the inverted image."""
    gamma_range: tuple[float, float] = (0.7, 1.5)
    """Range of gamma."""

    def __post_init__(self) -> None:
        for name in ("p_rotation", "p_scale", "p_elastic", "p_mirror", "p_noise", "p_blur", "p_brightness",
                     "p_contrast", "p_gamma", "p_gamma_inverted"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"augmentation {name} must be a probability in [0, 1], got {value}")
        for name in ("scale_range", "elastic_alpha", "elastic_sigma", "noise_variance", "blur_sigma",
                     "brightness_range", "contrast_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ConfigError(f"augmentation {name} must be a range 0 <= low <= high, got {(lo, hi)}")
        if self.scale_range[0] <= 0 or self.gamma_range[0] <= 0:
            raise ConfigError("augmentation scale_range and gamma_range must be positive")

    @property
    def spatial(self) -> bool:
        """True when any spatial (interpolating) transform can happen."""
        return self.p_rotation > 0 or self.p_scale > 0 or self.p_elastic > 0

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """A named configuration: ``"default"`` (nnU-Net v2), ``"brats"`` (stronger, after nnU-Net's BraTS
        2020 entry), ``"lgg"`` (Buda et al. 2019), ``"none"``; see :data:`AUGMENT_PRESETS`."""
        return look_up(name, AUGMENT_PRESETS, "augmentation preset")

    def with_changes(self, **changes: Any) -> AugmentConfig:
        """A copy with some fields replaced (validated)."""
        return replace(self, **changes)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "default": AugmentConfig(),
    # Isensee et al. 2020 ("nnU-Net for Brain Tumour Segmentation", BraTS 2020): rotation and scaling
    # more often and wider, elastic deformation on, stronger brightness and gamma; here also a wider
    # per-channel contrast change, so tumours fainter than the training cases' are seen in training.
    "brats": AugmentConfig(p_rotation=0.3, p_scale=0.3, scale_range=(0.65, 1.6), p_elastic=0.3,
                           p_brightness=0.3, brightness_range=(0.7, 1.3), p_contrast=0.3, contrast_range=(0.65, 1.5),
                           gamma_range=(0.5, 1.6)),
    "lgg": AugmentConfig(p_rotation=1.0, rotation_degrees=15.0, p_scale=1.0, scale_range=(0.95, 1.05),
                         mirror_left_right_only=True, p_noise=0.0, p_blur=0.0, p_brightness=0.0, p_contrast=0.0,
                         p_gamma=0.0, p_gamma_inverted=0.0),
    "none": AugmentConfig(p_rotation=0.0, p_scale=0.0, p_elastic=0.0, p_mirror=0.0, p_noise=0.0, p_blur=0.0,
                          p_brightness=0.0, p_contrast=0.0, p_gamma=0.0, p_gamma_inverted=0.0),
}


# ---------------------------------------------------------------------------------------------
# spatial


@dataclass(frozen=True)
class SpatialTransform:
    """A drawn spatial transform: output offset ``d`` (from the patch centre) reads input
    ``centre + matrix @ d + displacement[:, d]``.

    Attributes:
        matrix: ``(D, D)`` linear map (rotation divided by the scale factor).
        displacement: ``(D, *patch)`` elastic displacement in voxels, or ``None``.
    """

    matrix: np.ndarray
    displacement: np.ndarray | None = None


def _rotation(dims: int, angles: np.ndarray) -> np.ndarray:
    if dims == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    out = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def sample_spatial(config: AugmentConfig, rng: np.random.Generator, patch_size: tuple[int, ...]) -> SpatialTransform | None:
    """Draw the spatial transform of one sample, or ``None`` when none applies (a plain crop).

    Args:
        config: the augmentation configuration.
        rng: the sample's generator.
        patch_size: the output patch size (2 or 3 axes).
    """
    dims = len(patch_size)
    matrix = np.eye(dims)
    applied = False
    if rng.random() < config.p_rotation:
        n_angles = 1 if dims == 2 else 3
        angles = np.deg2rad(rng.uniform(-config.rotation_degrees, config.rotation_degrees, size=n_angles))
        matrix = _rotation(dims, angles) @ matrix
        applied = True
    if rng.random() < config.p_scale:
        matrix = matrix / rng.uniform(*config.scale_range)
        applied = True
    displacement = None
    if rng.random() < config.p_elastic:
        from scipy import ndimage

        alpha = rng.uniform(*config.elastic_alpha)
        sigma = rng.uniform(*config.elastic_sigma)
        displacement = np.stack([
            ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=patch_size), sigma, mode="constant") * alpha
            for _ in range(dims)
        ]).astype(np.float32)
        applied = True
    if not applied:
        return None
    return SpatialTransform(matrix=matrix, displacement=displacement)


# ---------------------------------------------------------------------------------------------
# intensity and mirroring


def augment_intensity(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator, *,
                      group: int = 1) -> np.ndarray:
    """Noise, blur, brightness, contrast and gamma on one sample ``(C, *patch)`` float32 (in place).

    Args:
        image: the sample, C-contiguous.
        config: the augmentation configuration.
        rng: the sample's generator.
        group: consecutive channels that are one modality at neighbouring slices (a 2.5-D sample,
            ``group = 2k + 1``): each random choice is drawn once per group and applied to all of its
            channels alike, with statistics (mean, range) taken over the group.

    Returns:
        ``image`` (modified in place).
    """
    from scipy import ndimage

    if image.shape[0] % group:
        raise ValueError(f"{image.shape[0]} channels do not form groups of {group}")
    grouped = image.reshape(image.shape[0] // group, group, *image.shape[1:])  # a view: edits reach image
    if rng.random() < config.p_noise:
        std = np.float32(math.sqrt(rng.uniform(*config.noise_variance)))
        noise = rng.standard_normal(size=image.shape, dtype=np.float32)
        noise *= std
        image += noise
    if rng.random() < config.p_blur:
        for c in range(grouped.shape[0]):
            if rng.random() < 0.5:
                sigma = rng.uniform(*config.blur_sigma)
                for j in range(group):
                    grouped[c, j] = ndimage.gaussian_filter(grouped[c, j], sigma)
    if rng.random() < config.p_brightness:
        for c in range(grouped.shape[0]):
            grouped[c] *= np.float32(rng.uniform(*config.brightness_range))
    if rng.random() < config.p_contrast:
        for c in range(grouped.shape[0]):
            ch = grouped[c]
            lo, hi, mean = ch.min(), ch.max(), ch.mean()
            ch -= mean
            ch *= np.float32(rng.uniform(*config.contrast_range))
            ch += mean
            np.clip(ch, lo, hi, out=ch)
    for p, invert in ((config.p_gamma_inverted, True), (config.p_gamma, False)):
        if rng.random() < p:
            for c in range(grouped.shape[0]):
                grouped[c] = _gamma(grouped[c], rng.uniform(*config.gamma_range), invert=invert)
    return image


def _gamma(channel: np.ndarray, gamma: float, *, invert: bool) -> np.ndarray:
    """nnU-Net's gamma with retained mean and standard deviation (float32 throughout)."""
    x = np.negative(channel) if invert else channel.copy()
    mean, std = float(x.mean()), float(x.std())
    lo = float(x.min())
    span = float(x.max()) - lo + 1e-7
    x -= np.float32(lo)
    x *= np.float32(1.0 / span)
    np.power(x, np.float32(gamma), out=x)
    if std > 1e-7:
        new_mean, new_std = float(x.mean()), float(x.std())
        x -= np.float32(new_mean)
        x *= np.float32(std / (new_std + 1e-8))
        x += np.float32(mean)
    else:
        x *= np.float32(span)
        x += np.float32(lo)
    return np.negative(x) if invert else x


def mirror(image: np.ndarray, label: np.ndarray | None, axes: tuple[int, ...], p: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip each spatial axis in ``axes`` with probability ``p`` (image ``(C, *patch)``, label ``(*patch)``)."""
    flips = [a for a in axes if rng.random() < p]
    if flips:
        image = np.flip(image, axis=[a + 1 for a in flips])
        if label is not None:
            label = np.flip(label, axis=flips)
    return image, label
