"""BraTS case folders of every generation (``brainseg convert brats``).

The generation is detected from the file names (docs/DEFINITIONS.md §1-2 has one label mapping per generation):

| generation | files | label map |
|---|---|---|
| 2012 | ``<case>_{FLAIR,T1,T1C,T2,truth}.mha`` (``BRATS_HG0001_T1C_N4.mha`` too) | ``brats2012`` |
| 2013-2015 | ``VSD.Brain.XX.O.MR_{Flair,T1,T1c,T2}.<id>.mha``, ``VSD.Brain_3more.XX.O.OT.<id>.mha`` (one sub-folder per file, inside the case folder) | ``brats2015`` |
| 2017-2021 | ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` | ``brats2017`` |
| 2023+ | ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` | ``brats2023`` |

Files are found at any depth below INPUT (``HGG/``/``LGG/`` sub-folders, flat folders, one folder
per case). Names are matched case-insensitively after dropping download suffixes (``" (1)"``,
``"(1)"`` inside the ending, ``" - Copy"``). The case id is the file-name prefix (2012, 2017+) or
the case folder holding the ``VSD.*`` sub-folders (2013-2015). Other files (brain masks,
predictions, licences) are ignored. Cases without a segmentation go to ``imagesTs``. All cases
of one conversion must belong to one generation.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

from brainseg_cli.data.channels import CANONICAL_CHANNELS
from brainseg_cli.data.converters.base import (
    SourceCase,
    SourceDataset,
    SourceOptions,
    check_case_id,
    clean_file_name,
    load_channel_files,
    split_image_name,
    walk_files,
)
from brainseg_cli.data.labelmaps import LABEL_MAPS
from brainseg_cli.errors import InputError

logger = logging.getLogger(__name__)

LABEL = "label"

#: Generation -> (description, label map preset).
GENERATIONS: dict[str, tuple[str, str]] = {
    "2012": ("BraTS 2012 (MetaImage)", "brats2012"),
    "2013-2015": ("BraTS 2013-2015 (VSD MetaImage)", "brats2015"),
    "2017-2021": ("BraTS 2017-2021 (NIfTI)", "brats2017"),
    "2023+": ("BraTS 2023+ (NIfTI)", "brats2023"),
}

_VSD = re.compile(r"^vsd\.brain[^.]*\.xx\.o\.(?P<mod>mr_flair|mr_t1c|mr_t1|mr_t2|ot)(\.\d+)?$")
_VSD_MODS = {"mr_flair": "FLAIR", "mr_t1": "T1", "mr_t1c": "T1c", "mr_t2": "T2", "ot": LABEL}
_DASH = re.compile(r"^(?P<case>.+)-(?P<mod>t1n|t1c|t2w|t2f|seg)$")
_DASH_MODS = {"t1n": "T1", "t1c": "T1c", "t2w": "T2", "t2f": "FLAIR", "seg": LABEL}
_UNDERSCORE = re.compile(r"^(?P<case>.+)_(?P<mod>t1|t1ce|t1c|t2|flair|seg|truth)$")
_UNDERSCORE_MODS = {"t1": "T1", "t1ce": "T1c", "t1c": "T1c", "t2": "T2", "flair": "FLAIR", "seg": LABEL, "truth": LABEL}
# BraTS 2012 names: the modality may carry a further suffix (``BRATS_HG0002_T1C_N4.mha``).
_BRATS2012 = re.compile(r"^(?P<case>(sim)?brats_(hg|lg)\d+)_(?P<mod>flair|t1c|t1|t2|truth)([_.\-].*)?$")
# Suffixes that only one of the two underscore generations uses.
_ONLY_2012 = {"t1c", "truth"}
_ONLY_2017 = {"t1ce", "seg"}


def classify_file(path: Path) -> tuple[str, str, str, str | None] | None:
    """Recognise one BraTS file.

    Args:
        path: a file below INPUT.

    Returns:
        ``(case_id, role, family, suffix)`` with ``role`` a canonical channel or ``"label"``,
        ``family`` one of ``"vsd"``, ``"dash"``, ``"underscore"`` and ``suffix`` the matched
        underscore suffix (to tell 2012 from 2017-2021); ``None`` for other files.
    """
    split = split_image_name(clean_file_name(path.name))
    if split is None:
        return None
    stem, ending = split
    lower = stem.lower()
    m = _VSD.match(lower)
    if m:
        folder = path.parent
        if folder.name.lower().startswith("vsd."):
            folder = folder.parent
        return folder.name, _VSD_MODS[m["mod"]], "vsd", None
    m = _DASH.match(lower)
    if m and ending.startswith(".nii"):
        return stem[: len(m["case"])], _DASH_MODS[m["mod"]], "dash", None
    m = _BRATS2012.match(lower) if ending in (".mha", ".mhd") else None
    m = m or _UNDERSCORE.match(lower)
    if m:
        suffix = m["mod"]
        if ending in (".mha", ".mhd") and suffix not in _ONLY_2017:
            suffix = suffix if suffix in _ONLY_2012 else f"{suffix}@mha"
        return stem[: len(m["case"])], _UNDERSCORE_MODS[m["mod"]], "underscore", suffix
    return None


def _generation(family: str, suffixes: set[str], case_id: str) -> str:
    """The generation of one case from its file family and underscore suffixes."""
    if family == "vsd":
        return "2013-2015"
    if family == "dash":
        return "2023+"
    plain = {s.split("@")[0] for s in suffixes}
    says_2012 = bool(plain & _ONLY_2012) or any(s.endswith("@mha") for s in suffixes)
    says_2017 = bool(plain & _ONLY_2017)
    if says_2012 and says_2017:
        raise InputError(f"case {case_id}: mixes BraTS 2012 names ({sorted(plain & _ONLY_2012) or 'MetaImage'}) "
                         f"and 2017-2021 names ({sorted(plain & _ONLY_2017)})")
    return "2012" if says_2012 else "2017-2021"


def discover(input_dir: Path, options: SourceOptions) -> SourceDataset:
    """List the BraTS cases under ``input_dir`` and detect their generation.

    Args:
        input_dir: a folder of BraTS cases (any depth).
        options: unused by this converter (checked by the registry).

    Returns:
        The :class:`SourceDataset` with channels T1, T1c, T2, FLAIR and the generation's label map.

    Raises:
        InputError: no BraTS files, or cases of several generations (names one case of each).
    """
    found: dict[str, dict[str, list[Path]]] = {}
    families: dict[str, set[str]] = {}
    suffixes: dict[str, set[str]] = {}
    for path in walk_files(input_dir):
        hit = classify_file(path)
        if hit is None:
            continue
        case_id, role, family, suffix = hit
        found.setdefault(case_id, {}).setdefault(role, []).append(path)
        families.setdefault(case_id, set()).add(family)
        if suffix:
            suffixes.setdefault(case_id, set()).add(suffix)
    if not found:
        raise InputError(f"{input_dir}: no BraTS files found (e.g. <case>_flair.nii.gz, <case>-t2f.nii.gz, "
                         f"VSD.Brain.XX.O.MR_Flair.<id>.mha, <case>_FLAIR.mha); for other layouts use source 'nifti'")
    generations: dict[str, str] = {}
    for case_id in sorted(found):
        if len(families[case_id]) > 1:
            raise InputError(f"case {case_id}: files of several BraTS naming schemes: "
                             f"{', '.join(str(p) for ps in found[case_id].values() for p in ps)}")
        generations[case_id] = _generation(next(iter(families[case_id])), suffixes.get(case_id, set()), case_id)
    distinct = sorted(set(generations.values()))
    if len(distinct) > 1:
        examples = ", ".join(f"{next(c for c, g in generations.items() if g == gen)} ({gen})" for gen in distinct)
        raise InputError(f"{input_dir}: cases of several BraTS generations: {examples}; convert them separately")
    generation = distinct[0]
    description, preset = GENERATIONS[generation]
    channels = tuple(c for c in CANONICAL_CHANNELS if c != "IR")
    cases = []
    for case_id, roles in sorted(found.items()):
        problem = check_case_id(case_id, input_dir)
        for role, paths in roles.items():
            if len(paths) > 1:
                problem = problem or f"case {case_id}: several files for {role}: {', '.join(str(p) for p in paths)}"
        missing = [c for c in channels if c not in roles]
        if missing:
            have = [c for c in channels if c in roles]
            problem = problem or (f"case {case_id}: missing channel(s) {', '.join(missing)} "
                                  f"(found {', '.join(have) or 'none'}{' and a label' if LABEL in roles else ''})")
        channel_files = tuple((c, roles[c][0]) for c in channels if c in roles)
        label = roles[LABEL][0] if LABEL in roles else None
        files = tuple(p for ps in roles.values() for p in ps)
        cases.append(SourceCase(case_id, partial(load_channel_files, channel_files, label), label is not None,
                                files, problem))
    logger.info("%s: %d BraTS %s case(s)", input_dir, len(cases), generation)
    return SourceDataset(source="brats", format=description, channels=channels, label_map=LABEL_MAPS[preset],
                         cases=tuple(cases), extra={"generation": generation})
