"""The nnU-Net v2 raw dataset layout: load_dataset, read_case, write_dataset_json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from brainseg_cli.data.layout import DatasetInfo, label_values_to_uint8, load_dataset, read_case, write_dataset_json
from brainseg_cli.errors import GeometryError, InputError
from brainseg_cli.io import Image, read_image, write_image

SHAPE = (6, 5, 4)
DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
LABELS = {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3}
REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def _image(value: float, *, dtype=np.int16, spacing=(1.0, 1.5, 2.0), origin=(10.0, -5.0, 3.0)) -> Image:
    arr = (np.arange(np.prod(SHAPE)).reshape(SHAPE) + value).astype(dtype)
    return Image(arr, spacing, origin, DIRECTION)


def _label() -> Image:
    arr = np.zeros(SHAPE, np.uint8)
    arr[1:3, 1:3, 1:3] = 1
    arr[2, 2, 2] = 3
    arr[4, 0, 0] = 2
    return Image(arr, (1.0, 1.5, 2.0), (10.0, -5.0, 3.0), DIRECTION)


def _make(root: Path, *, train=("c1", "c2"), test=("t1",), channels=("T1", "FLAIR"), brainseg=None, meta=None) -> Path:
    for case in train:
        for i in range(len(channels)):
            write_image(_image(100 * i), root / "imagesTr" / f"{case}_{i:04d}.nii.gz")
        write_image(_label(), root / "labelsTr" / f"{case}.nii.gz")
    for case in test:
        for i in range(len(channels)):
            write_image(_image(100 * i), root / "imagesTs" / f"{case}_{i:04d}.nii.gz")
    write_dataset_json(root, channels=channels, labels=LABELS, num_training=len(train),
                       brainseg={"regions": REGIONS, "source": "test"} if brainseg is None else brainseg)
    if meta is not None:
        data = json.loads((root / "dataset.json").read_text())
        data.update(meta)
        for key in [k for k, v in meta.items() if v is None]:
            del data[key]
        (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_write_dataset_json_content(tmp_path: Path) -> None:
    path = write_dataset_json(tmp_path / "ds", channels=["T1", "T1c"], labels={"edema": 1, "background": 0},
                              num_training=3, brainseg={"source": "x"})
    assert path == tmp_path / "ds" / "dataset.json"
    data = json.loads(path.read_text())
    assert data == {"channel_names": {"0": "T1", "1": "T1c"}, "labels": {"background": 0, "edema": 1},
                    "numTraining": 3, "file_ending": ".nii.gz", "brainseg": {"source": "x"}}
    assert [p.name for p in path.parent.iterdir()] == ["dataset.json"]  # no temporary left behind


def test_write_dataset_json_rejects_gaps(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"consecutive from 0.*\[0, 2\]"):
        write_dataset_json(tmp_path, channels=["T1"], labels={"background": 0, "x": 2}, num_training=1, brainseg={})


def test_load_and_read_case_roundtrip(tmp_path: Path) -> None:
    root = _make(tmp_path / "ds")
    (root / "imagesTr" / "._c1_0000.nii.gz").write_bytes(b"\0" * 82)  # AppleDouble: ignored
    info = load_dataset(root)
    assert isinstance(info, DatasetInfo)
    assert info.name == "ds"
    assert info.channels == ("T1", "FLAIR")
    assert info.labels == LABELS
    assert info.regions == REGIONS
    assert info.file_ending == ".nii.gz"
    assert info.training_cases == ("c1", "c2")
    assert info.test_cases == ("t1",)
    assert info.extra["source"] == "test"
    assert info.image_paths("c2") == [root / "imagesTr" / "c2_0000.nii.gz", root / "imagesTr" / "c2_0001.nii.gz"]
    assert info.image_paths("t1")[1] == root / "imagesTs" / "t1_0001.nii.gz"
    assert info.label_path("c1") == root / "labelsTr" / "c1.nii.gz"

    image, label = read_case(info, "c1")
    assert image.array.shape == (2, *SHAPE) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array[1], _image(100).array.astype(np.float32))
    assert label is not None and label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.array, _label().array)
    np.testing.assert_allclose(image.spacing, (1.0, 1.5, 2.0))
    np.testing.assert_allclose(image.origin, (10.0, -5.0, 3.0))
    np.testing.assert_allclose(image.direction, DIRECTION)

    image, label = read_case(info, "c1", with_label=False)
    assert label is None
    image, label = read_case(info, "t1")
    assert label is None and image.array.shape == (2, *SHAPE)


def test_unknown_and_test_case_errors(tmp_path: Path) -> None:
    info = load_dataset(_make(tmp_path / "ds"))
    with pytest.raises(InputError, match="no case 'nope'"):
        info.image_paths("nope")
    with pytest.raises(InputError, match="'t1' is a test case"):
        info.label_path("t1")


def test_plain_nnunet_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _make(tmp_path / "Dataset001_X", test=(), channels=("MRI", "t1ce"), brainseg={}, meta={"brainseg": None, "name": "X"})
    with caplog.at_level(logging.WARNING, logger="brainseg_cli.data.layout"):
        info = load_dataset(root)
    assert info.channels == ("MRI", "T1c")
    assert info.name == "X"
    assert info.regions == {} and info.extra == {}
    assert info.test_cases == ()
    assert "'MRI' matches no canonical channel name" in caplog.text


def test_nnunet_region_labels(tmp_path: Path) -> None:
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    root = _make(tmp_path / "ds", test=(), brainseg={}, meta={"brainseg": None, "labels": labels, "regions_class_order": [1, 2, 3]})
    info = load_dataset(root)
    assert info.labels == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert info.regions == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"channel_names": None, "modality": {"0": "FLAIR"}}, r"Decathlon.*brainseg convert msd"),
        ({"channel_names": None}, "missing 'channel_names'"),
        ({"channel_names": {"0": "T1", "2": "FLAIR"}}, r"keys must be 0..1"),
        ({"channel_names": {"0": "T1", "1": "t1n"}}, r"channels 0 and 1 are both 'T1'"),
        ({"labels": {"background": 0, "tumour": 2}}, r"consecutive from 0.*\[0, 2\]"),
        ({"labels": {"background": 0, "tumour": "one"}}, r"label 'tumour' must be an integer"),
        ({"file_ending": None}, r"'file_ending' must be a file ending"),
        ({"numTraining": 5}, r"numTraining is 5 but .*labelsTr holds 2"),
        ({"brainseg": {"regions": {"WT": [1, 7]}}}, r"region 'WT' uses labels \[7\]"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, meta: dict, match: str) -> None:
    root = _make(tmp_path / "ds", test=(), meta=meta)
    with pytest.raises(InputError, match=match):
        load_dataset(root)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset.json"):
        load_dataset(tmp_path / "empty")
    root = _make(tmp_path / "a", test=("t1",))
    (root / "imagesTr" / "c2_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case c2: missing image file\(s\) c2_0001.nii.gz"):
        load_dataset(root)
    root = _make(tmp_path / "b")
    (root / "labelsTr" / "c2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case c2: images in .* without a label"):
        load_dataset(root)
    root = _make(tmp_path / "c")
    (root / "imagesTs" / "t1_0000.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case t1: missing image file\(s\) t1_0000.nii.gz"):
        load_dataset(root)
    root = _make(tmp_path / "d")
    write_image(_image(0), root / "imagesTr" / "c1_0002.nii.gz")
    with pytest.raises(InputError, match=r"c1_0002.nii.gz: channel 2 but dataset.json declares 2"):
        load_dataset(root)


def test_read_case_geometry_mismatch(tmp_path: Path) -> None:
    root = _make(tmp_path / "ds", test=())
    write_image(_image(100, origin=(10.0, -5.0, 3.5)), root / "imagesTr" / "c1_0001.nii.gz")
    info = load_dataset(root)
    with pytest.raises(GeometryError, match=r"case c1: FLAIR \(c1_0001.nii.gz\) vs T1: grids differ: origin"):
        read_case(info, "c1")
    write_image(Image(np.zeros((6, 5, 3), np.uint8), (1.0, 1.5, 2.0), (10.0, -5.0, 3.0), DIRECTION), root / "labelsTr" / "c2.nii.gz")
    with pytest.raises(GeometryError, match=r"case c2: label \(c2.nii.gz\) vs T1: grids differ: shape 6x5x3 vs 6x5x4"):
        read_case(info, "c2")


def test_read_case_rejects_unknown_label_values(tmp_path: Path) -> None:
    root = _make(tmp_path / "ds", test=())
    bad = _label().array.copy()
    bad[0, 0, 0] = 4
    write_image(_label().with_array(bad), root / "labelsTr" / "c1.nii.gz")
    with pytest.raises(InputError, match=r"case c1 \(c1.nii.gz\): unexpected label values 4 \(1 voxels\); expected \[0, 1, 2, 3\]"):
        read_case(load_dataset(root), "c1")


def test_label_values_to_uint8() -> None:
    out = label_values_to_uint8(np.array([0.0, 2.0, 1.0], np.float32), what="x")
    assert out.dtype == np.uint8 and out.tolist() == [0, 2, 1]
    with pytest.raises(InputError, match=r"x: label has non-integer values \[0.5\]"):
        label_values_to_uint8(np.array([0.0, 0.5], np.float32), what="x")
    with pytest.raises(InputError, match=r"unexpected label values -1 \(2 voxels\), 300 \(1 voxels\)"):
        label_values_to_uint8(np.array([-1, -1, 300, 0], np.int16), what="x")


def test_read_case_float_label_file(tmp_path: Path) -> None:
    root = _make(tmp_path / "ds", test=())
    write_image(_label().with_array(_label().array.astype(np.float32)), root / "labelsTr" / "c1.nii.gz")
    assert read_image(root / "labelsTr" / "c1.nii.gz").array.dtype == np.float32
    _, label = read_case(load_dataset(root), "c1")
    np.testing.assert_array_equal(label.array, _label().array)
