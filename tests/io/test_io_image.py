"""Image type, format round trips, NIfTI geometry ownership and input errors (synthetic data)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from brainseg_cli.errors import GeometryError, InputError
from brainseg_cli.io import (
    SUPPORTED_EXTENSIONS,
    Image,
    from_sitk,
    geometry_equal,
    read_image,
    read_tiff,
    to_sitk,
    write_image,
    write_tiff,
)

WRITABLE = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".tif")


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from three angles in degrees (x, then y, then z)."""
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique": rotation(12.0, -25.0, 33.0),
    "oblique-flipped": rotation(5.0, 40.0, -70.0) @ np.diag([1.0, -1.0, 1.0]),
}


def make_image(dims: int, direction: str = "oblique", dtype=np.int16, channels: int = 0,
               seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    shape = (7, 5, 4)[:dims]
    if channels:
        shape = (channels, *shape)
    if np.dtype(dtype).kind == "f":
        array = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -30000), min(info.max, 30000), size=shape, dtype=dtype)
    d = DIRECTIONS[direction]
    if dims == 2:
        angle = {"lps": 0.0, "ras": 180.0, "oblique": 28.0, "oblique-flipped": -61.0}[direction]
        c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        d = np.array([[c, -s], [s, c]])
        if direction == "oblique-flipped":
            d = d @ np.diag([1.0, -1.0])
    spacing = (0.4375, 1.25, 3.3)[:dims]
    origin = (-101.25, 37.5, 12.125)[:dims]
    return Image(array, spacing, origin, d)


def assert_same(a: Image, b: Image, tol: float = 1e-6) -> None:
    assert a.array.shape == b.array.shape
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=tol)


# ------------------------------------------------------------------------------ the Image type
def test_image_properties_3d_and_channels() -> None:
    img = make_image(3)
    assert img.spatial_dims == 3 and img.spatial_shape == (7, 5, 4)
    assert not img.has_channels and img.num_channels == 1
    multi = make_image(3, channels=2)
    assert multi.has_channels and multi.num_channels == 2 and multi.spatial_shape == (7, 5, 4)
    flat = make_image(2, channels=3)
    assert flat.spatial_dims == 2 and flat.num_channels == 3 and flat.spatial_shape == (7, 5)
    assert isinstance(img.spacing, tuple) and isinstance(img.origin, tuple)
    assert img.direction.shape == (3, 3) and not img.direction.flags.writeable


def test_image_defaults_and_no_copy() -> None:
    arr = np.zeros((3, 4, 5), np.float32)
    img = Image(arr, (1, 1, 1))
    assert img.array is arr
    assert img.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(img.direction, np.eye(3))
    assert img.with_array(arr).array is arr
    assert "shape=(3, 4, 5)" in repr(img) and "float32" in repr(img)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"array": np.zeros((2, 2, 2, 2)), "spacing": (1, 1)}, "2-D image needs"),
        ({"array": np.zeros((2, 2, 2, 2, 2)), "spacing": (1, 1, 1)}, "3-D image needs"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 0, 1)}, "positive"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 1, 1), "origin": (0, 0)}, "origin"),
        ({"array": np.zeros((2, 2, 2)), "spacing": (1, 1, 1), "direction": np.zeros((3, 3))},
         "singular"),
        ({"array": np.zeros((2,)), "spacing": (1,)}, "2 or 3 values"),
    ],
)
def test_image_rejects_bad_geometry(kwargs, match) -> None:
    with pytest.raises(GeometryError, match=match):
        Image(**kwargs)


def test_stack_channel_with_array() -> None:
    a, b = make_image(3, seed=1), make_image(3, seed=2)
    stacked = Image.stack([a, b])
    assert stacked.array.shape == (2, 7, 5, 4)
    assert geometry_equal(stacked, a)
    np.testing.assert_array_equal(stacked.channel(1).array, b.array)
    np.testing.assert_array_equal(stacked.channel(-2).array, a.array)
    assert a.channel(0) is a
    with pytest.raises(InputError, match="channel 2 out of range .* 2 channel"):
        stacked.channel(2)
    with pytest.raises(GeometryError, match="already has 2 channels"):
        Image.stack([stacked])
    with pytest.raises(InputError, match="at least one"):
        Image.stack([])
    moved = Image(b.array, b.spacing, (0.0, 0.0, 0.0), b.direction)
    with pytest.raises(GeometryError, match=r"Image.stack: image 1: grids differ: origin"):
        Image.stack([a, moved])
    with pytest.raises(GeometryError, match=r"new array shape \(7, 5, 3\)"):
        a.with_array(np.zeros((7, 5, 3)))
    assert a.with_array(np.zeros((3, 7, 5, 4))).num_channels == 3


def test_check_same_grid_message_names_values() -> None:
    a = make_image(3)
    b = Image(np.zeros((7, 5, 6)), (0.5, 1.25, 3.3), (1.0, 2.0, 3.0), np.eye(3))
    with pytest.raises(GeometryError) as info:
        a.check_same_grid(b, "case X: label vs FLAIR")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("case X: label vs FLAIR: grids differ")
    assert "shape 7x5x4 vs 7x5x6" in msg
    assert "spacing (0.4375, 1.25, 3.3) vs (0.5, 1.25, 3.3)" in msg
    assert "origin (-101.25, 37.5, 12.125) vs (1, 2, 3)" in msg
    assert "direction [" in msg
    # within tolerance passes, beyond fails
    near = Image(a.array, a.spacing, tuple(np.add(a.origin, 5e-5)), a.direction)
    a.check_same_grid(near, "near")
    assert geometry_equal(a, near) and not geometry_equal(a, near, tol=1e-6)
    with pytest.raises(GeometryError, match="near: grids differ: origin"):
        a.check_same_grid(near, "near", tol=1e-5)
    with pytest.raises(GeometryError, match="dimensions 3-D vs 2-D"):
        a.check_same_grid(make_image(2), "dims")


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_affine_matches_sitk_physical_points(direction: str) -> None:
    img = make_image(3, direction)
    ref = sitk.GetImageFromArray(img.array.T)
    ref.SetSpacing(img.spacing)
    ref.SetOrigin(img.origin)
    ref.SetDirection(img.direction.ravel())
    for index in [(0, 0, 0), (6, 4, 3), (3, 1, 2)]:
        lps = np.array(ref.TransformIndexToPhysicalPoint(index))
        ras = (img.affine @ [*index, 1])[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_from_affine_inverts_affine(direction: str) -> None:
    img = make_image(3, direction)
    back = Image.from_affine(img.array, img.affine)
    assert_same(img, back, tol=1e-12)
    flat = make_image(2, direction)
    back2 = Image.from_affine(flat.array, flat.affine, spatial_dims=2)
    assert_same(flat, back2, tol=1e-12)


def test_from_affine_rejects_shear_and_bad_shapes() -> None:
    aff = np.eye(4)
    aff[0, 1] = 0.5
    with pytest.raises(GeometryError, match="shear"):
        Image.from_affine(np.zeros((2, 2, 2)), aff)
    with pytest.raises(GeometryError, match="4x4"):
        Image.from_affine(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(GeometryError, match="zero-length"):
        Image.from_affine(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("ext", WRITABLE)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("direction", ["lps", "ras", "oblique-flipped"])
def test_round_trip_exact(tmp_path: Path, ext: str, dims: int, direction: str) -> None:
    img = make_image(dims, direction)
    path = tmp_path / f"img{ext}"
    write_image(img, path)
    assert_same(img, read_image(path))


@pytest.mark.parametrize("ext", WRITABLE)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int32, np.float32, np.float64])
def test_round_trip_dtypes(tmp_path: Path, ext: str, dtype) -> None:
    img = make_image(3, "oblique", dtype=dtype)
    write_image(img, tmp_path / f"img{ext}")
    assert_same(img, read_image(tmp_path / f"img{ext}"))


@pytest.mark.parametrize("ext", WRITABLE)
@pytest.mark.parametrize("dims", [2, 3])
def test_round_trip_multichannel(tmp_path: Path, ext: str, dims: int) -> None:
    img = make_image(dims, "oblique", dtype=np.float32, channels=3)
    write_image(img, tmp_path / f"img{ext}")
    assert_same(img, read_image(tmp_path / f"img{ext}"))


def test_bool_written_as_uint8(tmp_path: Path) -> None:
    img = make_image(3)
    mask = img.with_array(img.array > 0)
    write_image(mask, tmp_path / "m.nii.gz")
    back = read_image(tmp_path / "m.nii.gz")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array)


def test_cross_format_chain_keeps_geometry(tmp_path: Path) -> None:
    img = make_image(3, "oblique-flipped", dtype=np.float32)
    current = img
    for ext in (".nii.gz", ".mha", ".nrrd", ".nhdr", ".tif", ".mhd", ".nii"):
        write_image(current, tmp_path / f"chain{ext}")
        current = read_image(tmp_path / f"chain{ext}")
        assert_same(img, current, tol=1e-5)


def test_4d_nifti_layout_in_nibabel(tmp_path: Path) -> None:
    img = make_image(3, "oblique", dtype=np.float32, channels=4)
    write_image(img, tmp_path / "multi.nii.gz")
    nii = nib.load(tmp_path / "multi.nii.gz")
    assert nii.shape == (7, 5, 4, 4)
    assert nii.header["dim"][0] == 4
    np.testing.assert_allclose(nii.affine, img.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(nii.dataobj), np.moveaxis(img.array, 0, -1))


def test_nibabel_4d_file_reads_channels_first(tmp_path: Path) -> None:
    data = np.arange(7 * 5 * 4 * 2, dtype=np.float32).reshape(7, 5, 4, 2)
    affine = np.array([[-0.9, 0, 0, 90.0], [0, 1.1, 0, -120.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "n.nii.gz")
    img = read_image(tmp_path / "n.nii.gz")
    assert img.array.shape == (2, 7, 5, 4)
    np.testing.assert_array_equal(img.array[1], data[..., 1])
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)


def test_compress_flag(tmp_path: Path) -> None:
    img = Image(np.zeros((40, 40, 40), np.int16), (1, 1, 1))
    for ext in (".mha", ".nrrd", ".tif"):
        write_image(img, tmp_path / f"c{ext}", compress=True)
        write_image(img, tmp_path / f"u{ext}", compress=False)
        assert (tmp_path / f"c{ext}").stat().st_size < (tmp_path / f"u{ext}").stat().st_size / 10
        assert_same(read_image(tmp_path / f"c{ext}"), read_image(tmp_path / f"u{ext}"))


def test_detached_header_formats_write_two_files(tmp_path: Path) -> None:
    img = make_image(3)
    write_image(img, tmp_path / "a.mhd", compress=False)
    write_image(img, tmp_path / "b.nhdr", compress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.raw", "b.nhdr", "b.raw"]


def test_gipl_identity_only(tmp_path: Path) -> None:
    img = make_image(3, "lps")
    for ext in (".gipl", ".gipl.gz"):
        write_image(img, tmp_path / f"g{ext}")
        assert_same(img, read_image(tmp_path / f"g{ext}"))
    with pytest.raises(InputError, match="GIPL cannot store the direction"):
        write_image(make_image(3, "oblique"), tmp_path / "o.gipl")
    assert not (tmp_path / "o.gipl").exists()


# ------------------------------------------------------------------------------ NIfTI geometry
def _affine(rot: np.ndarray, spacing, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rot * np.asarray(spacing, dtype=float)[None, :]
    out[:3, 3] = translation
    return out


QFORM = _affine(rotation(10, 0, 0), (0.9, 1.1, 2.5), (11.0, -22.0, 33.0))
SFORM = _affine(rotation(0, 0, 30), (0.9, 1.1, 2.5), (-5.0, 6.0, 7.0))


def _nibabel_file(path: Path, *, qform: np.ndarray | None, qcode: int,
                  sform: np.ndarray | None, scode: int) -> Path:
    nii = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(5, 4, 3), None)
    nii.set_qform(qform if qform is not None else np.eye(4), code=qcode)
    nii.set_sform(sform if sform is not None else np.eye(4), code=scode)
    if qcode == 0 and sform is not None:  # a consistent header: pixdim = the sform's scales
        nii.header.set_zooms(tuple(np.linalg.norm(sform[:3, :3], axis=0)))
    nib.save(nii, path)
    return path


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("forms", ["qform", "sform", "both"])
def test_nibabel_written_nifti_reads_to_nibabel_world(tmp_path: Path, direction: str,
                                                      forms: str) -> None:
    aff = _affine(DIRECTIONS[direction] @ np.diag([-1, -1, 1]) if direction == "lps"
                  else DIRECTIONS[direction], (0.8, 1.2, 3.0), (-90.5, 120.25, -70.0))
    path = _nibabel_file(tmp_path / "n.nii.gz",
                         qform=aff if forms in ("qform", "both") else None,
                         qcode=1 if forms in ("qform", "both") else 0,
                         sform=aff if forms in ("sform", "both") else None,
                         scode=1 if forms in ("sform", "both") else 0)
    img = read_image(path)
    np.testing.assert_allclose(img.affine, nib.load(path).affine, atol=1e-5)
    np.testing.assert_array_equal(img.array, np.asanyarray(nib.load(path).dataobj))


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_itk_written_nifti_reads_in_nibabel(tmp_path: Path, direction: str) -> None:
    img = make_image(3, direction)
    write_image(img, tmp_path / "i.nii.gz")
    nii = nib.load(tmp_path / "i.nii.gz")
    np.testing.assert_allclose(nii.affine, img.affine, atol=1e-5)
    assert int(nii.header["qform_code"]) == 1 and int(nii.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(nii.dataobj), img.array)


def test_qform_sform_differ_scanner_sform_wins(tmp_path: Path) -> None:
    """ITK rule: a rigid sform with sform_code 1 (scanner) wins over a different qform."""
    path = _nibabel_file(tmp_path / "s1.nii.gz", qform=QFORM, qcode=1, sform=SFORM, scode=1)
    np.testing.assert_allclose(read_image(path).affine, SFORM, atol=1e-5)
    np.testing.assert_allclose(nib.load(path).affine, SFORM, atol=1e-5)


def test_qform_sform_differ_aligned_sform_loses(tmp_path: Path) -> None:
    """ITK rule: with sform_code 2 (aligned) and a different qform, ITK uses the qform
    (nibabel uses the sform): brainseg follows ITK, as its module docstring says."""
    path = _nibabel_file(tmp_path / "s2.nii.gz", qform=QFORM, qcode=1, sform=SFORM, scode=2)
    np.testing.assert_allclose(read_image(path).affine, QFORM, atol=1e-5)
    np.testing.assert_allclose(nib.load(path).affine, SFORM, atol=1e-5)


def test_sform_without_qform_is_used(tmp_path: Path) -> None:
    path = _nibabel_file(tmp_path / "s0.nii.gz", qform=None, qcode=0, sform=SFORM, scode=2)
    np.testing.assert_allclose(read_image(path).affine, SFORM, atol=1e-5)


def test_spacing_comes_from_pixdim(tmp_path: Path) -> None:
    """ITK takes the spacing from pixdim even when an sform scales differently (a damaged
    header; nibabel then disagrees): documented in the io.image docstring."""
    nii = nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), None)
    nii.set_sform(SFORM, code=2)
    nii.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(nii, tmp_path / "p.nii.gz")
    img = read_image(tmp_path / "p.nii.gz")
    np.testing.assert_allclose(img.spacing, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(img.direction, np.diag([-1, -1, 1]) @ SFORM[:3, :3]
                               / np.linalg.norm(SFORM[:3, :3], axis=0), atol=1e-5)


# ------------------------------------------------------------------------------ errors
def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.nii\.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path / "dir.nii")


def test_unsupported_extension_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match=r"a\.png: unsupported image file ending; supported: "
                                         r"\.nii\.gz, \.nii, \.mha"):
        read_image(tmp_path / "a.png")
    with pytest.raises(InputError, match="unsupported"):
        write_image(make_image(3), tmp_path / "a.jpg")
    assert set(SUPPORTED_EXTENSIONS) >= {".nii.gz", ".mha", ".nrrd", ".gipl.gz", ".tif"}


def test_text_file_named_nifti(tmp_path: Path) -> None:
    (tmp_path / "text.nii.gz").write_text("hello, I am not an image\n")
    with pytest.raises(InputError, match=r"text\.nii\.gz: cannot read image"):
        read_image(tmp_path / "text.nii.gz")
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(InputError, match=r"text\.tif: cannot read TIFF"):
        read_image(tmp_path / "text.tif")


def test_appledouble_file_is_clean_input_error(tmp_path: Path) -> None:
    (tmp_path / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\0" * 74)
    with pytest.raises(InputError, match="AppleDouble"):
        read_image(tmp_path / "._BRATS_001.nii.gz")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".gipl.gz", ".gipl", ".mha", ".nrrd", ".tif"])
@pytest.mark.fault
def test_truncated_file(tmp_path: Path, ext: str) -> None:
    img = Image(np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32), (1, 1, 1))
    write_image(img, tmp_path / f"full{ext}")
    raw = (tmp_path / f"full{ext}").read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(InputError, match=rf"cut{ext.replace('.', '[.]')}: "):
        read_image(tmp_path / f"cut{ext}")


@pytest.mark.fault
def test_truncated_brats2012_mha_says_truncated(shared_data: Path, tmp_path: Path) -> None:
    """Issue #20: a truncated BraTS 2012 .mha (compressed, voxels inside) was reported as 'No such file or directory'."""
    source = shared_data / "brats2012_mha" / "BRATS_HG0001" / "BRATS_HG0001_T1.mha"
    raw = source.read_bytes()
    cut = tmp_path / "BRATS_HG0001_T1.mha"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        read_image(cut)
    assert str(info.value) == f"{cut}: truncated file ({len(raw) // 2} bytes, the header needs {len(raw)})"
    assert read_image(source).spatial_shape == (160, 216, 176)


def test_gzip_nifti_with_trailing_data_still_reads(tmp_path: Path) -> None:
    img = make_image(3, dtype=np.int16)
    write_image(img, tmp_path / "a.nii")
    payload = (tmp_path / "a.nii").read_bytes() + b"\0" * 16
    (tmp_path / "b.nii.gz").write_bytes(gzip.compress(payload))
    assert_same(img, read_image(tmp_path / "b.nii.gz"))


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".tif"])
def test_nonfinite_voxels(tmp_path: Path, ext: str) -> None:
    arr = np.ones((6, 5, 4), np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 2, 3] = np.inf
    arr[2, 2, 2] = -np.inf
    write_image(Image(arr, (1, 1, 1)), tmp_path / f"n{ext}")
    with pytest.raises(InputError, match=r"3 NaN/Inf voxel\(s\) of 120 .*allow_nonfinite=True"):
        read_image(tmp_path / f"n{ext}")
    back = read_image(tmp_path / f"n{ext}", allow_nonfinite=True)
    np.testing.assert_array_equal(back.array, arr)


def test_nonfinite_in_4d_nifti(tmp_path: Path) -> None:
    arr = np.ones((2, 6, 5, 4), np.float32)
    arr[1, 0, 0, 0] = np.nan
    write_image(Image(arr, (1, 1, 1)), tmp_path / "n.nii.gz")
    with pytest.raises(InputError, match=r"1 NaN/Inf voxel"):
        read_image(tmp_path / "n.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "n.nii.gz", allow_nonfinite=True).array, arr)


def test_scaled_nifti_uses_itk_scaling(tmp_path: Path) -> None:
    nii = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(4, 3, 2), np.eye(4))
    nii.header.set_slope_inter(0.5, 10.0)
    nib.save(nii, tmp_path / "s.nii.gz")
    img = read_image(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(img.array, np.arange(24).reshape(4, 3, 2) * 0.5 + 10.0)


# ------------------------------------------------------------------------------ TIFF
def test_foreign_tiff_layouts(tmp_path: Path) -> None:
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "rgb.tif")
    assert img.array.shape == (3, 6, 5) and img.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(img.array[2], rgb[..., 2])
    stack = np.random.default_rng(1).integers(0, 1000, (4, 6, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    img = read_image(tmp_path / "stack.tif")
    assert img.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(img.array[..., 3], stack[3])


def test_read_write_tiff_raw_layout(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    write_tiff(tmp_path / "a.tif", rgb)
    np.testing.assert_array_equal(read_tiff(tmp_path / "a.tif"), rgb)
    grey = np.random.default_rng(1).integers(0, 255, (6, 5), dtype=np.uint8)
    write_tiff(tmp_path / "b.tiff", grey, compress=True)
    np.testing.assert_array_equal(read_tiff(tmp_path / "b.tiff"), grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tiff"]
    with pytest.raises(InputError, match="file not found"):
        read_tiff(tmp_path / "c.tif")


# ------------------------------------------------------------------------------ SimpleITK bridge
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [0, 3])
def test_sitk_bridge(dims: int, channels: int) -> None:
    img = make_image(dims, "oblique", dtype=np.float32, channels=channels)
    converted = to_sitk(img)
    assert converted.GetSize() == img.spatial_shape
    assert converted.GetNumberOfComponentsPerPixel() == max(channels, 1)
    assert_same(img, from_sitk(converted), tol=1e-12)
    if dims == 3 and channels:
        four_d = to_sitk(img, nifti_4d=True)
        assert four_d.GetSize() == (*img.spatial_shape, channels)
        assert_same(img, from_sitk(four_d), tol=1e-12)


def test_2d_float_nifti_with_nan(tmp_path: Path) -> None:
    img = make_image(2, "oblique", dtype=np.float32)
    arr = img.array.copy()
    arr[1, 1] = np.nan
    write_image(img.with_array(arr), tmp_path / "f.nii")
    with pytest.raises(InputError, match="1 NaN/Inf"):
        read_image(tmp_path / "f.nii")
    back = read_image(tmp_path / "f.nii", allow_nonfinite=True)
    np.testing.assert_array_equal(back.array, arr)
    assert back.array.shape == (7, 5) and not isinstance(back.array, np.memmap)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-6)


def test_trailing_singleton_axis_is_dropped(tmp_path: Path) -> None:
    data = np.ones((4, 5, 6, 1), np.float32)
    data[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s.nii.gz")
    with pytest.raises(InputError, match="1 NaN/Inf"):
        read_image(tmp_path / "s.nii.gz")
    img = read_image(tmp_path / "s.nii.gz", allow_nonfinite=True)
    assert img.array.shape == (4, 5, 6) and not img.has_channels
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.int16), np.eye(4)),
             tmp_path / "i.nii.gz")
    assert read_image(tmp_path / "i.nii.gz").array.shape == (4, 5, 6)
