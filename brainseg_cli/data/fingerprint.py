"""The dataset fingerprint: what the planner needs to know about a dataset, read once.

Per case (reading it once with :func:`brainseg_cli.data.layout.read_case`): shape, spacing,
orientation (ITK axis codes), the brain mask (:mod:`brainseg_cli.data.brainmask`) and its bounding
box ("cropped shape"), per-channel intensity statistics inside the brain, and label voxel counts.
Dataset level: the majority orientation, median spacing and median cropped shape expressed in
that orientation's axes, the 10th percentile of each axis' spacing (nnU-Net's anisotropy rule),
per-channel statistics of a deterministic sample of brain voxels pooled over cases (up to
:data:`VOXELS_PER_CASE` per case), and label frequencies.

The fingerprint is JSON-able; :func:`fingerprint_hash` identifies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from brainseg_cli.data.brainmask import background_values, bounding_box, brain_mask
from brainseg_cli.data.layout import read_case
from brainseg_cli.data.preprocessing import axis_codes, reorient_values
from brainseg_cli.errors import InputError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Brain voxels sampled per case and channel for the dataset-level intensity statistics.
VOXELS_PER_CASE = 10000
#: Channels whose values are all integers in [0, 255] are "8-bit" (slice data such as PNG/TIFF).
_PERCENTILES = {"p00_5": 0.5, "p10": 10.0, "median": 50.0, "p99": 99.0, "p99_5": 99.5}


def _channel_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, **{k: 0.0 for k in _PERCENTILES}}
    v = values.astype(np.float64)
    pct = np.percentile(v, list(_PERCENTILES.values()))
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    out.update({k: float(p) for k, p in zip(_PERCENTILES, pct)})
    return out


def case_fingerprint(info: Any, case: str) -> dict[str, Any]:
    """Fingerprint one case (its entry in ``fingerprint["cases"]``, plus ``"samples"`` for pooling).

    Args:
        info: the :class:`~brainseg_cli.data.layout.DatasetInfo`.
        case: a case id of ``info``.

    Returns:
        Dict with ``case, shape, spacing, orientation, cropped_shape, backgrounds, brain_fraction,
        label_voxels, intensity`` (per channel) and ``samples`` (``(C, N)`` float32 sampled brain
        voxel values; dropped from the final fingerprint).
    """
    image, label = read_case(info, case, with_label=True)
    if image.spatial_dims != 3:
        raise InputError(f"case {case}: expected 3-D images, got {image.spatial_dims}-D")
    data = np.asarray(image.array)
    backgrounds = background_values(data)
    mask = brain_mask(data, backgrounds=backgrounds)
    box = bounding_box(mask)
    rng = np.random.default_rng(abs(hash_str(case)) % (2**32))
    intensity, samples, integer, eight_bit = [], [], [], []
    brain = mask.nonzero()
    n_brain = len(brain[0])
    pick = rng.choice(n_brain, size=min(VOXELS_PER_CASE, n_brain), replace=False) if n_brain else np.zeros(0, int)
    idx = tuple(b[pick] for b in brain)
    for c in range(data.shape[0]):
        values = data[c][mask]
        intensity.append(_channel_stats(values))
        samples.append(data[c][idx].astype(np.float32))
        is_int = bool(np.all(np.mod(values, 1) == 0)) if values.size else True
        integer.append(is_int)
        eight_bit.append(bool(is_int and (values.size == 0 or (values.min() >= 0 and values.max() <= 255))))
    label_voxels: dict[str, int] = {}
    if label is not None:
        counts = np.bincount(np.asarray(label.array).ravel(), minlength=max(info.labels.values()) + 1)
        label_voxels = {str(k): int(counts[k]) for k in range(len(counts)) if counts[k]}
    brain_label_voxels = {}
    if label is not None:
        counts = np.bincount(np.asarray(label.array)[mask].ravel(), minlength=max(info.labels.values()) + 1)
        brain_label_voxels = {str(k): int(counts[k]) for k in range(len(counts)) if counts[k]}
    return {
        "case": case,
        "shape": [int(n) for n in image.spatial_shape],
        "spacing": [float(s) for s in image.spacing],
        "orientation": axis_codes(np.asarray(image.direction)),
        "cropped_shape": [int(b - a) for a, b in box],
        "backgrounds": backgrounds,
        "brain_fraction": float(n_brain / mask.size),
        "label_voxels": label_voxels,
        "brain_label_voxels": brain_label_voxels,
        "intensity": intensity,
        "integer_valued": integer,
        "eight_bit": eight_bit,
        "samples": np.stack(samples) if samples else np.zeros((0, 0), np.float32),
    }


def hash_str(text: str) -> int:
    """A stable (process-independent) 64-bit hash of a string."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little", signed=True)


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the fingerprint's canonical JSON, without any ``"hash"`` key."""
    body = {k: v for k, v in fingerprint.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def compute_fingerprint(
    info: Any,
    *,
    cases: Sequence[str] | None = None,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Fingerprint a dataset (module docstring).

    Args:
        info: the :class:`~brainseg_cli.data.layout.DatasetInfo`.
        cases: the cases to read (default: all training cases).
        workers: processes reading cases in parallel (1: in this process).
        progress: optional callback ``(description, done, total)``.

    Returns:
        The fingerprint dict (keys in docs/ARCHITECTURE.md, "Planning and preprocessing (as built)").

    Raises:
        InputError: the dataset has no case to fingerprint, or a case cannot be read.
    """
    cases = list(info.training_cases if cases is None else cases)
    if not cases:
        raise InputError(f"{info.root}: no training cases to fingerprint")
    results: list[dict[str, Any]] = []
    if workers > 1 and len(cases) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(cases))) as pool:
            futures = [pool.submit(case_fingerprint, info, case) for case in cases]
            for i, fut in enumerate(futures):
                results.append(fut.result())
                if progress:
                    progress("fingerprint", i + 1, len(cases))
    else:
        for i, case in enumerate(cases):
            results.append(case_fingerprint(info, case))
            if progress:
                progress("fingerprint", i + 1, len(cases))
    return summarize(info, results)


def summarize(info: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset-level fingerprint from the per-case results of :func:`case_fingerprint`."""
    orientation = Counter(r["orientation"] for r in results).most_common(1)[0][0]
    spacings = np.array([reorient_values(r["spacing"], r["orientation"], orientation) for r in results])
    cropped = np.array([reorient_values(r["cropped_shape"], r["orientation"], orientation) for r in results])
    intensity = []
    for c, name in enumerate(info.channels):
        pooled = np.concatenate([np.asarray(r["samples"][c], dtype=np.float64) for r in results])
        stats = _channel_stats(pooled)
        stats["channel"] = name
        stats["integer_valued"] = all(r["integer_valued"][c] for r in results)
        stats["eight_bit"] = all(r["eight_bit"][c] for r in results)
        intensity.append(stats)
    total = sum(int(np.prod(r["shape"])) for r in results)
    total_brain = sum(int(round(r["brain_fraction"] * np.prod(r["shape"]))) for r in results)
    frequencies = {}
    for name, value in info.labels.items():
        key = str(value)
        vox = sum(r["label_voxels"].get(key, 0) for r in results)
        bvox = sum(r["brain_label_voxels"].get(key, 0) for r in results)
        frequencies[name] = {
            "voxel_fraction": vox / total if total else 0.0,
            "brain_fraction": bvox / total_brain if total_brain else 0.0,
            "case_fraction": sum(1 for r in results if r["label_voxels"].get(key, 0)) / len(results),
        }
    per_case = [{k: v for k, v in r.items() if k not in ("samples", "brain_label_voxels")} for r in results]
    fp = {
        "format_version": FORMAT_VERSION,
        "dataset": info.name,
        "channels": list(info.channels),
        "labels": dict(info.labels),
        "num_cases": len(results),
        "orientation": orientation,
        "spacing_median": [float(v) for v in np.median(spacings, axis=0)],
        "spacing_10th": [float(v) for v in np.percentile(spacings, 10, axis=0)],
        "shape_median": [float(v) for v in np.median(cropped, axis=0)],
        "intensity": intensity,
        "label_frequencies": frequencies,
        "cases": per_case,
    }
    fp["hash"] = fingerprint_hash(fp)
    return fp
