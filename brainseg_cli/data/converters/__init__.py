"""Source converters: one module per source format, and the registry ``brainseg convert`` uses.

Each module exposes ``discover(input: Path, options: SourceOptions) -> SourceDataset`` (lists the
cases without reading voxels); :mod:`brainseg_cli.data.convert` validates, maps and writes them.
"""

from __future__ import annotations

from brainseg_cli.data.converters import brats, lgg, mrbrains18, msd, nifti
from brainseg_cli.data.converters.base import Converter, LoadedCase, SourceCase, SourceDataset, SourceOptions
from brainseg_cli.errors import look_up

#: SOURCE name -> converter, in the order ``--help`` lists them.
CONVERTERS: dict[str, Converter] = {
    "lgg": Converter("lgg", "Kaggle LGG kaggle_3m TIFF slices (one folder per patient)", lgg.discover,
                     frozenset({"spacing"})),
    "brats": Converter("brats", "BraTS case folders of any generation (2012, 2013-2015, 2017-2021, 2023+)",
                       brats.discover),
    "msd": Converter("msd", "Medical Segmentation Decathlon task folder (4-D images)", msd.discover),
    "mrbrains18": Converter("mrbrains18", "MRBrainS18 training/<id>/pre/{T1,IR,FLAIR}.nii.gz + segm.nii.gz",
                            mrbrains18.discover),
    "nifti": Converter("nifti", "any NIfTI/MetaImage layout, one glob per channel (--channel, --label, --label-map)",
                       nifti.discover, frozenset({"channel_patterns", "label_pattern", "label_map"})),
}


def get_converter(name: str) -> Converter:
    """Return the converter registered as ``name``.

    Raises:
        RegistryError: unknown name; the message lists the sources and the closest match.
    """
    return look_up(name, CONVERTERS, "source")


__all__ = ["CONVERTERS", "Converter", "LoadedCase", "SourceCase", "SourceDataset", "SourceOptions", "get_converter"]
