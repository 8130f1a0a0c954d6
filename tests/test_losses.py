"""Losses: hand-computed values, MONAI agreement (1e-6), deep supervision, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainseg_cli.errors import ConfigError, InputError, RegistryError
from brainseg_cli.losses import (
    BCEDiceLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    SoftDiceLoss,
    build_loss,
    deep_supervision_weights,
    downsample_target,
    labels_to_regions,
    one_hot,
    soft_dice,
)

monai_losses = pytest.importorskip("monai.losses")

BIG = 30.0  # logits this far apart give probabilities 0/1 to float32 precision


def hard_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax is (numerically) the one-hot of ``labels``."""
    return one_hot(labels, num_classes) * BIG


# ------------------------------------------------------------------------------- hand-computed
def test_soft_dice_hand_computed_binary_sigmoid() -> None:
    # Prediction covers 4 voxels, target 2 of them plus 2 others: Dice = 2*2 / (4 + 4) = 0.5.
    pred = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]], dtype=torch.float32)
    target = torch.tensor([[[1, 1, 0, 0, 1, 1, 0, 0]]], dtype=torch.float32)
    logits = (pred * 2 - 1) * BIG
    loss = SoftDiceLoss(activation="sigmoid", smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    # With smoothing 1: 1 - (4 + 1) / (8 + 1).
    loss = SoftDiceLoss(activation="sigmoid", smooth=1.0)(logits, target)
    assert loss.item() == pytest.approx(1 - 5 / 9, abs=1e-6)


def test_soft_dice_hand_computed_softmax_with_and_without_background() -> None:
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    predicted = torch.tensor([[0, 1, 1, 1, 2, 0]])
    logits = hard_logits(predicted, 3)
    # Per class: bg 2*1/(2+2)=0.5, class 1: 2*2/(3+2)=0.8, class 2: 2*1/(1+2)=2/3.
    dice = [0.5, 0.8, 2 / 3]
    loss = SoftDiceLoss(activation="softmax", smooth=0.0)(logits, labels)
    assert loss.item() == pytest.approx(1 - sum(dice) / 3, abs=1e-6)
    loss = SoftDiceLoss(activation="softmax", include_background=False, smooth=0.0)(logits, labels)
    assert loss.item() == pytest.approx(1 - (dice[1] + dice[2]) / 2, abs=1e-6)


def test_batch_dice_differs_from_per_sample() -> None:
    # Sample 0: perfect on 4 voxels; sample 1: empty target, 1 false-positive voxel.
    target = torch.tensor([[[1.0, 1, 1, 1]], [[0.0, 0, 0, 0]]])
    pred = torch.tensor([[[1.0, 1, 1, 1]], [[1.0, 0, 0, 0]]])
    logits = (pred * 2 - 1) * BIG
    per_sample = SoftDiceLoss(activation="sigmoid", smooth=1e-5)(logits, target)
    # Dice 1 and eps / (1 + eps) ~ 0: mean ~ 0.5.
    assert per_sample.item() == pytest.approx(0.5, abs=1e-4)
    batch = SoftDiceLoss(activation="sigmoid", batch_dice=True, smooth=1e-5)(logits, target)
    # Pooled: 2*4 / (5 + 4).
    assert batch.item() == pytest.approx(1 - 8 / 9, abs=1e-5)


def test_empty_target_and_empty_prediction_scores_perfectly() -> None:
    target = torch.zeros(1, 1, 5)
    logits = torch.full((1, 1, 5), -BIG)
    assert SoftDiceLoss(activation="sigmoid")(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_ce_hand_computed() -> None:
    logits = torch.zeros(1, 2, 4)  # uniform: CE = ln 2, soft Dice of 0.5 probabilities
    labels = torch.tensor([[0, 0, 1, 1]])
    # Each class: 2 * (0.5 * 2) / (2 + 2) = 0.5 -> Dice loss 0.5.
    loss = DiceCELoss(smooth=0.0)(logits, labels)
    assert loss.item() == pytest.approx(0.5 * 0.5 + 0.5 * math.log(2), abs=1e-6)
    loss = DiceCELoss(smooth=0.0, weight_dice=1.0, weight_ce=1.0)(logits, labels)
    assert loss.item() == pytest.approx(0.5 + math.log(2), abs=1e-6)


def test_bce_dice_hand_computed() -> None:
    logits = torch.zeros(1, 1, 4)
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    # BCE = ln 2; Dice = 2 * 1 / (2 + 2) = 0.5.
    loss = BCEDiceLoss(smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(0.5 * 0.5 + 0.5 * math.log(2), abs=1e-6)


def test_labels_to_regions_brats() -> None:
    labels = torch.tensor([[0, 1, 2, 3]])
    regions = labels_to_regions(labels, [[1, 2, 3], [2, 3], [3]])
    assert regions.shape == (1, 3, 4)
    assert regions[0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


# ------------------------------------------------------------------------------- against MONAI
def _random_case(seed: int, k: int, spatial: tuple[int, ...], *, empty_class: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, k, *spatial, generator=gen) * 2
    labels = torch.randint(0, k, (3, *spatial), generator=gen)
    if empty_class is not None:
        labels[labels == empty_class] = 0
    return logits, labels


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize(("k", "spatial", "empty"), [(2, (9, 7), None), (4, (6, 5, 4), 3), (11, (5, 4, 3), 5)])
def test_softmax_dice_matches_monai(include_background: bool, batch: bool, k: int, spatial, empty) -> None:
    logits, labels = _random_case(k, k, spatial, empty_class=empty)
    ours = SoftDiceLoss(activation="softmax", include_background=include_background, batch_dice=batch)(logits, labels)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=include_background, batch=batch)(
        logits, labels.unsqueeze(1)
    )
    assert abs(ours.item() - ref.item()) < 1e-6


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (1.0, 1.0)])
@pytest.mark.parametrize("empty", [None, 2])
def test_dice_ce_matches_monai(batch: bool, weights, empty) -> None:
    logits, labels = _random_case(7, 4, (6, 6, 5), empty_class=empty)
    ours = DiceCELoss(batch_dice=batch, weight_dice=weights[0], weight_ce=weights[1])(logits, labels)
    ref = monai_losses.DiceCELoss(
        softmax=True, to_onehot_y=True, batch=batch, lambda_dice=weights[0], lambda_ce=weights[1]
    )(logits, labels.unsqueeze(1))
    assert abs(ours.item() - ref.item()) < 1e-6
    # Labels with a channel axis are accepted too.
    assert DiceCELoss(batch_dice=batch, weight_dice=weights[0], weight_ce=weights[1])(logits, labels.unsqueeze(1)).item() == ours.item()


@pytest.mark.parametrize("batch", [False, True])
def test_sigmoid_region_losses_match_monai(batch: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, 6, 5, generator=gen) * 2
    labels = torch.randint(0, 4, (2, 7, 6, 5), generator=gen)
    labels[1][labels[1] == 3] = 1  # sample 1 has an empty ET region
    target = labels_to_regions(labels, [[1, 2, 3], [2, 3], [3]])
    assert target[1, 2].sum() == 0
    ours = SoftDiceLoss(activation="sigmoid", batch_dice=batch)(logits, target)
    ref = monai_losses.DiceLoss(sigmoid=True, batch=batch)(logits, target)
    assert abs(ours.item() - ref.item()) < 1e-6
    ours = build_loss("bce-dice", batch_dice=batch, weight_dice=1.0, weight_ce=1.0)(logits, target)
    ref = ref + F.binary_cross_entropy_with_logits(logits, target)
    assert abs(ours.item() - ref.item()) < 1e-6
    # One binary channel: MONAI's DiceCELoss uses BCE there.
    ours = build_loss("dice-ce", activation="sigmoid", batch_dice=batch)(logits[:, :1], target[:, :1])
    ref = monai_losses.DiceCELoss(sigmoid=True, batch=batch, lambda_dice=0.5, lambda_ce=0.5)(logits[:, :1], target[:, :1])
    assert abs(ours.item() - ref.item()) < 1e-6


def test_all_empty_targets_match_monai() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    ours = SoftDiceLoss(include_background=False)(logits, labels)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False)(logits, labels.unsqueeze(1))
    assert abs(ours.item() - ref.item()) < 1e-6
    assert ours.item() > 0.99  # nothing to find, something predicted: Dice ~ 0


def test_losses_are_float32_under_autocast_and_differentiable() -> None:
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build_loss("dice-ce")(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------- deep supervision
def test_deep_supervision_weights() -> None:
    assert deep_supervision_weights(1) == [1.0]
    weights = deep_supervision_weights(4)
    # 1, 1/2, 1/4, 0 normalised by 1.75.
    assert weights == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert sum(weights) == pytest.approx(1.0)


def test_downsample_target_nearest() -> None:
    labels = torch.arange(16).reshape(1, 4, 4)
    small = downsample_target(labels, (2, 2), has_channels=False)
    # nearest-exact picks the centre-most voxel of each 2x2 block: indices 1 and 3.
    assert small.tolist() == [[[5, 7], [13, 15]]]
    assert small.dtype == labels.dtype
    masks = torch.rand(1, 3, 4, 4, 2).round()
    assert downsample_target(masks, (2, 2, 1), has_channels=True).shape == (1, 3, 2, 2, 1)
    assert downsample_target(labels, (4, 4), has_channels=False) is labels


def test_deep_supervision_loss_combines_levels() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8, 8), generator=gen)
    outputs = [torch.randn(2, 3, *(s,) * 3, generator=gen) for s in (8, 4, 2)]
    base = DiceCELoss()
    ds = DeepSupervisionLoss(base, num_outputs=3)
    expected = (
        (1 / 1.5) * base(outputs[0], labels)
        + (0.5 / 1.5) * base(outputs[1], downsample_target(labels, (4, 4, 4), has_channels=False))
    )
    assert ds(outputs, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # The lowest level has weight 0: changing it changes nothing.
    outputs[2] = outputs[2] * 100
    assert ds(outputs, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # A single tensor (eval-mode output) gets the plain loss.
    assert ds(outputs[0], labels).item() == pytest.approx(base(outputs[0], labels).item())
    with pytest.raises(InputError, match="expects 3 outputs, got 2"):
        ds(outputs[:2], labels)


def test_deep_supervision_with_region_targets() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (1, 3, 8, 8, 4), generator=gen).float()
    outputs = [torch.randn(1, 3, 8, 8, 4, generator=gen), torch.randn(1, 3, 4, 4, 4, generator=gen)]
    ds = DeepSupervisionLoss(BCEDiceLoss(), num_outputs=2)
    assert ds(outputs, target).item() == pytest.approx(BCEDiceLoss()(outputs[0], target).item(), abs=1e-6)


# ------------------------------------------------------------------------------- errors
def test_registry_and_option_errors() -> None:
    with pytest.raises(RegistryError, match=r"unknown loss 'dice_ce' \(did you mean 'dice-ce'\?\)"):
        build_loss("dice_ce")
    with pytest.raises(ConfigError, match=r"loss 'dice' has no option 'weight_ce'"):
        build_loss("dice", weight_ce=1.0)
    with pytest.raises(ConfigError, match="activation must be one of softmax, sigmoid, got 'sigmod'"):
        build_loss("dice", activation="sigmod")
    with pytest.raises(ConfigError, match="'bce-dice' needs sigmoid outputs"):
        build_loss("bce-dice", activation="softmax")
    with pytest.raises(ConfigError, match="include_background=False needs softmax"):
        build_loss("dice-ce", activation="sigmoid", include_background=False)
    with pytest.raises(ConfigError, match="weights must be >= 0"):
        build_loss("dice-ce", weight_ce=-1.0)


def test_shape_and_label_errors() -> None:
    loss = SoftDiceLoss()
    with pytest.raises(InputError, match=r"target labels span \[0, 3\] but the logits have 3 classes"):
        loss(torch.randn(1, 3, 4, 4), torch.tensor([[[0, 1, 2, 3]] * 4]))
    with pytest.raises(InputError, match="does not match logits"):
        loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(InputError, match="at least 2 output channels"):
        loss(torch.randn(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="must equal the logits shape"):
        SoftDiceLoss(activation="sigmoid")(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))


def test_channel_weights_weigh_dice_and_bce_per_channel() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = (torch.rand(2, 3, 6, 6) > 0.6).float()
    plain = DiceCELoss(activation="sigmoid")(logits, target)
    # Equal weights (any scale) are the plain mean: the loss keeps its scale.
    assert torch.isclose(DiceCELoss(activation="sigmoid", channel_weights=[2, 2, 2])(logits, target), plain)
    # All weight on one channel is that channel's loss alone.
    only_second = DiceCELoss(activation="sigmoid", channel_weights=[0, 1, 0])(logits, target)
    assert torch.isclose(only_second, DiceCELoss(activation="sigmoid")(logits[:, 1:2], target[:, 1:2]))
    # Hand-computed: Dice and BCE of each channel, averaged with weights 1:2:2.
    dice = soft_dice(torch.sigmoid(logits), target)  # (B, K)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(0, 2, 3))  # (K,)
    w = torch.tensor([0.2, 0.4, 0.4])
    expected = 0.5 * (1 - (dice * w).sum(1).mean()) + 0.5 * (bce * w).sum()
    weighted = BCEDiceLoss(channel_weights=[1, 2, 2])(logits, target)
    assert torch.isclose(weighted, expected) and not torch.isclose(weighted, plain)


@pytest.mark.fault
def test_channel_weight_errors() -> None:
    for bad in ([], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1]):
        with pytest.raises(ConfigError, match="channel_weights must be finite numbers >= 0 with a positive sum"):
            DiceCELoss(activation="sigmoid", channel_weights=bad)
    with pytest.raises(InputError, match="2 channel weights for 3 output channels"):
        SoftDiceLoss(activation="sigmoid", channel_weights=[1, 2])(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
