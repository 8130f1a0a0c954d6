"""``predict`` end to end on the real scans in ``../shared/data``."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import tifffile
from predict_fixtures import fit_network, make_plan, random_checkpoint, save_model_checkpoint

from brainseg_cli.inference.predict import PredictConfig, predict_folder
from brainseg_cli.io import read_image

BRATS_CASE = "Brats18_2013_20_1"
BRATS18_TO_CANONICAL = np.zeros(5, np.uint8)
BRATS18_TO_CANONICAL[[1, 2, 4]] = [2, 1, 3]
TUMOUR = {"background": 0, "edema": 1, "core": 2, "enhancing": 3}


def test_real_brats_case_briefly_trained(shared_data, tmp_path):
    """Train a tiny 3-D model on one real case at 4 mm, predict the full-resolution case folder."""
    from brainseg_cli.data.preprocessing import preprocess_case
    from brainseg_cli.inference.inputs import discover_cases, load_case

    folder = shared_data / "brats2018_deepbrainseg" / BRATS_CASE
    channels = ["T1", "T1c", "T2", "FLAIR"]
    plan = make_plan(channels=channels, labels=TUMOUR, patch_size=(16, 16, 16), target_spacing=(4.0, 4.0, 4.0),
                     source_labels={1: 2, 2: 1, 3: 4}, base_features=8)
    (case,) = discover_cases(folder)
    image = load_case(case, channels=channels).image
    seg = read_image(folder / f"{BRATS_CASE}_seg.nii.gz")
    truth = BRATS18_TO_CANONICAL[np.asarray(seg.array)]
    data, lab, _ = preprocess_case(image, plan, label=seg.with_array(truth))
    net = fit_network(plan, [(data, lab)], steps=150, lr=0.01)
    ckpt = save_model_checkpoint(tmp_path / "brats.pt", plan, net,
                                 postprocessing={"edema": {"largest_component": True}})

    summary = predict_folder(config=PredictConfig(models=(ckpt,), input=folder, output=tmp_path / "out",
                                                  device="cpu", labels="source", batch_size=4))
    assert summary.predicted == (BRATS_CASE,)
    out_path = tmp_path / "out" / f"{BRATS_CASE}.nii.gz"
    out = read_image(out_path)
    flair = read_image(folder / f"{BRATS_CASE}_flair.nii.gz")
    out.check_same_grid(flair, "prediction vs FLAIR", tol=1e-6)
    np.testing.assert_allclose(nib.load(out_path).affine, nib.load(folder / f"{BRATS_CASE}_flair.nii.gz").affine,
                               atol=1e-6)
    pred = np.asarray(out.array)
    assert set(np.unique(pred)) <= {0, 1, 2, 4}
    whole = pred > 0
    dice = 2 * (whole & (truth > 0)).sum() / (whole.sum() + (truth > 0).sum())
    assert dice > 0.5, f"whole-tumour Dice {dice:.3f}"
    assert not whole[:5].any()  # outside the brain crop nothing is predicted


def test_real_msd_4d_nifti_geometry(shared_data, tmp_path):
    """A Decathlon 4-D NIfTI (channels named by dataset.json 'modality') keeps its geometry."""
    root = shared_data / "msd_task01_from_brats2018" / "Task01_BrainTumour"
    ckpt = random_checkpoint(tmp_path / "m.pt", channels=("T1", "T1c", "T2", "FLAIR"), labels=TUMOUR,
                             patch_size=(16, 16, 16), target_spacing=(6.0, 6.0, 6.0))
    summary = predict_folder(config=PredictConfig(models=(ckpt,), input=root / "imagesTr" / "BRATS_001.nii.gz",
                                                  output=tmp_path / "out", device="cpu", batch_size=8))
    assert summary.predicted == ("BRATS_001",)
    src = read_image(root / "imagesTr" / "BRATS_001.nii.gz")
    out = read_image(tmp_path / "out" / "BRATS_001.nii.gz")
    assert out.array.shape == src.spatial_shape
    out.check_same_grid(src, "prediction vs 4-D input", tol=1e-6)


def test_real_brats2012_mha_output_is_mha(shared_data, tmp_path):
    folder = shared_data / "brats2012_mha"
    ckpt = random_checkpoint(tmp_path / "m.pt", channels=("T1", "T1c", "T2", "FLAIR"), labels=TUMOUR,
                             patch_size=(16, 16, 16), target_spacing=(6.0, 6.0, 6.0))
    summary = predict_folder(config=PredictConfig(models=(ckpt,), input=folder, output=tmp_path / "out",
                                                  device="cpu", batch_size=8))
    assert summary.predicted == ("BRATS_HG0001",)
    out = read_image(tmp_path / "out" / "BRATS_HG0001.mha")
    out.check_same_grid(read_image(folder / "BRATS_HG0001" / "BRATS_HG0001_FLAIR.mha"), "prediction vs FLAIR")


def test_real_lgg_patient_masks(shared_data, tmp_path):
    """Kaggle-LGG TIFF slices in, one 0/255 mask per slice out, with a 2-D model."""
    root = shared_data / "lgg_kaggle3m_from_brats2018" / "kaggle_3m"
    patient = sorted(p for p in root.iterdir() if p.is_dir())[0]
    ckpt = random_checkpoint(tmp_path / "lgg.pt", config="2d", channels=("T1", "FLAIR", "T1c"), patch_size=(64, 64),
                             slice_axis=2, target_spacing=(4.0, 4.0, 1.0), orientation="LPS",
                             labels={"background": 0, "abnormality": 1})
    summary = predict_folder(config=PredictConfig(models=(ckpt,), input=patient, output=tmp_path / "out",
                                                  device="cpu", batch_size=16, lcc="off"))
    assert summary.predicted == (patient.name,)
    images = sorted(p.name for p in patient.glob("*.tif") if not p.name.endswith("_mask.tif"))
    masks = sorted(p.name for p in (tmp_path / "out" / patient.name).iterdir())
    assert masks == sorted(n.replace(".tif", "_mask.tif") for n in images)
    m = tifffile.imread(tmp_path / "out" / patient.name / masks[0])
    assert m.dtype == np.uint8 and m.shape == tifffile.imread(patient / images[0]).shape[:2]
    assert set(np.unique(m)) <= {0, 255}
