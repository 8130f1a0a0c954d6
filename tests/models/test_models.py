"""Every registered model: shapes, gradients, stage layout, config round trip, errors."""

from __future__ import annotations

import json

import pytest
import torch

from brainseg_cli.errors import ConfigError, InputError, RegistryError
from brainseg_cli.models import MODEL_NAMES, build_model, model_info, models_for_dims, stage_of
from brainseg_cli.models.base import STAGE_ROOTS, SegmentationModel

# Small widths so that the tests are fast; the architecture (stages, layers) is the real one.
SMALL: dict[tuple[str, int], dict] = {
    ("unet2d-classic", 2): {"base_filters": 4},
    ("unet", 2): {"base_features": 4, "depth": 3},
    ("unet", 3): {"base_features": 4, "depth": 3},
    ("unet3d", 3): {"base_filters": 4},
    ("unetr", 3): {"preset": "tiny", "feature_size": 4, "img_size": [32, 32, 32]},
    ("ratlesnet", 3): {"filters": 4},
}
CASES = list(SMALL)
IDS = [f"{name}-{dims}d" for name, dims in CASES]


def make(name: str, dims: int, in_channels: int = 2, num_classes: int = 3, **extra) -> SegmentationModel:
    return build_model(name, spatial_dims=dims, in_channels=in_channels, num_classes=num_classes, **{**SMALL[(name, dims)], **extra})


def test_every_registered_model_is_tested() -> None:
    assert {name for name, _ in CASES} == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert {dims for n, dims in CASES if n == name} == set(model_info(name).dims)


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (2, 11), (3, 4), (4, 9)])
def test_output_shape_non_cubic(name: str, dims: int, in_channels: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = make(name, dims, in_channels, num_classes)
    # Two and three times the divisor: even and odd multiples, different per axis.
    factors = (2, 3, 2)[:dims]
    size = tuple(f * d for f, d in zip(factors, model.size_divisor, strict=True))
    x = torch.randn(2, in_channels, *size)
    y = model(x)
    assert y.shape == (2, num_classes, *size)
    assert torch.isfinite(y).all()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, num_classes, *size)


def test_ratlesnet_takes_odd_sizes() -> None:
    model = make("ratlesnet", 3, 1, 2)
    assert model.size_divisor == (1, 1, 1)
    y = model(torch.randn(2, 1, 17, 9, 13))
    assert y.shape == (2, 2, 17, 9, 13)


def test_unet_with_a_stride_one_axis_takes_odd_sizes_on_it() -> None:
    model = build_model(
        "unet",
        spatial_dims=3,
        in_channels=1,
        num_classes=2,
        base_features=4,
        strides=[[1, 1, 1], [2, 2, 1], [2, 2, 1]],
        kernel_sizes=[[3, 3, 1], [3, 3, 3], [3, 3, 3]],
    )
    assert model.size_divisor == (4, 4, 1)
    assert model(torch.randn(1, 1, 12, 8, 7)).shape == (1, 2, 12, 8, 7)
    with pytest.raises(InputError, match=r"multiple of \(4 x 4 x 1\).*\(1, 1, 12, 10, 7\)"):
        model(torch.randn(1, 1, 12, 10, 7))


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_rejects_sizes_that_are_not_a_multiple(name: str, dims: int) -> None:
    model = make(name, dims)
    if model.size_divisor == (1,) * dims:
        pytest.skip("takes every size")
    size = [2 * d for d in model.size_divisor]
    size[-1] += 1
    multiple = r" x ".join(str(d) for d in model.size_divisor)
    with pytest.raises(InputError, match=rf"'{name}' needs each spatial size to be a positive multiple of \({multiple}\)"):
        model(torch.randn(1, 2, *size))


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_rejects_wrong_channels_and_rank(name: str, dims: int) -> None:
    model = make(name, dims, in_channels=2)
    size = [2 * d for d in model.size_divisor]
    with pytest.raises(InputError, match="expects 2 input channels; got input shape"):
        model(torch.randn(1, 3, *size))
    with pytest.raises(InputError, match=f"is {dims}-D and needs input"):
        model(torch.randn(2, *size))


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_every_parameter_gets_a_gradient(name: str, dims: int) -> None:
    torch.manual_seed(1)
    model = make(name, dims, 2, 3)
    size = [2 * d for d in model.size_divisor]
    out = model(torch.randn(2, 2, *size))
    outputs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outputs).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        if param.dim() > 1:
            assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_stages_cover_every_parameter_exactly_once(name: str, dims: int) -> None:
    model = make(name, dims, 2, 3, **({"deep_supervision": True} if name == "unet" else {}))
    stages = model.stage_names()
    assert stages[: model.num_encoder_stages] == [f"encoder.{k}" for k in range(model.num_encoder_stages)]
    assert stages[model.num_encoder_stages] == "bottleneck" and stages[-1] == "head"
    assert len(stages) == len(set(stages))
    seen = {stage: 0 for stage in stages}
    for pname, param in model.named_parameters():
        seen[stage_of(pname)] += param.numel()  # KeyError if a name maps outside the stages
    for bname, _ in model.named_buffers():
        assert stage_of(bname) in seen
    assert all(count > 0 for count in seen.values()), seen
    assert sum(seen.values()) == model.num_parameters()
    assert dict(model.stage_parameter_counts()) == seen
    assert {name for name, _ in model.named_children()} <= set(STAGE_ROOTS)
    assert STAGE_ROOTS == ("encoder", "bottleneck", "decoder", "head", "ds_heads")


def test_stage_of_names_and_wrappers() -> None:
    assert stage_of("encoder.3.blocks.0.qkv.weight") == "encoder.3"
    assert stage_of("module.decoder.12.up.weight") == "decoder.12"
    assert stage_of("_orig_mod.bottleneck.0.weight") == "bottleneck"
    assert stage_of("ds_heads.1.weight") == "head"
    assert stage_of("head.bias") == "head"
    with pytest.raises(InputError, match="'stem.weight' does not belong to any stage"):
        stage_of("stem.weight")


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_describe_lists_stages_and_the_real_total(name: str, dims: int) -> None:
    model = make(name, dims)
    text = model.describe()
    for stage, count in model.stage_parameter_counts():
        assert f"{stage}" in text and f"{count:,}" in text
    assert "total" in text and f"{model.num_parameters():,}" in text
    assert text.splitlines()[0].startswith(f"{name} ({dims}-D")


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_config_is_json_and_rebuilds_the_model(name: str, dims: int) -> None:
    model = make(name, dims, 3, 5)
    config = json.loads(json.dumps(model.config))
    assert config["spatial_dims"] == dims and config["in_channels"] == 3 and config["num_classes"] == 5
    twin = build_model(model.name, **config)
    twin.load_state_dict(model.state_dict(), strict=True)
    assert twin.config == model.config
    x = torch.randn(1, 3, *[2 * d for d in model.size_divisor])
    model.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_input_and_output_layers(name: str, dims: int) -> None:
    model = make(name, dims, 3, 7, **({"deep_supervision": True} if name == "unet" else {}))
    inputs = model.input_layers()
    assert inputs and all(layer.weight.shape[1] == 3 for layer in inputs)
    outputs = model.output_layers()
    assert outputs[0] is model.head
    assert all(layer.weight.shape[0] == 7 for layer in outputs)
    assert len(outputs) == model.num_outputs


@pytest.mark.parametrize("in_channels", [2, 4])
def test_unetr_has_three_input_layers(in_channels: int) -> None:
    # feature_size 4: with 4 input channels the image block's shortcut is still a 1x1 projection.
    model = make("unetr", 3, in_channels, 3)
    layers = model.input_layers()
    assert len(layers) == 3  # patch embedding, skip conv on the image, its 1x1 shortcut
    assert layers[2].weight.shape == (4, in_channels, 1, 1, 1)


def test_unknown_model_gets_did_you_mean() -> None:
    with pytest.raises(RegistryError, match=r"unknown model 'unet3' \(did you mean 'unet3d'\?\); valid:"):
        build_model("unet3", spatial_dims=3, in_channels=1, num_classes=2)
    with pytest.raises(RegistryError, match="did you mean 'unetr'"):
        model_info("unetrr")


@pytest.mark.parametrize(("name", "dims", "others"), [
    ("unet2d-classic", 3, "unet, unet3d, unetr, ratlesnet"),
    ("unet3d", 2, "unet2d-classic, unet"),
    ("unetr", 2, "unet2d-classic, unet"),
    ("ratlesnet", 2, "unet2d-classic, unet"),
])
def test_unsupported_dimensionality_names_the_models_that_support_it(name: str, dims: int, others: str) -> None:
    assert ", ".join(models_for_dims(dims)) == others
    with pytest.raises(ConfigError, match=rf"model '{name}' is {5 - dims}-D only; models for {dims}-D: {others}$"):
        build_model(name, spatial_dims=dims, in_channels=1, num_classes=2)


def test_unknown_option_and_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"has no option 'base_filter' \(did you mean 'base_filters'\?\)"):
        build_model("unet3d", spatial_dims=3, in_channels=1, num_classes=2, base_filter=8)
    with pytest.raises(ConfigError, match="in_channels must be a positive integer, got 0"):
        build_model("unet", spatial_dims=3, in_channels=0, num_classes=2)
    with pytest.raises(ConfigError, match="spatial_dims must be 2 or 3, got 4"):
        build_model("unet", spatial_dims=4, in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match="preset must be one of base, small, tiny, got 'huge'"):
        build_model("unetr", spatial_dims=3, in_channels=1, num_classes=2, preset="huge")
    with pytest.raises(ConfigError, match="img_size must be 3 positive multiples of 16"):
        build_model("unetr", spatial_dims=3, in_channels=1, num_classes=2, img_size=[96, 96, 90])
    with pytest.raises(ConfigError, match="filters must be a positive integer"):
        build_model("ratlesnet", spatial_dims=3, in_channels=1, num_classes=2, filters=0)


# ------------------------------------------------------------------------------- published sizes
def test_unet2d_classic_parameter_counts() -> None:
    # The Kaggle LGG model (mateuszbuda/brain-segmentation-pytorch): 3 channels in, 1 out, 32 filters.
    kaggle = build_model("unet2d-classic", spatial_dims=2, in_channels=3, num_classes=1)
    assert kaggle.num_parameters() == 7_763_041
    assert kaggle(torch.randn(2, 3, 32, 48)).shape == (2, 1, 32, 48)  # one logit map; the loss applies the sigmoid
    wide = build_model("unet2d-classic", spatial_dims=2, in_channels=1, num_classes=2, base_filters=64)
    assert 31.0e6 < wide.num_parameters() < 31.1e6  # Ronneberger et al.'s width
    assert wide.config["base_filters"] == 64


def test_unet3d_parameter_count_is_the_papers() -> None:
    # Cicek et al. 2016: "The architecture has 19069955 parameters in total" (3 channels, 3 labels).
    model = build_model("unet3d", spatial_dims=3, in_channels=3, num_classes=3)
    assert model.num_parameters() == 19_069_955


def test_unetr_sizes() -> None:
    base = build_model("unetr", spatial_dims=3, in_channels=1, num_classes=14, preset="base")
    assert 92.0e6 < base.num_parameters() < 93.5e6  # Hatamizadeh et al.: 92.58M
    counts = dict(base.stage_parameter_counts())
    # Three transformer blocks per stage; stage 0 adds the patch embedding.
    assert counts["encoder.1"] == counts["encoder.2"] == counts["encoder.3"]
    assert counts["encoder.0"] > counts["encoder.1"]
    assert counts["bottleneck"] == 2 * 768
    assert base.config["preset"] == "base"
    small = build_model("unetr", spatial_dims=3, in_channels=1, num_classes=14, preset="small")
    assert 20e6 < small.num_parameters() < 0.3 * base.num_parameters()
    tiny = build_model("unetr", spatial_dims=3, in_channels=1, num_classes=14, preset="tiny")
    assert tiny.encoder[1].blocks[0].qkv.weight.shape == (3 * 192, 192)
    assert tiny.num_parameters() < 0.4 * small.num_parameters()


def test_unetr_resamples_position_embedding_for_other_sizes() -> None:
    torch.manual_seed(0)
    model = make("unetr", 3, 1, 2)  # embedding learned for 32^3 (2x2x2 tokens)
    model.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        y_ref = model(x)
        assert model(torch.randn(1, 1, 48, 16, 64)).shape == (1, 2, 48, 16, 64)
        emb = model.encoder[0].embedding
        emb.position.add_(1.0)  # the native grid uses the embedding as is: the output changes
        assert not torch.allclose(model(x), y_ref)


def test_ratlesnet_is_small() -> None:
    model = build_model("ratlesnet", spatial_dims=3, in_channels=1, num_classes=2)
    # 7 residual blocks of two 3x3x3 convs (+bias) and two BatchNorms, 3 merge blocks, stem and head.
    residual = 2 * (32 * 32 * 27 + 32) + 2 * 64
    merge = 64 * 32 + 32 + 128
    assert model.num_parameters() == 7 * residual + 3 * merge + (32 + 32) + (32 * 2 + 2)
    assert model.num_parameters() < 1_000_000


def test_models_run_under_bf16_autocast() -> None:
    model = make("unet", 3, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(1, 1, 16, 16, 16))
    assert y.shape == (1, 2, 16, 16, 16)
