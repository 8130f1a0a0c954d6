"""Kaggle LGG ``kaggle_3m`` TIFF slices (``brainseg convert lgg``).

One folder per patient with ``<patient>_<n>.tif`` (256 x 256 RGB: pre-contrast, FLAIR,
post-contrast) and ``<patient>_<n>_mask.tif`` (0 / 255). Each patient becomes one 3-D case
(slices stacked in numeric order, see :mod:`brainseg_cli.io.slices`) with channels T1, T1c, FLAIR
and mask 255 -> 1 (label map ``lgg``). TIFFs carry no spacing: 1 x 1 x 1 mm unless ``--spacing``
gives it; the decision is recorded in ``dataset.json``. Other files (``data.csv``, ``README.md``)
are ignored; patients without masks go to ``imagesTs``.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from brainseg_cli.data.converters.base import LoadedCase, SourceCase, SourceDataset, SourceOptions, check_case_id
from brainseg_cli.data.labelmaps import LABEL_MAPS
from brainseg_cli.io.slices import LGG_CHANNELS, list_lgg_patients, read_lgg_patient

#: Spacing (mm, X Y Z) used when ``--spacing`` is not given.
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)
CHANNELS: tuple[str, ...] = ("T1", "T1c", "FLAIR")


def load_patient(folder: Path, spacing: tuple[float, float, float]) -> LoadedCase:
    """Read one patient: channels by canonical name, mask as source values 0 / 255."""
    patient = read_lgg_patient(folder, spacing=spacing)
    channels = {name: patient.image.channel(i) for i, name in enumerate(LGG_CHANNELS)}
    label = None
    if patient.mask is not None:
        label = patient.mask.with_array(patient.mask.array.astype(np.uint8) * np.uint8(255))
    return LoadedCase(channels, label)


def discover(input_dir: Path, options: SourceOptions) -> SourceDataset:
    """List the patient folders of a ``kaggle_3m`` folder (or one patient folder)."""
    spacing = options.spacing or DEFAULT_SPACING
    cases = []
    for folder in list_lgg_patients(input_dir):
        mask_re = re.compile(rf"^{re.escape(folder.name)}_\d+_mask\.tiff?$", re.IGNORECASE)
        has_mask = any(mask_re.match(p.name) for p in folder.iterdir())
        cases.append(SourceCase(folder.name, partial(load_patient, folder, tuple(spacing)), has_mask, (folder,),
                                check_case_id(folder.name, input_dir)))
    decision = {"source": "--spacing" if options.spacing else "default",
                "value": [float(s) for s in spacing],
                "note": "TIFF slices carry no spacing; X = TIFF row, Y = TIFF column, Z = slice number order"}
    return SourceDataset(source="lgg", format="Kaggle LGG kaggle_3m (TIFF slices)", channels=CHANNELS,
                         label_map=LABEL_MAPS["lgg"], cases=tuple(cases), spacing=decision,
                         extra={"source_channels": {"0": "pre-contrast (T1)", "1": "FLAIR", "2": "post-contrast (T1c)"}})
