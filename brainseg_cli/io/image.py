"""The in-memory image type and reading/writing images in every supported format.

Axis order. In memory an image array is ``(X, Y, Z)`` for one channel and ``(C, X, Y, Z)`` for
several (2-D: ``(X, Y)`` / ``(C, X, Y)``), where X, Y, Z are the file's index axes in ITK/NIfTI
order (X varies fastest on disk). This is the transpose of SimpleITK's numpy view (``z, y, x``);
the readers return a transposed *view* (no copy), so arrays are usually Fortran-ordered.

World geometry follows ITK (LPS): ``spacing`` (mm per index axis), ``origin`` (LPS mm, centre of
voxel 0) and ``direction`` (D x D, column k = unit vector of index axis k in LPS). ``Image.affine``
is the equivalent nibabel RAS affine: ``affine = diag(-1, -1, 1, 1) @ [[direction * spacing,
origin], [0, 1]]``.

Who owns NIfTI geometry. SimpleITK (ITK 5.4) reads and writes every voxel format here except
TIFF, NIfTI included, so ITK's rules decide where a NIfTI file lies in the world. For a file with
both a qform and an sform, ITK uses the **sform** when it is a rotation with scaling (no shear) and
either ``sform_code == 1`` (scanner), or the qform is absent (``qform_code == 0``), or the two forms
agree; otherwise it uses the **qform**. nibabel uses the sform whenever ``sform_code > 0``. The two
therefore differ only for a sheared sform or for ``sform_code`` 2-4 with a different qform (ITK:
qform, nibabel: sform); every other file, and every file ITK writes (both forms equal, codes 1),
reads to the same world coordinates in both. ITK always takes the spacing from ``pixdim`` (a
header whose sform scales disagree with ``pixdim`` is damaged; ITK warns, nibabel follows the
sform). One exception to "ITK reads the voxels": ITK replaces NaN/Inf by 0 in float NIfTI
files, so unscaled float32/float64 NIfTI voxels are read by nibabel (geometry still from ITK)
and non-finite values can be reported. ITK also misses truncated NIfTI and GIPL files;
:func:`read_image` checks their size against the header (for gzip, via the gzip trailer).

Multi-channel files. A multi-channel 3-D image is written to NIfTI as a 4-D *scalar* image with
channels last on disk (``(X, Y, Z, C)``, the Decathlon / nnU-Net layout, ``dim[0] = 4``); it is
never written as an ITK vector image, which nibabel reads as 5-D. Other formats (and 2-D NIfTI)
store channels as vector components. On reading, both 4-D scalar images (last axis = channels)
and vector images become ``(C, ...)`` arrays.

TIFF goes through tifffile (no geometry in a plain TIFF): page rows are X, page columns are Y,
pages are Z, samples (RGB) are channels. :func:`write_image` stores spacing, origin and direction
as JSON in the TIFF description, which :func:`read_image` reads back, so TIFF round trips keep
their geometry too; a foreign TIFF gets spacing 1, origin 0 and the identity direction.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg_cli.errors import GeometryError, InputError, OutputError
from brainseg_cli.io.atomic import atomic_write, output_error, temporary_sibling
from brainseg_cli.io.names import SUPPORTED_EXTENSIONS

logger = logging.getLogger(__name__)

_NIFTI = (".nii.gz", ".nii")
_TIFF = (".tif", ".tiff")
# Formats whose header and voxels live in two files (written into a temporary folder first).
_DETACHED = (".mhd", ".nhdr")
# Formats without a direction matrix in ITK (their writer silently drops it).
_NO_DIRECTION = (".gipl", ".gipl.gz")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_TIFF_META_KEY = "brainseg_geometry"


def image_extension(path: str | os.PathLike[str]) -> str:
    """Return the supported ending of ``path`` (e.g. ``".nii.gz"``), lower case.

    Raises:
        InputError: the ending is not one of :data:`SUPPORTED_EXTENSIONS` (the message lists them).
    """
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise InputError(
        f"{path}: unsupported image file ending; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _fmt(values: Any) -> str:
    """Format a vector or matrix compactly for one-line messages."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2:
        return "[" + ", ".join(_fmt(row) for row in arr) + "]"
    return "(" + ", ".join(f"{v:.6g}" for v in arr.ravel()) + ")"


@dataclass(frozen=True, eq=False)
class Image:
    """An image array with its world geometry (ITK / LPS convention).

    Attributes:
        array: voxels, ``(X, Y, Z)`` or ``(C, X, Y, Z)`` for 3-D, ``(X, Y)`` or ``(C, X, Y)`` for 2-D
            (X, Y, Z = index axes in ITK/NIfTI order). Not copied.
        spacing: voxel size in mm per index axis; its length is the number of spatial dimensions.
        origin: LPS position (mm) of the centre of voxel 0; defaults to zeros.
        direction: (D, D) matrix, column k = LPS unit vector of index axis k; defaults to identity.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=float).ravel())
        dims = len(spacing)
        if dims not in (2, 3):
            raise GeometryError(f"image spacing must have 2 or 3 values, got {_fmt(spacing)}")
        if array.ndim not in (dims, dims + 1):
            raise GeometryError(
                f"a {dims}-D image needs a {dims}-D or {dims + 1}-D array, got shape {array.shape}"
            )
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"image spacing must be positive, got {_fmt(spacing)}")
        origin = (0.0,) * dims if self.origin is None else tuple(
            float(o) for o in np.asarray(self.origin, dtype=float).ravel())
        if len(origin) != dims:
            raise GeometryError(f"image origin {_fmt(origin)} does not have {dims} values")
        direction = (np.eye(dims) if self.direction is None
                     else np.array(self.direction, dtype=np.float64))
        if direction.size != dims * dims:
            raise GeometryError(f"image direction {_fmt(direction)} is not a {dims}x{dims} matrix")
        direction = direction.reshape(dims, dims)
        if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
            raise GeometryError(f"image direction {_fmt(direction)} is singular")
        direction = direction + 0.0  # no negative zeros
        direction.setflags(write=False)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    def __repr__(self) -> str:
        return (f"Image(shape={self.array.shape}, dtype={self.array.dtype}, "
                f"spacing={_fmt(self.spacing)}, origin={_fmt(self.origin)}, "
                f"direction={_fmt(self.direction)})")

    # ----------------------------------------------------------------------------- properties
    @property
    def spatial_dims(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spacing)

    @property
    def has_channels(self) -> bool:
        """True when the array has a leading channel axis ``(C, ...)``."""
        return self.array.ndim == self.spatial_dims + 1

    @property
    def num_channels(self) -> int:
        """Number of channels (1 when there is no channel axis)."""
        return int(self.array.shape[0]) if self.has_channels else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Voxel counts along the index axes ``(X, Y[, Z])``."""
        return tuple(int(n) for n in self.array.shape[-self.spatial_dims:])

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 nibabel (RAS) affine mapping ``(i, j, k, 1)`` to RAS mm.

        For 2-D images the third index axis is the identity with 1 mm spacing at z = 0 (what
        nibabel reports for a 2-D NIfTI file).
        """
        d = self.spatial_dims
        m3 = np.eye(3)
        m3[:d, :d] = self.direction * np.asarray(self.spacing)[None, :]
        o3 = np.zeros(3)
        o3[:d] = self.origin
        out = np.eye(4)
        out[:3, :3] = _LPS_TO_RAS @ m3
        out[:3, 3] = _LPS_TO_RAS @ o3
        return out

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_affine(cls, array: np.ndarray, affine: np.ndarray, *, spatial_dims: int = 3) -> Image:
        """Build an image from an array in brainseg axis order and a nibabel (RAS) affine.

        Args:
            array: ``(X, Y, Z)`` / ``(C, X, Y, Z)`` (or ``(X, Y)`` / ``(C, X, Y)`` with
                ``spatial_dims=2``). nibabel's 4-D arrays are channels last: move the axis first.
            affine: 4x4 RAS affine (nibabel convention). Shear is not representable and raises.
            spatial_dims: 3, or 2 for a 2-D image (the affine's third axis is then ignored).

        Raises:
            GeometryError: the affine is not 4x4, is singular, or has shear.
        """
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise GeometryError(f"an affine must be a finite 4x4 matrix, got {_fmt(aff)}")
        lps = _LPS_TO_RAS @ aff[:3, :3]
        origin = _LPS_TO_RAS @ aff[:3, 3]
        d = spatial_dims
        m = lps[:d, :d]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"affine {_fmt(aff)} has a zero-length axis")
        direction = m / spacing[None, :]
        if not np.allclose(direction.T @ direction, np.eye(d), atol=1e-4):
            raise GeometryError(f"affine {_fmt(aff)} has shear, which an ITK direction cannot hold")
        return cls(array, tuple(spacing), tuple(origin[:d]), direction)

    @classmethod
    def stack(cls, images: Sequence[Image]) -> Image:
        """Stack single-channel images on one grid into one ``(C, X, Y[, Z])`` image.

        Raises:
            GeometryError: an image has channels or its grid differs from the first one's.
        """
        if not images:
            raise InputError("Image.stack needs at least one image")
        first = images[0]
        for i, img in enumerate(images):
            if img.has_channels:
                raise GeometryError(
                    f"Image.stack: image {i} already has {img.num_channels} channels "
                    f"(shape {img.array.shape}); stack single-channel images")
            if i:
                img.check_same_grid(first, f"Image.stack: image {i}")
        return first.with_array(np.stack([img.array for img in images], axis=0))

    # ----------------------------------------------------------------------------- derived images
    def with_array(self, array: np.ndarray) -> Image:
        """Return an image with this geometry and new voxels (a channel axis may be added/removed).

        Raises:
            GeometryError: the new array's spatial shape differs from this image's.
        """
        array = np.asarray(array)
        d = self.spatial_dims
        if array.ndim not in (d, d + 1) or tuple(array.shape[-d:]) != self.spatial_shape:
            raise GeometryError(
                f"new array shape {array.shape} does not fit spatial shape {self.spatial_shape}")
        return dataclasses.replace(self, array=array)

    def channel(self, i: int) -> Image:
        """Return channel ``i`` as a single-channel image ``(X, Y[, Z])`` (a view, not a copy).

        Raises:
            InputError: ``i`` is out of range.
        """
        n = self.num_channels
        if not -n <= i < n:
            raise InputError(f"channel {i} out of range for an image with {n} channel(s)")
        if not self.has_channels:
            return self
        return self.with_array(self.array[i])

    def check_same_grid(self, other: Image, what: str, tol: float = 1e-4) -> None:
        """Raise unless ``other`` lies on the same voxel grid as this image.

        Compares spatial dimensions and shape exactly, spacing, origin and direction to ``tol``
        (absolute; mm for spacing and origin). Channel counts are not compared.

        Args:
            other: the image to compare with.
            what: names the comparison in the message, e.g. ``"case BRATS_004: label vs FLAIR"``.
            tol: absolute tolerance.

        Raises:
            GeometryError: one line naming ``what`` and every differing value.
        """
        problems = _grid_differences(self, other, tol)
        if problems:
            raise GeometryError(f"{what}: grids differ: {'; '.join(problems)}")


def _grid_differences(a: Image, b: Image, tol: float) -> list[str]:
    """Describe how the grids of ``a`` and ``b`` differ (empty list when equal within ``tol``)."""
    if a.spatial_dims != b.spatial_dims:
        return [f"dimensions {a.spatial_dims}-D vs {b.spatial_dims}-D"]
    out = []
    if a.spatial_shape != b.spatial_shape:
        out.append(f"shape {'x'.join(map(str, a.spatial_shape))} vs "
                   f"{'x'.join(map(str, b.spatial_shape))}")
    if not np.allclose(a.spacing, b.spacing, rtol=0, atol=tol):
        out.append(f"spacing {_fmt(a.spacing)} vs {_fmt(b.spacing)}")
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tol):
        out.append(f"origin {_fmt(a.origin)} vs {_fmt(b.origin)}")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=tol):
        out.append(f"direction {_fmt(a.direction)} vs {_fmt(b.direction)}")
    return out


def geometry_equal(a: Image, b: Image, *, tol: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` share spatial shape, spacing, origin and direction within ``tol``."""
    return not _grid_differences(a, b, tol)


# ================================================================================= reading
def _check_file(path: Path) -> str:
    """Check that ``path`` is a non-empty file with a supported ending; return the ending."""
    ext = image_extension(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    return ext


def read_image(path: str | os.PathLike[str], *, allow_nonfinite: bool = False) -> Image:
    """Read an image file into an :class:`Image`.

    Formats: NIfTI (``.nii``, ``.nii.gz``; 3-D, 2-D and 4-D with channels last on disk),
    MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``), GIPL (``.gipl``, ``.gipl.gz``) and
    TIFF (``.tif``, ``.tiff``). NIfTI scaling (``scl_slope``/``scl_inter``) is applied by ITK.

    Args:
        path: the image file.
        allow_nonfinite: accept NaN/Inf voxels (by default they are an error).

    Returns:
        The image; the array is ``(X, Y, Z)`` / ``(X, Y)``, or ``(C, X, Y, Z)`` / ``(C, X, Y)`` for
        4-D NIfTI, vector images and RGB TIFF.

    Raises:
        InputError: the file is missing, empty, damaged, not an image, has an unsupported ending,
            or holds NaN/Inf voxels while ``allow_nonfinite`` is False. The message names the file.
    """
    path = Path(path)
    ext = _check_file(path)
    if path.name.startswith("._"):
        hint = " (a macOS AppleDouble '._' metadata file, not an image)"
    else:
        hint = ""
    if ext in _TIFF:
        image = _read_tiff_image(path, hint)
    else:
        image = _read_sitk(path, ext, hint)
    if not allow_nonfinite and image.array.dtype.kind in "fc":
        bad = int(image.array.size - np.count_nonzero(np.isfinite(image.array)))
        if bad:
            raise InputError(f"{path}: {bad} NaN/Inf voxel(s) of {image.array.size} "
                             "(pass allow_nonfinite=True to accept them)")
    return image


def _read_sitk(path: Path, ext: str, hint: str) -> Image:
    """Read a non-TIFF image with SimpleITK (geometry always from ITK; see the module docstring)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image{hint}: {_first_line(str(exc))}") from None
    expected = _expected_file_bytes(reader, ext)
    if expected is not None:
        _check_complete(path, ext, expected)
    dims = reader.GetDimension()
    geometry = (np.asarray(reader.GetSpacing(), dtype=np.float64),
                np.asarray(reader.GetOrigin(), dtype=np.float64),
                np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dims, dims))
    if ext in _NIFTI and _nifti_float_unscaled(reader):
        # ITK's NIfTI reader silently replaces NaN/Inf by 0: take float voxels from nibabel.
        array = _nibabel_voxels(path, reader)
        if array is not None:
            return _assemble(array, dims, 1, geometry, path)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image{hint}: {_first_line(str(exc))}") from None
    return _from_sitk(img, path)


def _expected_file_bytes(reader: Any, ext: str) -> int | None:
    """Bytes the (uncompressed) file must hold for NIfTI and GIPL, whose ITK readers do not
    notice truncation; None for formats whose readers check it themselves."""
    if ext in _NIFTI:
        try:
            ndim = int(reader.GetMetaData("dim[0]"))
            dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1)]
            offset = int(float(reader.GetMetaData("vox_offset")))
            bitpix = int(reader.GetMetaData("bitpix"))
        except (RuntimeError, ValueError):
            return None
        return offset + int(np.prod(dims)) * bitpix // 8
    if ext in _NO_DIRECTION:  # GIPL: 256-byte header then the voxels
        import SimpleITK as sitk

        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(),
                           reader.GetNumberOfComponents())
        itemsize = sitk.GetArrayViewFromImage(probe).itemsize * reader.GetNumberOfComponents()
        return 256 + int(np.prod(reader.GetSize())) * itemsize
    if ext == ".mha":
        return _metaimage_expected_bytes(reader.GetFileName())
    return None


#: Bytes per voxel of MetaImage element types.
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _metaimage_expected_bytes(path: str) -> int | None:
    """File size a ``.mha`` with its voxels inside (``ElementDataFile = LOCAL``) must have: the header
    plus ``CompressedDataSize`` or the raw voxel bytes. None when the header does not say (ITK then
    reports a short read with a misleading 'No such file or directory')."""
    header: dict[str, str] = {}
    with open(path, "rb") as fh:
        offset = 0
        for raw in iter(lambda: fh.readline(4096), b""):
            offset += len(raw)
            key, _, value = raw.decode("latin-1").partition("=")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile" or offset > 1 << 16:
                break
    if header.get("ElementDataFile", "").upper() != "LOCAL":
        return None
    try:
        if header.get("CompressedData", "False").lower() == "true":
            data = int(header["CompressedDataSize"])
        else:
            dims = [int(v) for v in header["DimSize"].split()]
            data = int(np.prod(dims)) * int(header.get("ElementNumberOfChannels", "1")) * _MET_SIZES[header["ElementType"]]
    except (KeyError, ValueError):
        return None
    return offset + data


def _check_complete(path: Path, ext: str, expected: int) -> None:
    """Raise InputError when ``path`` holds fewer than ``expected`` (uncompressed) bytes.

    For gzip files the size stored in the gzip trailer is compared first (no decompression);
    only when it disagrees is the stream decompressed to tell truncation from trailing data.
    """
    if not ext.endswith(".gz"):
        size = path.stat().st_size
        if size < expected:
            raise InputError(f"{path}: truncated file ({size} bytes, the header needs {expected})")
        return
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    if isize == expected % 2**32:
        return
    import zlib

    total = 0
    decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(decomp.decompress(chunk))
                while decomp.eof and decomp.unused_data:  # concatenated gzip members
                    rest = decomp.unused_data
                    decomp = zlib.decompressobj(zlib.MAX_WBITS | 16)
                    total += len(decomp.decompress(rest))
    except zlib.error as exc:
        raise InputError(f"{path}: damaged gzip data ({exc})") from None
    if not decomp.eof or total < expected:
        raise InputError(f"{path}: truncated file ({total} bytes after decompression, "
                         f"the header needs {expected})")


def _nifti_float_unscaled(reader: Any) -> bool:
    """True for a scalar NIfTI stored as float32/float64 without intensity scaling."""
    try:
        datatype = int(reader.GetMetaData("datatype"))
        slope = float(reader.GetMetaData("scl_slope"))
        inter = float(reader.GetMetaData("scl_inter"))
        extra = [int(reader.GetMetaData(f"dim[{i}]")) for i in (5, 6, 7)]
    except (RuntimeError, ValueError):
        return False
    trivial_slope = not np.isfinite(slope) or slope in (0.0, 1.0)
    trivial_inter = not np.isfinite(inter) or inter == 0.0 or not trivial_slope
    return (datatype in (16, 64) and trivial_slope and trivial_inter
            and reader.GetNumberOfComponents() == 1 and all(n <= 1 for n in extra))


def _nibabel_voxels(path: Path, reader: Any) -> np.ndarray | None:
    """Raw float voxels ``(X, Y[, Z][, C])`` read by nibabel (None if its shape disagrees with ITK)."""
    import nibabel as nib

    try:
        array = np.asanyarray(nib.load(path, mmap=False).dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot read NIfTI voxels: {_first_line(str(exc))}") from None
    size = tuple(reader.GetSize())
    if tuple(array.shape[: len(size)]) != size or any(n != 1 for n in array.shape[len(size):]):
        return None
    return array.reshape(size)  # ITK drops trailing singleton axes (e.g. X, Y, Z, 1)


def _first_line(message: str) -> str:
    """The informative part of a (possibly multi-line) ITK or tifffile exception message."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")] or lines
    text = " ".join(lines) if lines else "unknown error"
    text = re.sub(r"^sitk::ERROR:\s*", "", text)
    text = re.sub(r"ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", text)
    return text[:300]


def _assemble(array: np.ndarray, ndim: int, ncomp: int,
              geometry: tuple[np.ndarray, np.ndarray, np.ndarray], path: Path | str) -> Image:
    """Build an Image from spatial-first voxels ``(X, Y[, Z][, T])`` or ``(..., comp)``.

    A 4-D scalar array's last axis and a vector image's components become channels (first).
    """
    spacing, origin, direction = geometry
    if ncomp > 1:
        if ndim not in (2, 3):
            raise InputError(f"{path}: {ndim}-D vector images are not supported "
                             f"({ncomp} components); use 2-D or 3-D")
        return Image(np.moveaxis(array, -1, 0), tuple(spacing), tuple(origin), direction)
    if ndim == 4:
        return Image(np.moveaxis(array, -1, 0), tuple(spacing[:3]), tuple(origin[:3]),
                     direction[:3, :3])
    if ndim not in (2, 3):
        raise InputError(f"{path}: {ndim}-D images are not supported (shape {array.shape})")
    return Image(array, tuple(spacing), tuple(origin), direction)


def _from_sitk(img: Any, path: Path | str) -> Image:
    """Convert a SimpleITK image to an :class:`Image` (transposed view, spatial dims first)."""
    import SimpleITK as sitk

    ndim = img.GetDimension()
    ncomp = img.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) / (t, z, y, x), components last
    if ncomp > 1:
        spatial_first = np.moveaxis(arr.T, 0, -1)  # (c, x, y, z) -> (x, y, z, c)
    else:
        spatial_first = arr.T  # (x, y, z[, t])
    geometry = (np.asarray(img.GetSpacing(), dtype=np.float64),
                np.asarray(img.GetOrigin(), dtype=np.float64),
                np.asarray(img.GetDirection(), dtype=np.float64).reshape(ndim, ndim))
    return _assemble(spatial_first, ndim, ncomp, geometry, path)


def _read_tiff_image(path: Path, hint: str) -> Image:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else None
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: cannot read TIFF{hint}: {_first_line(str(exc))}") from None
    geometry = meta.get(_TIFF_META_KEY) if isinstance(meta, dict) else None
    if isinstance(geometry, dict):
        return _tiff_with_geometry(path, data, geometry)
    return _tiff_plain(path, data, axes)


def _tiff_with_geometry(path: Path, data: np.ndarray, geometry: dict[str, Any]) -> Image:
    """Rebuild an image written by :func:`write_image` (disk layout ``[Z,] X, Y[, C]``)."""
    try:
        dims = int(geometry["spatial_dims"])
        channels = bool(geometry["has_channels"])
        shape = tuple(int(n) for n in geometry["shape"])
        data = data.reshape(shape)
        if dims == 3:
            data = np.moveaxis(data, 0, 2)  # (Z, X, Y[, C]) -> (X, Y, Z[, C])
        if channels:
            data = np.moveaxis(data, -1, 0)
        return Image(data, tuple(geometry["spacing"]), tuple(geometry["origin"]),
                     np.asarray(geometry["direction"], dtype=np.float64))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: truncated or damaged TIFF (brainseg geometry {exc})") from None


def _tiff_plain(path: Path, data: np.ndarray, axes: str) -> Image:
    """Interpret a TIFF without brainseg metadata: rows X, columns Y, pages Z, samples channels."""
    channels = "S" in axes
    if channels:
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    spatial = len(axes) - int(channels)
    if spatial == 2:
        array = data
    elif spatial == 3:
        array = np.moveaxis(data, 0, 2)  # pages -> Z
    else:
        raise InputError(f"{path}: unsupported TIFF layout (axes {axes}, shape {data.shape}); "
                         "expected 2-D pages, optionally stacked and/or RGB")
    if channels:
        array = np.moveaxis(array, -1, 0)
    return Image(array, (1.0,) * spatial)


# ================================================================================= writing
_SITK_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
                np.float32, np.float64)


def _writable_array(image: Image, path: Path) -> np.ndarray:
    array = image.array
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if not any(array.dtype == t for t in _SITK_DTYPES):
        raise InputError(f"{path}: cannot write voxels of type {array.dtype}")
    return array


def to_sitk(image: Image, *, nifti_4d: bool = False) -> Any:
    """Convert an :class:`Image` to a SimpleITK image (geometry included).

    Args:
        image: the image.
        nifti_4d: write a 3-D multi-channel image as a 4-D scalar image (channels as the 4th
            axis, as NIfTI wants) instead of a vector image.

    Returns:
        ``SimpleITK.Image``.
    """
    import SimpleITK as sitk

    array = image.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    d = image.spatial_dims
    if image.has_channels and nifti_4d and d == 3:
        img = sitk.GetImageFromArray(np.transpose(array, (0, 3, 2, 1)), isVector=False)
        direction = np.eye(4)
        direction[:3, :3] = image.direction
        img.SetSpacing((*image.spacing, 1.0))
        img.SetOrigin((*image.origin, 0.0))
        img.SetDirection(tuple(direction.ravel()))
        return img
    if image.has_channels:
        # (c, x, y[, z]) -> (z, y, x, c)
        arr = np.moveaxis(np.transpose(array, (0, *range(array.ndim - 1, 0, -1))), 0, -1)
        img = sitk.GetImageFromArray(arr, isVector=True)
    else:
        img = sitk.GetImageFromArray(array.T, isVector=False)
    img.SetSpacing(image.spacing)
    img.SetOrigin(image.origin)
    img.SetDirection(tuple(image.direction.ravel()))
    return img


def from_sitk(img: Any) -> Image:
    """Convert a SimpleITK image to an :class:`Image` (4-D scalar -> channels first)."""
    return _from_sitk(img, "<SimpleITK image>")


def write_image(image: Image, path: str | os.PathLike[str], *, compress: bool = True) -> None:
    """Write ``image`` atomically, keeping its geometry; the format follows the file ending.

    A 3-D multi-channel image becomes a 4-D NIfTI (channels last on disk) for ``.nii``/``.nii.gz``
    and a vector image for the other formats; see the module docstring.

    Args:
        image: the image to write.
        path: target file; its ending picks the format (:data:`SUPPORTED_EXTENSIONS`).
        compress: compress the voxels of ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr`` and TIFF files
            (zlib). NIfTI and GIPL compression follows the ending (``.gz``) and ignores this flag.

    Raises:
        InputError: unsupported ending or voxel type, or a GIPL target for an image whose
            direction is not the identity (GIPL cannot store it).
    """
    path = Path(path)
    ext = image_extension(path)
    array = _writable_array(image, path)
    if array is not image.array:
        image = image.with_array(array)
    if ext in _TIFF:
        _write_tiff_image(image, path, compress=compress)
        return
    if ext in _NO_DIRECTION and not np.allclose(image.direction, np.eye(image.spatial_dims),
                                                atol=1e-6):
        raise InputError(f"{path}: GIPL cannot store the direction {_fmt(image.direction)}; "
                         "write NIfTI, MetaImage or NRRD instead")
    import SimpleITK as sitk

    img = to_sitk(image, nifti_4d=ext in _NIFTI)
    use_compression = compress and ext not in _NIFTI + _NO_DIRECTION
    try:
        if ext in _DETACHED:
            # Header and voxel files: write both into a hidden sibling folder with their final
            # names (the header references the voxel file by name), then move the voxel file(s)
            # into place first and the header last, each with os.replace.
            tmp_dir = temporary_sibling(path)
            tmp_dir.mkdir(parents=True)
            try:
                sitk.WriteImage(img, str(tmp_dir / path.name), use_compression)
                parts = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)
                for part in parts:
                    os.replace(part, path.parent / part.name)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            verify = (lambda tmp: verify_written_gzip(tmp, ext, img)) if ext in _GZ_HEADER_BYTES else None
            with atomic_write(path, verify=verify) as tmp:
                sitk.WriteImage(img, str(tmp), use_compression)
    except RuntimeError as exc:
        raise OutputError(f"cannot write {path}: {_first_line(str(exc))}") from None
    except OSError as exc:  # the detached formats' own writes and renames
        raise output_error(path, exc) from None
    logger.debug("wrote %s %s", path, image)


#: Header bytes before the voxels in the gzip-compressed formats SimpleITK writes (NIfTI-1: 348 + 4).
_GZ_HEADER_BYTES = {".nii.gz": 352, ".gipl.gz": 256}


def verify_written_gzip(path: Path, ext: str, img: Any) -> None:
    """Check that a just-written ``.gz`` image is whole (SimpleITK does not always report a write that a
    full disk cut short).

    The gzip trailer's length is compared with the header plus the image's voxel bytes; only when they
    disagree is the stream decompressed (:func:`_check_complete`), so a whole file costs one small read.

    Raises:
        OSError: the file is empty, truncated or damaged (``EIO``; a full disk is the likely cause).
    """
    import errno

    import SimpleITK as sitk

    if path.stat().st_size == 0:
        raise OSError(errno.EIO, "the written file is incomplete or damaged (it is empty); is the disk full?")
    itemsize = sitk.GetArrayViewFromImage(img).itemsize
    expected = _GZ_HEADER_BYTES[ext] + img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * itemsize
    try:
        _check_complete(path, ext, expected)
    except InputError:
        raise OSError(errno.EIO, "the written file is incomplete or damaged; is the disk full?") from None


def _write_tiff_image(image: Image, path: Path, *, compress: bool) -> None:
    import tifffile

    data = image.array
    if image.has_channels:
        data = np.moveaxis(data, 0, -1)  # (X, Y[, Z], C)
    if image.spatial_dims == 3:
        data = np.moveaxis(data, 2, 0)  # (Z, X, Y[, C])
    data = np.ascontiguousarray(data)
    geometry = {"spatial_dims": image.spatial_dims, "has_channels": image.has_channels,
                "shape": list(data.shape), "spacing": list(image.spacing),
                "origin": list(image.origin), "direction": image.direction.tolist()}
    rgb = image.has_channels and image.num_channels == 3 and data.dtype == np.uint8
    kwargs: dict[str, Any] = {
        "photometric": "rgb" if rgb else "minisblack",
        "metadata": {_TIFF_META_KEY: geometry},
        "compression": "zlib" if compress else None,
    }
    if image.has_channels:
        kwargs["planarconfig"] = "contig"
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)


def read_tiff(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a TIFF file's first series as stored: ``([pages,] rows, cols[, samples])``.

    Raises:
        InputError: missing, empty or unreadable file.
    """
    import tifffile

    path = Path(path)
    _check_file(path)
    try:
        return tifffile.imread(path)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: cannot read TIFF: {_first_line(str(exc))}") from None


def write_tiff(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` as a TIFF atomically, in TIFF layout ``([pages,] rows, cols[, 3])``.

    A last axis of 3 is written as RGB samples; anything else as grey pages.

    Args:
        path: target ``.tif`` / ``.tiff`` file.
        array: voxels in TIFF layout.
        compress: zlib-compress the pages.
    """
    import tifffile

    array = np.asarray(array)
    rgb = array.ndim >= 3 and array.shape[-1] == 3
    with atomic_write(Path(path)) as tmp:
        tifffile.imwrite(tmp, array, photometric="rgb" if rgb else "minisblack",
                         compression="zlib" if compress else None)
