"""Canonical MRI channel names and their aliases (docs/DEFINITIONS.md §1-2).

Every dataset brainseg writes names its channels with one of :data:`CANONICAL_CHANNELS` and stores
them in that order, so ``_0000`` is always the first present of the list. Fine-tuning and
prediction match channels by these names, never by position alone.

Names are matched case-insensitively, ignoring spaces, hyphens, underscores and dots, so
``"T1 post-contrast"``, ``"t1_ce"`` and ``"T1CE"`` all mean ``"T1c"``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from brainseg_cli.errors import BrainsegError, InputError

#: Canonical channel names, in the order converters write them.
CANONICAL_CHANNELS: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR", "IR")

#: Canonical name -> accepted aliases (compared after :func:`_normalise`).
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "T1": ("t1", "t1w", "t1n", "t1 pre-contrast", "t1 native", "pre-contrast", "native t1"),
    "T1c": ("t1c", "t1ce", "t1gd", "t1 post-contrast", "t1 contrast", "t1 gd", "t1+c", "t1 post",
            "post-contrast", "t1 contrast-enhanced"),
    "T2": ("t2", "t2w"),
    "FLAIR": ("flair", "t2f", "t2 flair", "t2-flair", "t2flair"),
    "IR": ("ir", "t1-ir", "t1ir", "inversion recovery"),
}


def _normalise(name: str) -> str:
    """Lower-case ``name`` and drop spaces, hyphens, underscores and dots (``"T1 post-contrast"`` -> ``"t1postcontrast"``)."""
    return re.sub(r"[\s\-_.]+", "", name.strip().lower())


_LOOKUP: dict[str, str] = {}
for _canonical, _aliases in CHANNEL_ALIASES.items():
    for _alias in (_canonical, *_aliases):
        _LOOKUP[_normalise(_alias)] = _canonical


def find_canonical_channel(name: str) -> str | None:
    """Return the canonical name ``name`` stands for, or ``None`` when it matches no alias.

    Args:
        name: a channel name as found in a file name, a ``dataset.json`` or on the command line.

    Returns:
        One of :data:`CANONICAL_CHANNELS`, or ``None``.
    """
    return _LOOKUP.get(_normalise(name))


def canonical_channel(name: str, *, error: type[BrainsegError] = InputError) -> str:
    """Return the canonical name of channel ``name`` (aliases, case-insensitive).

    Args:
        name: a channel name such as ``"t1ce"``, ``"T1Gd"`` or ``"t2f"``.
        error: exception class raised for an unknown name: :class:`InputError` (default) for names
            read from data, :class:`~brainseg_cli.errors.ConfigError` for names a user typed.

    Returns:
        One of :data:`CANONICAL_CHANNELS`.

    Raises:
        InputError: (or ``error``) ``name`` matches no canonical name or alias; the message lists
            the canonical names and the closest alias.
    """
    found = find_canonical_channel(name)
    if found is None:
        close = difflib.get_close_matches(_normalise(name), list(_LOOKUP), n=1, cutoff=0.6)
        hint = f" (did you mean '{_LOOKUP[close[0]]}'?)" if close else ""
        raise error(f"unknown channel name '{name}'{hint}; canonical names: {', '.join(CANONICAL_CHANNELS)}")
    return found


def order_channels(names: Iterable[str], *, error: type[BrainsegError] = InputError) -> list[str]:
    """Canonicalise channel names and sort them into the canonical order of docs/DEFINITIONS.md §1-2.

    Args:
        names: channel names (aliases allowed), in any order.
        error: exception class for an unknown or repeated name (see :func:`canonical_channel`).

    Returns:
        The canonical names, ordered as in :data:`CANONICAL_CHANNELS`
        (e.g. ``["flair", "t1", "t1gd", "t2w"]`` -> ``["T1", "T1c", "T2", "FLAIR"]``).

    Raises:
        InputError: (or ``error``) a name is unknown, or two names mean the same channel.
    """
    given = list(names)
    canonical: dict[str, str] = {}
    for name in given:
        c = canonical_channel(name, error=error)
        if c in canonical:
            raise error(f"channels '{canonical[c]}' and '{name}' are both {c}")
        canonical[c] = name
    return [c for c in CANONICAL_CHANNELS if c in canonical]
