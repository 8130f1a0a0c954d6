"""Label-map presets (docs/DEFINITIONS.md §2) and explicit mappings."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg_cli.data.labelmaps import LABEL_MAPS, get_label_map, parse_label_map, used_labels
from brainseg_cli.errors import ConfigError, InputError, RegistryError

# Independent copy of the docs/DEFINITIONS.md §2 table: preset -> {source: canonical}.
DESIGN = {
    "brats2015": {0: 0, 1: 2, 2: 1, 3: 2, 4: 3},
    "brats2017": {0: 0, 1: 2, 2: 1, 4: 3},
    "brats2023": {0: 0, 1: 2, 2: 1, 3: 3, 4: 4},
    "msd": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2012": {0: 0, 1: 1, 2: 2},
    "lgg": {0: 0, 255: 1},
    "mrbrains18": {k: k for k in range(11)},
}


@pytest.mark.parametrize("preset", sorted(DESIGN))
def test_presets_match_design(preset: str) -> None:
    lm = get_label_map(preset)
    src = np.array(sorted(DESIGN[preset]), dtype=np.int16)
    np.testing.assert_array_equal(lm.apply(src, what="t"), [DESIGN[preset][v] for v in src.tolist()])
    assert lm.source_values == sorted(DESIGN[preset])
    values = sorted(lm.labels.values())
    assert values == list(range(len(values))) and lm.labels["background"] == 0


def test_regions() -> None:
    for name in ("brats2015", "brats2017", "brats2023", "msd"):
        assert LABEL_MAPS[name].regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert LABEL_MAPS["brats2012"].regions == {"WT": [1, 2], "TC": [2]}
    assert LABEL_MAPS["brats2012"].labels == {"background": 0, "edema": 1, "active tumour": 2}
    assert LABEL_MAPS["lgg"].regions == {} and LABEL_MAPS["mrbrains18"].regions == {}
    assert len(LABEL_MAPS["mrbrains18"].labels) == 11


def test_aliases_and_did_you_mean() -> None:
    assert get_label_map("BraTS2018") is LABEL_MAPS["brats2017"]
    assert get_label_map("brats2013") is LABEL_MAPS["brats2015"]
    assert get_label_map("decathlon") is LABEL_MAPS["msd"]
    with pytest.raises(RegistryError, match=r"unknown label map 'brats2016' \(did you mean 'brats20\d\d'"):
        get_label_map("brats2016")


def test_apply_errors_list_values_and_case() -> None:
    lm = LABEL_MAPS["brats2017"]
    with pytest.raises(InputError, match=r"case X: unexpected label values 3 \(2 voxels\); brats2017 labels are \[0, 1, 2, 4\]"):
        lm.apply(np.array([0, 3, 3, 4], np.uint8), what="case X")
    with pytest.raises(InputError, match=r"case X: label has non-integer values \[1.5\]"):
        lm.apply(np.array([0.0, 1.5], np.float32), what="case X")
    np.testing.assert_array_equal(lm.apply(np.array([0.0, 4.0, 2.0], np.float32), what="x"), [0, 3, 1])


def test_explicit_pairs() -> None:
    lm = parse_label_map("2:1, 1:2,3:2,4:3")
    assert lm.mapping == {0: 0, 2: 1, 1: 2, 3: 2, 4: 3}
    assert lm.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert lm.regions == {}
    np.testing.assert_array_equal(lm.apply(np.array([0, 1, 2, 3, 4]), what="x"), [0, 2, 1, 2, 3])
    assert parse_label_map("brats2015") is LABEL_MAPS["brats2015"]


@pytest.mark.parametrize(("spec", "match"), [
    ("1:2", r"consecutive from 0; got \[0, 2\]"),
    ("1:1,1:2", "source value 1 is mapped twice"),
    ("1:1,2", "expected source:target pairs"),
    ("1:300", "<= 255"),
])
def test_explicit_pairs_errors(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_label_map(spec)


def test_optional_resection_cavity_only_when_present() -> None:
    lm = LABEL_MAPS["brats2023"]
    assert "resection cavity" not in used_labels(lm, {0: 10, 1: 3, 4: 0})
    assert used_labels(lm, {0: 10, 4: 2})["resection cavity"] == 4
