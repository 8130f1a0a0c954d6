"""Atomic file and folder writes."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from brainseg_cli.errors import InputError, OutputError
from brainseg_cli.io import Image, atomic_dir, atomic_write, read_image, write_image


class Boom(RuntimeError):
    pass


def test_atomic_write_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith("out.nii.gz") and tmp != target
        tmp.write_text("data")
        assert not target.exists()
    assert target.read_text() == "data"
    assert [p.name for p in target.parent.iterdir()] == ["out.nii.gz"]


def test_atomic_write_exception_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise Boom("mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_exception_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_write(target) as tmp:
            tmp.write_text("new")
            raise Boom("mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_write(tmp_path / "x.txt"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_success_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_atomic_dir_exception_leaves_nothing_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("1")
            raise Boom("mid-write")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic_dir(target) as tmp:
            raise Boom("mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
    assert (target / "keep.txt").read_text() == "old"


def test_write_image_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    bad = Image(np.zeros((4, 4, 4), dtype=np.complex64), (1, 1, 1))
    with pytest.raises(InputError, match="complex64"):
        write_image(bad, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_write_image_sitk_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    def failing_write(img, path, *args):  # writes half a file, then fails like ITK does
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage\nsitk::ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    image = Image(np.zeros((4, 4, 4), dtype=np.int16), (1, 1, 1))
    for name in ("x.nii.gz", "x.mhd"):
        with pytest.raises(OutputError, match=f"cannot write .*{name}: disk full"):
            write_image(image, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault
def test_a_truncated_write_that_reports_no_error_is_not_renamed_into_place(tmp_path, monkeypatch) -> None:
    """Issue #20: on a full disk a truncated .nii.gz was renamed into place under its final name."""
    import SimpleITK as sitk

    real = sitk.WriteImage

    def truncating_write(img, path, *args):  # a writer that a full disk cut short, without saying so
        real(img, path, *args)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    image = Image(np.arange(4096, dtype=np.int16).reshape(16, 16, 16), (1, 1, 1))
    (tmp_path / "x.nii.gz").write_bytes(b"old content")
    monkeypatch.setattr(sitk, "WriteImage", truncating_write)
    with pytest.raises(OutputError, match=r"cannot write .*x\.nii\.gz: the written file is incomplete or damaged"):
        write_image(image, tmp_path / "x.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]           # no temporary file left
    assert (tmp_path / "x.nii.gz").read_bytes() == b"old content"          # the old file untouched
    monkeypatch.setattr(sitk, "WriteImage", real)
    write_image(image, tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "x.nii.gz").array, image.array)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                                         (errno.EACCES, "Permission denied")])
@pytest.mark.fault
def test_os_errors_while_writing_name_the_file(tmp_path, code, words) -> None:
    """Issue #20: a full disk or read-only folder said 'unexpected OSError: [Errno 28] ...' naming no file."""
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(OutputError) as info:
        with atomic_write(target) as tmp:
            tmp.write_text("partial")
            raise OSError(code, os.strerror(code))
    assert str(info.value) == f"cannot write {target}: {words}"
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(target))}: {words}"):
        with atomic_write(target, verify=lambda p: (_ for _ in ()).throw(OSError(code, os.strerror(code)))) as tmp:
            tmp.write_text("whole")
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_of_one_target_are_removed(tmp_path: Path) -> None:
    """A process killed inside ``atomic_write`` leaves ``.tmp-<hex>-<name>``; only that target's are removed."""
    from brainseg_cli.io.atomic import remove_stale_temporaries

    target = tmp_path / "predictions.csv"
    target.write_text("whole")
    stale = tmp_path / ".tmp-0123456789ab-predictions.csv"
    stale.write_text("half")
    others = [tmp_path / ".tmp-0123456789ab-case.nii.gz", tmp_path / "predictions.csv.bak",
              tmp_path / ".tmp-xyz-predictions.csv"]
    for p in others:
        p.write_text("x")
    assert remove_stale_temporaries(target) == [stale]
    assert not stale.exists() and all(p.exists() for p in [target, *others])
    assert remove_stale_temporaries(tmp_path / "missing" / "predictions.csv") == []
