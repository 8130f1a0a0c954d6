"""Canonical channel names (docs/DEFINITIONS.md §2)."""

from __future__ import annotations

import pytest

from brainseg_cli.data.channels import CANONICAL_CHANNELS, canonical_channel, find_canonical_channel, order_channels
from brainseg_cli.errors import ConfigError, InputError


def test_canonical_order() -> None:
    assert CANONICAL_CHANNELS == ("T1", "T1c", "T2", "FLAIR", "IR")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("t1", "T1"), ("T1w", "T1"), ("t1n", "T1"), ("T1 pre-contrast", "T1"),
        ("t1ce", "T1c"), ("T1Gd", "T1c"), ("t1c", "T1c"), ("T1C", "T1c"), ("T1 post-contrast", "T1c"), ("t1_ce", "T1c"),
        ("t2", "T2"), ("T2w", "T2"),
        ("flair", "FLAIR"), ("t2f", "FLAIR"), ("FLAIR", "FLAIR"), ("T2-FLAIR", "FLAIR"),
        ("T1-IR", "IR"), ("ir", "IR"),
    ],
)
def test_aliases(name: str, expected: str) -> None:
    assert canonical_channel(name) == expected
    assert find_canonical_channel(name) == expected


def test_unknown_name_is_input_error_with_hint() -> None:
    assert find_canonical_channel("MRI") is None
    with pytest.raises(InputError, match=r"unknown channel name 'MRI'.*T1, T1c, T2, FLAIR, IR"):
        canonical_channel("MRI")
    with pytest.raises(InputError, match=r"did you mean 'FLAIR'"):
        canonical_channel("flar")


def test_error_class_can_be_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown channel name 'PD'"):
        canonical_channel("PD", error=ConfigError)


def test_order_channels_msd_modality_order() -> None:
    assert order_channels(["FLAIR", "T1w", "t1gd", "T2w"]) == ["T1", "T1c", "T2", "FLAIR"]
    assert order_channels(["t2f", "IR", "t1n"]) == ["T1", "FLAIR", "IR"]


def test_order_channels_rejects_duplicates() -> None:
    with pytest.raises(InputError, match="'t1ce' and 'T1Gd' are both T1c"):
        order_channels(["t1ce", "T1Gd"])
