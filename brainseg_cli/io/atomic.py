"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Both helpers write into a temporary name *in the target's own folder* (so the final rename never
crosses a file system) and move it into place with :func:`os.replace` only when the ``with`` block
ends without an exception. On an exception the temporary file or folder is removed and the target
is left untouched (an existing target keeps its old content).

The temporary name keeps the target's full name as its ending (``.tmp-<random>-brain.nii.gz``), so
libraries that choose a format from the file ending (SimpleITK, tifffile) see the right one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from brainseg_cli.errors import OutputError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """Return an unused temporary path beside ``path`` that ends with ``path.name``."""
    return path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` in its folder (``.tmp-<12 hex>-<name>``) and return them.

    Only for a caller that knows no other writer of ``path`` is alive (it holds the lock every
    writer takes): the temporaries are then left by a process killed while writing.
    """
    pattern = re.compile(rf"^{re.escape(TMP_PREFIX)}[0-9a-f]{{12}}-{re.escape(path.name)}$")
    stale = [p for p in path.parent.iterdir() if pattern.match(p.name)] if path.parent.is_dir() else []
    for p in stale:
        logger.info("removing %s, left by an interrupted write of %s", p, path.name)
        _remove(p)
    return stale


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree if present (best effort, logged on failure)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError as exc:
        logger.warning("could not remove temporary %s: %s", path, exc)


def _fsync(path: Path) -> None:
    """Flush a written file to the disk; a full disk that the writes did not report shows here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def output_error(target: Path, exc: OSError) -> OutputError:
    """The one-line error for an OS error met while writing ``target`` (full disk, read-only, forbidden)."""
    what = exc.strerror or str(exc)
    # the temporary file ends with the target's name: only another file is worth naming
    other = f" ({exc.filename})" if exc.filename and not str(exc.filename).endswith(target.name) else ""
    return OutputError(f"cannot write {target}: {what}{other}")


@contextmanager
def atomic_write(path: str | os.PathLike[str], *, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Write a file atomically.

    Yields a temporary path in the same folder as ``path``; write the whole file there. When the
    block ends normally, the temporary file is flushed to the disk (``fsync``), checked by
    ``verify`` if given, and replaces ``path`` (``os.replace``); when anything raises, the temporary
    file is deleted and ``path`` is untouched. The parent folder is created if missing.

    Args:
        path: the final file path.
        verify: called with the temporary path before the rename; raises if the file is not whole
            (e.g. a writer that does not report a full disk left it truncated).

    Yields:
        The temporary file path to write to (it does not exist yet).

    Raises:
        OutputError: an OS error while writing (full disk, read-only or forbidden folder), naming ``path``.

    Example:
        >>> with atomic_write(out / "labels.nii.gz") as tmp:   # doctest: +SKIP
        ...     sitk.WriteImage(img, str(tmp))
    """
    target = Path(path)
    tmp = temporary_sibling(target)
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"{target}: nothing was written to the temporary file {tmp.name}")
            _fsync(tmp)
            if verify is not None:
                verify(tmp)
            os.replace(tmp, target)
        except BaseException:
            _remove(tmp)
            raise
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise output_error(target, exc) from None


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create a folder atomically.

    Yields a fresh, empty temporary folder beside ``path``; fill it. When the block ends normally
    the temporary folder takes the name ``path``. If ``path`` already exists it is first renamed
    aside and deleted only after the new folder is in place (folders cannot be swapped in one
    system call, so a crash between the two renames leaves the old folder under a ``.tmp-`` name,
    never a half-written folder under the final name). When the block raises, the temporary
    folder is deleted and ``path`` is untouched.

    Args:
        path: the final folder path.

    Yields:
        The temporary folder path (already created, empty).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(target)
        tmp.mkdir()
    except OSError as exc:
        raise output_error(target, exc) from None
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    old: Path | None = None
    try:
        if target.exists() or target.is_symlink():
            old = temporary_sibling(target)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)
            old = None
        _remove(tmp)
        raise
    if old is not None:
        _remove(old)
