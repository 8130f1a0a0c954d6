"""A module-level training function for data-parallel tests (launched processes import it by name)."""

from __future__ import annotations

from pathlib import Path

import torch

from brainseg_cli.errors import ConfigError
from brainseg_cli.models import build_model
from brainseg_cli.training import distributed as D
from brainseg_cli.training.config import TrainConfig
from brainseg_cli.training.fit import fit
from helpers.synthetic import cube_cases, cube_plan


def fail_with_config_error(message: str) -> None:
    """A launched process that fails with a usage error."""
    raise ConfigError(message)


def tiny_unet() -> torch.nn.Module:
    """A small InstanceNorm U-Net with deep supervision for the cube cases (2 channels in, 3 classes), seeded."""
    torch.manual_seed(0)
    return build_model("unet", spatial_dims=3, in_channels=2, num_classes=3, depth=2, base_features=4,
                       norm="instance", deep_supervision=True)


def train_cubes(run_dir: str, *, epochs: int = 2, iterations: int = 10, batch_size: int = 4,
                augment: bool = False, ema: float | None = None) -> list[float]:
    """Train :func:`tiny_unet` on 4 cube cases; returns the per-step losses (rank-averaged).

    Joins the process group when started by torchrun or :func:`brainseg_cli.training.distributed.launch`.
    """
    torch.set_num_threads(1)
    ctx = D.init_from_env(use_cuda=False)
    try:
        data = cube_cases(4, shape=(24, 24, 24), patch_size=(16, 16, 16))
        config = TrainConfig(epochs=epochs, iterations_per_epoch=iterations, workers=0, augment=augment,
                             device="cpu", precision="fp32", deterministic=True, val_every=epochs, ema=ema)
        result = fit(model=tiny_unet(), plan=cube_plan(batch_size=batch_size), dataset=data,
                     train_cases=["case_000", "case_001", "case_002"], val_cases=["case_003"],
                     run_dir=Path(run_dir), config=config, dist_ctx=ctx)
        return result.step_losses
    finally:
        D.shutdown(ctx)
