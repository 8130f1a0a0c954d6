"""``brainseg export`` and ``predict --engine``: ONNX / TorchScript exports that describe themselves and
predict what the checkpoint predicts (issue #21)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import tiny_trained_checkpoint
from helpers.threads import one_thread
from typer.testing import CliRunner

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.cli.main import app
from brainseg_cli.data.layout import load_dataset, read_case
from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.inference.engines import METADATA_KEY, OnnxRuntimeNetwork, read_onnx_metadata, read_torchscript
from brainseg_cli.inference.export import ExportConfig, export_model
from brainseg_cli.inference.predict import PredictConfig, predict_folder
from brainseg_cli.inference.predictor import Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    with one_thread():
        return tiny_trained_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    with one_thread():
        return {fmt: export_model(ExportConfig(checkpoint=tiny, output=out / f"model{ending}")).output
                for fmt, ending in (("onnx", ".onnx"), ("torchscript", ".ts"))}


def test_exports_carry_the_checkpoints_metadata_and_agree_with_pytorch(tiny, exports):
    ckpt = load_checkpoint(tiny)
    meta, _ = read_onnx_metadata(exports["onnx"])
    ts_meta, module = read_torchscript(exports["torchscript"], device=torch.device("cpu"))
    for m in (meta, ts_meta):
        for key in ("plan", "channels", "labels", "regions", "postprocessing", "model", "training"):
            assert m[key] == json.loads(json.dumps(ckpt[key])), key
        assert "state_dict" not in m and m["exported_from"] == "best.pt" and m["export_version"] == 1
        # orders carry meaning (regions are the outputs' order when region-based)
        assert list(m["regions"]) == list(ckpt["regions"]) == ["WT", "TC", "ET"]
        assert list(m["labels"]) == list(ckpt["labels"])
    net = build_model_from_checkpoint(ckpt).eval()
    session = OnnxRuntimeNetwork(exports["onnx"])
    with one_thread(), torch.no_grad():
        for shape in ((3, 4, 16, 16, 16), (1, 4, 32, 16, 48)):  # dynamic batch and spatial axes
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
            expected = net(x)
            assert session(x).shape == expected.shape
            torch.testing.assert_close(session(x), expected, atol=1e-4, rtol=1e-4)
        x = torch.randn(2, 4, 16, 16, 16)
        torch.testing.assert_close(module(x), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model, engine", [("best.pt", "onnxruntime"), ("onnx", "auto"), ("torchscript", "auto"),
                                           ("best.pt", "openvino"), ("onnx", "openvino")])
def test_every_engine_predicts_the_checkpoints_labels(tiny, exports, model, engine):
    if engine == "openvino":
        pytest.importorskip("openvino")
    path = tiny if model == "best.pt" else exports[model]
    info = load_dataset(tiny.parent.parent / "dataset")
    case = info.training_cases[0]
    image, _ = read_case(info, case)
    with one_thread():
        labels, probs = Predictor.from_checkpoints([tiny], device="cpu").predict(image, case=case)
        predictor = Predictor.from_checkpoints([path], device="cpu", engine=engine)
        other, other_probs = predictor.predict(image, case=case)
    assert predictor.members[0].engine == {"torchscript": "torch"}.get(model, "onnxruntime" if engine == "auto"
                                                                       else engine)
    # without --batch-size each engine runs its own number of windows per call
    assert predictor.batch_size == (8 if engine == "openvino" else 2)
    np.testing.assert_array_equal(other, labels)
    np.testing.assert_allclose(other_probs, probs, atol=1e-4)


def test_export_cli_writes_the_file_and_predict_records_the_engine(tiny, tmp_path):
    out = tmp_path / "exported" / "m.onnx"
    with one_thread():
        res = runner.invoke(app, ["--threads", "1", "export", str(tiny), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(out) and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "m.onnx"]  # no temporary file left
    dataset = tiny.parent.parent / "dataset"
    stale = tmp_path / "pred" / ".tmp-0123456789ab-predictions.csv"  # a run killed while writing the table
    stale.parent.mkdir()
    stale.write_text("case,half")
    with one_thread():
        predict_folder(config=PredictConfig(models=(out,), input=dataset, output=tmp_path / "pred", device="cpu"))
    assert not stale.exists() and (tmp_path / "pred" / "predictions.csv").is_file()
    config = json.loads((tmp_path / "pred" / "predict_config.json").read_text())
    assert config["engine"] == "auto" and config["checkpoints"][0]["engine"] == "onnxruntime"
    assert config["batch_size"] == 2  # the resolved default
    predictor = Predictor.from_checkpoints([out], device="cpu", engine="openvino" if importlib.util.find_spec("openvino")
                                           else "onnxruntime", batch_size=3)
    assert predictor.batch_size == 3  # given: every engine uses it


@pytest.mark.fault
def test_export_refusals(tiny, exports, tmp_path):
    with pytest.raises(ConfigError, match=r"cannot tell the format from the ending '.bin'"):
        export_model(ExportConfig(checkpoint=tiny, output=tmp_path / "m.bin"))
    with pytest.raises(ConfigError, match=r"unknown export format 'tflite'"):
        export_model(ExportConfig(checkpoint=tiny, output=tmp_path / "m.onnx", format="tflite"))
    with pytest.raises(ConfigError, match=r"is the checkpoint itself"):
        export_model(ExportConfig(checkpoint=tiny, output=tiny, format="torchscript"))
    assert load_checkpoint(tiny)["state_dict"]  # untouched
    res = runner.invoke(app, ["export", str(tiny), "-o", str(tmp_path / "m.bin")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "m.bin" in res.output
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.fault
def test_predict_refuses_foreign_or_mismatched_exports(tiny, exports, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"garbage.onnx: not an ONNX model"):
        Predictor.from_checkpoints([garbage], device="cpu")
    import onnx

    bare = onnx.load(str(exports["onnx"]))
    del bare.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(bare, str(plain))
    with pytest.raises(CheckpointError, match=r"plain.onnx: an ONNX model without brainseg's metadata"):
        Predictor.from_checkpoints([plain], device="cpu")
    broken = onnx.load(str(exports["onnx"]))
    prop = next(p for p in broken.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(prop.value)
    del meta["plan"]["patch_size"]
    prop.value = json.dumps(meta)
    lacking = tmp_path / "lacking.onnx"
    onnx.save(broken, str(lacking))
    with pytest.raises(CheckpointError, match=r"lacking.onnx: its plan lacks patch_size"):
        Predictor.from_checkpoints([lacking], device="cpu")
    with pytest.raises(ConfigError, match=r"an ONNX export runs on --engine onnxruntime"):
        Predictor.from_checkpoints([exports["onnx"]], device="cpu", engine="torch")
    with pytest.raises(ConfigError, match=r"a TorchScript export runs on --engine torch"):
        Predictor.from_checkpoints([exports["torchscript"]], device="cpu", engine="onnxruntime")
    with pytest.raises(ConfigError, match=r"--precision bf16: the onnxruntime engine runs the exported graph in fp32"):
        Predictor.from_checkpoints([exports["onnx"]], device="cpu", precision="bf16")
    res = runner.invoke(app, ["predict", "-i", str(tiny.parent.parent / "dataset"), "-o", str(tmp_path / "out"),
                              "-m", str(garbage)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error: ") and "garbage.onnx: not an ONNX model" in res.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def real_brats(shared_data, tmp_path_factory) -> Path:
    """Three real BraTS 2018 cases in the dataset layout (the source linked, not copied)."""
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset

    base = tmp_path_factory.mktemp("real_engines")
    picked = base / "picked"
    for case in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA13_623_1"):
        (picked / case).mkdir(parents=True)
        for file in (shared_data / "brats2018_deepbrainseg" / case).iterdir():
            (picked / case / file.name).symlink_to(file)
    convert_dataset(config=ConvertConfig(source="brats", input=picked, output=base / "brats"))
    return base / "brats"


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides", [
    ("2d", {"target_spacing": [3.0, 3.0, 3.0]}),
    ("2.5d", {"target_spacing": [3.0, 3.0, 3.0], "slice_context": 1}),
    ("3d", {"target_spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32]}),
])
def test_real_brats_export_engines_agree_with_torch(real_brats, tmp_path, config, overrides):
    """A briefly trained 2-D, 2.5-D and 3-D model: ONNX Runtime's (and OpenVINO's, where installed) labels equal
    PyTorch's on >= 99.9 % of the voxels of a real case, Dice >= 0.999 per predicted label."""
    from brainseg_cli.training.config import TrainConfig
    from brainseg_cli.training.pretrain import pretrain

    plan = {"config": "3d" if config == "3d" else "2d", "model_config": {"base_features": 8}, "batch_size": 2,
            **overrides}
    with one_thread():
        result = pretrain(dataset_dir=real_brats, run_dir=tmp_path / "run",
                          train_config=TrainConfig(epochs=2, iterations_per_epoch=5, workers=0, device="cpu",
                                                   val_cases=1, augment=False, seed=0, precision="fp32"),
                          plan_overrides=plan)
        info = load_dataset(real_brats)
        case = "Brats18_TCIA13_623_1"
        image, _ = read_case(info, case)
        expected, _ = Predictor.from_checkpoints([result.best_checkpoint], device="cpu").predict(image, case=case)
        engines = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
        got = {engine: Predictor.from_checkpoints([result.best_checkpoint], device="cpu",
                                                  engine=engine).predict(image, case=case)[0] for engine in engines}
    for engine, labels in got.items():
        assert (labels == expected).mean() >= 0.999, engine
        for value in np.unique(expected)[1:]:
            a, b = expected == value, labels == value
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, f"{engine}: label {value}"
