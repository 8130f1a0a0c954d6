"""MRBrainS18 training layout (``brainseg convert mrbrains18``).

``<INPUT>/training/<id>/pre/{T1,IR,FLAIR}.nii.gz`` and ``<INPUT>/training/<id>/segm.nii.gz``
(INPUT may also be the ``training`` folder itself). Cases without ``segm.nii.gz`` go to
``imagesTs``. The preprocessed (``pre/``) scans are used; channels are written in canonical order
T1, FLAIR, IR. Labels 0-10 are kept with their MRBrainS18 names (label map ``mrbrains18``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from brainseg_cli.data.converters.base import (
    SourceCase,
    SourceDataset,
    SourceOptions,
    check_case_id,
    clean_file_name,
    is_hidden,
    load_channel_files,
)
from brainseg_cli.data.labelmaps import LABEL_MAPS
from brainseg_cli.errors import InputError

#: Canonical channel -> MRBrainS18 file name in ``pre/`` (output order).
CHANNEL_FILES: dict[str, str] = {"T1": "T1.nii.gz", "FLAIR": "FLAIR.nii.gz", "IR": "IR.nii.gz"}
LABEL_FILE = "segm.nii.gz"


def _find(folder: Path, name: str) -> list[Path]:
    """Files in ``folder`` named ``name`` (case-insensitive, download suffixes ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not is_hidden(p.name) and clean_file_name(p.name).lower() == name.lower())


def _case_folders(input_dir: Path) -> list[Path]:
    base = input_dir / "training" if (input_dir / "training").is_dir() else input_dir
    folders = [p for p in sorted(base.iterdir()) if p.is_dir() and not is_hidden(p.name) and (p / "pre").is_dir()]
    if not folders:
        raise InputError(f"{input_dir}: no MRBrainS18 case folders (expected training/<id>/pre/T1.nii.gz)")
    return folders


def discover(input_dir: Path, options: SourceOptions) -> SourceDataset:
    """List MRBrainS18 cases (one folder per case)."""
    cases = []
    for folder in _case_folders(input_dir):
        case_id = folder.name
        problem = check_case_id(case_id, input_dir)
        channel_files = []
        for channel, name in CHANNEL_FILES.items():
            hits = _find(folder / "pre", name)
            if not hits:
                problem = problem or f"case {case_id}: missing channel {channel} ({folder / 'pre' / name})"
            elif len(hits) > 1:
                problem = problem or f"case {case_id}: several files for {channel}: {', '.join(map(str, hits))}"
            else:
                channel_files.append((channel, hits[0]))
        labels = _find(folder, LABEL_FILE)
        if len(labels) > 1:
            problem = problem or f"case {case_id}: several label files: {', '.join(map(str, labels))}"
        label = labels[0] if labels else None
        cases.append(SourceCase(case_id, partial(load_channel_files, tuple(channel_files), label), label is not None,
                                tuple(p for _, p in channel_files) + tuple(labels), problem))
    return SourceDataset(source="mrbrains18", format="MRBrainS18 (NIfTI, pre/)", channels=tuple(CHANNEL_FILES),
                         label_map=LABEL_MAPS["mrbrains18"], cases=tuple(cases))
