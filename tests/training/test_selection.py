"""Case selection for small-data studies: random and lesion-balanced (quantile strata)."""

from __future__ import annotations

import pytest

from brainseg_cli.errors import ConfigError, InputError
from brainseg_cli.training.selection import lesion_volumes_from_fingerprint, select_cases, strata

# Twelve cases whose volumes are 1, 2, ..., 12 (names in shuffled order).
NAMES = [f"c{i:02d}" for i in (7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 4, 6)]
VOLUMES = {name: float(int(name[1:]) + 1) for name in NAMES}


def test_lesion_balanced_takes_one_case_per_quantile_stratum():
    for seed in range(20):
        picked = select_cases(NAMES, VOLUMES, 4, method="lesion-balanced", seed=seed)
        assert len(picked) == 4
        # strata of the sorted volumes: 1-3, 4-6, 7-9, 10-12
        assert sorted((VOLUMES[c] - 1) // 3 for c in picked) == [0, 1, 2, 3]
        assert picked == [c for c in NAMES if c in picked]  # in the input order


def test_lesion_balanced_spans_a_skewed_distribution():
    # 8 small lesions and 4 huge ones: random draws of 3 often miss the huge ones, strata never do.
    volumes = {f"s{i}": float(i + 1) for i in range(8)} | {f"h{i}": 1e6 + i for i in range(4)}
    cases = sorted(volumes)
    for seed in range(10):
        picked = select_cases(cases, volumes, 3, method="lesion-balanced", seed=seed)
        assert sum(c.startswith("h") for c in picked) == 1
        assert sum(c.startswith("s") and volumes[c] <= 4 for c in picked) == 1
    assert strata(cases, volumes, 3) == [["s0", "s1", "s2", "s3"], ["s4", "s5", "s6", "s7"], ["h0", "h1", "h2", "h3"]]


def test_reproducible_per_seed_and_seed_dependent():
    for method in ("random", "lesion-balanced"):
        runs = {tuple(select_cases(NAMES, VOLUMES, 4, method=method, seed=s)) for s in range(10)}
        assert len(runs) > 1, method
        assert select_cases(NAMES, VOLUMES, 4, method=method, seed=3) == select_cases(NAMES, VOLUMES, 4,
                                                                                       method=method, seed=3)


def test_random_needs_no_volumes_and_all_cases_means_all():
    picked = select_cases(NAMES, None, 5, method="random", seed=1)
    assert len(set(picked)) == 5 and set(picked) <= set(NAMES)
    assert select_cases(NAMES, VOLUMES, len(NAMES), method="lesion-balanced", seed=0) == NAMES
    # uneven strata: 12 cases in 5 strata of sizes 3, 3, 2, 2, 2
    assert [len(s) for s in strata(NAMES, VOLUMES, 5)] == [3, 3, 2, 2, 2]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n": 13}, ConfigError, "cannot select 13 training cases out of 12"),
    ({"n": 0}, ConfigError, "choose 1 .. 12"),
    ({"method": "balanced"}, ConfigError, "did you mean 'lesion-balanced'"),
    ({"volumes": None}, InputError, "needs the lesion volume"),
    ({"volumes": {"c00": 1.0}}, InputError, "no lesion volume for case 'c07'"),
    ({"volumes": {**VOLUMES, "c03": float("nan")}}, InputError, "case 'c03' has lesion volume nan"),
    ({"cases": ["a", "b", "a"], "n": 1}, ConfigError, "case 'a' appears twice"),
])
def test_errors(kwargs, error, match):
    cases = kwargs.get("cases", NAMES)
    with pytest.raises(error, match=match):
        select_cases(cases, kwargs.get("volumes", VOLUMES), kwargs.get("n", 2),
                     method=kwargs.get("method", "lesion-balanced"), seed=0)


def test_lesion_volumes_from_fingerprint():
    fingerprint = {"cases": [
        {"case": "a", "spacing": [1.0, 2.0, 3.0], "label_voxels": {"0": 1000, "1": 10, "2": 5}},
        {"case": "b", "spacing": [0.5, 0.5, 0.5], "label_voxels": {"0": 1000}},
    ]}
    assert lesion_volumes_from_fingerprint(fingerprint) == {"a": 90.0, "b": 0.0}
    with pytest.raises(InputError, match="no per-case entries"):
        lesion_volumes_from_fingerprint({"num_cases": 2})
