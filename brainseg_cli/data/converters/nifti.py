"""Any other layout of NIfTI / MetaImage files (``brainseg convert nifti``).

The user gives one glob pattern per channel (``--channel FLAIR='*/Flair*.nii.gz'``), named by
canonical channel name (aliases allowed), one for the label (``--label '*/OTMultiClass.nii.gz'``)
and a label mapping (``--label-map brats2015`` or ``--label-map 2:1,1:2,3:2,4:3``).

Patterns are relative to INPUT and follow :meth:`pathlib.Path.glob`: ``*`` matches within one
path component, ``**/`` matches any number of folders (``'**/Flair*.nii.gz'`` finds the files of
the DeepMedic BraTS 2015 layout under both ``train/`` and ``validation/``). Hidden files are skipped.

Case ids: with a ``/`` in the pattern (one folder per case) the case id is the name of the folder
holding the file; without one (a flat folder) it is the text matched by the pattern's first ``*``
(``'*_flair.nii.gz'`` on ``pat01_flair.nii.gz`` gives ``pat01``). Cases with images but no label
go to ``imagesTs``.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from brainseg_cli.data.channels import canonical_channel, order_channels
from brainseg_cli.data.converters.base import SourceCase, SourceDataset, SourceOptions, check_case_id, is_hidden, load_channel_files
from brainseg_cli.data.labelmaps import parse_label_map
from brainseg_cli.errors import ConfigError, InputError

LABEL = "label"


def _flat_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a flat glob pattern where every ``*`` / ``?`` is a capture group."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("(.*?)")
        elif ch == "?":
            out.append("(.)")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def _check_pattern(flag: str, pattern: str) -> None:
    if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts:
        raise ConfigError(f"{flag} '{pattern}': the pattern must be relative to INPUT (no leading '/' or '..')")
    if "/" not in pattern and "*" not in pattern:
        raise ConfigError(f"{flag} '{pattern}': a pattern for a flat folder needs a '*' for the case id")


def _case_id(path: Path, pattern: str, regex: re.Pattern[str] | None) -> str:
    if regex is None:
        return path.parent.name
    m = regex.match(path.name)
    return m.group(1) if m and m.groups() else path.name


def _match(input_dir: Path, flag: str, pattern: str) -> dict[str, list[Path]]:
    """Case id -> matching files of one pattern."""
    _check_pattern(flag, pattern)
    regex = None if "/" in pattern else _flat_regex(pattern)
    out: dict[str, list[Path]] = {}
    for path in sorted(input_dir.glob(pattern)):
        if path.is_file() and not any(is_hidden(part) for part in path.relative_to(input_dir).parts):
            out.setdefault(_case_id(path, pattern, regex), []).append(path)
    return out


def parse_channel_option(value: str) -> tuple[str, str]:
    """Split a ``--channel NAME=GLOB`` value into ``(NAME, GLOB)``.

    Raises:
        ConfigError: no ``=``, or an empty name or pattern.
    """
    name, sep, pattern = value.partition("=")
    if not sep or not name.strip() or not pattern.strip():
        raise ConfigError(f"--channel '{value}': expected NAME=GLOB, e.g. FLAIR='*/Flair*.nii.gz'")
    return name.strip(), pattern.strip()


def discover(input_dir: Path, options: SourceOptions) -> SourceDataset:
    """List the cases matched by the channel and label patterns.

    Raises:
        ConfigError: no ``--channel``, an unknown or repeated channel name, ``--label`` without
            ``--label-map`` (or the reverse), a malformed pattern or label map.
        InputError: a pattern matches no file, or a label has no images.
    """
    if not options.channel_patterns:
        raise ConfigError("source 'nifti' needs at least one --channel NAME=GLOB")
    if options.label_pattern and not options.label_map:
        raise ConfigError("--label needs --label-map (a preset such as brats2015, or pairs such as 2:1,1:2,4:3)")
    if options.label_map and not options.label_pattern:
        raise ConfigError("--label-map needs --label GLOB (the label files it applies to)")
    given = [name for name, _ in options.channel_patterns]
    channels = order_channels(given, error=ConfigError)

    patterns = {canonical_channel(name, error=ConfigError): pattern for name, pattern in options.channel_patterns}
    matches: dict[str, dict[str, list[Path]]] = {}
    for channel in channels:
        matches[channel] = _match(input_dir, f"--channel {channel}", patterns[channel])
        if not matches[channel]:
            raise InputError(f"{input_dir}: --channel {channel}='{patterns[channel]}' matches no file")
    labels: dict[str, list[Path]] = {}
    if options.label_pattern:
        labels = _match(input_dir, "--label", options.label_pattern)
        if not labels:
            raise InputError(f"{input_dir}: --label '{options.label_pattern}' matches no file")
    label_map = parse_label_map(options.label_map) if options.label_map else parse_label_map("0:0")
    case_ids = sorted({c for m in matches.values() for c in m})
    orphans = sorted(set(labels) - set(case_ids))
    if orphans:
        raise InputError(f"case {orphans[0]}: label {labels[orphans[0]][0]} has no image matched by the --channel patterns")
    cases = []
    for case_id in case_ids:
        problem = check_case_id(case_id, input_dir)
        channel_files = []
        for channel in channels:
            files = matches[channel].get(case_id, [])
            if not files:
                problem = problem or f"case {case_id}: missing channel {channel} (no file matches '{patterns[channel]}')"
            elif len(files) > 1:
                problem = problem or f"case {case_id}: several files for {channel}: {', '.join(map(str, files))}"
            else:
                channel_files.append((channel, files[0]))
        label_files = labels.get(case_id, [])
        if len(label_files) > 1:
            problem = problem or f"case {case_id}: several label files: {', '.join(map(str, label_files))}"
        label = label_files[0] if label_files else None
        cases.append(SourceCase(case_id, partial(load_channel_files, tuple(channel_files), label), label is not None,
                                tuple(p for _, p in channel_files) + tuple(label_files), problem))
    extra = {"patterns": {**{c: patterns[c] for c in channels}, **({LABEL: options.label_pattern} if options.label_pattern else {})}}
    return SourceDataset(source="nifti", format="NIfTI / MetaImage files matched by patterns", channels=tuple(channels),
                         label_map=label_map, cases=tuple(cases), extra=extra)
