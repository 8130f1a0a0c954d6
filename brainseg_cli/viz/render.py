"""Pixel-exact rendering of overlay panels: slices, windowing, contours, orientation, layout.

Everything here is pure numpy except :func:`compose`, which uses matplotlib (Agg, no global state)
only to draw text into the white margins; the panels are pasted afterwards pixel for pixel, so a
test can find every contour pixel exactly where the geometry puts it.

Geometry. A volume is ``(X, Y, Z)`` in index order with ``spacing`` (mm per index axis) and an ITK
``direction`` (column k = LPS unit vector of index axis k). Each view maps index axes to the screen
by the direction's dominant world axes, radiological convention:

==========  ===============  ============================  ============================
view        slice normal     screen columns (left->right)  screen rows (top->bottom)
==========  ===============  ============================  ============================
axial       S (LPS z)        patient R -> L                A -> P
coronal     P (LPS y)        patient R -> L                S -> I
sagittal    L (LPS x)        A -> P                        S -> I
==========  ===============  ============================  ============================

Display scale. One display pixel per ``1 / px_per_mm`` mm on both screen axes, so anisotropic
voxels keep their true aspect ratio; display pixel ``p`` of an axis with ``n`` voxels drawn over
``size`` pixels shows voxel ``floor((p + 0.5) * n / size)`` (an integer upscale when
``size = f * n``).

Contours are drawn at display resolution: the *inner* contour of a mask is ``mask AND NOT
erode(mask)`` and the *outer* contour ``dilate(mask) AND NOT mask``, both with the face-connected
cross and pixels outside the panel counted as background.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: The views :func:`view_axes` knows, in display order.
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

#: RGB of the reference contour in a single-label overlay.
REFERENCE_COLOUR: tuple[int, int, int] = (0, 255, 0)
#: RGB of the prediction contour in a single-label overlay.
PREDICTION_COLOUR: tuple[int, int, int] = (255, 0, 0)
#: RGB per label for multi-label overlays (label value v uses entry (v - 1) mod len); none is grey.
LABEL_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
)

# view -> (world axis of the slice normal, (world axis, sign) of increasing screen rows,
#          (world axis, sign) of increasing screen columns, letters left/right/top/bottom)
_VIEW_SPEC: dict[str, tuple[int, tuple[int, int], tuple[int, int], tuple[str, str, str, str]]] = {
    "axial": (2, (1, +1), (0, +1), ("R", "L", "A", "P")),
    "coronal": (1, (2, -1), (0, +1), ("R", "L", "S", "I")),
    "sagittal": (0, (2, -1), (1, +1), ("A", "P", "S", "I")),
}

#: The sentence every overlay carries about its orientation.
ORIENTATION_NOTE = "radiological convention: patient right on image left (sides marked R/L, A/P, S/I)"


def label_colour(value: int) -> tuple[int, int, int]:
    """RGB colour of label ``value`` (>= 1) in multi-label overlays."""
    return LABEL_PALETTE[(int(value) - 1) % len(LABEL_PALETTE)]


@dataclass(frozen=True)
class ViewAxes:
    """How one view maps a volume's index axes onto the screen.

    Attributes:
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        slice_axis: index axis (0, 1, 2 of ``(X, Y, Z)``) the view slices through.
        row_axis: index axis running down the screen rows.
        row_flip: True when screen rows run against the index (row 0 shows the last voxel).
        col_axis: index axis running along the screen columns.
        col_flip: True when screen columns run against the index.
        left: anatomical side shown at the left edge (e.g. ``"R"``).
        right: side at the right edge.
        top: side at the top edge.
        bottom: side at the bottom edge.
    """

    view: str
    slice_axis: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    left: str
    right: str
    top: str
    bottom: str


def world_axes(direction: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The nearest LPS world axis and its sign for each index axis of a direction matrix.

    Args:
        direction: (3, 3) matrix, column k = LPS unit vector of index axis k.

    Returns:
        ``(axes, signs)``: ``axes[k]`` in {0: L, 1: P, 2: S} is the world axis index axis k runs
        along (a permutation, chosen to maximise the summed alignment for oblique directions) and
        ``signs[k]`` is +1 when the index increases towards L/P/S, -1 otherwise.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[k], k]) for k in range(3)))
    signs = tuple(1 if d[best[k], k] >= 0 else -1 for k in range(3))
    if any(abs(d[best[k], k]) < 0.999 for k in range(3)):
        logger.debug("oblique direction %s: showing the nearest orthogonal views", d.tolist())
    return tuple(best), signs


def view_axes(direction: np.ndarray, view: str) -> ViewAxes:
    """Map ``view`` onto index axes for an image with ``direction`` (radiological convention).

    Args:
        direction: (3, 3) ITK direction (column k = LPS unit vector of index axis k).
        view: one of :data:`VIEWS`.

    Returns:
        The :class:`ViewAxes`.
    """
    normal, (row_world, row_sign), (col_world, col_sign), letters = _VIEW_SPEC[view]
    axes, signs = world_axes(direction)
    index_of = {w: k for k, w in enumerate(axes)}
    row_axis, col_axis = index_of[row_world], index_of[col_world]
    return ViewAxes(view=view, slice_axis=index_of[normal],
                    row_axis=row_axis, row_flip=signs[row_axis] != row_sign,
                    col_axis=col_axis, col_flip=signs[col_axis] != col_sign,
                    left=letters[0], right=letters[1], top=letters[2], bottom=letters[3])


def extract_slice(volume: np.ndarray, axes: ViewAxes, index: int) -> np.ndarray:
    """One slice of ``volume`` as the screen shows it.

    Args:
        volume: ``(X, Y, Z)`` array.
        axes: the view mapping from :func:`view_axes`.
        index: voxel index along ``axes.slice_axis``.

    Returns:
        2-D array ``(rows, cols)``: rows along ``axes.row_axis``, columns along ``axes.col_axis``,
        flipped as the view requires (a view, not a copy).
    """
    where: list[slice | int] = [slice(None)] * 3
    where[axes.slice_axis] = index
    plane = volume[tuple(where)]
    remaining = [a for a in range(3) if a != axes.slice_axis]
    if remaining.index(axes.row_axis) == 1:
        plane = plane.T
    if axes.row_flip:
        plane = plane[::-1, :]
    if axes.col_flip:
        plane = plane[:, ::-1]
    return plane


def display_size(n: int, spacing: float, px_per_mm: float) -> int:
    """Number of display pixels for ``n`` voxels of ``spacing`` mm at ``px_per_mm`` (at least 1)."""
    return max(1, int(round(n * spacing * px_per_mm)))


def display_index(n: int, size: int) -> np.ndarray:
    """Voxel shown by each of ``size`` display pixels along an axis of ``n`` voxels.

    Returns:
        int array ``(size,)``: pixel p shows voxel ``floor((p + 0.5) * n / size)``.
    """
    return np.minimum(((np.arange(size) + 0.5) * n / size).astype(np.int64), n - 1)


def upsample(plane: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a 2-D ``plane`` with :func:`display_index` maps."""
    return plane[rows][:, cols]


def _shifted(mask: np.ndarray) -> tuple[np.ndarray, ...]:
    p = np.pad(mask, 1, constant_values=False)
    return p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]


def inner_contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D ``mask`` with a face neighbour outside it (the panel edge counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    centre, up, down, left, right = _shifted(mask)
    return centre & ~(up & down & left & right)


def outer_contour(mask: np.ndarray) -> np.ndarray:
    """Pixels outside a 2-D ``mask`` with a face neighbour inside it."""
    mask = np.asarray(mask, dtype=bool)
    centre, up, down, left, right = _shifted(mask)
    return ~centre & (up | down | left | right)


#: Share of voxels at the image minimum above which that value is taken as masked background.
BACKGROUND_SHARE = 0.10


def intensity_window(volume: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> tuple[float, float]:
    """The ``lower``-th and ``upper``-th percentiles of the image, as the grey window.

    Skull-stripped MRI is mostly a constant background (0 in BraTS, a negative constant in
    z-scored data); when at least :data:`BACKGROUND_SHARE` of the voxels sit exactly at the
    minimum, those voxels are left out so the window describes the head, not the air.

    Returns:
        ``(lo, hi)`` with ``hi > lo`` (a constant image gets ``hi = lo + 1``).
    """
    values = np.asarray(volume, dtype=np.float32).ravel()
    if values.size:
        at_min = values == values.min()
        if np.count_nonzero(at_min) >= BACKGROUND_SHARE * values.size and not at_min.all():
            values = values[~at_min]
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def to_grey(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map a 2-D ``plane`` to uint8 grey levels: ``window[0]`` -> 0, ``window[1]`` -> 255, clipped."""
    lo, hi = window
    scaled = (np.asarray(plane, dtype=np.float32) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def select_slices(counts: np.ndarray, n: int) -> list[int]:
    """The ``n`` slices with the most foreground, in ascending order.

    Args:
        counts: ``(N,)`` foreground voxel count per slice.
        n: how many slices (clipped to N).

    Returns:
        Slice indices, ascending. Ties go to the lower index; with no foreground at all, ``n``
        slices evenly spaced strictly inside the volume (the middle one for ``n = 1``).
    """
    counts = np.asarray(counts)
    total = counts.shape[0]
    n = max(1, min(n, total))
    if not np.any(counts > 0):
        picks = np.linspace(0, total - 1, n + 2)[1:-1]
        return sorted({int(round(p)) for p in picks})
    order = np.argsort(-counts, kind="stable")
    return sorted(int(i) for i in order[:n])


@dataclass(frozen=True)
class Layer:
    """A contour to draw on a panel.

    Attributes:
        mask: ``(X, Y, Z)`` bool volume.
        colour: RGB.
        outer: draw the outer contour (pixels just outside the mask) instead of the inner one.
    """

    mask: np.ndarray
    colour: tuple[int, int, int]
    outer: bool = False


@dataclass(frozen=True)
class Panel:
    """One rendered slice before layout.

    Attributes:
        rgb: ``(h, w, 3)`` uint8 pixels.
        title: caption above the panel.
        axes: the view mapping.
        slice_index: voxel index along ``axes.slice_axis``.
        kind: ``"overlay"`` (reference and prediction together), ``"reference"`` or ``"prediction"``.
        row_voxels: ``(h,)`` voxel index along ``axes.row_axis`` shown by each panel row.
        col_voxels: ``(w,)`` voxel index along ``axes.col_axis`` shown by each panel column.
    """

    rgb: np.ndarray
    title: str
    axes: ViewAxes
    slice_index: int
    kind: str
    row_voxels: np.ndarray
    col_voxels: np.ndarray


def render_panel(*, grey_volume: np.ndarray, spacing: Sequence[float], axes: ViewAxes, index: int,
                 px_per_mm: float, layers: Sequence[Layer], title: str, kind: str) -> Panel:
    """Render one slice with its contours at display resolution.

    Args:
        grey_volume: ``(X, Y, Z)`` uint8 grey levels (already windowed).
        spacing: mm per index axis ``(sx, sy, sz)``.
        axes: the view mapping.
        index: slice index along ``axes.slice_axis``.
        px_per_mm: display pixels per millimetre on both screen axes.
        layers: contours, drawn in order (later ones on top).
        title: caption.
        kind: see :class:`Panel`.

    Returns:
        The :class:`Panel`.
    """
    plane = extract_slice(grey_volume, axes, index)
    n_rows, n_cols = plane.shape
    rows = display_index(n_rows, display_size(n_rows, spacing[axes.row_axis], px_per_mm))
    cols = display_index(n_cols, display_size(n_cols, spacing[axes.col_axis], px_per_mm))
    grey = upsample(plane, rows, cols)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for layer in layers:
        up = upsample(extract_slice(layer.mask, axes, index), rows, cols)
        ring = outer_contour(up) if layer.outer else inner_contour(up)
        rgb[ring] = layer.colour
    row_voxels = (n_rows - 1 - rows) if axes.row_flip else rows
    col_voxels = (n_cols - 1 - cols) if axes.col_flip else cols
    return Panel(rgb=rgb, title=title, axes=axes, slice_index=index, kind=kind,
                 row_voxels=row_voxels, col_voxels=col_voxels)


@dataclass(frozen=True)
class PanelInfo:
    """Where a panel landed in a composed overlay.

    Attributes:
        view: the view name.
        kind: ``"overlay"``, ``"reference"`` or ``"prediction"``.
        slice_index: voxel index along ``axes.slice_axis``.
        title: the caption drawn above the panel.
        top: first pixel row of the panel in the overlay.
        left: first pixel column.
        height: panel rows.
        width: panel columns.
        axes: the view mapping.
        row_voxels: ``(height,)`` voxel index along ``axes.row_axis`` per panel row.
        col_voxels: ``(width,)`` voxel index along ``axes.col_axis`` per panel column.
    """

    view: str
    kind: str
    slice_index: int
    title: str
    top: int
    left: int
    height: int
    width: int
    axes: ViewAxes
    row_voxels: np.ndarray
    col_voxels: np.ndarray


@dataclass(frozen=True)
class Overlay:
    """A composed overlay image.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 pixels, what the PNG holds.
        panels: every panel's placement.
        legend: ``(text, RGB)`` entries of the legend, in order.
        legend_boxes: ``(top, left, size)`` of each legend swatch (a filled square of its colour).
        title: the case title.
    """

    rgb: np.ndarray
    panels: tuple[PanelInfo, ...]
    legend: tuple[tuple[str, tuple[int, int, int]], ...]
    legend_boxes: tuple[tuple[int, int, int], ...] = field(default=())
    title: str = ""


# layout in pixels (text is drawn at 72 dpi, so a font size in points is a size in pixels)
_PAD = 10
_TITLE_H = 24
_NOTE_H = 18
_LEGEND_H = 22
_SWATCH = 12
_CAPTION_H = 18
_LETTER = 16
_GAP = 12
_CHAR_W = 7.5  # generous width estimate of one 11-12 px DejaVu Sans character


@dataclass(frozen=True)
class _Text:
    x: float
    y: float
    text: str
    size: float
    ha: str = "left"
    va: str = "center"
    weight: str = "normal"


def _draw_texts(width: int, height: int, texts: Sequence[_Text]) -> np.ndarray:
    """White ``(height, width, 3)`` canvas with ``texts`` drawn by matplotlib (Agg, 72 dpi)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 72.0, height / 72.0), dpi=72, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    for t in texts:
        fig.text(t.x / width, 1.0 - t.y / height, t.text, ha=t.ha, va=t.va, fontsize=t.size,
                 fontweight=t.weight, color="black")
    canvas.draw()
    buf = np.asarray(canvas.buffer_rgba())[:, :, :3]
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    h, w = min(height, buf.shape[0]), min(width, buf.shape[1])
    out[:h, :w] = buf[:h, :w]
    return out


def compose(*, title: str, rows: Sequence[Sequence[Panel]],
            legend: Sequence[tuple[str, tuple[int, int, int]]], note: str = ORIENTATION_NOTE) -> Overlay:
    """Lay panels out in rows under a header (title, orientation note, legend) with side letters.

    Each panel gets its caption above it and its anatomical side letters in the margins around
    it; text never overlaps a panel, whose pixels are pasted unchanged.

    Args:
        title: first header line (the case).
        rows: panels per screen row (one row per view).
        legend: ``(text, RGB)`` entries drawn as swatches with text.
        note: second header line (the orientation statement).

    Returns:
        The :class:`Overlay`.
    """
    texts: list[_Text] = [
        _Text(_PAD, _PAD + _TITLE_H / 2, title, 15, weight="bold"),
        _Text(_PAD, _PAD + _TITLE_H + _NOTE_H / 2, note, 11),
    ]
    legend_top = _PAD + _TITLE_H + _NOTE_H
    x = _PAD
    swatches: list[tuple[int, int, int, tuple[int, int, int]]] = []
    for text, colour in legend:
        top = legend_top + (_LEGEND_H - _SWATCH) // 2
        swatches.append((top, x, _SWATCH, colour))
        texts.append(_Text(x + _SWATCH + 5, legend_top + _LEGEND_H / 2, text, 11))
        x += _SWATCH + 5 + int(len(text) * _CHAR_W) + 18
    header_w = max(x, _PAD + int(len(note) * _CHAR_W * 0.9), _PAD + int(len(title) * 9))
    y = legend_top + _LEGEND_H + 6

    placed: list[tuple[Panel, int, int]] = []
    width = header_w + _PAD
    for row in rows:
        if not row:
            continue
        row_h = max(p.rgb.shape[0] for p in row)
        x = _PAD
        for p in row:
            h, w = p.rgb.shape[:2]
            top, left = y + _CAPTION_H + _LETTER, x + _LETTER
            placed.append((p, top, left))
            texts.append(_Text(left, y + _CAPTION_H / 2, p.title, 11))
            a = p.axes
            texts.append(_Text(x + _LETTER / 2, top + h / 2, a.left, 11, ha="center", weight="bold"))
            texts.append(_Text(left + w + _LETTER / 2, top + h / 2, a.right, 11, ha="center", weight="bold"))
            texts.append(_Text(left + w / 2, top - _LETTER / 2, a.top, 11, ha="center", weight="bold"))
            texts.append(_Text(left + w / 2, top + h + _LETTER / 2, a.bottom, 11, ha="center", weight="bold"))
            x = left + w + _LETTER + _GAP
        width = max(width, x - _GAP + _PAD)
        y += _CAPTION_H + _LETTER + row_h + _LETTER + _GAP
    height = y - _GAP + _PAD

    canvas = _draw_texts(width, height, texts)
    infos = []
    for p, top, left in placed:
        h, w = p.rgb.shape[:2]
        canvas[top:top + h, left:left + w] = p.rgb
        infos.append(PanelInfo(view=p.axes.view, kind=p.kind, slice_index=p.slice_index, title=p.title, top=top,
                               left=left, height=h, width=w, axes=p.axes, row_voxels=p.row_voxels,
                               col_voxels=p.col_voxels))
    boxes = []
    for top, left, size, colour in swatches:
        canvas[top:top + size, left:left + size] = colour
        boxes.append((top, left, size))
    return Overlay(rgb=canvas, panels=tuple(infos), legend=tuple((t, tuple(c)) for t, c in legend),
                   legend_boxes=tuple(boxes), title=title)


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode a ``(H, W, 3)`` uint8 array as PNG bytes (lossless)."""
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
