"""Transfer learning at the model level: freeze presets, channel and head adaptation, weight loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainseg_cli.errors import CheckpointError, ConfigError
from brainseg_cli.models import build_model, stage_of
from brainseg_cli.training.freeze import (
    FreezeSpec,
    apply_freeze,
    keep_frozen_norms_in_eval,
    param_groups,
    parse_freeze,
    stage_table,
    unfreeze,
)
from brainseg_cli.training.transfer import (
    adapt_input_channels,
    adapt_output_head,
    transfer_weights,
)

SMALL: dict[tuple[str, int], dict] = {
    ("unet2d-classic", 2): {"base_filters": 4},
    ("unet", 2): {"base_features": 4, "depth": 3, "deep_supervision": True},
    ("unet", 3): {"base_features": 4, "depth": 3, "norm": "batch"},
    ("unet3d", 3): {"base_filters": 4},
    ("unetr", 3): {"preset": "tiny", "feature_size": 4, "img_size": [32, 32, 32]},
    ("ratlesnet", 3): {"filters": 4},
}
CASES = list(SMALL)
IDS = [f"{name}-{dims}d" for name, dims in CASES]

TUMOUR = {"background": 0, "edema": 1, "non-enhancing tumour core": 2, "enhancing tumour": 3}
NINE = {
    "background": 0, "cortical grey matter": 1, "basal ganglia": 2, "white matter": 3, "edema": 4,
    "cerebrospinal fluid": 5, "ventricles": 6, "cerebellum": 7, "enhancing tumour": 8,
}
FOUR = ["T1", "T1c", "T2", "FLAIR"]


def make(name: str, dims: int, in_channels: int, num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, spatial_dims=dims, in_channels=in_channels, num_classes=num_classes, **SMALL[(name, dims)])


def batch_for(model, in_channels: int, num_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = [d if d > 1 else 8 for d in model.size_divisor]
    size[-1] *= 2
    x = torch.randn(2, in_channels, *size, generator=gen)
    y = torch.randint(0, num_classes, (2, *size), generator=gen)
    return x, y


def train_steps(model, spec: FreezeSpec, x, y, steps: int = 2) -> None:
    groups = param_groups(model, lr=1e-2, encoder_lr_scale=0.5)
    optimiser = torch.optim.AdamW(groups, weight_decay=0.1)
    for _ in range(steps):
        model.train()
        keep_frozen_norms_in_eval(model, spec)
        out = model(x)
        logits = out[0] if isinstance(out, list) else out
        loss = nn.functional.cross_entropy(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------- presets
def test_parse_freeze() -> None:
    assert parse_freeze("none") == FreezeSpec("none")
    assert parse_freeze("Encoder") == FreezeSpec("encoder")
    assert parse_freeze("first3") == FreezeSpec("first", 3)
    assert str(parse_freeze("FIRST2")) == "first2"
    with pytest.raises(ConfigError, match="K must be at least 1"):
        parse_freeze("first0")
    with pytest.raises(ConfigError, match=r"unknown freeze preset 'frist2' \(did you mean 'first2'\?\)"):
        parse_freeze("frist2")
    with pytest.raises(ConfigError, match="valid: none, encoder, firstK"):
        parse_freeze("decoder")


def test_first_k_beyond_the_encoder_names_the_count() -> None:
    model = make("unet", 3, 1, 2)  # depth 3: encoder.0..2 + bottleneck
    assert model.num_encoder_stages == 3
    with pytest.raises(ConfigError, match=r"'first4' asks for 4 encoder stages but model 'unet' has 3 \(encoder.0 .. encoder.2\)"):
        apply_freeze(model, parse_freeze("first4"))
    unetr = make("unetr", 3, 1, 2)
    assert unetr.num_encoder_stages == 4
    report = apply_freeze(unetr, parse_freeze("first4"))
    assert report.frozen_stages == ("encoder.0", "encoder.1", "encoder.2", "encoder.3")


def test_stage_table_and_report() -> None:
    model = make("unet3d", 3, 1, 2)
    spec = parse_freeze("encoder")
    table = stage_table(model, spec)
    assert [row["stage"] for row in table] == model.stage_names()
    rows = {row["stage"]: row for row in table}
    assert rows["bottleneck"]["trainable"] == 0 and rows["bottleneck"]["frozen"] > 0
    assert rows["decoder.0"]["frozen"] == 0 and rows["head"]["trainable"] > 0
    report = apply_freeze(model, spec)
    assert report.frozen_parameters == sum(row["frozen"] for row in table)
    assert report.trainable_parameters == sum(row["trainable"] for row in table)
    assert report.frozen_norm_layers == 8  # two BatchNorms in each of 3 encoder levels and the bottleneck
    assert stage_table(model, parse_freeze("none"))[0]["frozen"] == 0


def test_param_groups_scale_and_skip_frozen() -> None:
    model = make("unet", 2, 1, 2)
    groups = param_groups(model, lr=0.01, encoder_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert groups[0]["lr"] == pytest.approx(0.001) and groups[1]["lr"] == 0.01
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_parameters()
    apply_freeze(model, parse_freeze("encoder"))
    groups = param_groups(model, lr=0.01, encoder_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["decoder"]
    assert all(p.requires_grad for p in groups[0]["params"])
    with pytest.raises(ConfigError, match="must be > 0"):
        param_groups(model, lr=0.01, encoder_lr_scale=0.0)


# ------------------------------------------------------------------------------- freezing with data
# One preset per model keeps the test short; both presets meet BatchNorm and InstanceNorm models.
FREEZE_CASES = [
    ("unet2d-classic", 2, "encoder"),
    ("unet", 2, "first2"),
    ("unet", 3, "encoder"),
    ("unet3d", 3, "first2"),
    ("unetr", 3, "first2"),
    ("ratlesnet", 3, "encoder"),
]


@pytest.mark.parametrize(("name", "dims", "preset"), FREEZE_CASES, ids=[f"{n}-{d}d-{p}" for n, d, p in FREEZE_CASES])
def test_frozen_stages_stay_bit_identical(name: str, dims: int, preset: str) -> None:
    model = make(name, dims, 2, 3)
    x, y = batch_for(model, 2, 3)
    spec = parse_freeze(preset)
    report = apply_freeze(model, spec)
    frozen = set(report.frozen_stages)
    before = snapshot(model)
    train_steps(model, spec, x, y)
    after = model.state_dict()
    changed_trainable = 0
    for key, value in before.items():
        if stage_of(key) in frozen:
            assert torch.equal(after[key], value), key  # weights and BatchNorm running statistics
        elif after[key].is_floating_point() and not torch.equal(after[key], value):
            changed_trainable += 1
    assert changed_trainable > 0
    for pname, param in model.named_parameters():
        assert param.requires_grad == (stage_of(pname) not in frozen)
    # Releasing: every parameter trains again and the BatchNorm statistics move again.
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    released = snapshot(model)
    train_steps(model, parse_freeze("none"), x, y, steps=1)
    moved = [k for k, v in released.items()
             if stage_of(k) in frozen and v.is_floating_point() and not torch.equal(model.state_dict()[k], v)]
    assert moved


def test_batchnorm_statistics_of_unfrozen_stages_still_update() -> None:
    model = make("unet3d", 3, 1, 2)
    spec = parse_freeze("first1")
    apply_freeze(model, spec)
    before = snapshot(model)
    x, y = batch_for(model, 1, 2)
    train_steps(model, spec, x, y, steps=1)
    assert torch.equal(model.state_dict()["encoder.0.1.running_mean"], before["encoder.0.1.running_mean"])
    assert not torch.equal(model.state_dict()["encoder.1.1.running_mean"], before["encoder.1.1.running_mean"])


def test_model_train_resets_norms_until_kept_in_eval() -> None:
    model = make("ratlesnet", 3, 1, 2)
    spec = parse_freeze("encoder")
    apply_freeze(model, spec)
    norm = model.encoder[0].block.body[1]
    assert not norm.training
    model.train()
    assert norm.training  # what keep_frozen_norms_in_eval is for
    assert keep_frozen_norms_in_eval(model, spec) == 2 * 4  # 3 encoder blocks + bottleneck, 2 BN each
    assert not norm.training and model.decoder[0].block.body[1].training


def test_freeze_through_a_wrapper() -> None:
    class Wrapper(nn.Module):  # the shape of DistributedDataParallel: parameters named module.*
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    model = make("unet2d-classic", 2, 1, 2)
    wrapped = Wrapper(model)
    report = apply_freeze(wrapped, parse_freeze("first1"))
    assert report.frozen_stages == ("encoder.0",)
    assert not model.encoder[0][0].weight.requires_grad and model.encoder[1][0].weight.requires_grad
    assert not model.encoder[0][1].training
    assert [g["name"] for g in param_groups(wrapped, lr=1.0)] == ["encoder", "decoder"]


# ------------------------------------------------------------------------------- channel adaptation
@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
@pytest.mark.parametrize("target", [["FLAIR", "T1"], ["t1ce", "FLAIR", "IR"]], ids=["4to2", "4to3"])
def test_input_channel_adaptation_every_model(name: str, dims: int, target: list[str]) -> None:
    source_model = make(name, dims, 4, 4, seed=1)
    state = snapshot(source_model)
    model = make(name, dims, len(target), 4, seed=2)
    report = transfer_weights(model, state, source_channels=FOUR, target_channels=target)
    channels = report.channels
    assert channels is not None
    scale = 4 / len(target)
    assert channels.scale == pytest.approx(scale)
    expected_map = {"FLAIR": "FLAIR", "T1": "T1"} if len(target) == 2 else {"t1ce": "T1c", "FLAIR": "FLAIR", "IR": None}
    assert channels.mapping == expected_map
    layers = source_model.input_layers()
    assert len(channels.layers) == len(layers) >= 1
    new_state = model.state_dict()
    for key in channels.layers:
        src, new = state[key], new_state[key]
        assert new.shape == (src.shape[0], len(target), *src.shape[2:])
        for j, channel in enumerate(target):
            source = expected_map[channel]
            expected = src[:, FOUR.index(source)] if source is not None else src.mean(dim=1)
            torch.testing.assert_close(new[:, j], expected * scale, rtol=1e-6, atol=1e-7)
    # Everything else is the source's, bit for bit.
    for key, value in state.items():
        if key not in channels.layers:
            assert torch.equal(new_state[key], value), key
    x, _ = batch_for(model, len(target), 4)
    model.eval()
    with torch.no_grad():
        assert model(x).shape[:2] == (2, 4)


def test_same_channels_reordered_are_copied_unscaled() -> None:
    source_model = make("unet", 2, 4, 2, seed=1)
    state = snapshot(source_model)
    order = ["FLAIR", "T2", "T1c", "T1"]
    adapted, report = adapt_input_channels(state, make("unet", 2, 4, 2), source_channels=FOUR, target_channels=order)
    assert report.scale == 1.0
    key = report.layers[0]
    assert torch.equal(adapted[key], state[key][:, [3, 2, 1, 0]])
    assert torch.equal(state[key], source_model.state_dict()[key])  # the input is not modified


def test_channel_map_overrides_and_errors() -> None:
    state = snapshot(make("ratlesnet", 3, 4, 2, seed=1))
    model = make("ratlesnet", 3, 2, 2)
    adapted, report = adapt_input_channels(
        state, model, source_channels=FOUR, target_channels=["PD", "FLAIR"], channel_map={"pd": "T2"}
    )
    assert report.mapping == {"PD": "T2", "FLAIR": "FLAIR"}
    key = report.layers[0]
    torch.testing.assert_close(adapted[key][:, 0], state[key][:, 2] * 2)
    with pytest.raises(ConfigError, match="channel_map names target channel 'T2'.*not among the target channels PD, FLAIR"):
        adapt_input_channels(state, model, source_channels=FOUR, target_channels=["PD", "FLAIR"], channel_map={"T2": "T1"})
    with pytest.raises(ConfigError, match=r"source channel 'DWI'.*not among the checkpoint channels T1, T1c, T2, FLAIR"):
        adapt_input_channels(state, model, source_channels=FOUR, target_channels=["PD", "FLAIR"], channel_map={"PD": "DWI"})
    with pytest.raises(ConfigError, match="has 2 input channels"):
        adapt_input_channels(state, model, source_channels=FOUR, target_channels=["T1"])
    with pytest.raises(ConfigError, match="names 'T1ce' twice"):
        adapt_input_channels(state, model, source_channels=FOUR, target_channels=["T1c", "T1ce"])
    with pytest.raises(CheckpointError, match="has shape .*expected \\(4, 3 source channels"):
        adapt_input_channels(state, model, source_channels=["T1", "T2", "FLAIR"], target_channels=["T1", "T2"])


# ------------------------------------------------------------------------------- head adaptation
@pytest.mark.parametrize(("name", "dims"), CASES, ids=IDS)
def test_head_adaptation_4_to_9_classes_every_model(name: str, dims: int) -> None:
    source_model = make(name, dims, 2, 4, seed=1)
    state = snapshot(source_model)
    model = make(name, dims, 2, 9, seed=2)
    fresh = snapshot(model)
    report = transfer_weights(model, state, source_labels=TUMOUR, target_labels=NINE)
    head = report.head
    assert head is not None
    assert head.kept == {"background": "background", "edema": "edema", "enhancing tumour": "enhancing tumour"}
    assert len(head.reinitialised) == 6
    new_state = model.state_dict()
    n_layers = len(model.output_layers())
    assert len(head.layers) == 2 * n_layers  # weight and bias of each head (deep-supervision ones too)
    for key in head.layers:
        for label, row in NINE.items():
            if label in head.kept:
                assert torch.equal(new_state[key][row], state[key][TUMOUR[label]]), (key, label)
            else:
                assert torch.equal(new_state[key][row], fresh[key][row]), (key, label)
    x, _ = batch_for(model, 2, 9)
    model.eval()
    with torch.no_grad():
        assert model(x).shape[:2] == (2, 9)


def test_channels_and_heads_together() -> None:
    state = snapshot(make("unet3d", 3, 4, 4, seed=1))
    model = make("unet3d", 3, 3, 9)
    report = transfer_weights(
        model, state, source_channels=FOUR, target_channels=["T1", "T2", "FLAIR"], source_labels=TUMOUR, target_labels=NINE
    )
    assert report.channels is not None and report.head is not None
    assert report.loaded == len(state)


def test_head_label_errors() -> None:
    state = snapshot(make("unet", 2, 1, 4))
    model = make("unet", 2, 1, 9)
    with pytest.raises(ConfigError, match="output row 9 but model 'unet' has 9 outputs"):
        adapt_output_head(state, model, source_labels=TUMOUR, target_labels={**NINE, "extra": 9})
    with pytest.raises(CheckpointError, match="source label row 7 is outside the checkpoint's 4 outputs"):
        adapt_output_head(state, model, source_labels={**TUMOUR, "edema": 7}, target_labels=NINE)


# ------------------------------------------------------------------------------- loading by name
def test_shape_mismatch_names_the_parameter() -> None:
    state = snapshot(build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=4, depth=3))
    model = build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=8, depth=3)
    with pytest.raises(CheckpointError, match=r"checkpoint parameter 'encoder.0.0.0.weight' has shape \(4, 1, 3, 3\) "
                                              r"but model 'unet' needs \(8, 1, 3, 3\) \(an input layer"):
        transfer_weights(model, state)
    state = snapshot(build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=4, depth=3, max_features=8))
    model = build_model("unet", spatial_dims=2, in_channels=1, num_classes=2, base_features=4, depth=3)
    with pytest.raises(CheckpointError, match=r"checkpoint parameter 'encoder.2.0.0.weight' has shape \(8, 8, 3, 3\) "
                                              r"but model 'unet' needs \(16, 8, 3, 3\)$"):
        transfer_weights(model, state)
    state = snapshot(make("unet", 2, 1, 4))
    with pytest.raises(CheckpointError, match=r"'head.weight' .* \(an output layer: give the checkpoint's and the data's labels"):
        transfer_weights(make("unet", 2, 1, 9), state)


def test_missing_and_extra_entries() -> None:
    model = make("ratlesnet", 3, 1, 2)
    state = snapshot(model)
    del state["decoder.1.block.body.2.weight"]
    with pytest.raises(CheckpointError, match="checkpoint lacks 'decoder.1.block.body.2.weight' \\(and 0 more\\)"):
        transfer_weights(model, state)
    state = snapshot(model)
    state["decoder.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="checkpoint holds 'decoder.9.weight'.*lacks"):
        transfer_weights(model, state)
    with pytest.raises(ConfigError, match="needs both source_channels and target_channels"):
        transfer_weights(model, snapshot(model), source_channels=FOUR)


def test_deep_supervision_heads_may_differ() -> None:
    with_ds = build_model("unet", spatial_dims=2, in_channels=1, num_classes=3, base_features=4, depth=3, deep_supervision=True)
    without = build_model("unet", spatial_dims=2, in_channels=1, num_classes=3, base_features=4, depth=3)
    report = transfer_weights(without, snapshot(with_ds))
    assert set(report.ignored) == {"ds_heads.0.weight", "ds_heads.0.bias", "ds_heads.1.weight", "ds_heads.1.bias"}
    assert torch.equal(without.head.weight, with_ds.head.weight)
    fresh = snapshot(with_ds)
    report = transfer_weights(with_ds, snapshot(without))
    assert set(report.initialised) == {"ds_heads.0.weight", "ds_heads.0.bias", "ds_heads.1.weight", "ds_heads.1.bias"}
    assert torch.equal(with_ds.ds_heads[0].weight, fresh["ds_heads.0.weight"])


def test_2_5d_input_blocks_follow_their_channel() -> None:
    """slice_context 1: each channel owns 3 consecutive filter columns; a missing channel gets the block mean."""
    source = make("unet", 2, 4 * 3, 2, seed=1)
    state = snapshot(source)
    target = ["FLAIR", "T1", "DWI"]
    adapted, report = adapt_input_channels(state, make("unet", 2, 3 * 3, 2), source_channels=FOUR,
                                           target_channels=target, slice_context=1)
    key = report.layers[0]
    w = state[key]
    s = 4 / 3
    torch.testing.assert_close(adapted[key][:, 0:3], s * w[:, 9:12])  # FLAIR (source channel 3)
    torch.testing.assert_close(adapted[key][:, 3:6], s * w[:, 0:3])  # T1 (source channel 0)
    mean = w.reshape(w.shape[0], 4, 3, *w.shape[2:]).mean(dim=1)
    torch.testing.assert_close(adapted[key][:, 6:9], s * mean)  # no DWI: the mean per slice offset
    with pytest.raises(ConfigError, match=r"are 3 x 3 slices but model 'unet' has 3 input channels"):
        adapt_input_channels(state, make("unet", 2, 3, 2), source_channels=FOUR, target_channels=target,
                             slice_context=1)
    with pytest.raises(CheckpointError, match=r"expected \(\d+, 4 source channels x 3 slices"):
        adapt_input_channels(snapshot(make("unet", 2, 4, 2)), make("unet", 2, 9, 2), source_channels=FOUR,
                             target_channels=target, slice_context=1)
