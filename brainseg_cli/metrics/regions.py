"""The structures an evaluation scores: single labels and regions (unions of labels).

Canonical tumour labels (docs/DEFINITIONS.md §1-2): 0 background, 1 edema, 2 non-enhancing / necrotic core,
3 enhancing tumour; the BraTS regions are WT = {1, 2, 3}, TC = {2, 3}, ET = {3}.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brainseg_cli.errors import ConfigError, did_you_mean

#: ``--regions brats``: the BraTS evaluation regions in canonical labels (docs/DEFINITIONS.md §1-2).
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


@dataclass(frozen=True)
class Structure:
    """One scored structure.

    Attributes:
        name: the row name in results (label name, the label value as a string, or region name).
        values: the label values whose union is the mask (one value for a label).
        is_region: True for a region, False for a single label.
    """

    name: str
    values: tuple[int, ...]
    is_region: bool = False


def structure_mask(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """The boolean mask "label in ``values``".

    Args:
        labels: integer label array, any shape (e.g. ``(X, Y, Z)``).
        values: label values of the structure.

    Returns:
        Boolean array of the same shape.
    """
    vals = sorted({int(v) for v in values})
    arr = np.asarray(labels)
    if len(vals) <= 8:
        mask = arr == vals[0]
        for v in vals[1:]:
            mask |= arr == v
        return mask
    if arr.dtype.kind in "ub" and arr.dtype.itemsize == 1:
        lut = np.zeros(256, dtype=bool)
        lut[[v for v in vals if 0 <= v < 256]] = True
        return np.take(lut, arr)
    return np.isin(arr, vals)


def parse_label_token(token: str | int, *, labels: Mapping[str, int] | None, what: str) -> int:
    """Turn a ``--labels`` / ``--exclude-label`` entry (a name or an integer) into a label value.

    Args:
        token: a label name from ``labels`` or an integer (as int or decimal string).
        labels: label name -> value (from ``dataset.json``), or ``None`` when labels have no names.
        what: the option, for messages (e.g. ``"--labels"``).

    Returns:
        The label value.

    Raises:
        ConfigError: neither a known name nor a non-negative integer.
    """
    if isinstance(token, int) and not isinstance(token, bool):
        value = token
    elif labels is not None and token in labels:
        return int(labels[token])
    elif isinstance(token, str) and token.strip().isdigit():
        value = int(token.strip())
    else:
        names = list(labels) if labels else []
        hint = did_you_mean(str(token), names) if names else ""
        known = f"; labels: {', '.join(f'{k}={v}' for k, v in labels.items())}" if labels else " (labels have no names here)"
        raise ConfigError(f"{what}: '{token}' is not a label{hint}{known}")
    if value < 0:
        raise ConfigError(f"{what}: label values are non-negative, got {value}")
    return value


def label_structures(values: Iterable[int], *, names: Mapping[str, int] | None) -> list[Structure]:
    """One :class:`Structure` per label value, named from ``names`` or by the value itself.

    Args:
        values: label values, any order (scored in increasing order).
        names: label name -> value, or ``None``.

    Returns:
        Structures sorted by value.
    """
    by_value = {int(v): k for k, v in (names or {}).items()}
    return [Structure(name=by_value.get(v, str(v)), values=(v,)) for v in sorted({int(v) for v in values})]


def resolve_regions(
    spec: str | None,
    *,
    dataset_regions: Mapping[str, Sequence[int]] | None,
    defined_values: Collection[int] | None,
    source: str,
) -> list[Structure]:
    """The regions to score for ``--regions``.

    Args:
        spec: ``None`` (no regions), ``"dataset"`` (the regions of the reference's ``dataset.json``)
            or ``"brats"`` (WT/TC/ET, :data:`BRATS_REGIONS`).
        dataset_regions: region name -> label values from ``dataset.json`` (``None`` when the
            reference has no ``dataset.json``).
        defined_values: the label values the data defines (``dataset.json`` labels), or ``None``
            when this is checked later against the values found in the data.
        source: names the reference in messages.

    Returns:
        Region structures in definition order.

    Raises:
        ConfigError: unknown spec, ``"dataset"`` without regions in ``dataset.json``, or a region
            using a label value the data does not define.
    """
    if spec is None:
        return []
    if spec == "brats":
        regions: Mapping[str, Sequence[int]] = BRATS_REGIONS
    elif spec == "dataset":
        if not dataset_regions:
            where = "its dataset.json defines none" if dataset_regions is not None else "it has no dataset.json"
            raise ConfigError(f"--regions: the reference {source} has no evaluation regions ({where}); "
                              "use --regions brats for WT/TC/ET in canonical labels")
        regions = dataset_regions
    else:
        raise ConfigError(f"--regions: unknown value '{spec}'{did_you_mean(spec, ['brats', 'dataset'])}; "
                          "valid: brats, or no value for the regions of dataset.json")
    out = [Structure(name=str(name), values=tuple(int(v) for v in members), is_region=True)
           for name, members in regions.items()]
    if defined_values is not None:
        check_regions_defined(out, defined_values=defined_values, source=source)
    return out


def check_regions_defined(regions: Iterable[Structure], *, defined_values: Collection[int], source: str) -> None:
    """Raise unless every label value a region uses is defined by the data.

    Raises:
        ConfigError: names the region, the missing values and the defined ones.
    """
    defined = {int(v) for v in defined_values}
    for region in regions:
        missing = sorted(set(region.values) - defined)
        if missing:
            raise ConfigError(
                f"region {region.name} uses label(s) {missing}, which {source} does not define "
                f"(labels there: {sorted(defined)}); a region the data does not define cannot be scored"
            )
