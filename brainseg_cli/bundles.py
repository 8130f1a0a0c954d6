"""Model bundles: a trained model and its model card, installed by name (``brainseg models``).

A **bundle** is one model file (a checkpoint ``.pt``, or an export ``.onnx`` / ``.ts`` of
``brainseg export``) with a **model card** (``card.json``, docs/DEFINITIONS.md §7): what it was
trained on, its channels in input order, labels and regions, spacing, the metrics measured, the
licence of the training data, and the model file's sha256 and size.

* **Archive** (what is shared): a zip file ``NAME.bundle.zip`` holding ``card.json`` and the model
  file, written by :func:`write_bundle` (``pretrain``/``finetune --bundle``) or by
  :func:`pack_bundle`.
* **Installed** (what ``predict -m NAME`` finds): the folder ``$BRAINSEG_HOME/models/NAME/`` with
  the same two files. ``$BRAINSEG_HOME`` defaults to ``$XDG_CACHE_HOME/brainseg`` (``~/.cache/brainseg``).

:func:`install` takes an archive, a model file (the card is made from it) or an ``http(s)`` URL
of an archive. A download goes to ``$BRAINSEG_HOME/downloads/`` under a ``.part`` name and resumes
where an interrupted one stopped (HTTP range requests; a server that ignores them restarts it). The
model file's sha256 is checked against its card on every install, and the archive's against
``--sha256`` (or a ``#sha256=HEX`` URL fragment) when one is given; a mismatch installs nothing.
Installing is atomic: the folder appears complete under its name or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainseg_cli import __version__
from brainseg_cli.checkpoint import load_checkpoint
from brainseg_cli.data.plan_schema import PREDICTION_KEYS, Plan
from brainseg_cli.errors import CheckpointError, ConfigError, InputError, OutputError, did_you_mean
from brainseg_cli.io.atomic import atomic_dir, atomic_write, output_error

logger = logging.getLogger(__name__)

#: Environment variable naming the cache folder.
HOME_VARIABLE = "BRAINSEG_HOME"
#: The model card's file name, in an archive and in an installed bundle.
CARD_FILE = "card.json"
#: Ending of a bundle archive.
ARCHIVE_ENDING = ".bundle.zip"
#: Version of the model card layout (docs/DEFINITIONS.md §7).
CARD_VERSION = 1
#: Model file name in a bundle, by format.
MODEL_FILES: dict[str, str] = {"checkpoint": "model.pt", "onnx": "model.onnx", "torchscript": "model.ts"}
#: Bundle names: a letter or digit, then letters, digits, ``.``, ``_`` or ``-`` (at most 64).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Bytes read per chunk when hashing and downloading.
CHUNK = 1 << 20
#: Seconds a download waits for the server before it fails.
TIMEOUT_SECONDS = 60.0


def home() -> Path:
    """The cache folder: ``$BRAINSEG_HOME``, else ``$XDG_CACHE_HOME/brainseg``, else ``~/.cache/brainseg``."""
    given = os.environ.get(HOME_VARIABLE)
    if given:
        return Path(given).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "brainseg"


def models_dir() -> Path:
    """Where bundles are installed (``home()/models``)."""
    return home() / "models"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid bundle name.

    Raises:
        ConfigError: naming the rule.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"bundle name {name!r} must start with a letter or digit and hold only letters, digits, "
                          "'.', '_' and '-' (at most 64)")
    return name


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- the card
def _model_metadata(path: Path) -> tuple[str, dict[str, Any]]:
    """``(format, metadata)`` of a model file: a checkpoint (without weights) or an export's metadata.

    Raises:
        CheckpointError: the file is neither (one line naming it).
    """
    # engines imports torch and the inference package, which imports this module: read it here.
    from brainseg_cli.inference import engines

    kind = engines.export_format(path)
    if kind == "onnx":
        return "onnx", engines.read_onnx_metadata(path)[0]
    if kind == "torchscript":
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith("/extra/brainseg.json"))
            return "torchscript", json.loads(zf.read(name).decode("utf-8"))
    return "checkpoint", engines.without_weights(load_checkpoint(path))


def _dataset_licence(training: Mapping[str, Any]) -> str | None:
    """The licence the training dataset's ``dataset.json`` states (nnU-Net's ``licence`` key), if readable."""
    folder = training.get("dataset_dir")
    if not folder:
        return None
    try:
        data = json.loads((Path(folder) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("licence", data.get("license"))
    return str(value) if value else None


def model_card(model_file: str | os.PathLike[str], *, name: str, licence: str | None = None,
               description: str | None = None, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model card of a model file (docs/DEFINITIONS.md §7).

    Args:
        model_file: a checkpoint or an export.
        name: the bundle's name.
        licence: the licence of the training data (default: the training dataset's ``dataset.json``
            ``licence``, else ``"unknown"``).
        description: free text.
        metrics: measured results to record beside the validation Dice of training (e.g. an
            ``evaluate`` summary), stored under ``metrics``.

    Raises:
        CheckpointError: not a brainseg checkpoint or export.
    """
    path = Path(model_file)
    kind, meta = _model_metadata(path)
    try:
        plan = Plan.from_dict(meta.get("plan"), what=str(path), required=PREDICTION_KEYS)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    training = dict(meta.get("training") or {})
    measured: dict[str, Any] = {}
    if training.get("val_dice"):
        measured["validation_dice"] = dict(training["val_dice"])
    if training.get("val_dice_postprocessed"):
        measured["validation_dice_postprocessed"] = dict(training["val_dice_postprocessed"])
    measured.update(dict(metrics or {}))
    return {
        "card_version": CARD_VERSION,
        "name": check_name(name),
        "description": description or "",
        "model": {"file": MODEL_FILES[kind], "format": kind, "sha256": sha256_of(path), "bytes": path.stat().st_size,
                  "architecture": (meta.get("model") or {}).get("name"), "config": plan.config},
        "trained_on": {"dataset": training.get("dataset", plan.dataset or None),
                       "fingerprint": training.get("dataset_fingerprint"),
                       "training_cases": len(training.get("train_cases") or []),
                       "validation_cases": len(training.get("val_cases") or []),
                       "epoch": None if training.get("epoch") is None else int(training["epoch"]),
                       "pretrained_from": training.get("pretrained_from")},
        "channels": list(meta.get("channels") or plan.channels),
        "labels": dict(meta.get("labels") or {}),
        "regions": dict(meta.get("regions") or {}),
        "region_based": plan.region_based,
        "spacing_mm": list(plan.target_spacing),
        "orientation": plan.orientation,
        "metrics": measured,
        "licence": licence or _dataset_licence(training) or "unknown",
        "tool_version": __version__,
    }


def check_card(card: Any, *, source: str) -> dict[str, Any]:
    """Return ``card`` if it has what a bundle needs.

    Raises:
        InputError: one line naming ``source`` and the missing or wrong key.
    """
    if not isinstance(card, dict):
        raise InputError(f"{source}: the model card is not a JSON object")
    version = card.get("card_version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise InputError(f"{source}: model card version {version!r} is not one this brainseg reads "
                         f"(<= {CARD_VERSION}); update brainseg")
    model = card.get("model")
    if not isinstance(model, dict) or model.get("file") not in MODEL_FILES.values() \
            or not re.fullmatch(r"[0-9a-f]{64}", str(model.get("sha256", ""))):
        raise InputError(f"{source}: the model card's 'model' must name the model file "
                         f"({', '.join(MODEL_FILES.values())}) and its sha256")
    check_name(str(card.get("name", "")))
    return card


# ----------------------------------------------------------------------------------- archives
def pack_bundle(model_file: str | os.PathLike[str], output: str | os.PathLike[str], *, name: str,
                licence: str | None = None, description: str | None = None,
                metrics: Mapping[str, Any] | None = None) -> Path:
    """Write a bundle archive (``card.json`` + the model file) atomically; return its path."""
    source = Path(model_file)
    card = model_card(source, name=name, licence=licence, description=description, metrics=metrics)
    target = Path(output)
    with atomic_write(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(CARD_FILE, json.dumps(card, indent=2) + "\n")
            zf.write(source, card["model"]["file"])
    return target


def write_bundle(run_dir: str | os.PathLike[str], *, name: str, checkpoint: str = "best.pt") -> Path:
    """The bundle archive of a finished run: ``RUN_DIR/NAME.bundle.zip`` from its ``best.pt``."""
    run_dir = Path(run_dir)
    return pack_bundle(run_dir / checkpoint, run_dir / f"{check_name(name)}{ARCHIVE_ENDING}", name=name)


def _read_archive(path: Path) -> tuple[dict[str, Any], zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a bundle archive ({exc})") from None
    if CARD_FILE not in zf.namelist():
        zf.close()
        raise InputError(f"{path}: not a bundle archive (no {CARD_FILE})")
    try:
        card = json.loads(zf.read(CARD_FILE).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        zf.close()
        raise InputError(f"{path}: {CARD_FILE} is not valid JSON ({exc})") from None
    return check_card(card, source=str(path)), zf


# ----------------------------------------------------------------------------------- downloads
def _checksum(given: str | None) -> str | None:
    """A ``--sha256`` value in lower case (None stays None).

    Raises:
        ConfigError: not 64 hexadecimal digits.
    """
    if given is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", given):
        raise ConfigError(f"--sha256 must be 64 hexadecimal digits, got {given!r}")
    return None if given is None else given.lower()


def _url_and_checksum(url: str, sha256: str | None) -> tuple[str, str | None]:
    """The URL without its fragment, and the expected sha256 (``sha256``, else the ``#sha256=HEX`` fragment)."""
    parts = urllib.parse.urlsplit(url)
    fragment = urllib.parse.parse_qs(parts.fragment)
    return urllib.parse.urlunsplit(parts._replace(fragment="")), _checksum(sha256 or (fragment.get("sha256") or [None])[0])


def download(url: str, target: Path, *, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Download ``url`` to ``target``, resuming from ``target.part`` where an earlier download stopped.

    The bytes go to ``TARGET.part``; a server that honours the range request appends to it, one that
    does not (status 200) restarts it. The ``.part`` file takes the final name only once the body is
    complete (as long as the server's ``Content-Length`` says).

    Raises:
        InputError: the server cannot be reached or answers with an error (one line with the URL).
    """
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)  # noqa: S310 - the user's URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part already holds everything
            os.replace(part, target)
            return target
        raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"cannot download {url}: {reason}") from None
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(length) if length is not None else -1
        done = have if resumed else 0
        if have and not resumed:
            logger.info("%s: the server does not resume; downloading it again", url)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(f"downloading {target.name}", done, max(total, done))
        except OSError as exc:
            if isinstance(exc, (ConnectionError, TimeoutError)):
                raise InputError(f"download of {url} stopped after {done} bytes ({exc}); run the install again "
                                 "to resume it") from None
            raise output_error(part, exc) from None
    if total >= 0 and done != total:
        raise InputError(f"download of {url} stopped after {done} of {total} bytes; run the install again to resume it")
    os.replace(part, target)
    return target


# ----------------------------------------------------------------------------------- installed bundles
@dataclass(frozen=True)
class Bundle:
    """An installed bundle.

    Attributes:
        name: its name.
        folder: ``models_dir()/name``.
        card: its model card.
    """

    name: str
    folder: Path
    card: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The model file (what ``predict -m NAME`` runs)."""
        return self.folder / self.card["model"]["file"]


def installed() -> list[Bundle]:
    """The installed bundles, by name (folders without a readable card are left out, with a warning)."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            card = check_card(json.loads((folder / CARD_FILE).read_text(encoding="utf-8")), source=str(folder))
        except (OSError, ValueError, InputError, ConfigError) as exc:
            logger.warning("ignoring %s: %s", folder, exc)
            continue
        out.append(Bundle(name=folder.name, folder=folder, card=card))
    return out


def get(name: str) -> Bundle:
    """The installed bundle ``name``.

    Raises:
        ConfigError: no bundle of that name (with a did-you-mean hint and the installed names).
    """
    bundles = {b.name: b for b in installed()}
    if name not in bundles:
        have = f"installed: {', '.join(bundles)}" if bundles else f"none is installed in {models_dir()}"
        raise ConfigError(f"no model bundle named '{name}'{did_you_mean(name, bundles)} ({have}; "
                          "see brainseg models list)")
    return bundles[name]


def resolve_model(ref: str | os.PathLike[str]) -> Path:
    """A ``--model`` value: an existing file as it is, else the model file of the installed bundle of that name.

    Raises:
        ConfigError: neither a file nor an installed bundle.
    """
    path = Path(ref)
    if path.is_file():
        return path
    text = str(ref)
    if NAME_PATTERN.match(text) and os.sep not in text:
        return get(text).model_path
    raise ConfigError(f"model {text}: no such file, and not the name of an installed bundle (brainseg models list)")


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install` did."""

    bundle: Bundle
    source: str
    downloaded: bool
    replaced: bool


def install(source: str | os.PathLike[str], *, name: str | None = None, sha256: str | None = None,
            force: bool = False, licence: str | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> InstallResult:
    """Install a bundle from an archive, a model file or a URL (module docstring).

    Args:
        source: a ``.bundle.zip``, a checkpoint / export file, or an ``http(s)://`` URL of an archive.
        name: the installed name (default: the card's name, or for a model file its file stem).
        sha256: the archive's expected sha256 (URLs also take ``#sha256=HEX``).
        force: replace an installed bundle of the same name.
        licence: the training data's licence, for a card made from a model file.
        progress: ``progress(description, done, total)`` of a download.

    Raises:
        ConfigError: an invalid name, a name already installed without ``force``, a bad ``--sha256``.
        InputError: an unreadable source, a checksum mismatch, a failed download.
        CheckpointError: a model file that is not a brainseg checkpoint or export.
    """
    text = str(source)
    downloaded = False
    if re.match(r"^https?://", text, flags=re.IGNORECASE):
        url, expected = _url_and_checksum(text, sha256)
        filename = Path(urllib.parse.urlsplit(url).path).name or "bundle.zip"
        archive = download(url, home() / "downloads" / filename, progress=progress)
        downloaded = True
    else:
        archive = Path(source)
        expected = _checksum(sha256)
        if not archive.is_file():
            raise InputError(f"{archive}: no such file")
    if expected is not None:
        got = sha256_of(archive)
        if got != expected:
            if downloaded:
                archive.unlink(missing_ok=True)  # a wrong download is not kept for a resume
            raise InputError(f"{text}: sha256 is {got}, expected {expected}; nothing installed")
    if zipfile.is_zipfile(archive) and _is_bundle_archive(archive):
        result = _install_archive(archive, name=name, force=force, source=text)
    else:
        result = _install_model_file(archive, name=name or archive.name.split(".")[0], force=force, licence=licence,
                                     source=text)
    if downloaded:
        archive.unlink(missing_ok=True)
    return InstallResult(bundle=result[0], source=text, downloaded=downloaded, replaced=result[1])


def _is_bundle_archive(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return CARD_FILE in zf.namelist()


def _target(name: str, force: bool) -> tuple[Path, bool]:
    folder = models_dir() / check_name(name)
    exists = folder.exists()
    if exists and not force:
        raise ConfigError(f"a bundle named '{name}' is installed already ({folder}); give --force to replace it "
                          "or --name for another name")
    return folder, exists


def _install_archive(archive: Path, *, name: str | None, force: bool, source: str) -> tuple[Bundle, bool]:
    card, zf = _read_archive(archive)
    with zf:
        model_name = card["model"]["file"]
        if model_name not in zf.namelist():
            raise InputError(f"{source}: the archive lacks {model_name}, which its card names")
        card = {**card, "name": check_name(name or card["name"])}
        folder, replaced = _target(card["name"], force)
        with atomic_dir(folder) as tmp:
            with zf.open(model_name) as src, open(tmp / model_name, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            got = sha256_of(tmp / model_name)
            if got != card["model"]["sha256"]:
                raise InputError(f"{source}: {model_name} has sha256 {got}, but its card says "
                                 f"{card['model']['sha256']}; nothing installed")
            (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return Bundle(name=card["name"], folder=folder, card=card), replaced


def _install_model_file(path: Path, *, name: str, force: bool, licence: str | None,
                        source: str) -> tuple[Bundle, bool]:
    try:
        card = model_card(path, name=name, licence=licence)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: not a bundle archive, checkpoint or export ({exc})") from None
    folder, replaced = _target(card["name"], force)
    with atomic_dir(folder) as tmp:
        shutil.copyfile(path, tmp / card["model"]["file"])
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return Bundle(name=card["name"], folder=folder, card=card), replaced


def remove(name: str) -> Path:
    """Uninstall bundle ``name``; return the folder removed.

    Raises:
        ConfigError: no bundle of that name.
        OutputError: the folder cannot be removed.
    """
    bundle = get(name)
    # Rename first, so that a half-removed bundle never stays under its name.
    with tempfile.TemporaryDirectory(dir=bundle.folder.parent, prefix=".removing-") as trash:
        try:
            os.replace(bundle.folder, Path(trash) / bundle.name)
        except OSError as exc:
            raise OutputError(f"cannot remove {bundle.folder}: {exc.strerror or exc}") from None
    return bundle.folder


def iter_card_lines(card: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(field, value)`` rows of a card for display (``brainseg models info``)."""
    model, trained = card.get("model") or {}, card.get("trained_on") or {}
    yield "name", str(card.get("name"))
    if card.get("description"):
        yield "description", str(card["description"])
    yield "model", f"{model.get('architecture')} {model.get('config') or ''} ({model.get('format')}, " \
                   f"{int(model.get('bytes') or 0) / 1e6:.1f} MB)".replace("  ", " ")
    yield "sha256", str(model.get("sha256"))
    yield "trained on", f"{trained.get('dataset')} ({trained.get('training_cases')} training, " \
                        f"{trained.get('validation_cases')} validation cases; weights of epoch {trained.get('epoch')})"
    if trained.get("pretrained_from"):
        yield "fine-tuned from", str(trained["pretrained_from"])
    yield "channels", ", ".join(card.get("channels") or [])
    yield "labels", ", ".join(f"{v} {k}" for k, v in (card.get("labels") or {}).items())
    if card.get("regions"):
        kind = "outputs" if card.get("region_based") else "evaluated"
        yield f"regions ({kind})", ", ".join(f"{k} {v}" for k, v in card["regions"].items())
    spacing = card.get("spacing_mm")
    yield "spacing", "x".join(f"{s:g}" for s in spacing) + " mm" if spacing else "unknown"
    for key, values in (card.get("metrics") or {}).items():
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in values.items()) \
            if isinstance(values, Mapping) else str(values)
        yield key.replace("_", " "), shown
    yield "licence", str(card.get("licence"))
    yield "tool version", str(card.get("tool_version"))
