"""Fixtures of the inference tests: a briefly fitted checkpoint and its synthetic cases."""

from __future__ import annotations

import pytest
from predict_fixtures import cube_volume, fit_network, make_plan, save_model_checkpoint


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The networks here are tiny: one thread is several times faster than two on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fitted_checkpoint(tmp_path_factory):
    """A tiny 3-D unet fitted for a few dozen steps on cube cases; returns the checkpoint path.

    The plan crops to the brain (cases have a zero border) and keeps 1 mm spacing. Patches of the plan size, 200 Adam steps. Labels:
    background 0, outer 1, inner 2 (``source_labels`` maps them to 2 and 4, BraTS-style).
    """
    from brainseg_cli.data.preprocessing import preprocess_case
    from brainseg_cli.io import Image

    plan = make_plan(patch_size=(16, 16, 16), source_labels={0: 0, 1: 2, 2: 4})
    cases = []
    for seed in range(4):
        image, label = cube_volume(seed)
        data, seg, _ = preprocess_case(Image(image, (1.0, 1.0, 1.0)), plan, label=Image(label, (1.0, 1.0, 1.0)))
        cases.append((data, seg))
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test thread limit
    try:
        net = fit_network(plan, cases, steps=200)
    finally:
        torch.set_num_threads(before)
    path = tmp_path_factory.mktemp("ckpt") / "fitted.pt"
    post = {"outer": {"largest_component": True}, "inner": {"largest_component": False}}
    return save_model_checkpoint(path, plan, net, postprocessing=post)
