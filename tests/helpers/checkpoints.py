"""A briefly trained checkpoint shared by the tests of predict, finetune, evaluate and the demo.

:func:`tiny_trained_checkpoint` writes a small phantom tumour dataset (4 cases, 32 x 32 x 24 voxels,
channels T1, T1c, T2, FLAIR, canonical labels 0-3, BraTS regions) and trains the planned ``unet``
for a few steps with :func:`brainseg_cli.training.pretrain.pretrain`. The result is a real,
self-describing checkpoint (docs/DEFINITIONS.md §5) whose weights are barely trained: tests may rely on its
format, plan and metadata, not on the quality of its segmentations.

Use it from a session-scoped fixture so the run happens once per test session::

    @pytest.fixture(scope="session")
    def tiny_checkpoint(tmp_path_factory):
        return tiny_trained_checkpoint(tmp_path_factory.mktemp("tiny"))
"""

from __future__ import annotations

from pathlib import Path

#: Voxel grid of the phantom cases.
PHANTOM_SHAPE = (32, 32, 24)


def tiny_trained_checkpoint(tmp_dir: str | Path, *, region_based: bool = False, seed: int = 0) -> Path:
    """Train a tiny model on a phantom dataset and return its ``best.pt``.

    Args:
        tmp_dir: an empty scratch folder (the dataset goes to ``tmp_dir/dataset``, the run to
            ``tmp_dir/run``).
        region_based: train WT/TC/ET sigmoid outputs (``--regions brats``) instead of softmax labels.
        seed: the training seed.

    Returns:
        ``tmp_dir/run/best.pt``. ``tmp_dir/dataset`` holds the dataset it was trained on
        (``imagesTr``/``labelsTr``/``dataset.json``), usable as prediction input or reference.
    """
    import torch

    from brainseg_cli.data.phantom import write_phantom_dataset
    from brainseg_cli.training.config import TrainConfig
    from brainseg_cli.training.pretrain import pretrain

    tmp_dir = Path(tmp_dir)
    dataset = write_phantom_dataset(tmp_dir / "dataset", n_cases=4, seed=seed, shape=PHANTOM_SHAPE)
    overrides = {"patch_size": [16, 16, 16], "batch_size": 2, "model_config": {"base_features": 4}}
    overrides["regions"] = "brats" if region_based else "none"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # OpenMP threads competing for busy cores are far slower than one
        result = pretrain(dataset_dir=dataset, run_dir=tmp_dir / "run",
                          train_config=TrainConfig(epochs=2, iterations_per_epoch=3, workers=0, device="cpu",
                                                   val_cases=1, seed=seed, augment=False),
                          plan_overrides=overrides)
    finally:
        torch.set_num_threads(threads)
    return result.best_checkpoint
