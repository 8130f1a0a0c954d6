"""Exceptions raised by the brainseg library.

Every error a user can cause is a :class:`BrainsegError`. Its message is one line that names the
file or case and the actual offending value, so the CLI can print it as ``error: <message>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar


class BrainsegError(Exception):
    """Base class of every error the library raises on purpose.

    Attributes:
        exit_code: process exit code the CLI uses for this error (1 runtime, 2 usage).
    """

    exit_code: int = 1


class InputError(BrainsegError):
    """Input data is missing, unreadable or inconsistent (names the file or case)."""


class GeometryError(InputError):
    """Images that must share a voxel grid do not (shape, spacing, origin or direction)."""


class CheckpointError(InputError):
    """A checkpoint file is foreign, damaged, or of an unsupported format version."""


class OutputError(BrainsegError):
    """An output cannot be written completely: a full disk, a read-only or forbidden folder (names the file)."""


class ConfigError(BrainsegError):
    """An option, or a combination of options, is invalid (a usage error: exit code 2)."""

    exit_code = 2


class RegistryError(ConfigError):
    """An unknown name was asked of a registry (model, loss, metric, converter, ...)."""


T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def look_up(name: str, registry: Mapping[str, T], kind: str) -> T:
    """Look ``name`` up in ``registry``; raise :class:`RegistryError` listing valid names otherwise.

    Args:
        name: the requested key.
        registry: name -> value map.
        kind: what the registry holds, for the message (e.g. ``"model"``).

    Returns:
        ``registry[name]``.

    Raises:
        RegistryError: ``name`` is not a key; the message lists the keys and the closest match.
    """
    if name in registry:
        return registry[name]
    valid = ", ".join(sorted(registry))
    raise RegistryError(f"unknown {kind} '{name}'{did_you_mean(name, registry)}; valid: {valid}")
