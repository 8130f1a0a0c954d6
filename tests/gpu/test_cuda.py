"""CUDA paths: mixed-precision training (fp16 with loss scaling, bf16), ``--compile``, fine-tuning and
prediction on a GPU, CPU/GPU agreement, and the GPU memory budget of the planner.

Every test here needs a CUDA device and is skipped without one (CI has none); they run on a GPU
machine with ``pytest tests/gpu`` (``benchmarks/gpu_check.sh`` runs them with the GPU benchmarks).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainseg_cli.checkpoint import build_model_from_checkpoint, load_checkpoint
from brainseg_cli.cli.main import app
from brainseg_cli.data.phantom import write_phantom_dataset
from brainseg_cli.data.plan import PlanOverrides
from brainseg_cli.data.plan import make_plan as _make_plan
from brainseg_cli.io.image import read_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

runner = CliRunner()
TRAIN = ["--epochs", "4", "--iterations", "8", "--patch-size", "32,32,32", "--batch-size", "2", "--workers", "0",
         "--device", "cuda", "--val-cases", "1", "--no-aug", "--seed", "1"]



def make_plan(**kwargs):
    """The plan as ``plan.json`` holds it (JSON data), which these tests read."""
    return _make_plan(**kwargs).to_dict()

def invoke(args: list[str]):
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def tumour(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("gpu") / "tumour", n_cases=4, seed=5, shape=(48, 48, 40))


@pytest.fixture(scope="module")
def fp16_run(tumour, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fp16") / "run"
    res = invoke(["pretrain", str(tumour), "-o", str(run), *TRAIN, "--precision", "fp16", "--regions", "brats"])
    assert res.exit_code == 0, res.output
    return run


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


def test_fp16_training_scales_the_loss_and_learns(fp16_run):
    losses = _losses(fp16_run)
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    ckpt = load_checkpoint(fp16_run / "last.pt")
    assert ckpt["training"]["precision"] == "fp16"
    # the checkpoint's weights are fp32 and load on a CPU
    model = build_model_from_checkpoint(ckpt)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("extra", [["--precision", "bf16"], ["--precision", "bf16", "--compile"]],
                         ids=["bf16", "bf16-compile"])
def test_bf16_and_compiled_training(tumour, tmp_path, extra):
    run = tmp_path / "run"
    res = invoke(["pretrain", str(tumour), "-o", str(run), *TRAIN, *extra])
    assert res.exit_code == 0, res.output
    losses = _losses(run)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert load_checkpoint(run / "best.pt")["training"]["precision"] == "bf16"


def test_predict_on_cuda_agrees_with_cpu(fp16_run, tumour, tmp_path):
    images = tumour / "imagesTr"
    out = {}
    for device in ("cuda", "cpu"):
        out[device] = tmp_path / device
        res = invoke(["predict", "-m", str(fp16_run / "best.pt"), "--input", str(images), "--output",
                      str(out[device]), "--device", device, "--precision", "fp32", "--save-probabilities"])
        assert res.exit_code == 0, res.output
    cases = sorted(p.name for p in out["cpu"].glob("*.nii.gz"))
    assert len(cases) == 4
    for name in cases:
        gpu, cpu = read_image(out["cuda"] / name), read_image(out["cpu"] / name)
        assert np.array_equal(gpu.affine, cpu.affine)
        agree = float(np.mean(gpu.array == cpu.array))
        assert agree > 0.999, (name, agree)
    probs = sorted(out["cpu"].glob("*.npz"))
    assert probs
    for path in probs:
        a, b = np.load(path), np.load(out["cuda"] / path.name)
        assert a.files == b.files and list(a["names"]) == list(b["names"])
        diff = np.abs(a["probabilities"].astype(np.float32) - b["probabilities"].astype(np.float32)).max()
        assert diff < 2e-3, (path.name, diff)


def test_finetune_on_cuda_keeps_frozen_stages(fp16_run, tmp_path):
    tissue = write_phantom_dataset(tmp_path / "tissue", n_cases=3, seed=7, kind="tissue", shape=(48, 48, 40))
    run = tmp_path / "ft"
    res = invoke(["finetune", str(tissue), "--from", str(fp16_run / "best.pt"), "-o", str(run), "--freeze",
                  "first2", *TRAIN, "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    before = build_model_from_checkpoint(load_checkpoint(fp16_run / "best.pt")).state_dict()
    after = build_model_from_checkpoint(load_checkpoint(run / "last.pt")).state_dict()
    frozen = [k for k in after if k.startswith("encoder.1.") and k in before and after[k].shape == before[k].shape
              and after[k].dtype.is_floating_point]
    assert frozen, sorted(after)[:10]
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert all(math.isfinite(v) for v in _losses(run))


@pytest.mark.parametrize("memory_gb", [4.0, 8.0])
def test_a_gpu_plan_trains_within_its_memory_budget(memory_gb):
    """Train steps at the planned 3-D BraTS-like patch and batch stay under ``memory_gb`` (bf16 autocast)."""
    from brainseg_cli.data.layout import DatasetInfo
    from brainseg_cli.losses import DeepSupervisionLoss, build_loss
    from brainseg_cli.models import build_model

    fp = {"orientation": "LPS", "spacing_median": [1.0, 1.0, 1.0], "spacing_10th": [1.0, 1.0, 1.0],
          "shape_median": [140, 172, 138], "num_cases": 300, "intensity": [{"eight_bit": False}] * 4, "hash": "0"}
    info = DatasetInfo(root=Path("/nonexistent"), name="ds", channels=("T1", "T1c", "T2", "FLAIR"),
                       labels={"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3},
                       regions={"WT": [1, 2, 3]}, file_ending=".nii.gz", training_cases=(), test_cases=())
    plan = make_plan(fingerprint=fp, info=info, device="cuda", overrides=PlanOverrides(memory_gb=memory_gb))
    m = plan["model"]
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free_before = torch.cuda.mem_get_info()[0]
    model = build_model(m["name"], spatial_dims=m["spatial_dims"], in_channels=m["in_channels"],
                        num_classes=m["num_classes"], **m["config"]).to(device)
    loss_fn = DeepSupervisionLoss(build_loss("dice-ce", activation="softmax", include_background=False),
                                 model.num_outputs)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    batch, patch = plan["batch_size"], plan["patch_size"]
    x = torch.randn(batch, m["in_channels"], *patch, device=device)
    y = torch.randint(0, m["num_classes"], (batch, *patch), device=device)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    used_gb = (free_before - torch.cuda.mem_get_info()[0] + torch.cuda.max_memory_reserved()
               - torch.cuda.memory_reserved()) / 1e9
    print(f"memory_gb {memory_gb}: patch {patch} batch {batch} estimated {plan['budget']['estimated_memory_gb']} "
          f"GB, measured {used_gb:.2f} GB (peak reserved {torch.cuda.max_memory_reserved() / 1e9:.2f} GB)")
    assert used_gb <= memory_gb, (patch, batch, used_gb)
    del model, opt, x, y, out, loss
    torch.cuda.empty_cache()


def test_2_5d_training_with_auto_precision_and_cuda_cpu_agreement(tumour, tmp_path):
    run = tmp_path / "run"
    res = invoke(["pretrain", str(tumour), "-o", str(run), "--config", "2d", "--slice-context", "1",
                  "--patch-size", "48,48", "--batch-size", "4", *TRAIN[:4], *TRAIN[8:]])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["training"]["precision"] == "fp16" and ckpt["plan"]["slice_context"] == 1
    assert all(math.isfinite(v) for v in _losses(run))
    out = {}
    for device in ("cuda", "cpu"):
        out[device] = tmp_path / device
        res = invoke(["predict", "-m", str(run / "best.pt"), "--input", str(tumour / "imagesTr"), "--output",
                      str(out[device]), "--device", device, "--tta"])
        assert res.exit_code == 0, res.output
    for path in sorted(out["cpu"].glob("*.nii.gz")):
        agree = float(np.mean(read_image(path).array == read_image(out["cuda"] / path.name).array))
        assert agree > 0.999, (path.name, agree)
