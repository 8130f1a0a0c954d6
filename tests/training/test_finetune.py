"""``finetune`` through the library: planning for the target, channel and head adaptation, freezing
(bit-identical frozen weights and BatchNorm statistics), release at an epoch, encoder learning-rate
scale, case selection, resume, errors; and an end-to-end fine-tune on real data (BraTS 2018 ->
BraTS 2015 and -> the MRBrainS18-layout case)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import tiny_trained_checkpoint
from helpers.threads import one_thread
from torch import nn

from brainseg_cli import __version__
from brainseg_cli.checkpoint import load_checkpoint, save_checkpoint
from brainseg_cli.data.fingerprint import compute_fingerprint
from brainseg_cli.data.layout import load_dataset, read_case, write_dataset_json
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.data.plan import PlanOverrides
from brainseg_cli.data.plan import make_plan as _make_plan
from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.io import Image, write_image
from brainseg_cli.models import build_model, stage_of
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.finetune import (
    ARCHITECTURE_OPTIONS,
    TRANSFER_FILE,
    FinetuneConfig,
    finetune,
    format_transfer_table,
    parse_channel_map,
    source_outputs,
)
from brainseg_cli.training.finetune import (
    plan_for_target as _plan_for_target,
)

SHAPE = (32, 32, 24)
FAST = {"iterations_per_epoch": 2, "workers": 0, "device": "cpu", "val_cases": 1, "augment": False}



def make_plan(**kwargs):
    """The plan as ``plan.json`` holds it (JSON data), which these tests read."""
    return _make_plan(**kwargs).to_dict()


def plan_for_target(**kwargs):
    """The fine-tuning plan as ``plan.json`` holds it."""
    return _plan_for_target(**kwargs).to_dict()

@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ------------------------------------------------------------------------------------- fixtures
def handmade_checkpoint(path: Path, dataset: Path, *, config: str, patch_size, model_config: dict,
                        regions: str | None = "none", normalization: str | None = None, seed: int = 0) -> Path:
    """An untrained but complete checkpoint planned on ``dataset``, with non-trivial BatchNorm statistics."""
    info = load_dataset(dataset)
    fingerprint = compute_fingerprint(info)
    plan = make_plan(fingerprint=fingerprint, info=info, overrides=PlanOverrides(
        config=config, model_config=model_config, patch_size=tuple(patch_size), batch_size=2, regions=regions,
        normalization=normalization))
    spec = plan["model"]
    torch.manual_seed(seed)
    net = build_model(spec["name"], spatial_dims=spec["spatial_dims"], in_channels=spec["in_channels"],
                      num_classes=spec["num_classes"], **spec["config"])
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    payload = {"tool_version": __version__, "model": {"name": net.name, "config": net.config}, "plan": plan,
               "channels": list(plan["channels"]), "labels": plan["labels"], "regions": plan["regions"],
               "postprocessing": {}, "training": {"epoch": 0, "best_val_dice": 0.0, "seed": seed,
                                                  "dataset_fingerprint": fingerprint["hash"]},
               "state_dict": net.state_dict()}
    return save_checkpoint(path, payload)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    out = {
        "source": write_phantom_dataset(root / "source", n_cases=2, seed=1, shape=SHAPE),
        "two": write_phantom_dataset(root / "two", n_cases=3, seed=2, shape=SHAPE, channels=("T1c", "FLAIR")),
        "tissue": write_phantom_dataset(root / "tissue", n_cases=3, seed=3, shape=SHAPE, kind="tissue"),
        "five": write_phantom_dataset(root / "five", n_cases=5, seed=4, shape=SHAPE, channels=("FLAIR", "T1c")),
    }
    small = {"base_features": 4, "norm": "batch", "deep_supervision": True}
    out["bn3d"] = handmade_checkpoint(root / "bn3d.pt", out["source"], config="3d", patch_size=(16, 16, 16),
                                      model_config=small)
    out["bn2d"] = handmade_checkpoint(root / "bn2d.pt", out["source"], config="2d", patch_size=(32, 32),
                                      model_config=small, normalization="clip_zscore")
    out["regions"] = handmade_checkpoint(root / "regions.pt", out["source"], config="3d", patch_size=(16, 16, 16),
                                         model_config={"base_features": 4}, regions="brats")
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The shared briefly trained checkpoint (unet 3-D, T1/T1c/T2/FLAIR, canonical tumour labels)."""
    with one_thread():
        return tiny_trained_checkpoint(tmp_path_factory.mktemp("tiny"))


def _encoder(key: str) -> bool:
    stage = stage_of(key)
    return stage.startswith("encoder.") or stage == "bottleneck"


def _input_key(ckpt) -> str:
    net = build_model(ckpt["model"]["name"], **ckpt["model"]["config"])
    names = {id(m): n for n, m in net.named_modules()}
    return f"{names[id(net.input_layers()[0])]}.weight"


# ------------------------------------------------------------------------------------- configs
def test_finetune_config_validation_and_dict(tmp_path):
    cfg = FinetuneConfig(checkpoint="x.pt", freeze="First3", channel_map={"IR": "T1"}, train_cases=2,
                         select="lesion-balanced", unfreeze_after=2, encoder_lr_scale=0.1)
    assert cfg.channel_map == (("IR", "T1"),) and str(cfg.freeze_spec) == "first3"
    d = cfg.to_dict()
    assert d["freeze"] == "first3" and d["channel_map"] == {"IR": "T1"} and Path(d["checkpoint"]).is_absolute()
    for kwargs, match in [({"freeze": "frist2"}, "unknown freeze preset 'frist2'"),
                          ({"unfreeze_after": 2}, "needs a freeze preset"),
                          ({"freeze": "encoder", "unfreeze_after": 0}, "unfreeze_after must be an epoch >= 1"),
                          ({"encoder_lr_scale": 0.0}, "encoder_lr_scale must be a positive number"),
                          ({"train_cases": 0}, "train_cases must be an integer >= 1"),
                          ({"select": "balanced"}, "select must be one of random, lesion-balanced"),
                          ({"channel_map": (("IR", "T1"), ("ir", "T2"))}, "names a target channel twice")]:
        with pytest.raises(ConfigError, match=match):
            FinetuneConfig(checkpoint="x.pt", **kwargs)


def test_parse_channel_map():
    assert parse_channel_map("IR=T1, FLAIR = T2,") == (("IR", "T1"), ("FLAIR", "T2"))
    for bad in ("IR", "IR=", "=T1", "IR=T1=T2", " , "):
        with pytest.raises(ConfigError, match="TARGET=SOURCE"):
            parse_channel_map(bad)


# ------------------------------------------------------------------------------------- planning
def test_plan_inherits_architecture_and_normalisation_and_replans_the_rest(data):
    ckpt = load_checkpoint(data["bn2d"])
    info = load_dataset(data["tissue"])
    plan = plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(info), info=info,
                           checkpoint_path=data["bn2d"])
    kwargs = {k: v for k, v in ckpt["model"]["config"].items() if k not in ("spatial_dims", "in_channels", "num_classes")}
    assert plan["config"] == "2d" and plan["model"]["name"] == "unet" and plan["model"]["config"] == kwargs
    assert plan["model"]["in_channels"] == 3 and plan["model"]["num_classes"] == 4
    # clip_zscore is what the checkpoint used; the target alone would have been planned with zscore
    assert [n["scheme"] for n in plan["normalization"]] == ["clip_zscore"] * 3
    assert [n["channel"] for n in plan["normalization"]] == ["T1", "FLAIR", "IR"]
    divisor = build_model("unet", **ckpt["model"]["config"]).size_divisor
    assert all(p % d == 0 for p, d in zip(plan["patch_size"], divisor))
    assert plan["decisions"]["model"].startswith("inherited from the checkpoint bn2d.pt")
    assert plan["decisions"]["normalization"].startswith("inherited")
    assert plan["decisions"]["patch_size"].startswith("re-planned for tissue")
    assert plan["decisions"]["target_spacing"].startswith("re-planned for tissue")
    transfer = plan["transfer"]
    assert transfer["inherited"]["model"] == {"name": "unet", "config": kwargs}
    assert transfer["replanned"] == ["orientation", "target_spacing", "patch_size", "batch_size", "slice_axis"]
    assert transfer["checkpoint"] == str(data["bn2d"].resolve()) and transfer["source_dataset"] == "source"
    given = plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(info), info=info,
                            plan_overrides={"patch_size": [16, 16], "batch_size": 3})
    assert given["patch_size"] == [16, 16] and given["batch_size"] == 3
    assert given["decisions"]["patch_size"] == "given" and given["transfer"]["given"] == ["batch_size", "patch_size"]


@pytest.mark.parametrize("option", ARCHITECTURE_OPTIONS)
def test_architecture_options_are_refused(data, option):
    ckpt = load_checkpoint(data["bn3d"])
    info = load_dataset(data["two"])
    with pytest.raises(ConfigError, match=f"option '{option}' cannot be set"):
        plan_for_target(checkpoint=ckpt, fingerprint={}, info=info, plan_overrides={option: "x"})


def test_slice_context_is_inherited_and_cannot_be_changed(data):
    ckpt = load_checkpoint(data["bn2d"])
    info = load_dataset(data["tissue"])
    assert plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(info), info=info)["slice_context"] == 0
    with pytest.raises(ConfigError, match=r"keeps the checkpoint's 2.5-D slice context \(0\): slice_context 1 cannot"):
        plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(info), info=info,
                        plan_overrides={"slice_context": 1})


def test_region_outputs_are_inherited_when_the_target_has_regions(data, caplog):
    ckpt = load_checkpoint(data["regions"])
    assert source_outputs(ckpt) == {"WT": 0, "TC": 1, "ET": 2}
    info = load_dataset(data["two"])
    plan = plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(info), info=info)
    assert plan["region_based"] and list(plan["regions"]) == ["WT", "TC", "ET"] and plan["model"]["num_classes"] == 3
    assert plan["decisions"]["regions"].startswith("inherited") and plan["transfer"]["inherited"]["region_based"]
    tissue = load_dataset(data["tissue"])
    with caplog.at_level(logging.WARNING, logger="brainseg_cli.training.target_plan"):
        plan = plan_for_target(checkpoint=ckpt, fingerprint=compute_fingerprint(tissue), info=tissue)
    assert not plan["region_based"] and plan["model"]["num_classes"] == 4
    assert "defines no regions" in caplog.text


# ------------------------------------------------------------------------------------- training
def _run(tmp_path, dataset, ckpt, *, epochs=2, overrides=None, **kwargs):
    run = tmp_path / "run"
    result = finetune(dataset_dir=dataset, run_dir=run, finetune_config=FinetuneConfig(checkpoint=ckpt, **kwargs),
                      train_config=TrainConfig(epochs=epochs, **FAST),
                      plan_overrides=overrides or {"patch_size": [16, 16, 16]})
    return run, result


@pytest.mark.parametrize(("config", "target"), [("bn3d", "two"), ("bn3d", "tissue"), ("bn2d", "two"), ("bn2d", "tissue")])
def test_frozen_encoder_is_bit_identical_and_channels_and_heads_are_adapted(data, tmp_path, config, target):
    source = load_checkpoint(data[config])
    overrides = {"patch_size": [16, 16, 16] if config == "bn3d" else [32, 32]}
    run, result = _run(tmp_path, data[target], data[config], freeze="encoder", overrides=overrides)
    last = load_checkpoint(run / "last.pt")
    before, after = source["state_dict"], last["state_dict"]
    input_key = _input_key(source)
    frozen = [k for k in after if _encoder(k) and k != input_key]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # weights and BatchNorm statistics
    assert any(k.endswith("running_mean") for k in frozen)
    decoder = [k for k in after if stage_of(k).startswith("decoder.") and k.endswith(".weight")]
    assert any(not torch.equal(after[k], before[k]) for k in decoder)
    decoder_stats = [k for k in after if stage_of(k).startswith("decoder.") and k.endswith("running_mean")]
    assert any(not torch.equal(after[k], before[k]) for k in decoder_stats)

    record = json.loads((run / TRANSFER_FILE).read_text())
    assert last["training"]["transfer"] == record == load_checkpoint(run / "best.pt")["training"]["transfer"]
    src = ["T1", "T1c", "T2", "FLAIR"]
    channels = ["T1c", "FLAIR"] if target == "two" else ["T1", "FLAIR", "IR"]
    # frozen input layer = the pretrained filters of the matched channels (mean for IR), scaled by 4 / n
    w = before[input_key]
    columns = [w[:, src.index(c)] if c in src else w.mean(dim=1) for c in channels]
    expected = torch.stack(columns, dim=1) * (4 / len(channels))
    torch.testing.assert_close(after[input_key], expected, rtol=1e-6, atol=0)
    assert record["channels"]["scale"] == pytest.approx(4 / len(channels))
    if target == "two":
        assert record["channels"]["mapping"] == {"T1c": "T1c", "FLAIR": "FLAIR"}
        assert record["labels"]["reinitialised"] == [] and len(record["labels"]["kept"]) == 4
    else:
        assert record["channels"]["mapping"] == {"T1": "T1", "FLAIR": "FLAIR", "IR": None}
        assert record["channels"]["how"]["IR"] == "mean"
        assert record["labels"]["kept"] == {"background": "background"}
        assert record["labels"]["reinitialised"] == ["CSF", "grey matter", "white matter"]
        # deep-supervision heads adapted too: 4 rows each
        assert all(after[k].shape[0] == 4 for k in record["labels"]["layers"])
    stages = {row["stage"]: row for row in record["stages"]}
    assert all(row["trainable"] == 0 for name, row in stages.items() if name.startswith("encoder") or name == "bottleneck")
    assert stages["head"]["frozen"] == 0 and record["parameters"]["frozen"] > 0
    groups = last["optimizer"]["state"]["param_groups"]
    assert [g["name"] for g in groups] == ["decoder"]
    assert "encoder.0" in format_transfer_table(record)
    assert result.epochs_completed == 2 and np.isfinite(result.best_val_dice)


def test_first_k_freezes_only_the_first_stages(data, tmp_path):
    source = load_checkpoint(data["bn3d"])
    run, _ = _run(tmp_path, data["two"], data["bn3d"], freeze="first1")
    after = load_checkpoint(run / "last.pt")["state_dict"]
    before = source["state_dict"]
    input_key = _input_key(source)
    stage0 = [k for k in after if stage_of(k) == "encoder.0" and k != input_key]
    assert stage0 and all(torch.equal(after[k], before[k]) for k in stage0)
    stage1 = [k for k in after if stage_of(k) == "encoder.1" and k.endswith(".weight")]
    assert any(not torch.equal(after[k], before[k]) for k in stage1)
    record = json.loads((run / TRANSFER_FILE).read_text())
    assert record["freeze"]["frozen_stages"] == ["encoder.0"]


def test_unfreeze_after_releases_the_encoder_and_resume_replays_it(data, tmp_path):
    source = load_checkpoint(data["bn3d"])
    run, result = _run(tmp_path, data["two"], data["bn3d"], freeze="encoder", unfreeze_after=1, encoder_lr_scale=0.5)
    last = load_checkpoint(run / "last.pt")
    before, after = source["state_dict"], last["state_dict"]
    encoder = [k for k in after if _encoder(k) and k.endswith(".weight")]
    assert any(not torch.equal(after[k], before[k]) for k in encoder)
    stats = [k for k in after if _encoder(k) and k.endswith("running_mean")]
    assert any(not torch.equal(after[k], before[k]) for k in stats)  # released BatchNorm trains again
    groups = last["optimizer"]["state"]["param_groups"]
    assert [g["name"] for g in groups] == ["decoder", "released"]
    assert groups[1]["initial_lr"] == pytest.approx(0.5 * groups[0]["initial_lr"])
    assert last["training"]["transfer"]["freeze"]["unfreeze_after"] == 1
    # --resume replays the release (the optimiser state has two groups) and finishes.
    again = finetune(dataset_dir=data["two"], run_dir=run,
                     finetune_config=FinetuneConfig(checkpoint=data["bn3d"], freeze="encoder", unfreeze_after=1,
                                                    encoder_lr_scale=0.5),
                     train_config=TrainConfig(epochs=2, resume=True, **FAST), plan_overrides={"patch_size": [16, 16, 16]})
    assert again.epochs_completed == 2
    with pytest.raises(ConfigError, match="fine-tuning options that differ.*freeze: 'encoder' \\(run\\) vs 'first1'"):
        finetune(dataset_dir=data["two"], run_dir=run,
                 finetune_config=FinetuneConfig(checkpoint=data["bn3d"], freeze="first1", unfreeze_after=1,
                                                encoder_lr_scale=0.5),
                 train_config=TrainConfig(epochs=2, resume=True, **FAST))


def test_encoder_lr_scale_and_lesion_balanced_case_selection(tiny, data, tmp_path):
    run, result = _run(tmp_path, data["five"], tiny, epochs=1, encoder_lr_scale=0.1, train_cases=2,
                       select="lesion-balanced", seed=5, channel_map={"FLAIR": "T2"})
    last = load_checkpoint(run / "last.pt")
    groups = {g["name"]: g for g in last["optimizer"]["state"]["param_groups"]}
    assert groups["encoder"]["initial_lr"] == pytest.approx(0.1 * groups["decoder"]["initial_lr"])
    plan = json.loads((run / "plan.json").read_text())
    selection = plan["transfer"]["case_selection"]
    assert selection["method"] == "lesion-balanced" and selection["n"] == 2 and selection["seed"] == 5
    assert selection["candidates"] == 4 and len(selection["selected"]) == 2
    assert last["training"]["train_cases"] == selection["selected"]
    assert json.loads((run / "config.json").read_text())["train_cases"] == selection["selected"]
    index = json.loads((run / "preprocessed" / "index.json").read_text())
    assert len(index["cases"]) == 3  # the selected cases and the validation case only
    record = last["training"]["transfer"]
    assert record["case_selection"] == selection
    assert record["channels"]["mapping"] == {"FLAIR": "T2", "T1c": "T1c"}
    assert record["channels"]["how"] == {"FLAIR": "channel_map", "T1c": "name"}
    assert last["training"]["pretrained_from"] == str(tiny.resolve())


def test_errors(tiny, data, tmp_path):
    def call(cfg: dict, *, epochs: int = 2, overrides=None, run: str = "run"):
        return finetune(dataset_dir=data["two"], run_dir=tmp_path / run,
                        finetune_config=FinetuneConfig(checkpoint=cfg.pop("checkpoint", tiny), **cfg),
                        train_config=TrainConfig(epochs=epochs, **FAST), plan_overrides=overrides)

    with pytest.raises(ConfigError, match="--unfreeze-after 2 must be before the last epoch \\(--epochs 2\\)"):
        call({"freeze": "encoder", "unfreeze_after": 2})
    with pytest.raises(ConfigError, match="option 'model' cannot be set when fine-tuning"):
        call({}, overrides={"model": "unet3d"})
    with pytest.raises(CheckpointError, match="not found"):
        call({"checkpoint": tmp_path / "missing.pt"})
    with pytest.raises(ConfigError, match="'first5' asks for 5 encoder stages but model 'unet' has 2"):
        call({"freeze": "first5"}, overrides={"patch_size": [16, 16, 16]}, run="r1")
    with pytest.raises(ConfigError, match="maps 'FLAIR' to 'PD', which is not a channel of the checkpoint"):
        call({"channel_map": {"FLAIR": "PD"}}, overrides={"patch_size": [16, 16, 16]}, run="r2")
    with pytest.raises(ConfigError, match=r"names .IR. \(did you mean .FLAIR.\?\), which is not a channel of dataset "
                                          r"two \(T1c, FLAIR\)"):
        call({"channel_map": {"IR": "T1"}}, run="r4")
    with pytest.raises(ConfigError, match="--train-cases 3: dataset two has 2 training cases"):
        call({"train_cases": 3}, overrides={"patch_size": [16, 16, 16]}, run="r3")


@pytest.mark.slow
def test_two_data_parallel_processes_with_a_release(data, tmp_path):
    run = tmp_path / "run"
    result = finetune(dataset_dir=data["two"], run_dir=run,
                      finetune_config=FinetuneConfig(checkpoint=data["bn3d"], freeze="encoder", unfreeze_after=1),
                      train_config=TrainConfig(epochs=2, nproc=2, **FAST), plan_overrides={"patch_size": [16, 16, 16]})
    last = load_checkpoint(run / "last.pt")
    assert last["training"]["world_size"] == 2 and result.epochs_completed == 2
    assert [g["name"] for g in last["optimizer"]["state"]["param_groups"]] == ["decoder", "released"]
    assert json.loads((run / TRANSFER_FILE).read_text()) == last["training"]["transfer"]


# ------------------------------------------------------------------------------------- real data
def _link_files(src: Path, dst: Path) -> Path:
    for f in sorted(src.rglob("*")):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, target)
    return dst


def split_into_halves(dataset: Path, case: str, out: Path) -> Path:
    """A dataset holding the lower and upper half (along the coarsest axis) of one case, geometry kept."""
    info = load_dataset(dataset)
    image, label = read_case(info, case)
    axis = int(np.argmax(image.spacing))
    n = image.array.shape[1 + axis] // 2
    for part, (start, stop) in {"lower": (0, n), "upper": (n, image.array.shape[1 + axis])}.items():
        cut = [slice(None)] * 3
        cut[axis] = slice(start, stop)
        origin = np.asarray(image.origin) + np.asarray(image.direction)[:, axis] * image.spacing[axis] * start
        for c in range(image.array.shape[0]):
            write_image(Image(image.array[c][tuple(cut)], image.spacing, origin, image.direction),
                        out / "imagesTr" / f"{case}_{part}_{c:04d}.nii.gz")
        write_image(Image(label.array[tuple(cut)], label.spacing, origin, label.direction),
                    out / "labelsTr" / f"{case}_{part}.nii.gz")
    write_dataset_json(out, channels=info.channels, labels=info.labels, num_training=2,
                       brainseg={"source": "halves", "regions": {}})
    return out


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory) -> dict[str, Path]:
    """BraTS 2018 (3 cases) pretrained briefly at 4 mm; BraTS 2015 and MRBrainS18 (two halves) converted."""
    from brainseg_cli.data.convert import ConvertConfig, convert_dataset
    from brainseg_cli.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("real")
    b18 = root / "b18src"
    for case in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA02_135_1"):
        _link_files(shared_data / "brats2018_deepbrainseg" / case, b18 / case)
    convert_dataset(config=ConvertConfig(source="brats", input=b18, output=root / "b18"))
    convert_dataset(config=ConvertConfig(
        source="nifti", input=shared_data / "brats2015_deepmedic", output=root / "b15",
        channel_patterns=(("FLAIR", "**/Flair*.nii.gz"), ("T1c", "**/T1c*.nii.gz")),
        label_pattern="**/OTMultiClass.nii.gz", label_map="brats2015"))
    convert_dataset(config=ConvertConfig(source="mrbrains18", input=shared_data / "mrbrains18_from_voxelmorph",
                                         output=root / "mrb1"))
    with one_thread():
        result = pretrain(dataset_dir=root / "b18", run_dir=root / "pre",
                          train_config=TrainConfig(epochs=2, iterations_per_epoch=4, workers=0, device="cpu",
                                                   val_cases=1, augment=False),
                          plan_overrides={"target_spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32],
                                          "batch_size": 2, "model_config": {"base_features": 8}})
    return {"checkpoint": result.best_checkpoint, "b15": root / "b15",
            "mrb": split_into_halves(root / "mrb1", "1", root / "mrb")}


@pytest.mark.slow
def test_real_brats2018_to_brats2015_two_channels(real, tmp_path):
    from brainseg_cli.inference.predictor import Predictor

    run = tmp_path / "b15"
    result = finetune(dataset_dir=real["b15"], run_dir=run,
                      finetune_config=FinetuneConfig(checkpoint=real["checkpoint"], freeze="first2", train_cases=2,
                                                     select="lesion-balanced"),
                      train_config=TrainConfig(epochs=2, **{**FAST, "iterations_per_epoch": 3}),
                      plan_overrides={"target_spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32]})
    record = json.loads((run / TRANSFER_FILE).read_text())
    assert record["source"]["channels"] == ["T1", "T1c", "T2", "FLAIR"]
    assert record["channels"]["mapping"] == {"T1c": "T1c", "FLAIR": "FLAIR"} and record["channels"]["scale"] == 2.0
    # the source trained region-based (BraTS's regions nest) and BraTS 2015 defines the same regions
    assert record["labels"]["reinitialised"] == [] and record["labels"]["kept"] == {"WT": "WT", "TC": "TC", "ET": "ET"}
    assert record["freeze"]["frozen_stages"] == ["encoder.0", "encoder.1"]
    assert len(record["case_selection"]["selected"]) == 2
    assert np.isfinite(result.best_val_dice) and 0.0 <= result.best_val_dice <= 1.0
    # the fine-tuned checkpoint predicts a real 2-channel case on its own grid
    info = load_dataset(real["b15"])
    case = load_checkpoint(result.best_checkpoint)["training"]["val_cases"][0]
    image, label = read_case(info, case)
    labels, probs = Predictor.from_checkpoints([result.best_checkpoint], device="cpu").predict(image, case=case)
    assert labels.shape == label.array.shape and probs.shape == (3, *label.array.shape)
    assert np.isfinite(probs).all()


@pytest.mark.slow
def test_real_brats2018_to_mrbrains18_three_channels_eleven_classes(real, tmp_path):
    run = tmp_path / "mrb"
    result = finetune(dataset_dir=real["mrb"], run_dir=run,
                      finetune_config=FinetuneConfig(checkpoint=real["checkpoint"], freeze="encoder"),
                      train_config=TrainConfig(epochs=2, **{**FAST, "iterations_per_epoch": 3}),
                      plan_overrides={"target_spacing": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32]})
    record = json.loads((run / TRANSFER_FILE).read_text())
    assert record["target"]["channels"] == ["T1", "FLAIR", "IR"]
    assert record["channels"]["mapping"] == {"T1": "T1", "FLAIR": "FLAIR", "IR": None}
    # the source's outputs are regions (BraTS's nest), MRBrainS18 has none: the whole head starts afresh
    assert record["labels"]["kept"] == {} and len(record["labels"]["reinitialised"]) == 11
    last = load_checkpoint(run / "last.pt")
    assert len(last["labels"]) == 11 and last["channels"] == ["T1", "FLAIR", "IR"]
    assert all(np.isfinite(v) for v in result.val_dice.values())
    assert last["plan"]["transfer"]["inherited"]["model"]["name"] == "unet"


@pytest.mark.slow
def test_example_transfer_brats_to_mrbrains_quick(shared_data, tmp_path):
    """The freeze-comparison example runs end to end in --quick mode (1-3 minutes here) and writes its tables."""
    import csv
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "transfer_brats_to_mrbrains.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1", "--device", "cpu",
                           "--data", str(shared_data), "-o", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["target"], r["strategy"]) for r in rows] == [
        (t, s) for t in ("MRBrainS18", "BraTS 2015") for s in ("scratch", "freeze encoder", "freeze first3", "fine-tune all")]
    assert all(0.0 <= float(r["mean_dice"]) <= 1.0 for r in rows)
    assert {r["evaluated_on"] for r in rows if r["target"] == "MRBrainS18"} == {"1_upper"}
    assert "### MRBrainS18" in (tmp_path / "results.md").read_text()
