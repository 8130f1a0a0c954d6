"""Overlay PNGs: exact contour pixels, colours and legend, orientation, aspect, inputs, real data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from viz_helpers import noise_image, write_flat_case

from brainseg_cli.errors import ConfigError, GeometryError, InputError
from brainseg_cli.io import Image, read_image, write_image
from brainseg_cli.viz.overlays import (
    OverlayConfig,
    OverlayInputs,
    iter_overlays,
    parse_views,
    render_overlay,
    write_overlays,
)
from brainseg_cli.viz.render import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    intensity_window,
    label_colour,
    to_grey,
)


def colour_mask(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.asarray(colour, np.uint8), axis=2)


def rectangle_ring(shape, r0, r1, c0, c1) -> np.ndarray:
    """Pixels on the border of rows r0..r1, cols c0..c1 (inclusive)."""
    out = np.zeros(shape, bool)
    out[r0, c0:c1 + 1] = out[r1, c0:c1 + 1] = True
    out[r0:r1 + 1, c0] = out[r0:r1 + 1, c1] = True
    return out


def panel_pixels(rgb: np.ndarray, panel) -> np.ndarray:
    return rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width]


# ------------------------------------------------------------------------------ the square lesion
def test_square_lesion_contours_exactly_on_the_square_border_in_the_png(square_case, tmp_path):
    paths = square_case["paths"]
    inputs = OverlayInputs(images=paths["images"], pred=paths["pred"], ref=paths["ref"], views=("axial",),
                           n_slices=1)
    written = write_overlays(config=OverlayConfig(inputs=inputs, output_dir=tmp_path / "out"))
    assert written == [tmp_path / "out" / "square.png"]
    png = np.asarray(PILImage.open(written[0]).convert("RGB"))
    (item,) = list(iter_overlays(inputs=inputs))
    np.testing.assert_array_equal(png, item.overlay.rgb)

    (panel,) = item.overlay.panels
    assert (panel.view, panel.slice_index) == ("axial", 3)
    # 40 x 50 voxels at 1 mm: zoom round(400 / 50) = 8 px per voxel; rows = Y, columns = X, no flips
    assert (panel.height, panel.width) == (50 * 8, 40 * 8)
    pixels = panel_pixels(png, panel)
    shape = pixels.shape[:2]
    # prediction X 12-21, Y 15-24 -> inner ring on rows 120..199, columns 96..175
    red_expected = rectangle_ring(shape, 15 * 8, 25 * 8 - 1, 12 * 8, 22 * 8 - 1)
    np.testing.assert_array_equal(colour_mask(pixels, PREDICTION_COLOUR), red_expected)
    # reference X 10-19, Y 15-24 -> outer ring: rows 119/200 over columns 80..159, columns 79/160 over rows 120..199
    green_expected = np.zeros(shape, bool)
    green_expected[119, 80:160] = green_expected[200, 80:160] = True
    green_expected[120:200, 79] = green_expected[120:200, 160] = True
    green_expected &= ~red_expected  # the prediction is drawn on top
    np.testing.assert_array_equal(colour_mask(pixels, REFERENCE_COLOUR), green_expected)

    # no contour colour anywhere else in the image except the legend swatches
    outside = np.ones(png.shape[:2], bool)
    outside[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width] = False
    for top, left, size in item.overlay.legend_boxes:
        outside[top:top + size, left:left + size] = False
    for colour in (PREDICTION_COLOUR, REFERENCE_COLOUR):
        assert not colour_mask(png, colour)[outside].any()

    # text is drawn in the margins only: the orientation note under the title, a side letter in each margin
    dark = png.max(axis=2) < 100
    assert dark[34:52, 10:400].sum() > 200  # "radiological convention: ..." line
    mid_row, mid_col = panel.top + panel.height // 2, panel.left + panel.width // 2
    for box in ((slice(mid_row - 8, mid_row + 8), slice(panel.left - 16, panel.left)),  # R
                (slice(mid_row - 8, mid_row + 8), slice(panel.left + panel.width, panel.left + panel.width + 16)),  # L
                (slice(panel.top - 16, panel.top), slice(mid_col - 8, mid_col + 8)),  # A
                (slice(panel.top + panel.height, panel.top + panel.height + 16), slice(mid_col - 8, mid_col + 8))):  # P
        assert dark[box].sum() > 10


def test_square_lesion_legend_matches_colours(square_case):
    paths = square_case["paths"]
    (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], ref=paths["ref"],
                                          views=("axial",), n_slices=1))
    ov = item.overlay
    assert [text for text, _ in ov.legend] == ["reference (outer contour)", "prediction (inner contour)"]
    assert [c for _, c in ov.legend] == [REFERENCE_COLOUR, PREDICTION_COLOUR]
    for (top, left, size), (_, colour) in zip(ov.legend_boxes, ov.legend):
        assert colour_mask(ov.rgb[top:top + size, left:left + size], colour).all()


def test_panel_grey_levels_are_the_windowed_image(square_case):
    paths = square_case["paths"]
    (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], views=("axial",),
                                          n_slices=1))
    (panel,) = item.overlay.panels
    image = np.asarray(read_image(paths["images"] / "square_0000.nii.gz").array)
    grey = to_grey(image[:, :, panel.slice_index].T, intensity_window(image))  # rows Y, columns X
    pixels = panel_pixels(item.overlay.rgb, panel)
    expected = grey[panel.row_voxels][:, panel.col_voxels]
    untouched = ~colour_mask(pixels, PREDICTION_COLOUR)
    np.testing.assert_array_equal(pixels[..., 0][untouched], expected[untouched])


def test_flipped_direction_mirrors_the_square(tmp_path):
    shape = (40, 50, 12)
    pred = np.zeros(shape, np.uint8)
    pred[12:22, 15:25, 3:7] = 1
    direction = np.diag([-1.0, -1.0, 1.0])  # index axes run to patient right and anterior
    paths = write_flat_case(tmp_path, "flip", image=noise_image(shape), pred=pred, direction=direction)
    (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], views=("axial",),
                                                 n_slices=1))
    (panel,) = item.overlay.panels
    rows, cols = np.nonzero(colour_mask(panel_pixels(item.overlay.rgb, panel), PREDICTION_COLOUR))
    # X 12..21 mirrored -> columns (39-21)*8 .. (39-12)*8+7; Y 15..24 mirrored -> rows (49-24)*8 .. (49-15)*8+7
    assert (cols.min(), cols.max()) == ((39 - 21) * 8, (39 - 12) * 8 + 7)
    assert (rows.min(), rows.max()) == ((49 - 24) * 8, (49 - 15) * 8 + 7)
    assert (panel.axes.left, panel.axes.right, panel.axes.top, panel.axes.bottom) == ("R", "L", "A", "P")


def test_anisotropic_spacing_keeps_the_aspect_ratio(tmp_path):
    shape = (40, 30, 10)
    pred = np.zeros(shape, np.uint8)
    pred[10:20, 10:20, 4:6] = 1
    paths = write_flat_case(tmp_path, "aniso", image=noise_image(shape), spacing=(1.0, 1.0, 3.0), pred=pred)
    (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], n_slices=1))
    by_view = {p.view: p for p in item.overlay.panels}
    assert set(by_view) == {"axial", "coronal", "sagittal"}
    zoom = round(400 / 40)
    assert (by_view["axial"].height, by_view["axial"].width) == (30 * zoom, 40 * zoom)
    assert (by_view["coronal"].height, by_view["coronal"].width) == (10 * 3 * zoom, 40 * zoom)
    assert (by_view["sagittal"].height, by_view["sagittal"].width) == (10 * 3 * zoom, 30 * zoom)
    # a 2-slice (6 mm) lesion is 6 mm tall on screen: 6 * zoom rows of red bounding box
    rows, _ = np.nonzero(colour_mask(panel_pixels(item.overlay.rgb, by_view["coronal"]), PREDICTION_COLOUR))
    assert rows.max() - rows.min() + 1 == 2 * 3 * zoom


# ------------------------------------------------------------------------------ multi-class
def test_multi_label_panels_side_by_side_with_label_colours(tiny_dataset):
    items = list(iter_overlays(inputs=OverlayInputs(images=tiny_dataset["images"], pred=tiny_dataset["pred"],
                                             ref=tiny_dataset["ref"], views=("axial",), n_slices=2)))
    assert [i.case for i in items] == ["case_000", "case_001", "case_002"]
    item = items[0]
    ov = item.overlay
    assert list(ov.legend) == [("edema (1)", label_colour(1)), ("core (2)", label_colour(2))]
    for (top, left, size), (_, colour) in zip(ov.legend_boxes, ov.legend):
        assert colour_mask(ov.rgb[top:top + size, left:left + size], colour).all()
    # every slice Z 2..7 has the same foreground: the two lowest are shown, reference then prediction
    assert [(p.slice_index, p.kind) for p in ov.panels] == [(2, "reference"), (2, "prediction"),
                                                            (3, "reference"), (3, "prediction")]
    ref_panel, pred_panel = ov.panels[2:]  # slice 3 has core (Z 3..5) and edema
    zoom = round(400 / 28)
    # the core of case_000: X 7..10, Y 9..13 (reference) and Y 10..14 (prediction, rolled by one)
    for panel, y0 in ((ref_panel, 9), (pred_panel, 10)):
        rows, cols = np.nonzero(colour_mask(panel_pixels(ov.rgb, panel), label_colour(2)))
        assert (rows.min(), rows.max()) == (y0 * zoom, (y0 + 5) * zoom - 1)
        assert (cols.min(), cols.max()) == (7 * zoom, 11 * zoom - 1)
        assert colour_mask(panel_pixels(ov.rgb, panel), label_colour(1)).any()
    assert item.channel == "FLAIR"  # the default when the dataset has FLAIR
    assert item.volumes["edema"][0] == pytest.approx(item.volumes["edema"][1])
    assert item.volumes["core"][1] == pytest.approx(4 * 5 * 3 * 2.0 / 1000)


def test_channel_option_picks_the_displayed_channel(tmp_path):
    shape = (16, 16, 4)
    rng = np.random.default_rng(1)
    ch0 = rng.normal(0, 1, shape).astype(np.float32)
    ch1 = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], shape).copy()
    root = tmp_path / "flat"
    write_image(Image(ch0, (1, 1, 1)), root / "images" / "c_0000.nii.gz")
    write_image(Image(ch1, (1, 1, 1)), root / "images" / "c_0001.nii.gz")
    write_image(Image(np.zeros(shape, np.uint8), (1, 1, 1)), root / "pred" / "c.nii.gz")
    for channel, volume in ((None, ch0), ("0", ch0), ("1", ch1)):
        (item,) = iter_overlays(inputs=OverlayInputs(images=root / "images", pred=root / "pred", channel=channel,
                                              views=("axial",), n_slices=1))
        (panel,) = item.overlay.panels
        grey = to_grey(volume[:, :, panel.slice_index].T, intensity_window(volume))
        np.testing.assert_array_equal(panel_pixels(item.overlay.rgb, panel)[..., 0],
                                      grey[panel.row_voxels][:, panel.col_voxels])
    with pytest.raises(ConfigError, match="no dataset.json naming its channels"):
        list(iter_overlays(inputs=OverlayInputs(images=root / "images", pred=root / "pred", channel="FLAIR")))
    with pytest.raises(ConfigError, match="--channel 2 is out of range"):
        list(iter_overlays(inputs=OverlayInputs(images=root / "images", pred=root / "pred", channel="2")))


def test_channel_by_name_in_a_dataset(tiny_dataset):
    (item, *_) = iter_overlays(inputs=OverlayInputs(images=tiny_dataset["images"], pred=tiny_dataset["pred"],
                                             channel="t1w", views=("axial",), n_slices=1))
    assert item.channel == "T1"
    assert item.overlay.title.endswith("T1")
    with pytest.raises(ConfigError, match=r"--channel 'T2' is not a channel of .*channels: T1, FLAIR"):
        list(iter_overlays(inputs=OverlayInputs(images=tiny_dataset["images"], pred=tiny_dataset["pred"],
                                                channel="T2")))


@pytest.mark.parametrize("views, n_slices", [(("sagittal",), 2), (("coronal", "axial"), 1), (None, 3)])
def test_views_and_slice_count(square_case, views, n_slices):
    paths = square_case["paths"]
    (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], views=views,
                                                 n_slices=n_slices))
    expected_views = views or ("axial", "coronal", "sagittal")
    assert [p.view for p in item.overlay.panels] == [v for v in expected_views for _ in range(n_slices)]


def test_parse_views_errors():
    assert parse_views("Axial, sagittal") == ("axial", "sagittal")
    assert parse_views(None) is None
    with pytest.raises(ConfigError, match="unknown view 'axail' \\(did you mean 'axial'\\?\\)"):
        parse_views("axail")
    with pytest.raises(ConfigError, match="repeats"):
        parse_views("axial,axial")
    with pytest.raises(ConfigError, match="empty"):
        parse_views(" , ")
    with pytest.raises(ConfigError, match="--slices must be a positive integer"):
        OverlayInputs(images=Path("."), pred=Path("."), n_slices=0)


def test_missing_reference_and_orphan_predictions_are_reported(square_case, caplog):
    paths = square_case["paths"]
    (paths["ref"] / "square.nii.gz").rename(paths["ref"] / "other.nii.gz")
    write_image(Image(np.zeros(square_case["shape"], np.uint8), (1, 1, 1)), paths["pred"] / "ghost.nii.gz")
    with caplog.at_level(logging.INFO, logger="brainseg_cli.viz"):
        (item,) = iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"], ref=paths["ref"],
                                              views=("axial",), n_slices=1))
    assert "no reference" in caplog.text and "ghost" in caplog.text
    assert [t for t, _ in item.overlay.legend] == ["prediction (inner contour)"]
    assert not colour_mask(item.overlay.rgb, REFERENCE_COLOUR).any()


def test_no_matching_prediction_is_an_error(square_case, tmp_path):
    other = tmp_path / "other_pred"
    write_image(Image(np.zeros((4, 4, 4), np.uint8), (1, 1, 1)), other / "nobody.nii.gz")
    with pytest.raises(InputError, match="no prediction matches a case of .*cases there: square"):
        list(iter_overlays(inputs=OverlayInputs(images=square_case["paths"]["images"], pred=other)))


def test_prediction_on_another_grid_is_a_geometry_error(square_case):
    paths = square_case["paths"]
    write_image(Image(square_case["pred"], (1.0, 1.0, 2.0)), paths["pred"] / "square.nii.gz")
    with pytest.raises(GeometryError, match="case square: prediction square.nii.gz vs image: grids differ: spacing"):
        list(iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"])))


def test_non_integer_prediction_is_an_input_error(square_case):
    paths = square_case["paths"]
    write_image(Image(square_case["pred"] * 0.5, (1.0, 1.0, 1.0)), paths["pred"] / "square.nii.gz")
    with pytest.raises(InputError, match="case square: prediction .*non-integer"):
        list(iter_overlays(inputs=OverlayInputs(images=paths["images"], pred=paths["pred"])))


def test_two_dimensional_images_render_as_one_slice(tmp_path):
    image = noise_image((30, 20))
    pred = np.zeros((30, 20), np.uint8)
    pred[5:10, 5:15] = 1
    write_image(Image(image, (0.5, 0.5)), tmp_path / "img" / "flat2d.nii.gz")
    write_image(Image(pred, (0.5, 0.5)), tmp_path / "pred" / "flat2d.nii.gz")
    (item,) = iter_overlays(inputs=OverlayInputs(images=tmp_path / "img", pred=tmp_path / "pred"))
    (panel,) = item.overlay.panels  # single-slice images default to the axial view only
    assert panel.view == "axial" and (panel.height, panel.width) == (20 * 13, 30 * 13)
    assert item.volumes["label 1"] == (pytest.approx(5 * 10 * 0.25 / 1000), None)


def test_render_overlay_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="prediction shape"):
        render_overlay(image=np.zeros((4, 4, 4)), spacing=(1, 1, 1), direction=np.eye(3), pred=np.zeros((4, 4, 3)))


def test_slice_numbers_name_the_slices():
    pred = np.zeros((8, 8, 3), np.uint8)
    pred[2:4, 2:4, 1] = 1
    ov = render_overlay(image=noise_image((8, 8, 3)), spacing=(1, 1, 1), direction=np.eye(3), pred=pred,
                        views=("axial",), n_slices=1, slice_numbers=[4, 7, 10])
    assert ov.panels[0].title == "axial slice 7"


# ------------------------------------------------------------------------------ real data
def _crop(image: Image, start, size) -> Image:
    sl = tuple(slice(s, s + n) for s, n in zip(start, size))
    origin = np.asarray(image.origin) + image.direction @ (np.asarray(image.spacing) * np.asarray(start))
    return Image(np.asarray(image.array)[sl], image.spacing, tuple(origin), image.direction)


def test_brats_dataset_overlay_on_real_data(shared_data, tmp_path):
    """Real BraTS 2018 FLAIR/T1c with its manual labels (cropped), prediction = reference shifted 3 voxels."""
    from brainseg_cli.data.layout import write_dataset_json

    src = shared_data / "brats2018_deepbrainseg" / "Brats18_2013_11_1"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    seg = read_image(src / "Brats18_2013_11_1_seg.nii.gz")
    lab = np.asarray(seg.array)
    canonical = np.select([lab == 2, lab == 1, lab == 4], [1, 2, 3], 0).astype(np.uint8)
    centre = np.round(np.argwhere(canonical > 0).mean(axis=0)).astype(int)
    size = (96, 96, 64)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, lab.shape)]
    root = tmp_path / "Dataset001_BraTS"
    for i, name in enumerate(("t1ce", "flair")):
        img = _crop(read_image(src / f"Brats18_2013_11_1_{name}.nii.gz"), start, size)
        write_image(img, root / "imagesTr" / f"BRATS_001_{i:04d}.nii.gz")
    ref = _crop(seg.with_array(canonical), start, size)
    write_image(ref, root / "labelsTr" / "BRATS_001.nii.gz")
    write_image(ref.with_array(np.roll(np.asarray(ref.array), 3, axis=0)), tmp_path / "pred" / "BRATS_001.nii.gz")
    write_dataset_json(root, channels=["T1c", "FLAIR"], num_training=1,
                       labels={"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3}, brainseg={})

    written = write_overlays(config=OverlayConfig(
        inputs=OverlayInputs(images=root, pred=tmp_path / "pred", ref=root, n_slices=2), output_dir=tmp_path / "out"))
    png = np.asarray(PILImage.open(written[0]).convert("RGB"))
    (item,) = iter_overlays(inputs=OverlayInputs(images=root, pred=tmp_path / "pred", ref=root, n_slices=2))
    np.testing.assert_array_equal(png, item.overlay.rgb)
    assert item.channel == "FLAIR"
    assert [t for t, _ in item.overlay.legend] == ["edema (1)", "non-enhancing (2)", "enhancing (3)"]
    ref_arr = np.asarray(ref.array)
    union = (ref_arr > 0) | (np.roll(ref_arr, 3, axis=0) > 0)
    axial = [p for p in item.overlay.panels if p.view == "axial"]
    best = np.sort(np.argsort(-union.sum(axis=(0, 1)), kind="stable")[:2])
    assert sorted({p.slice_index for p in axial}) == best.tolist()
    # BraTS's RAS affine diag(-1, -1, 1) is the LPS identity: X runs to patient left, Y posterior, no flips
    assert not axial[0].axes.row_flip and not axial[0].axes.col_flip
    for value in (1, 2, 3):
        assert colour_mask(png, label_colour(value)).sum() > 50


def test_anisotropic_real_scan_mrbrains(shared_data, tmp_path):
    """MRBrainS18 geometry (0.958 x 0.958 x 3 mm): screen aspect follows millimetres, not voxels."""
    src = shared_data / "mrbrains18_from_voxelmorph" / "training" / "1"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    t1 = read_image(src / "pre" / "T1.nii.gz")
    seg = read_image(src / "segm.nii.gz")
    write_image(t1, tmp_path / "img" / "mrb_0000.nii.gz")
    labels = np.asarray(seg.array).astype(np.uint8)
    write_image(seg.with_array(labels), tmp_path / "ref" / "mrb.nii.gz")
    write_image(seg.with_array(np.where(labels == 6, 0, labels).astype(np.uint8)), tmp_path / "pred" / "mrb.nii.gz")
    (item,) = iter_overlays(inputs=OverlayInputs(images=tmp_path / "img", pred=tmp_path / "pred", ref=tmp_path / "ref",
                                          views=("coronal",), n_slices=1))
    ref_panel, pred_panel = item.overlay.panels
    nx, _, nz = labels.shape
    sx, _, sz = seg.spacing
    assert ref_panel.height / ref_panel.width == pytest.approx((nz * sz) / (nx * sx), rel=0.01)
    assert len(item.overlay.legend) == len(np.unique(labels)) - 1
    # ventricles (6) dropped from the prediction: present in the reference panel only
    assert colour_mask(panel_pixels(item.overlay.rgb, ref_panel), label_colour(6)).any()
    assert not colour_mask(panel_pixels(item.overlay.rgb, pred_panel), label_colour(6)).any()
