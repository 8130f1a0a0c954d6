"""Label mappings from source conventions to brainseg's canonical labels (docs/DEFINITIONS.md §1-2).

One :class:`LabelMap` per row of the docs/DEFINITIONS.md §1-2 table, registered under a preset name
(``brats2015``, ``brats2017``, ``brats2023``, ``msd``, ``brats2012``, ``lgg``, ``mrbrains18``;
year aliases such as ``brats2013`` or ``brats2020`` resolve to their generation), plus
:func:`parse_label_map` for explicit ``"2:1,1:2,3:2,4:3"`` pairs.

Canonical tumour labels: 0 background, 1 edema, 2 non-enhancing / necrotic tumour core,
3 enhancing tumour; regions WT = [1, 2, 3], TC = [2, 3], ET = [3].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from brainseg_cli.errors import ConfigError, InputError, look_up

#: Canonical tumour classes (name -> label), shared by every tumour source.
TUMOUR_LABELS: dict[str, int] = {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}
#: BraTS evaluation regions in canonical tumour labels.
BRATS_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}

#: MRBrainS18 classes (identity mapping).
MRBRAINS18_LABELS: dict[str, int] = {
    "background": 0, "cortical grey matter": 1, "basal ganglia": 2, "white matter": 3,
    "white matter lesions": 4, "cerebrospinal fluid": 5, "ventricles": 6, "cerebellum": 7,
    "brain stem": 8, "infarction": 9, "other": 10,
}


@dataclass(frozen=True)
class LabelMap:
    """A source label convention and its mapping onto canonical labels.

    Attributes:
        name: preset name (``"explicit"`` for user-given pairs).
        description: one line naming the source convention.
        source_labels: source value -> meaning, background included.
        mapping: source value -> canonical value; every source value is a key.
        labels: canonical class name -> value, consecutive from 0 (written to ``dataset.json``).
        regions: evaluation region name -> canonical values (``{}`` when the source has none).
        optional: canonical values listed in ``dataset.json`` only when some case contains them
            (BraTS 2024's resection cavity).
    """

    name: str
    description: str
    source_labels: dict[int, str]
    mapping: dict[int, int]
    labels: dict[str, int]
    regions: dict[str, list[int]] = field(default_factory=dict)
    optional: frozenset[int] = frozenset()

    @property
    def source_values(self) -> list[int]:
        """The accepted source label values, ascending."""
        return sorted(self.mapping)

    def apply(self, array: np.ndarray, *, what: str) -> np.ndarray:
        """Map a source label array to canonical labels.

        Args:
            array: source labels, any shape; integer dtype, or float with integral values.
            what: names the case in error messages.

        Returns:
            uint8 array of the same shape (and memory order) with canonical labels.

        Raises:
            InputError: non-integral values, or values outside :attr:`source_values` (the message
                lists the unexpected values with their voxel counts and the case).
        """
        return self.map_and_count(array, what=what)[0]

    def map_and_count(self, array: np.ndarray, *, what: str) -> tuple[np.ndarray, dict[int, int]]:
        """:meth:`apply`, also returning canonical label -> voxel count (every canonical label listed)."""
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)):
                raise InputError(f"{what}: label contains NaN or infinite values")
            frac = array != np.rint(array)
            if np.any(frac):
                raise InputError(f"{what}: label has non-integer values {np.unique(array[frac])[:5].tolist()}")
            array = array.astype(np.int64)
        elif array.dtype.kind == "b":
            array = array.astype(np.uint8)
        elif array.dtype.kind not in "iu":
            raise InputError(f"{what}: label has non-numeric dtype {array.dtype}")
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        flat = array.ravel(order=order)  # a view for contiguous arrays
        table = np.full(max(self.mapping) + 1, -1, dtype=np.int16)  # -1: not a source label
        for src, dst in self.mapping.items():
            table[src] = dst
        low, high = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
        mapped = np.take(table, flat, mode="clip") if low >= 0 and high < table.size else None
        if mapped is None or mapped.min(initial=0) < 0:
            values, counts = np.unique(flat, return_counts=True)
            valid = set(self.mapping)
            unexpected = [(v, int(c)) for v, c in zip(values.tolist(), counts.tolist()) if int(v) not in valid]
            listing = ", ".join(f"{int(v)} ({c} voxels)" for v, c in unexpected)
            raise InputError(f"{what}: unexpected label values {listing}; {self.name} labels are {self.source_values}")
        mapped = mapped.astype(np.uint8).reshape(array.shape, order=order)
        canonical = {v: int(np.count_nonzero(mapped == v)) for v in sorted(set(self.labels.values()))}
        return mapped, canonical

    def to_json(self) -> dict:
        """The JSON-able description written under ``dataset.json["brainseg"]``."""
        return {
            "label_map": self.name,
            "source_labels": {str(k): v for k, v in sorted(self.source_labels.items())},
            "label_mapping": {str(k): v for k, v in sorted(self.mapping.items())},
        }


def _tumour(name: str, description: str, source: dict[int, str], mapping: dict[int, int], **kw) -> LabelMap:
    return LabelMap(name, description, {0: "background", **source}, {0: 0, **mapping}, dict(TUMOUR_LABELS),
                    {k: list(v) for k, v in BRATS_REGIONS.items()}, **kw)


LABEL_MAPS: dict[str, LabelMap] = {
    "brats2015": _tumour("brats2015", "BraTS 2013-2015 (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing)",
                         {1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"},
                         {2: 1, 1: 2, 3: 2, 4: 3}),
    "brats2017": _tumour("brats2017", "BraTS 2017-2021 (1 NCR/NET, 2 ED, 4 ET)",
                         {1: "necrotic / non-enhancing tumour core", 2: "peritumoral edema", 4: "enhancing tumour"},
                         {2: 1, 1: 2, 4: 3}),
    "brats2023": LabelMap(
        "brats2023", "BraTS 2023+ GLI (1 NETC, 2 SNFH, 3 ET; 2024: 4 RC)",
        {0: "background", 1: "non-enhancing tumour core", 2: "surrounding FLAIR hyperintensity",
         3: "enhancing tumour", 4: "resection cavity"},
        {0: 0, 2: 1, 1: 2, 3: 3, 4: 4}, {**TUMOUR_LABELS, "resection cavity": 4},
        {k: list(v) for k, v in BRATS_REGIONS.items()}, frozenset({4})),
    "msd": _tumour("msd", "Decathlon Task01 (1 edema, 2 non-enhancing, 3 enhancing)",
                   {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}, {1: 1, 2: 2, 3: 3}),
    "brats2012": LabelMap("brats2012", "BraTS 2012 (1 edema, 2 active tumour)",
                          {0: "background", 1: "edema", 2: "active tumour"}, {0: 0, 1: 1, 2: 2},
                          {"background": 0, "edema": 1, "active tumour": 2}, {"WT": [1, 2], "TC": [2]}),
    "lgg": LabelMap("lgg", "Kaggle LGG masks (0 / 255)", {0: "background", 255: "FLAIR abnormality"},
                    {0: 0, 255: 1}, {"background": 0, "FLAIR abnormality": 1}),
    "mrbrains18": LabelMap("mrbrains18", "MRBrainS18 tissue classes 0-10", {v: k for k, v in MRBRAINS18_LABELS.items()},
                           {v: v for v in MRBRAINS18_LABELS.values()}, dict(MRBRAINS18_LABELS)),
}

#: Other names accepted for the presets (years of the same generation, Decathlon).
LABEL_MAP_ALIASES: dict[str, str] = {
    "brats2013": "brats2015", "brats2014": "brats2015",
    "brats2018": "brats2017", "brats2019": "brats2017", "brats2020": "brats2017", "brats2021": "brats2017",
    "brats2024": "brats2023", "decathlon": "msd", "task01": "msd",
}

_PAIRS = re.compile(r"^\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*$")


def get_label_map(name: str) -> LabelMap:
    """Return the preset called ``name`` (case-insensitive; aliases allowed).

    Raises:
        RegistryError: unknown name; the message lists the presets and the closest match.
    """
    key = name.strip().lower()
    return look_up(LABEL_MAP_ALIASES.get(key, key), {**LABEL_MAPS, **{a: LABEL_MAPS[t] for a, t in LABEL_MAP_ALIASES.items()}},
                   "label map")


def parse_label_map(spec: str) -> LabelMap:
    """Parse ``--label-map``: a preset name or explicit ``source:target`` pairs.

    Explicit pairs (``"2:1,1:2,3:2,4:3"``) map each source value to a target; 0 maps to 0 unless
    given. Targets together with 0 must be consecutive from 0. Classes are named ``label_<k>``
    and no regions are defined.

    Args:
        spec: the option value.

    Returns:
        The :class:`LabelMap`.

    Raises:
        ConfigError: malformed pairs, a source value given twice, values above 255, or targets not
            consecutive; RegistryError (a ConfigError) for an unknown preset.
    """
    if not _PAIRS.match(spec):
        if re.search(r"\d\s*:", spec):
            raise ConfigError(f"--label-map '{spec}': expected source:target pairs like '2:1,1:2,4:3'")
        return get_label_map(spec)
    mapping: dict[int, int] = {0: 0}
    given: set[int] = set()
    for pair in spec.split(","):
        src, dst = (int(v) for v in pair.split(":"))
        if src in given:
            raise ConfigError(f"--label-map '{spec}': source value {src} is mapped twice")
        if src > 65535 or dst > 255:
            raise ConfigError(f"--label-map '{spec}': values must be <= 65535 (source) and <= 255 (target); got {src}:{dst}")
        given.add(src)
        mapping[src] = dst
    targets = sorted(set(mapping.values()))
    if targets != list(range(len(targets))):
        raise ConfigError(f"--label-map '{spec}': target labels must be consecutive from 0; got {targets}")
    labels = {("background" if v == 0 else f"label_{v}"): v for v in targets}
    return LabelMap("explicit", f"explicit mapping {spec}", {k: f"source label {k}" for k in mapping}, mapping, labels)


def used_labels(label_map: LabelMap, present: Mapping[int, int]) -> dict[str, int]:
    """The ``labels`` for ``dataset.json``: all of ``label_map.labels`` except optional ones never seen.

    Args:
        label_map: the mapping applied.
        present: canonical value -> voxel count over all converted cases.
    """
    return {name: v for name, v in label_map.labels.items()
            if v not in label_map.optional or present.get(v, 0) > 0}
