"""Training samples from the cache: CachedCases (the fit loop's TrainingCases) and PatchDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg_cli.data.augmentation import AugmentConfig
from brainseg_cli.data.cache import build_cache
from brainseg_cli.data.datasets import CachedCases, PatchDataset, context_slab, forced_by_fraction
from brainseg_cli.data.fingerprint import compute_fingerprint
from brainseg_cli.data.layout import load_dataset
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.data.plan import PlanOverrides
from brainseg_cli.data.plan import make_plan as _make_plan
from brainseg_cli.errors import InputError


def make_plan(**kwargs):
    """The plan as ``plan.json`` holds it (JSON data), which these tests read."""
    return _make_plan(**kwargs).to_dict()

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    root = write_phantom_dataset(base / "ds", n_cases=2, seed=11, shape=(40, 40, 24))
    info = load_dataset(root)
    fp = compute_fingerprint(info)
    plans = {
        "3d": make_plan(fingerprint=fp, info=info, device="cpu",
                        overrides=PlanOverrides(patch_size=(16, 16, 16), batch_size=3)),
        "2d": make_plan(fingerprint=fp, info=info, device="cpu",
                        overrides=PlanOverrides(config="2d", patch_size=(32, 32), batch_size=4)),
    }
    caches = {k: build_cache(info, p, folder=base / f"cache{k}") for k, p in plans.items()}
    return info, plans, caches


@pytest.mark.parametrize("config", ["3d", "2d"])
def test_batches_have_the_plan_shapes(built, config):
    info, plans, caches = built
    plan = plans[config]
    ds = PatchDataset(CachedCases(caches[config], plan), caches[config].cases, seed=0, length=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=plan["batch_size"])
    batch = next(iter(loader))
    assert batch["image"].shape == (plan["batch_size"], len(plan["channels"]), *plan["patch_size"])
    assert batch["image"].dtype == torch.float32
    assert batch["label"].shape == (plan["batch_size"], *plan["patch_size"]) and batch["label"].dtype == torch.int64
    assert set(batch["case"]) <= set(caches[config].cases)


def test_foreground_fraction_is_exact(built):
    info, plans, caches = built
    plan = plans["3d"]
    assert [forced_by_fraction(i, 1 / 3) for i in range(6)] == [False, False, True, False, False, True]
    assert sum(forced_by_fraction(i, 0.25) for i in range(400)) == 100

    class Recorder(CachedCases):
        forced: list = []

        def sample(self, case, *, rng, force_foreground, augment):
            Recorder.forced.append(force_foreground)
            return super().sample(case, rng=rng, force_foreground=force_foreground, augment=augment)

    ds = PatchDataset(Recorder(caches["3d"], plan), caches["3d"].cases, seed=0, length=30, augment=False)
    with_fg = [bool(ds[i]["label"].any()) for i in range(30)]
    assert sum(Recorder.forced) == 10
    # Every forced patch holds foreground.
    assert all(f for f, forced in zip(with_fg, Recorder.forced) if forced)


def test_samples_are_deterministic_and_ranks_differ(built):
    info, plans, caches = built
    plan = plans["3d"]
    source = CachedCases(caches["3d"], plan)
    a = PatchDataset(source, caches["3d"].cases, seed=4)[5]
    b = PatchDataset(CachedCases(caches["3d"], plan), caches["3d"].cases, seed=4)[5]
    torch.testing.assert_close(a["image"], b["image"])
    c = PatchDataset(source, caches["3d"].cases, seed=4, rank=1)[5]
    assert not torch.equal(a["image"], c["image"])
    # Worker processes (their own memory maps) give the same samples.
    ds = PatchDataset(source, caches["3d"].cases, seed=4, length=4)
    single = [x["image"] for x in torch.utils.data.DataLoader(ds, batch_size=None)]
    multi = [x["image"] for x in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)]
    for s, m in zip(single, multi):
        torch.testing.assert_close(s, m)


def test_training_cases_protocol(built):
    info, plans, caches = built
    plan = plans["3d"]
    source = CachedCases(caches["3d"], plan, augment=AugmentConfig(p_rotation=1.0))
    case = source.cases[0]
    image, label = source.load_case(case)
    assert image.shape[0] == 4 and image.shape[1:] == label.shape and image.flags.writeable
    rng = np.random.default_rng([1, 2, 3])
    img, lab = source.sample(case, rng=rng, force_foreground=True, augment=True)
    assert img.shape == (4, 16, 16, 16) and lab.shape == (16, 16, 16) and img.dtype == np.float32
    plain, _ = source.sample(case, rng=np.random.default_rng([1, 2, 3]), force_foreground=True, augment=False)
    assert not np.allclose(img, plain)


def test_two_d_slices_drop_edges_and_weight_foreground(built):
    info, plans, caches = built
    plan = dict(plans["2d"])
    cache = caches["2d"]
    axis = plan["slice_axis"]
    case = cache.cases[0]
    _, seg = cache.load(case)
    n = seg.shape[axis]
    slices = [np.take(np.asarray(seg), k, axis=axis) for k in range(n)]

    def drawn_slice(source, rng, forced):
        # Identify the slice by its label pattern: patches cover whole slices here (32 >= in-plane size).
        _, lab = source.sample(case, rng=rng, force_foreground=forced, augment=False)
        return lab

    edge = dict(plan, sampling=dict(plan["sampling"], drop_edge_slices=True))
    source = CachedCases(cache, edge)
    weights = source._slice_weights(case, n)
    assert weights[0] == weights[-1] == 0
    fgw = CachedCases(cache, dict(plan, sampling=dict(plan["sampling"], slice_weighting="foreground")))
    w = fgw._slice_weights(case, n)
    areas = np.array([np.count_nonzero(s) for s in slices])
    assert areas.max() > 0 and w[int(np.argmax(areas))] > w[int(np.argmin(areas))]
    np.testing.assert_allclose(w, (areas + 0.1 * areas.mean()) / (areas + 0.1 * areas.mean()).sum())
    # Forced samples hold foreground.
    for seed in range(5):
        lab = drawn_slice(source, np.random.default_rng(seed), True)
        assert lab.shape == tuple(plan["patch_size"]) and lab.any()


def test_left_right_mirroring_axis(built):
    info, plans, caches = built
    plan = plans["2d"]  # orientation LPS, slice axis 2: sample axes (x, y); x runs left-right
    lgg = CachedCases(caches["2d"], plan, augment=AugmentConfig.preset("lgg"))
    assert lgg.mirror_axes == (0,)
    ras = CachedCases(caches["2d"], dict(plan, orientation="PRS"), augment=AugmentConfig.preset("lgg"))
    assert ras.mirror_axes == (1,)
    assert CachedCases(caches["3d"], plans["3d"]).mirror_axes == (0, 1, 2)
    with pytest.raises(InputError, match="mirror axes"):
        CachedCases(caches["2d"], plan, augment=AugmentConfig(mirror_axes=(2,)))


def test_context_slab_is_channel_major_with_repeated_edges():
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    slab = context_slab(data, 0, axis=2, context=1)
    assert slab.shape == (6, 3, 4)
    for c in range(2):
        for o, k in enumerate([0, 0, 1]):  # offsets -1, 0, +1 of slice 0: the first slice repeats
            np.testing.assert_array_equal(slab[3 * c + o], data[c, :, :, k])
    last = context_slab(data, 3, axis=1, context=2)  # axis 1 has 4 slices: 1, 2, 3, 3, 3
    assert last.shape == (10, 3, 5)
    np.testing.assert_array_equal(last[5:], data[1][:, [1, 2, 3, 3, 3]].transpose(1, 0, 2))


@pytest.mark.parametrize("augment", [False, True])
def test_2_5d_samples_hold_the_neighbouring_slices(built, augment):
    info, plans, caches = built
    plan = plans["2d"]
    wide = make_plan(fingerprint=compute_fingerprint(info), info=info, device="cpu",
                     overrides=PlanOverrides(config="2d", patch_size=(32, 32), batch_size=4, slice_context=1))
    assert wide["slice_context"] == 1 and wide["model"]["in_channels"] == 3 * len(info.channels)
    case = caches["2d"].cases[0]
    plain = CachedCases(caches["2d"], plan, augment=AugmentConfig(p_noise=0.0))
    context = CachedCases(caches["2d"], wide, augment=AugmentConfig(p_noise=0.0))
    for seed in range(4):
        img, lab = plain.sample(case, rng=np.random.default_rng(seed), force_foreground=seed % 2 == 0, augment=augment)
        img3, lab3 = context.sample(case, rng=np.random.default_rng(seed), force_foreground=seed % 2 == 0,
                                    augment=augment)
        assert img3.shape == (3 * img.shape[0], *img.shape[1:]) and img3.dtype == np.float32
        np.testing.assert_array_equal(lab3, lab)
        if not augment:  # the same draws cut the same slice: the middle of each block is the 2-D sample
            np.testing.assert_array_equal(img3[1::3], img)
            assert not np.array_equal(img3[0::3], img3[1::3]) or not np.array_equal(img3[2::3], img3[1::3])
