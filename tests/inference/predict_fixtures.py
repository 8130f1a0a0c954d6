"""Checkpoints, plans and input folders for the inference tests (importable as a plain module).

``tests/helpers`` (training engineer) will provide a shared briefly trained checkpoint; until then
the inference tests make their own: a tiny ``unet`` saved in the docs/DEFINITIONS.md §5 format, with random or
briefly fitted weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from brainseg_cli import __version__
from brainseg_cli.checkpoint import save_checkpoint
from brainseg_cli.io import Image, write_image
from brainseg_cli.models import build_model

TUMOUR_LABELS = {"background": 0, "outer": 1, "inner": 2}


def make_plan(*, config: str = "3d", channels: Sequence[str] = ("T1", "FLAIR"), labels=None, regions=None,
              region_based: bool = False, patch_size: Sequence[int] = (16, 16, 16),
              target_spacing: Sequence[float] = (1.0, 1.0, 1.0), orientation: str = "LPS",
              crop_to_brain: bool = True, slice_axis: int | None = None, source_labels=None,
              depth: int = 2, base_features: int = 4) -> dict:
    """A plan dict with the keys preprocessing and prediction read."""
    labels = dict(TUMOUR_LABELS if labels is None else labels)
    regions = dict(regions or {})
    num_classes = len(regions) if region_based else len(labels)
    dims = 2 if config == "2d" else 3
    plan = {
        "format_version": 1, "dataset": "synthetic", "config": config, "channels": list(channels),
        "labels": labels, "num_classes": num_classes, "regions": regions, "region_based": region_based,
        "orientation": orientation, "target_spacing": [float(s) for s in target_spacing],
        "slice_axis": slice_axis if config == "2d" else None, "patch_size": list(patch_size), "batch_size": 2,
        "normalization": [{"channel": c, "scheme": "zscore", "lower_pct": 10.0, "upper_pct": 99.0} for c in channels],
        "crop_to_brain": crop_to_brain, "background": "border",
        "resampling": {"image_order": 3, "label_order": 0, "probability_order": 1, "anisotropy_threshold": 3.0},
        "model": {"name": "unet", "spatial_dims": dims, "in_channels": len(channels), "num_classes": num_classes,
                  "config": {"depth": depth, "base_features": base_features}},
    }
    if source_labels is not None:
        plan["source_labels"] = {str(k): int(v) for k, v in source_labels.items()}
    return plan


def make_network(plan: dict, *, seed: int = 0) -> torch.nn.Module:
    """The plan's network with seeded random weights."""
    torch.manual_seed(seed)
    m = plan["model"]
    return build_model(m["name"], spatial_dims=m["spatial_dims"], in_channels=m["in_channels"],
                       num_classes=m["num_classes"], **m["config"])


def save_model_checkpoint(path: Path, plan: dict, network: torch.nn.Module, *, postprocessing=None) -> Path:
    """Save ``network`` with ``plan`` as a docs/DEFINITIONS.md §5 checkpoint."""
    payload = {
        "tool_version": __version__,
        "model": {"name": plan["model"]["name"], "config": dict(network.config)},
        "plan": plan,
        "channels": list(plan["channels"]),
        "labels": dict(plan["labels"]),
        "regions": dict(plan["regions"]),
        "postprocessing": postprocessing if postprocessing is not None else {
            name: {"largest_component": False} for name, v in plan["labels"].items() if v != 0},
        "training": {"epoch": 0, "best_val_dice": 0.0, "dataset_fingerprint": "synthetic", "seed": 0},
        "state_dict": network.state_dict(),
    }
    return save_checkpoint(path, payload)


def random_checkpoint(path: Path, *, seed: int = 0, postprocessing=None, **plan_kwargs) -> Path:
    """A checkpoint with random weights (``plan_kwargs`` go to :func:`make_plan`)."""
    plan = make_plan(**plan_kwargs)
    return save_model_checkpoint(path, plan, make_network(plan, seed=seed), postprocessing=postprocessing)


def cube_volume(seed: int, *, shape=(32, 32, 24), channels: int = 2, background: bool = True):
    """A case with a bright box (label 1) around a brighter box (label 2).

    Returns:
        ``(image (C, *shape) float32, label (*shape) uint8)``; with ``background`` the volume has a
        zero border (a 'skull-stripped' background the brain mask finds), else noise everywhere.
    """
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    size = [max(2, min(6, s - 4), s // 3) for s in shape]
    start = [int(rng.integers(2, max(3, s - z - 1))) for s, z in zip(shape, size)]
    label[tuple(slice(a, a + z) for a, z in zip(start, size))] = 1
    label[tuple(slice(a + z // 4, a + z - z // 4) for a, z in zip(start, size))] = 2
    image = rng.normal(1.0, 0.3, size=(channels, *shape)).astype(np.float32)
    for c in range(channels):
        image[c] += label * (1.5 + 0.5 * c)
    if background:
        inner = tuple(slice(2, s - 2) for s in shape)
        mask = np.zeros(shape, bool)
        mask[inner] = True
        image[:, ~mask] = 0.0
    return image, label


def fit_network(plan: dict, cases: Sequence[tuple[np.ndarray, np.ndarray]], *, steps: int = 60, seed: int = 0,
                lr: float = 0.03) -> torch.nn.Module:
    """Briefly fit the plan's network on preprocessed arrays ``(image (C,...), label (...))`` (whole volumes)."""
    net = make_network(plan, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    region_based = plan["region_based"]
    net.train()
    patch = [int(p) for p in plan["patch_size"]]
    rng = np.random.default_rng(seed)
    for step in range(steps):
        img, lab = cases[int(rng.integers(len(cases)))]
        spatial = lab.shape[-len(patch):]
        if step % 2 and lab.any():  # every other patch centred on foreground
            centre = np.argwhere(lab > 0)[int(rng.integers(int((lab > 0).sum())))]
        else:
            centre = [int(rng.integers(s)) for s in spatial]
        sl = tuple(slice(int(np.clip(c - p // 2, 0, max(s - p, 0))), int(np.clip(c - p // 2, 0, max(s - p, 0))) + p)
                   for c, p, s in zip(centre, patch, spatial))
        x = torch.from_numpy(np.ascontiguousarray(img[(slice(None), *sl)]))[None]
        y = torch.from_numpy(np.ascontiguousarray(lab[sl])).long()[None]
        out = net(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        if region_based:
            target = torch.stack([torch.isin(y, torch.tensor(r)) for r in plan["regions"].values()], 1).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        else:
            weight = torch.tensor([1.0] + [8.0] * (out.shape[1] - 1))  # rare foreground classes
            loss = torch.nn.functional.cross_entropy(out, y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def nnunet_steps(image_size, tile_size, tile_step_size):
    """nnU-Net v2's compute_steps_for_sliding_window, copied as an independent reference."""
    target = [i * tile_step_size for i in tile_size]
    num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
    steps = []
    for dim in range(len(tile_size)):
        max_step = image_size[dim] - tile_size[dim]
        actual = max_step / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


def reference_sliding_window(net, image: torch.Tensor, patch, overlap: float, act: str) -> torch.Tensor:
    """An independent, slow, window-by-window sliding window (image at least the patch size)."""
    spatial = image.shape[1:]
    starts = nnunet_steps(spatial, patch, 1 - overlap)
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(tmp, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = torch.from_numpy(g / g.max()).float()
    acc = None
    norm = torch.zeros(spatial)
    net.eval()
    with torch.no_grad():
        for corner in itertools.product(*starts):
            sl = tuple(slice(c, c + p) for c, p in zip(corner, patch))
            logits = net(image[(slice(None), *sl)][None])[0]
            probs = torch.softmax(logits, 0) if act == "softmax" else torch.sigmoid(logits)
            if acc is None:
                acc = torch.zeros((probs.shape[0], *spatial))
            acc[(slice(None), *sl)] += probs * g
            norm[sl] += g
    return acc / norm


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """A rotation about the z axis (an oblique acquisition)."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # index axes towards R, A, S (LPS coordinates)


def write_dataset_folder(folder: Path, cases: dict[str, Image], *, channels: Sequence[str] | None = None,
                         ending: str = ".nii.gz") -> Path:
    """Write ``{case: Image (C, X, Y, Z)}`` as ``<case>_<cccc><ending>`` files (+ dataset.json if ``channels``)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for case, image in cases.items():
        for c in range(image.num_channels):
            write_image(image.channel(c), folder / f"{case}_{c:04d}{ending}")
    if channels is not None:
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {str(i): n for i, n in enumerate(channels)}, "labels": {"background": 0},
            "numTraining": 0, "file_ending": ending}))
    return folder
