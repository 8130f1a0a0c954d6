"""Per-case overlay images: reference and prediction contours on the slices with the most foreground.

Inputs (``images``):

* a dataset folder in nnU-Net v2 raw layout (``dataset.json`` + ``imagesTr``/``imagesTs``); channel
  names and label names come from ``dataset.json``;
* a Kaggle-LGG ``kaggle_3m`` folder (or one patient folder): each patient is a slice stack; channel
  names T1, FLAIR, T1c; label 1 = "FLAIR abnormality";
* a flat folder of images ``<case><ending>`` or ``<case>_<cccc><ending>`` (one file per channel);
  channels are then chosen by index.

Predictions and references (``pred``, ``ref``): any label source ``brainseg evaluate`` reads
(:func:`brainseg_cli.metrics.sources.open_source`): a folder of label maps ``<case><ending>`` on the
image's grid, a dataset folder (its ``labelsTr``), or Kaggle-LGG mask TIFFs
``<patient>_<n>_mask.tif`` (in the folder or in ``<patient>/`` subfolders; the kaggle_3m folder
itself serves as the reference).

Kaggle-LGG TIFFs carry no geometry. They are stored as radiological axial slices (TIFF rows run
anterior to posterior, columns from the patient's right to left), so overlays show them as stored
and mark the sides accordingly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg_cli.data.channels import find_canonical_channel
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.errors import ConfigError, InputError, did_you_mean
from brainseg_cli.io import Image, atomic_write, read_image, read_tiff
from brainseg_cli.io.names import split_ending
from brainseg_cli.io.slices import LGG_CHANNELS, list_lgg_patients, read_lgg_patient
from brainseg_cli.metrics.sources import LabelSource, open_source, read_volume_labels
from brainseg_cli.viz.render import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    VIEWS,
    Layer,
    Overlay,
    compose,
    encode_png,
    intensity_window,
    label_colour,
    render_panel,
    select_slices,
    to_grey,
    view_axes,
)

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

#: Largest panel extent (display pixels) aimed at when choosing the integer zoom.
TARGET_PANEL_PX = 400

#: Direction given to Kaggle-LGG stacks: X (TIFF rows) -> P, Y (TIFF columns) -> L, Z -> S.
LGG_DISPLAY_DIRECTION = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def parse_views(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Parse a view list such as ``"axial,coronal"``.

    Args:
        text: comma-separated view names, a sequence of names, or None (automatic choice).

    Returns:
        The views in the given order, or None for None.

    Raises:
        ConfigError: an unknown or repeated view, or an empty list.
    """
    if text is None:
        return None
    names = [v.strip().lower() for v in (text.split(",") if isinstance(text, str) else text)]
    names = [v for v in names if v]
    if not names:
        raise ConfigError(f"--views is empty; choose from {', '.join(VIEWS)}")
    for name in names:
        if name not in VIEWS:
            raise ConfigError(f"unknown view '{name}'{did_you_mean(name, VIEWS)}; valid: {', '.join(VIEWS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--views repeats a view: {','.join(names)}")
    return tuple(names)


@dataclass(frozen=True)
class OverlayInputs:
    """What to draw: images, predictions, optional references, and how.

    Attributes:
        images: dataset folder, Kaggle-LGG folder, or flat folder of images (see the module doc).
        pred: folder of predicted label maps (or Kaggle-LGG mask TIFFs).
        ref: folder of reference label maps (or Kaggle-LGG masks, e.g. the kaggle_3m folder
            itself); None draws predictions only.
        channel: channel shown: a name (dataset and Kaggle-LGG inputs) or a 0-based index; None
            picks FLAIR when present, else the first channel.
        views: views to draw, from ``("axial", "coronal", "sagittal")``; None draws all three for
            volumes and only the axial view for slice stacks and single-slice images.
        n_slices: slices per view (those with the most reference or predicted foreground).
    """

    images: Path
    pred: Path
    ref: Path | None = None
    channel: str | None = None
    views: tuple[str, ...] | None = None
    n_slices: int = 3

    def __post_init__(self) -> None:
        if self.views is not None:
            object.__setattr__(self, "views", parse_views(self.views))
        if not isinstance(self.n_slices, int) or self.n_slices < 1:
            raise ConfigError(f"--slices must be a positive integer, got {self.n_slices!r}")


@dataclass(frozen=True)
class OverlayConfig:
    """``visualize overlays``: one PNG per case.

    Attributes:
        inputs: what to draw.
        output_dir: folder receiving ``<case>.png`` (created if missing).
    """

    inputs: OverlayInputs
    output_dir: Path


# ------------------------------------------------------------------------------------------ rendering
def _foreground_values(labels: Mapping[str, int] | None, *arrays: np.ndarray | None) -> dict[int, str]:
    """Foreground label value -> name: the given labels plus any other value present in the arrays."""
    names = {int(v): k for k, v in (labels or {}).items() if int(v) != 0}
    for arr in arrays:
        if arr is None:
            continue
        present = np.flatnonzero(np.bincount(arr.ravel(order="K")))
        for v in present.tolist():
            if v != 0 and v not in names:
                names[v] = f"label {v}"
    return dict(sorted(names.items()))


def _zoom(shape: Sequence[int], spacing: Sequence[float], axes_used: set[int]) -> float:
    """Display pixels per mm: an integer number of pixels per smallest voxel edge."""
    s_min = min(spacing[a] for a in axes_used)
    extent = max(shape[a] * spacing[a] / s_min for a in axes_used)
    zoom = max(1, int(round(TARGET_PANEL_PX / extent)))
    return zoom / s_min


def render_overlay(*, image: np.ndarray, spacing: Sequence[float], direction: np.ndarray,
                   pred: np.ndarray | None = None, ref: np.ndarray | None = None,
                   labels: Mapping[str, int] | None = None, views: Sequence[str] = VIEWS,
                   n_slices: int = 3, title: str = "", slice_numbers: Sequence[int] | None = None) -> Overlay:
    """Render one case: for each view, the slices with the most foreground, with contours.

    With a single foreground label, each panel shows the reference contour in green
    (:data:`~brainseg_cli.viz.render.REFERENCE_COLOUR`, on the pixels just *outside* the reference)
    and the prediction contour in red (on the pixels just *inside* the prediction), so both stay
    visible where they agree. With several labels, each slice gets a reference panel and a
    prediction panel side by side, every label's contour (inner) in its own colour
    (:func:`~brainseg_cli.viz.render.label_colour`), with a legend.

    Args:
        image: ``(X, Y, Z)`` intensities of the channel shown; windowed to its 1st-99th percentile.
        spacing: mm per index axis.
        direction: (3, 3) ITK direction (column k = LPS unit vector of index axis k).
        pred: ``(X, Y, Z)`` integer labels, or None.
        ref: ``(X, Y, Z)`` integer labels, or None.
        labels: label name -> value (``"background": 0`` included or not); values present in the
            data but not named are called ``"label <v>"``.
        views: views to draw, in order.
        n_slices: slices per view.
        title: header line (the case).
        slice_numbers: file slice number of each Z index (slice stacks); captions of views that
            slice along Z then name it instead of the index.

    Returns:
        The composed :class:`~brainseg_cli.viz.render.Overlay`.

    Raises:
        InputError: the arrays are not 3-D or their shapes differ.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"{title or 'overlay'}: image must be (X, Y, Z), got shape {image.shape}")
    for what, arr in (("prediction", pred), ("reference", ref)):
        if arr is not None and np.shape(arr) != image.shape:
            raise InputError(f"{title or 'overlay'}: {what} shape {np.shape(arr)} differs from "
                             f"image shape {image.shape}")
    spacing = tuple(float(s) for s in spacing)
    grey = to_grey(image, intensity_window(image))
    fg = _foreground_values(labels, pred, ref)
    foreground = np.zeros(image.shape, dtype=bool)
    for arr in (pred, ref):
        if arr is not None:
            foreground |= np.asarray(arr) > 0

    all_axes = [view_axes(direction, v) for v in views]
    px_per_mm = _zoom(image.shape, spacing, {a for ax in all_axes for a in (ax.row_axis, ax.col_axis)})
    multi = len(fg) > 1
    if multi:
        legend = [(name if name == f"label {value}" else f"{name} ({value})", label_colour(value))
                  for value, name in fg.items()]
        kinds = [k for k, arr in (("reference", ref), ("prediction", pred)) if arr is not None]
    else:
        legend = []
        if ref is not None:
            legend.append(("reference (outer contour)", REFERENCE_COLOUR))
        if pred is not None:
            legend.append(("prediction (inner contour)", PREDICTION_COLOUR))
        kinds = ["overlay"]

    def layers(kind: str) -> list[Layer]:
        out: list[Layer] = []
        if not multi:
            value = next(iter(fg), None)
            for arr, colour, outer in ((ref, REFERENCE_COLOUR, True), (pred, PREDICTION_COLOUR, False)):
                if arr is not None and value is not None:
                    out.append(Layer(np.asarray(arr) == value, colour, outer))
            return out
        arr = ref if kind == "reference" else pred
        return [Layer(np.asarray(arr) == value, label_colour(value)) for value in fg]

    layer_sets = {kind: layers(kind) for kind in kinds}
    rows = []
    for axes in all_axes:
        counts = foreground.sum(axis=tuple(a for a in range(3) if a != axes.slice_axis))
        row = []
        for index in select_slices(counts, n_slices):
            if slice_numbers is not None and axes.slice_axis == 2:
                where = f"slice {slice_numbers[index]}"
            else:
                where = f"{'ijk'[axes.slice_axis]}={index}"
            for kind in kinds:
                caption = f"{axes.view} {where}" + ("" if kind == "overlay" else f" - {kind}")
                row.append(render_panel(grey_volume=grey, spacing=spacing, axes=axes, index=index,
                                        px_per_mm=px_per_mm, layers=layer_sets[kind], title=caption, kind=kind))
        rows.append(row)
    return compose(title=title, rows=rows, legend=legend)


# ------------------------------------------------------------------------------------------ inputs
def _is_lgg(folder: Path) -> bool:
    try:
        list_lgg_patients(folder)
    except InputError:
        return False
    return True


@dataclass(frozen=True)
class CaseImage:
    """One case's displayed channel with its geometry, as 3-D.

    Attributes:
        case: case id (patient id for Kaggle-LGG).
        array: ``(X, Y, Z)`` intensities (2-D images get Z = 1).
        spacing: mm per index axis (3 values).
        direction: (3, 3) LPS direction used for display.
        image: the image as read (for grid checks), single channel.
        slice_numbers: TIFF slice numbers of Kaggle-LGG stacks, else None.
    """

    case: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    direction: np.ndarray
    image: Image
    slice_numbers: list[int] | None = None

    @property
    def is_stack(self) -> bool:
        """True for slice stacks (Kaggle-LGG) and single-slice images."""
        return self.slice_numbers is not None or self.array.shape[2] == 1


def _as_3d(image: Image) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """``(X, Y[, Z])`` single-channel image -> ``(X, Y, Z)`` array, 3 spacings, 3x3 direction."""
    if image.spatial_dims == 3:
        return np.asarray(image.array), tuple(image.spacing), np.asarray(image.direction)
    direction = np.eye(3)
    direction[:2, :2] = image.direction
    return np.asarray(image.array)[:, :, None], (*image.spacing, 1.0), direction


class _ImageSource:
    """Cases of an ``images`` input and a reader for one channel of a case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.labels: dict[str, int] | None = None
        self._files: dict[str, list[Path]] = {}
        self._lgg: dict[str, Path] = {}
        if not root.is_dir():
            raise InputError(f"{root}: images folder not found")
        if (root / "dataset.json").is_file():
            info = load_dataset(root)
            self.kind = "dataset"
            self.channels: tuple[str, ...] | None = tuple(info.channels)
            self.labels = dict(info.labels)
            self._files = {case: info.image_paths(case) for case in info.cases}
        elif _is_lgg(root):
            self.kind = "lgg"
            self.channels = LGG_CHANNELS
            self.labels = {"background": 0, "FLAIR abnormality": 1}
            self._lgg = {p.name: p for p in list_lgg_patients(root)}
        else:
            self.kind = "folder"
            self.channels = None
            self._files = self._scan_flat(root)
        self.cases: tuple[str, ...] = tuple(sorted(self._lgg or self._files))
        if not self.cases:
            raise InputError(f"{root}: no images found (expected a dataset folder with dataset.json, "
                             "a Kaggle-LGG folder, or image files such as <case>_0000.nii.gz)")

    @staticmethod
    def _scan_flat(root: Path) -> dict[str, list[Path]]:
        groups: dict[str, dict[int, Path]] = {}
        for path in sorted(root.iterdir()):
            split = split_ending(path) if path.is_file() else None
            if split is None:
                continue
            stem = split[0]
            match = _CHANNEL_SUFFIX.match(stem)
            case, index = (match["case"], int(match["channel"])) if match else (stem, 0)
            if index in groups.setdefault(case, {}):
                raise InputError(f"{path}: case {case} channel {index} is also {groups[case][index].name}")
            groups[case][index] = path
        out = {}
        for case, files in groups.items():
            if sorted(files) != list(range(len(files))):
                raise InputError(f"{root}: case {case} has channel files {sorted(files)}; expected 0..{len(files) - 1}")
            out[case] = [files[i] for i in range(len(files))]
        return out

    def channel_index(self, requested: str | None) -> tuple[int, str]:
        """Resolve ``--channel`` to ``(index, display name)``."""
        if self.channels is not None:
            if requested is None:
                index = self.channels.index("FLAIR") if "FLAIR" in self.channels else 0
                return index, self.channels[index]
            if requested.isdigit():
                index = int(requested)
                if index >= len(self.channels):
                    raise ConfigError(f"--channel {index} is out of range: {self.root} has channels "
                                      f"{', '.join(self.channels)}")
                return index, self.channels[index]

            wanted = find_canonical_channel(requested) or requested
            for i, name in enumerate(self.channels):
                if name == wanted or name.lower() == requested.lower():
                    return i, name
            raise ConfigError(f"--channel '{requested}' is not a channel of {self.root}"
                              f"{did_you_mean(requested, self.channels)}; channels: {', '.join(self.channels)}")
        if requested is None:
            return 0, "channel 0"
        if not requested.isdigit():
            raise ConfigError(f"--channel '{requested}': {self.root} has no dataset.json naming its channels; "
                              "give the channel as a 0-based index")
        return int(requested), f"channel {int(requested)}"

    def read(self, case: str, channel: int) -> CaseImage:
        """Read ``channel`` of ``case`` as a :class:`CaseImage`."""
        if self.kind == "lgg":
            patient = read_lgg_patient(self._lgg[case])
            array = np.asarray(patient.image.array[channel])
            shown = Image(array, patient.image.spacing, direction=LGG_DISPLAY_DIRECTION)
            return CaseImage(case=case, array=array, spacing=tuple(shown.spacing), direction=shown.direction,
                             image=shown, slice_numbers=list(patient.slice_numbers))
        files = self._files[case]
        if len(files) > 1:  # one file per channel
            if channel >= len(files):
                raise ConfigError(f"--channel {channel} is out of range: case {case} has {len(files)} channel files")
            image = read_image(files[channel])
            if image.has_channels:
                raise InputError(f"case {case}: {files[channel].name} has {image.num_channels} channels; "
                                 "expected one channel per file")
        else:
            image = read_image(files[0])
            if channel >= image.num_channels:
                raise ConfigError(f"--channel {channel} is out of range: case {case} has {image.num_channels} "
                                  f"channel(s) ({files[0].name})")
            image = image.channel(channel)
        array, spacing, direction = _as_3d(image)
        return CaseImage(case=case, array=array, spacing=spacing, direction=direction, image=image)


def _lgg_mask_stack(folder: Path, case: str, slice_numbers: Sequence[int], *, what: str) -> np.ndarray:
    """Stack ``folder/<case>_<n>_mask.tif`` (0/255) for the image's slice numbers into ``(X, Y, Z)`` 0/1."""
    planes = []
    for n in slice_numbers:
        path = folder / f"{case}_{n}_mask.tif"
        if not path.is_file():
            raise InputError(f"case {case}: {what} slice {path} is missing (the image has slices "
                             f"{slice_numbers[0]}..{slice_numbers[-1]})")
        data = np.asarray(read_tiff(path))
        bad = np.setdiff1d(np.unique(data), (0, 255))
        if data.ndim != 2 or bad.size:
            raise InputError(f"{path}: expected a 2-D 0/255 mask, got shape {data.shape}"
                             + (f" with values {bad[:5].tolist()}" if bad.size else ""))
        planes.append(data == 255)
    return np.stack(planes, axis=-1).astype(np.uint8)


def read_label_map(*, source: LabelSource, shown: CaseImage, what: str) -> np.ndarray | None:
    """Read the label map of ``shown.case`` from a label source as ``(X, Y, Z)`` non-negative ints, or None if absent.

    Args:
        source: a :class:`brainseg_cli.metrics.sources.LabelSource` (folder of label maps, dataset,
            or Kaggle-LGG masks).
        shown: the case image the labels must fit.
        what: ``"prediction"`` or ``"reference"``, for messages.

    Raises:
        InputError: unreadable file, non-integer or negative labels, a shape mismatch, or LGG
            mask slices for an image that is not a slice stack.
        GeometryError: the label map's grid differs from the image's.
    """
    case = shown.case
    if case not in source.cases:
        return None
    where = source.cases[case]
    if source.kind == "lgg":
        if shown.slice_numbers is None:
            raise InputError(f"case {case}: {what} {where} holds Kaggle-LGG mask slices but the image is a volume")
        return _lgg_mask_stack(where, case, shown.slice_numbers, what=what)
    image = read_volume_labels(where, case=case, role=what)
    if shown.slice_numbers is None:
        image.check_same_grid(shown.image, f"case {case}: {what} {where.name} vs image")
        array = _as_3d(image)[0]
    else:
        array = np.asarray(image.array)
        if array.shape != shown.array.shape:
            raise InputError(f"case {case}: {what} {where.name} has shape {array.shape}, "
                             f"the slice stack {shown.array.shape}")
    return array


@dataclass(frozen=True)
class CaseOverlay:
    """One rendered case.

    Attributes:
        case: case id.
        overlay: the composed overlay.
        volumes: label name -> ``(predicted mL, reference mL or None)``.
        channel: name of the channel shown.
    """

    case: str
    overlay: Overlay
    volumes: dict[str, tuple[float, float | None]]
    channel: str


def iter_overlays(*, inputs: OverlayInputs, progress: Progress | None = None) -> Iterator[CaseOverlay]:
    """Render every case that has a prediction, in case order.

    Args:
        inputs: what to draw.
        progress: optional callback ``(description, done, total)``.

    Yields:
        One :class:`CaseOverlay` per case.

    Raises:
        InputError, GeometryError, ConfigError: see :class:`OverlayInputs` and :func:`read_label_map`.
    """
    source = _ImageSource(Path(inputs.images))
    channel, channel_name = source.channel_index(inputs.channel)
    pred_source = open_source(Path(inputs.pred), role="prediction")
    ref_source = None if inputs.ref is None else open_source(Path(inputs.ref), role="reference")
    labels = source.labels or pred_source.labels or (ref_source.labels if ref_source else None)
    cases = [case for case in source.cases if case in pred_source.cases]
    orphans = sorted(set(pred_source.cases) - set(source.cases))
    if orphans:
        logger.warning("%s: %d prediction(s) have no image in %s, e.g. %s", inputs.pred, len(orphans),
                       inputs.images, orphans[0])
    if not cases:
        raise InputError(f"{inputs.pred}: no prediction matches a case of {inputs.images} "
                         f"(cases there: {', '.join(source.cases[:3])}{', ...' if len(source.cases) > 3 else ''})")
    skipped = len(source.cases) - len(cases)
    if skipped:
        logger.info("%d of %d case(s) in %s have no prediction and are skipped", skipped, len(source.cases),
                    inputs.images)
    for done, case in enumerate(cases):
        if progress is not None:
            progress("overlays", done, len(cases))
        shown = source.read(case, channel)
        pred = read_label_map(source=pred_source, shown=shown, what="prediction")
        ref = None
        if ref_source is not None:
            ref = read_label_map(source=ref_source, shown=shown, what="reference")
            if ref is None:
                logger.warning("case %s: no reference in %s; drawing the prediction only", case, inputs.ref)
        views = inputs.views or (("axial",) if shown.is_stack else VIEWS)
        overlay = render_overlay(image=shown.array, spacing=shown.spacing, direction=shown.direction,
                                 pred=pred, ref=ref, labels=labels, views=views,
                                 n_slices=inputs.n_slices, title=f"{case} - {channel_name}",
                                 slice_numbers=shown.slice_numbers)
        voxel_ml = float(np.prod(shown.spacing)) / 1000.0
        names = _foreground_values(labels, pred, ref)
        volumes = {}
        for value, name in names.items():
            p = float(np.count_nonzero(pred == value)) * voxel_ml
            r = None if ref is None else float(np.count_nonzero(ref == value)) * voxel_ml
            volumes[name] = (p, r)
        yield CaseOverlay(case=case, overlay=overlay, volumes=volumes, channel=channel_name)
    if progress is not None:
        progress("overlays", len(cases), len(cases))


def overlay_file_name(case: str) -> str:
    """File name of a case's overlay PNG."""
    return f"{case}.png"


def write_overlays(*, config: OverlayConfig, progress: Progress | None = None) -> list[Path]:
    """Write one overlay PNG per case that has a prediction (``<output_dir>/<case>.png``, atomically).

    Args:
        config: inputs and output folder.
        progress: optional callback ``(description, done, total)``.

    Returns:
        The written PNG paths, in case order.
    """
    out_dir = Path(config.output_dir)
    written = []
    for item in iter_overlays(inputs=config.inputs, progress=progress):
        path = out_dir / overlay_file_name(item.case)
        with atomic_write(path) as tmp:
            tmp.write_bytes(encode_png(item.overlay.rgb))
        logger.debug("wrote %s", path)
        written.append(path)
    logger.info("wrote %d overlay(s) to %s", len(written), out_dir)
    return written
