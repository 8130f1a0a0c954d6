"""Image input/output with geometry: one in-memory :class:`Image` type for every format.

See :mod:`brainseg_cli.io.image` for axis order, the LPS/RAS conventions and the NIfTI rules, and
:mod:`brainseg_cli.io.slices` for Kaggle-LGG TIFF slice stacks.
"""

from brainseg_cli.io.atomic import atomic_dir, atomic_write
from brainseg_cli.io.image import (
    SUPPORTED_EXTENSIONS,
    Image,
    from_sitk,
    geometry_equal,
    image_extension,
    read_image,
    read_tiff,
    to_sitk,
    write_image,
    write_tiff,
)
from brainseg_cli.io.slices import LggPatient, list_lgg_patients, read_lgg_patient, write_lgg_masks

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Image",
    "LggPatient",
    "atomic_dir",
    "atomic_write",
    "from_sitk",
    "geometry_equal",
    "image_extension",
    "list_lgg_patients",
    "read_image",
    "read_lgg_patient",
    "read_tiff",
    "to_sitk",
    "write_image",
    "write_lgg_masks",
    "write_tiff",
]
