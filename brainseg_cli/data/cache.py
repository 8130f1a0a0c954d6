"""The preprocessed cache: every case preprocessed once, stored as ``.npy`` and memory-mapped.

Layout of the cache folder (``RUN_DIR/cache/`` by default)::

    <case>_data.npy   (C, x, y, z) float32, C-contiguous (memory-mapped at load)
    <case>_seg.npy    (x, y, z) uint8
    <case>_fg.npy     (N, 4) int32 rows [label, x, y, z]: sampled voxels of every label > 0
    <case>.json       properties: key_hash, PreprocessInfo, shape, label voxel counts, per-slice
                      foreground counts along the plan's slice axis (2-D plans)
    index.json        format_version, key (the plan's preprocessing keys), key_hash, cases

A case is complete when its ``<case>.json`` exists (written last, atomically, after the arrays)
and carries the current ``key_hash`` = hash of the plan's preprocessing keys and the dataset
fingerprint's hash; anything else is preprocessed again, so a changed plan re-preprocesses and an
interrupted build resumes. Foreground coordinates follow nnU-Net: per label, up to 10000 voxels
drawn at random, but at least 1 % of the label's voxels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.data.fingerprint import hash_str
from brainseg_cli.data.layout import read_case
from brainseg_cli.data.plan_schema import Plan, as_plan
from brainseg_cli.data.preprocessing import preprocess_case
from brainseg_cli.errors import InputError
from brainseg_cli.io import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX = "index.json"
#: Foreground voxels kept per label (at least 1 % of the label's voxels when that is more).
FOREGROUND_SAMPLES = 10000


def key_hash(plan: Plan | Mapping[str, Any]) -> str:
    """Hash of the plan's preprocessing keys and its fingerprint hash (16 hex digits)."""
    plan = as_plan(plan)
    body = {"key": plan.preprocessing_key(), "fingerprint": plan.fingerprint_hash}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def foreground_coordinates(seg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sampled voxel coordinates of every label > 0 of ``seg`` ``(x, y, z)``, as ``(N, 4)`` int32 [label, x, y, z]."""
    rows = []
    for value in np.unique(seg):
        if value == 0:
            continue
        coords = np.argwhere(seg == value)
        n = min(len(coords), max(FOREGROUND_SAMPLES, int(np.ceil(0.01 * len(coords)))))
        pick = np.sort(rng.choice(len(coords), size=n, replace=False))
        chosen = coords[pick]
        rows.append(np.concatenate([np.full((n, 1), int(value)), chosen], axis=1))
    if not rows:
        return np.zeros((0, 1 + seg.ndim), dtype=np.int32)
    return np.concatenate(rows).astype(np.int32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _write_json(path: Path, data: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _case_json(folder: Path, case: str) -> Path:
    return folder / f"{case}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def preprocess_to_cache(info: Any, plan: Plan, case: str, folder: Path, khash: str) -> dict[str, Any]:
    """Read, preprocess and store one case; return its properties (also written as ``<case>.json``)."""
    image, label = read_case(info, case, with_label=True)
    data, seg, pinfo = preprocess_case(image, plan, label=label)
    if seg is None:
        seg = np.zeros(data.shape[1:], dtype=np.uint8)
    rng = np.random.default_rng(abs(hash_str(case)) % (2**32))
    fg = foreground_coordinates(seg, rng)
    counts = np.bincount(seg.ravel(), minlength=1)
    slice_fg = None
    if plan.two_d and plan.slice_axis is not None:
        axis = int(plan.slice_axis)
        other = tuple(a for a in range(3) if a != axis)
        slice_fg = [int(v) for v in np.count_nonzero(seg, axis=other)]
    _save_npy(folder / f"{case}_data.npy", data)
    _save_npy(folder / f"{case}_seg.npy", seg)
    _save_npy(folder / f"{case}_fg.npy", fg)
    props = {
        "case": case,
        "key_hash": khash,
        "shape": [int(n) for n in data.shape],
        "info": pinfo.to_dict(),
        "label_voxels": {str(k): int(c) for k, c in enumerate(counts) if c},
        "slice_foreground": slice_fg,
    }
    _write_json(_case_json(folder, case), props)
    return props


class PreprocessedCache:
    """A built cache folder (see the module docstring).

    Attributes:
        folder: the cache folder.
        cases: the cases it holds, sorted.
        key_hash: the plan/fingerprint hash it was built for.
    """

    def __init__(self, folder: Path, index: Mapping[str, Any], properties: Mapping[str, Mapping[str, Any]]) -> None:
        self.folder = Path(folder)
        self.key_hash = str(index["key_hash"])
        self.key = dict(index["key"])
        self._props = {k: dict(v) for k, v in properties.items()}
        self.cases: tuple[str, ...] = tuple(sorted(self._props))

    def _check(self, case: str) -> None:
        if case not in self._props:
            raise InputError(f"{self.folder}: case '{case}' is not in the preprocessed cache ({len(self.cases)} cases)")

    def load(self, case: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(data (C, x, y, z) float32, seg (x, y, z) uint8)`` of ``case`` (read-only memory maps by default)."""
        self._check(case)
        mode = "r" if mmap else None
        try:
            data = np.load(self.folder / f"{case}_data.npy", mmap_mode=mode)
            seg = np.load(self.folder / f"{case}_seg.npy", mmap_mode=mode)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.folder}: cannot read cached case '{case}': {exc}") from None
        return data, seg

    def foreground(self, case: str) -> dict[int, np.ndarray]:
        """Label -> ``(N, 3)`` int32 sampled voxel coordinates of that label (labels > 0 present in the case)."""
        self._check(case)
        rows = np.load(self.folder / f"{case}_fg.npy")
        return {int(v): rows[rows[:, 0] == v, 1:] for v in np.unique(rows[:, 0])}

    def properties(self, case: str) -> dict[str, Any]:
        """The case's properties (``info``: :class:`PreprocessInfo` dict, ``shape``, ``label_voxels``, ``slice_foreground``)."""
        self._check(case)
        return self._props[case]


def open_cache(folder: str | Path, *, plan: Plan | Mapping[str, Any] | None = None) -> PreprocessedCache:
    """Open a built cache.

    Args:
        folder: the cache folder.
        plan: when given, the cache must have been built for it (same preprocessing keys and fingerprint).

    Raises:
        InputError: no ``index.json``, a case's files are missing, or the cache belongs to another plan.
    """
    folder = Path(folder)
    index = _read_json(folder / INDEX)
    if index is None or index.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{folder}: not a preprocessed cache (missing or unreadable {INDEX})")
    if plan is not None and key_hash(plan) != index["key_hash"]:
        raise InputError(f"{folder}: the cache was built for another plan (key {index['key_hash']}, "
                         f"plan needs {key_hash(plan)}); rebuild it")
    props = {}
    for case in index["cases"]:
        p = _read_json(_case_json(folder, case))
        if p is None or p.get("key_hash") != index["key_hash"]:
            raise InputError(f"{folder}: cached case '{case}' is missing or stale; rebuild the cache")
        props[case] = p
    return PreprocessedCache(folder, index, props)


def build_cache(
    info: Any,
    plan: Plan | Mapping[str, Any],
    *,
    folder: str | Path,
    cases: Sequence[str] | None = None,
    workers: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> PreprocessedCache:
    """Preprocess cases into ``folder`` (cases already there for the same plan are kept).

    Args:
        info: the :class:`~brainseg_cli.data.layout.DatasetInfo`.
        plan: the plan.
        folder: the cache folder (created if missing).
        cases: cases to hold (default: all training cases).
        workers: processes preprocessing cases in parallel.
        progress: optional callback ``(description, done, total)``.

    Returns:
        The :class:`PreprocessedCache`.
    """
    plan = as_plan(plan)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases = list(info.training_cases if cases is None else cases)
    khash = key_hash(plan)
    props: dict[str, dict[str, Any]] = {}
    todo = []
    for case in cases:
        p = _read_json(_case_json(folder, case))
        if p is not None and p.get("key_hash") == khash and all(
                (folder / f"{case}_{part}.npy").exists() for part in ("data", "seg", "fg")):
            props[case] = p
        else:
            todo.append(case)
    done = len(props)
    if todo:
        logger.info("preprocessing %d case(s) into %s (%d cached)", len(todo), folder, done)
    if progress:
        progress("preprocess", done, len(cases))
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futures = {case: pool.submit(preprocess_to_cache, info, plan, case, folder, khash) for case in todo}
            for case, fut in futures.items():
                props[case] = fut.result()
                done += 1
                if progress:
                    progress("preprocess", done, len(cases))
    else:
        for case in todo:
            props[case] = preprocess_to_cache(info, plan, case, folder, khash)
            done += 1
            if progress:
                progress("preprocess", done, len(cases))
    index = {"format_version": FORMAT_VERSION, "key": plan.preprocessing_key(), "key_hash": khash,
             "cases": sorted(props)}
    _write_json(folder / INDEX, index)
    return PreprocessedCache(folder, index, props)
