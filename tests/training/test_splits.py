"""Case-level splits: held-out count or fraction, deterministic K-fold."""

from __future__ import annotations

import pytest

from brainseg_cli.errors import ConfigError
from brainseg_cli.training.splits import kfold_splits, split_cases

CASES = [f"case_{i:02d}" for i in range(11)]


def test_default_fraction_and_count():
    train, val = split_cases(CASES)
    assert len(val) == 2 and len(train) == 9 and not set(train) & set(val)
    assert split_cases(list(reversed(CASES))) == (train, val)  # order of the input does not matter
    train3, val3 = split_cases(CASES, val_cases=3)
    assert len(val3) == 3 and set(val) <= set(val3)  # a larger hold-out is a superset
    assert len(split_cases(CASES, val_split=0.5)[1]) == 6  # round(5.5) -> 6
    assert split_cases(["a", "b"])[1] != []


def test_kfold_partitions_cases_deterministically():
    folds = kfold_splits(CASES, folds=5)
    vals = [set(v) for _, v in folds]
    assert sorted(len(v) for v in vals) == [2, 2, 2, 2, 3]
    assert set().union(*vals) == set(CASES)
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])
    for fold, (train, val) in enumerate(folds):
        assert split_cases(CASES, fold=fold, folds=5) == (train, val)
        assert set(train) | set(val) == set(CASES)
    assert kfold_splits(CASES, folds=5) == folds


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_cases": 11}, r"--val-cases 11 must be between 1 and 10 for a dataset of 11 cases"),
        ({"fold": 5, "folds": 5}, r"fold 5 does not exist with --folds 5"),
        ({"val_cases": 1, "val_split": 0.2}, r"choose one of"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        split_cases(CASES, **kwargs)
    with pytest.raises(ConfigError, match=r"at least 2 cases"):
        split_cases(["only"])
    with pytest.raises(ConfigError, match=r"5-fold split needs at least 5 cases, the dataset has 3"):
        split_cases(["a", "b", "c"], fold=0, folds=5)
