"""Sliding-window inference with Gaussian importance weighting and optional mirroring.

One implementation used by ``predict``, training validation and ``evaluate``:

* **Windows.** Positions follow nnU-Net (``compute_steps_for_sliding_window``): along each axis the
  target step is ``patch * (1 - overlap)`` voxels, the number of windows is
  ``ceil((size - patch) / step) + 1``, and the windows are spread evenly so that the first starts at
  0 and the last ends flush with the end of the image (positions rounded to whole voxels).
* **Importance map.** A Gaussian centred on voxel ``patch // 2`` with ``sigma = patch * sigma_scale``
  per axis (``sigma_scale = 1/8`` by default), normalised to a maximum of 1, zeros replaced by the
  smallest non-zero value (so no voxel can get weight 0). This is nnU-Net's ``compute_gaussian``
  (a delta at ``patch // 2`` filtered with a Gaussian is the sampled Gaussian itself). MONAI's
  ``compute_importance_map(mode="gaussian")`` uses the same sigma but centres even-sized windows
  half a voxel earlier, at ``(patch - 1) / 2``, and clamps weights below 1e-3. The map is cached
  per patch size, sigma and device.
* **Activation per window.** Each window's logits go through the activation (softmax over classes
  or an element-wise sigmoid) *before* weighting, so the result is a weighted mean of per-window
  probabilities: always in [0, 1], and for softmax the classes still sum to 1. (nnU-Net averages
  logits and applies the activation once at the end; MONAI leaves the choice to the caller.)
* **Mirroring** (``tta=True``): every window is also predicted on its mirror images over all
  ``2**D`` subsets of the spatial axes; the un-mirrored probabilities are averaged with equal weight.
* **Images smaller than the patch** are padded with zeros (split evenly before/after, as nnU-Net's
  ``pad_nd_image``) and the result is cropped back to the input's shape.
* **Precision** ``"fp32"`` runs as is; ``"bf16"`` / ``"fp16"`` run the network under
  :func:`torch.autocast` on the network's device; accumulation is always float32.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg_cli.errors import ConfigError, look_up
from brainseg_cli.models.precision import AUTOCAST_DTYPES, autocast_context

logger = logging.getLogger(__name__)

#: Activation names accepted by :func:`sliding_window_predict`.
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid")


def window_starts(image_size: Sequence[int], patch_size: Sequence[int], *, overlap: float) -> list[list[int]]:
    """Start indices of the windows along each axis (nnU-Net's rule).

    Args:
        image_size: spatial size of the (padded) image, one int per axis; each >= the patch.
        patch_size: window size, one int per axis.
        overlap: fraction of a window shared with its neighbour, in [0, 1); the step is
            ``patch * (1 - overlap)``.

    Returns:
        One sorted list of start indices per axis; the first is 0 and the last is
        ``image_size - patch_size`` (the last window ends flush with the image).

    Raises:
        ConfigError: ``overlap`` outside [0, 1) or an axis smaller than the patch.
    """
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    if len(image_size) != len(patch_size):
        raise ConfigError(f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in dimensions")
    starts: list[list[int]] = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ConfigError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}")
        step = patch * (1.0 - overlap)
        num = int(math.ceil((size - patch) / step)) + 1
        span = size - patch
        actual = span / (num - 1) if num > 1 else 0.0
        starts.append([int(np.round(actual * i)) for i in range(num)])
    return starts


@lru_cache(maxsize=16)
def _gaussian_cpu(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    axes = []
    for p in patch_size:
        centre = p // 2
        sigma = p * sigma_scale
        x = np.arange(p, dtype=np.float64) - centre
        axes.append(np.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).astype(np.float64))
    g = axes[0]
    for a in axes[1:]:
        g = np.multiply.outer(g, a)
    g = g / g.max()
    # A weight of exactly 0 (float underflow for tiny sigmas) would divide by zero at the image
    # border: replace it by the smallest positive value, as nnU-Net and MONAI do.
    positive = g[g > 0]
    g[g <= 0] = positive.min()
    t = torch.from_numpy(g.astype(np.float32))
    t.requires_grad_(False)
    return t


_DEVICE_CACHE: dict[tuple[tuple[int, ...], float, str], torch.Tensor] = {}


def gaussian_importance_map(
    patch_size: Sequence[int], *, sigma_scale: float = 0.125, device: torch.device | str | None = None
) -> torch.Tensor:
    """The Gaussian importance map of one window (cached).

    Args:
        patch_size: window size, one int per spatial axis.
        sigma_scale: sigma of each axis as a fraction of the window size (1/8 in nnU-Net and MONAI).
        device: where the map should live (default CPU).

    Returns:
        A float32 tensor of shape ``patch_size``, maximum 1 at voxel ``patch // 2``, strictly
        positive everywhere. Treat it as read-only (it is shared between calls).
    """
    if sigma_scale <= 0:
        raise ConfigError(f"sigma_scale must be positive, got {sigma_scale}")
    patch = tuple(int(p) for p in patch_size)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (patch, float(sigma_scale), str(dev))
    cached = _DEVICE_CACHE.get(key)
    if cached is None:
        cached = _gaussian_cpu(patch, float(sigma_scale)).to(dev)
        if len(_DEVICE_CACHE) > 32:
            _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = cached
    return cached


def network_device(network: nn.Module) -> torch.device:
    """The device of the network's first parameter or buffer (CPU for a parameter-free module)."""
    for tensor in itertools.chain(network.parameters(), network.buffers()):
        return tensor.device
    return torch.device("cpu")


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "softmax":
        return lambda logits: torch.softmax(logits.float(), dim=1)
    if name == "sigmoid":
        return lambda logits: torch.sigmoid(logits.float())
    raise ConfigError(f"unknown activation '{name}'; valid: {', '.join(ACTIVATIONS)}")


def _forward(network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    out = network(batch)
    if isinstance(out, (list, tuple)):  # deep supervision: full resolution first
        out = out[0]
    return out


def mirror_axes_subsets(spatial_dims: int) -> list[tuple[int, ...]]:
    """All ``2**D`` subsets of the spatial axes of a ``(B, C, *spatial)`` batch, identity first."""
    axes = tuple(range(2, 2 + spatial_dims))
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def predict_batch(
    network: nn.Module, batch: torch.Tensor, *, activation: str = "softmax", tta: bool = False
) -> torch.Tensor:
    """Probabilities of one batch of windows, optionally averaged over mirrored inputs.

    Args:
        network: the segmentation network (called as is; put it in eval mode first).
        batch: ``(B, C, *patch)`` input on the network's device.
        activation: ``"softmax"`` (over the class axis) or ``"sigmoid"``.
        tta: average over the ``2**D`` mirror images of the batch (un-mirrored before averaging).

    Returns:
        ``(B, K, *patch)`` float32 probabilities.
    """
    act = _activation(activation)
    if not tta:
        return act(_forward(network, batch))
    subsets = mirror_axes_subsets(batch.ndim - 2)
    total = act(_forward(network, batch))
    for dims in subsets[1:]:
        total.add_(torch.flip(act(_forward(network, torch.flip(batch, dims))), dims))
    return total.div_(len(subsets))


def _window_slices(starts: list[list[int]], patch_size: Sequence[int]) -> list[tuple[slice, ...]]:
    return [tuple(slice(s, s + p) for s, p in zip(corner, patch_size)) for corner in itertools.product(*starts)]


def _context_window(x: torch.Tensor, index: tuple, context: int) -> torch.Tensor:
    """The 2.5-D input of one window: ``x`` is ``(C, S, a, b)``, ``index`` ``(:, slice, sa, sb)``."""
    k = index[1]
    picks = torch.arange(k - context, k + context + 1, device=x.device).clamp_(0, x.shape[1] - 1)
    window = x[(slice(None), picks, *index[2:])]  # (C, 2k+1, pa, pb): only the window is gathered
    return window.reshape(-1, *window.shape[2:])


def sliding_window_predict(
    network: nn.Module,
    image: torch.Tensor | np.ndarray,
    *,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
    tta: bool = False,
    precision: str = "fp32",
    device: torch.device | str | None = None,
    activation: str = "softmax",
    slice_axis: int | None = None,
    slice_context: int = 0,
) -> torch.Tensor:
    """Predict a whole image with overlapping, Gaussian-weighted windows.

    The network is put in eval mode for the call (its previous mode is restored afterwards) and
    run without gradients. See the module docstring for the exact rules.

    Args:
        network: segmentation network mapping ``(B, C, *patch)`` to logits ``(B, K, *patch)``
            (a list/tuple output, as with deep supervision, uses its first element).
        image: ``(C, *spatial)`` input (``(C, X, Y, Z)`` for 3-D, ``(C, X, Y)`` for 2-D), any float
            dtype, on any device.
        patch_size: window size, one int per spatial axis of the *network*.
        overlap: fraction of a window shared with its neighbour, in [0, 1) (0.5 = nnU-Net's step 0.5).
        batch_size: windows per network call.
        sigma_scale: Gaussian sigma as a fraction of the window size per axis.
        tta: also predict the ``2**D`` mirror images of every window and average (D = the
            network's spatial dimensions: in-plane axes only with ``slice_axis``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast on the network's device).
        device: where the network runs and the accumulators live; default: the network's device.
            The network is not moved: it must already be on this device.
        activation: ``"softmax"`` (mutually exclusive classes) or ``"sigmoid"`` (regions).
        slice_axis: for a 2-D network on a ``(C, X, Y, Z)`` volume: the spatial axis (0, 1 or 2)
            along which the volume is cut into slices. Every slice is predicted on its own with a
            2-D ``patch_size``; windows of all slices are batched together.
        slice_context: with ``slice_axis``: the network also sees this many neighbouring slices on
            each side as channels (2.5-D, channel-major as
            :func:`brainseg_cli.data.datasets.context_slab`; slices beyond the volume repeat its
            first or last slice). The network then takes ``C * (2 * slice_context + 1)`` channels.

    Returns:
        ``(K, *spatial)`` float32 probabilities on the CPU, same spatial shape as ``image``.

    Raises:
        ConfigError: invalid overlap, batch size, precision, activation, slice axis or patch
            dimensions.
    """
    image = torch.as_tensor(image)
    patch = tuple(int(p) for p in patch_size)
    extra = 0 if slice_axis is None else 1
    if image.ndim != len(patch) + 1 + extra:
        expected = f"(C, {len(patch) + extra} spatial axes)"
        raise ConfigError(
            f"image of shape {tuple(image.shape)} does not match a {len(patch)}-D patch {patch}"
            f"{' with a slice axis' if extra else ''}: expected {expected}"
        )
    if slice_axis is not None and not 0 <= slice_axis < image.ndim - 1:
        raise ConfigError(f"slice axis must be in 0..{image.ndim - 2}, got {slice_axis}")
    if slice_context < 0 or (slice_context and slice_axis is None):
        raise ConfigError(f"slice context must be >= 0 and needs a slice axis, got {slice_context}")
    if any(p < 1 for p in patch):
        raise ConfigError(f"patch size must be positive, got {patch}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation '{activation}'; valid: {', '.join(ACTIVATIONS)}")
    look_up(precision, AUTOCAST_DTYPES, "precision")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    dev = torch.device(device) if device is not None else network_device(network)

    x = image.to(device=dev, dtype=torch.float32)
    if slice_axis is not None:
        x = torch.movedim(x, slice_axis + 1, 1)  # (C, S, a, b): slices second
    lead = 1 + extra  # axes before the network's spatial axes: C [, S]
    spatial = tuple(x.shape[lead:])
    pad_before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch)]
    pad_after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch, pad_before)]
    if any(pad_before) or any(pad_after):
        pads: list[int] = []
        for b, a in zip(reversed(pad_before), reversed(pad_after)):
            pads += [b, a]
        x = F.pad(x, pads, mode="constant", value=0.0)
    padded = tuple(x.shape[lead:])
    windows = _window_slices(window_starts(padded, patch, overlap=overlap), patch)
    weight = gaussian_importance_map(patch, sigma_scale=sigma_scale, device=dev)
    norm = torch.zeros(padded, dtype=torch.float32, device=dev)
    for sl in windows:
        norm[sl] += weight
    if slice_axis is None:
        jobs = [(slice(None), *sl) for sl in windows]
    else:
        jobs = [(slice(None), k, *sl) for k in range(x.shape[1]) for sl in windows]
    logger.debug("sliding window: image %s, patch %s, %d windows, batch %d, tta %s, %s",
                 tuple(image.shape[1:]), patch, len(jobs), batch_size, tta, precision)

    out = torch.zeros((0,), dtype=torch.float32, device=dev)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), autocast_context(precision, dev):
            for first in range(0, len(jobs), batch_size):
                chunk = jobs[first:first + batch_size]
                if slice_context:
                    batch = torch.stack([_context_window(x, index, slice_context) for index in chunk])
                else:
                    batch = torch.stack([x[index] for index in chunk])
                probs = predict_batch(network, batch, activation=activation, tta=tta)
                if first == 0:
                    out = torch.zeros((probs.shape[1], *x.shape[1:]), dtype=torch.float32, device=dev)
                for i, index in enumerate(chunk):
                    out[index].addcmul_(probs[i], weight)
    finally:
        network.train(was_training)
    out.div_(norm)
    crop = tuple(slice(b, b + s) for b, s in zip(pad_before, spatial))
    out = out[(slice(None),) * lead + crop]
    if slice_axis is not None:
        out = torch.movedim(out, 1, slice_axis + 1)
    return out.to("cpu").contiguous()
