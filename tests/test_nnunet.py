"""nnU-Net v2 import: parity with nnU-Net's own predictor, and clear errors for what is unsupported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 is the optional test dependency of the importer (make test installs it)")

from app.labels import flare_id  # noqa: E402
from app.convert.nnunet_import import ImportErrorNnunet, import_nnunet  # noqa: E402
from app.pipeline import Options, predict_folder  # noqa: E402
from evaluation.metrics import dice  # noqa: E402
from evaluation.phantoms import generate, write  # noqa: E402
from tests.helpers import REAL_CASES, make_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A label order unlike FLARE's, with TotalSegmentator-style names, to exercise the mapping.
LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5, "stomach": 6,
          "pancreas": 7, "aorta": 8, "inferior_vena_cava": 9, "adrenal_gland_right": 10, "adrenal_gland_left": 11,
          "esophagus": 12, "duodenum": 13}
ARCH = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


def _plans(spacing, patch):
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Phantom", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [64, 128, 128], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 1500.0, "mean": 80.0, "median": 70.0, "min": -1000.0,
                                                              "percentile_00_5": -150.0, "percentile_99_5": 400.0, "std": 120.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": patch, "median_image_size_in_voxels": [64, 128, 128], "spacing": spacing,
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resample,
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": ARCH, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }


def make_nnunet_folder(root: Path, spacing=(3.0, 3.0, 3.0), patch=(16, 48, 48), folds=("all",), seed=0) -> Path:
    """A small trained-model folder in nnU-Net v2's layout, network from the plans via d-n-a."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    plans = _plans(list(spacing), list(patch))
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    kw = dict(ARCH, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, dropout_op=None, nonlin=torch.nn.LeakyReLU)
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        net = PlainConvUNet(input_channels=1, num_classes=len(LABELS), deep_supervision=True, **kw)
        net.apply(net.initialize)
        with torch.no_grad():
            for layer in net.decoder.seg_layers:
                layer.bias[1:] += 0.3
        ckpt = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 1000,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset, "device": "cpu"},
                "inference_allowed_mirroring_axes": (0, 1, 2), "optimizer_state": None, "grad_scaler_state": None, "logging": {}}
        (root / f"fold_{fold}").mkdir()
        torch.save(ckpt, root / f"fold_{fold}" / "checkpoint_final.pth")
    return root


def nnunet_predict(model: Path, image: Path, folds=("all",)):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=folds, checkpoint_name="checkpoint_final.pth")
    data, props = SimpleITKIO().read_images([str(image)])
    return predictor, predictor.predict_single_npy_array(data, props, None, None, False)


def _to_flare(seg: np.ndarray) -> np.ndarray:
    lut = np.zeros(len(LABELS), np.uint8)
    for name, value in LABELS.items():
        lut[value] = flare_id(name) or 0
    return lut[seg]


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory):
    return make_nnunet_folder(tmp_path_factory.mktemp("nnunet") / "Dataset999")


@pytest.fixture(scope="module")
def imported(nnunet_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "fine"
    proc = subprocess.run([sys.executable, "-m", "app", "import-nnunet", "--model", str(nnunet_model), "--fold", "all",
                           "--checkpoint", "checkpoint_final.pth", "--role", "fine", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _cases(tmp: Path) -> list[Path]:
    """A real scan (3 mm, the plans' spacing) and a phantom at that spacing, in other orientations."""
    real = tmp / "real_0000.nii.gz"
    shutil.copy(REAL_CASES[-1], real)  # TS_example_sm
    ph = generate(77, spacing=(3.0, 3.0), size=128, slices=56)
    ph.orientation = "RAS"
    phantom = tmp / "phantom_0000.nii.gz"
    write(ph, phantom, None)
    return [real, phantom]


def test_import_writes_our_format(imported):
    cfg = json.loads((imported / "config.json").read_text())
    assert cfg["input"] == {"spacing": [3.0, 3.0, 3.0], "patch_size": [16, 48, 48], "step": 0.5, "mirror_axes": [], "orientation": "stored", "crop_nonzero": True}
    assert cfg["intensity"] == {"clip": [-150.0, 400.0], "mean": 80.0, "std": 120.0}
    assert cfg["labels"]["1"] == "spleen" and cfg["files"] == ["fold_all.safetensors"]


def test_same_segmentation_and_logits_as_nnunets_predictor(nnunet_model, imported, tmp_path):
    from app.backend import Placement
    from app.geometry import bounding_box
    from app.model import load_model
    from app.nifti import read_scan
    from app.weights import read_spec

    weights = tmp_path / "w"
    shutil.copytree(imported, weights / "fine")
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = _cases(inputs)
    results = predict_folder(inputs, tmp_path / "out", Options(weights=weights, device="cpu", use_roi=False, keep_largest=()))
    assert all(r.ok for r in results)
    model = load_model(read_spec(weights / "fine"), Placement("torch", "cpu", "fp32"))
    for case in cases:
        predictor, seg = nnunet_predict(nnunet_model, case)
        theirs = _to_flare(seg)
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / case.name.replace("_0000", ""))))
        assert (ours == theirs).mean() >= 0.99
        # Per organ away from the volume's faces: on the CPU nnU-Net sums tiles in fp16 with Gaussian
        # weights scaled by 10, which underflow in the corners of the outermost tiles, so its logits
        # there are rounded to whole numbers (seen: exactly 0.0 and 1.0) while ours stay in fp32.
        inner = (slice(2, -2),) * 3
        ours_in, theirs_in = ours[inner], theirs[inner]
        present = [int(v) for v, n in zip(*np.unique(theirs_in, return_counts=True)) if v and n >= 200]
        assert len(present) >= 5, present
        for organ in present:
            assert dice(ours_in == organ, theirs_in == organ) >= 0.99, (case.name, organ)
        # logits on the same normalised input, both sliding windows (nnU-Net sums in fp16 on the CPU)
        array, _, _ = read_scan(case).layout("stored")
        box = bounding_box(array != 0)
        x = model.normalize(torch.from_numpy(array[box.slices]))
        ref = predictor.predict_sliding_window_return_logits(x[None]).float()
        got = model.logits(x)
        diff = (got - ref).abs()[(slice(None), *inner)]
        scale = float(ref.abs().max())
        assert float(diff.max()) <= 0.01 * scale, (float(diff.max()), scale)
        assert float(diff.mean()) <= 0.001 * scale


def test_fold_ensemble_is_averaged(tmp_path):
    model = make_nnunet_folder(tmp_path / "Dataset998", folds=("0", "1"))
    cfg = import_nnunet(model, ["0", "1"], "checkpoint_final.pth", "fine", tmp_path / "w" / "fine")
    assert cfg["files"] == ["fold_0.safetensors", "fold_1.safetensors"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = _cases(inputs)[1]
    case_only = tmp_path / "one"
    case_only.mkdir()
    shutil.move(str(case), case_only / case.name)
    results = predict_folder(case_only, tmp_path / "out", Options(weights=tmp_path / "w", device="cpu", use_roi=False, keep_largest=()))
    assert results[0].ok
    _, seg = nnunet_predict(model, case_only / case.name, folds=("0", "1"))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "phantom.nii.gz")))
    theirs = _to_flare(seg)
    assert (ours == theirs).mean() >= 0.99
    inner = (slice(2, -2),) * 3  # see test_same_segmentation_and_logits_as_nnunets_predictor
    for organ in [int(v) for v, n in zip(*np.unique(theirs[inner], return_counts=True)) if v and n >= 200]:
        assert dice(ours[inner] == organ, theirs[inner] == organ) >= 0.99


@pytest.mark.parametrize("folds", [("all",), ("0", "1")])
def test_imported_models_export_to_onnx_and_give_torch_s_masks(tmp_path, folds):
    """An imported model (and a fold ensemble: one graph averaging the folds) on the ONNX engines."""
    from app.convert.export_onnx import export_onnx

    model = make_nnunet_folder(tmp_path / "Dataset997", folds=folds)
    import_nnunet(model, list(folds), "checkpoint_final.pth", "fine", tmp_path / "w" / "fine")
    export_onnx(tmp_path / "w" / "fine")
    inputs = tmp_path / "in"
    inputs.mkdir()
    _cases(inputs)
    masks = {}
    for engine, precision in (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp16")):
        out = tmp_path / f"{engine}-{precision}"
        options = Options(weights=tmp_path / "w", device="cpu", use_roi=False, keep_largest=(), backend=engine, precision=precision, progress=False)
        results = predict_folder(inputs, out, options)
        assert all(r.ok and r.info["backend"] == f"{engine} on cpu, {precision}" for r in results)
        masks[engine, precision] = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.iterdir())}
    reference = masks["torch", "fp32"]
    for (engine, precision), got in masks.items():
        for name, mask in got.items():
            if precision == "fp32":
                assert (mask == reference[name]).mean() >= 0.999, (engine, name)
            else:  # organs of at least 200 voxels, as above: this untrained network's tiny blobs sit on near-ties
                organs = [int(v) for v, n in zip(*np.unique(reference[name], return_counts=True)) if v and n >= 200]
                assert len(organs) >= 5 and np.mean([dice(mask == o, reference[name] == o) for o in organs]) >= 0.995, (engine, precision, name)


def test_imported_fine_model_behind_our_coarse_model(imported, tmp_path):
    """An as-stored nnU-Net fine model behind a canonical-LPS coarse model: the ROI maps across layouts."""
    weights = make_weights(tmp_path / "w")
    shutil.rmtree(weights / "fine")
    shutil.copytree(imported, weights / "fine")
    inputs = tmp_path / "in"
    inputs.mkdir()
    _cases(inputs)
    results = predict_folder(inputs, tmp_path / "out", Options(weights=weights, device="cpu"))
    assert all(r.ok for r in results)
    for case in inputs.iterdir():
        a, b = sitk.ReadImage(str(case)), sitk.ReadImage(str(tmp_path / "out" / case.name.replace("_0000", "")))
        assert (a.GetSize(), a.GetDirection(), a.GetOrigin()) == (b.GetSize(), b.GetDirection(), b.GetOrigin())


def _edit_plans(model: Path, fn) -> None:
    plans = json.loads((model / "plans.json").read_text())
    fn(plans)
    (model / "plans.json").write_text(json.dumps(plans))


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda p: p["configurations"]["3d_fullres"].update(normalization_schemes=["ZScoreNormalization"]), "normalization_schemes"),
        (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(
            network_class_name="dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"), "network_class_name"),
        (lambda p: p["configurations"]["3d_fullres"].update(patch_size=[48, 48]), "patch_size"),
        (lambda p: p["configurations"]["3d_fullres"].update(previous_stage="3d_lowres"), "previous_stage"),
        (lambda p: p.update(transpose_forward=[2, 0, 1]), "transpose_forward"),
        (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(dropout_op="torch.nn.Dropout3d"), "dropout_op"),
    ],
)
def test_unsupported_models_are_clear_errors(nnunet_model, tmp_path, edit, field):
    model = tmp_path / "m"
    shutil.copytree(nnunet_model, model)
    _edit_plans(model, edit)
    with pytest.raises(ImportErrorNnunet, match=field):
        import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", tmp_path / "out")


def test_unknown_label_names_are_named(nnunet_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(nnunet_model, model)
    ds = json.loads((model / "dataset.json").read_text())
    ds["labels"] = {("brain" if k == "spleen" else k): v for k, v in ds["labels"].items()}
    (model / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ImportErrorNnunet, match=r"labels \['brain'\] have no FLARE id"):
        import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "app", "import-nnunet", "--model", str(model), "--out", str(tmp_path / "o2")],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2 and "brain" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_that_does_not_fit_the_plans(nnunet_model, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(nnunet_model, model)
    _edit_plans(model, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(features_per_stage=[8, 16, 64]))
    with pytest.raises(ImportErrorNnunet, match="do not fit the plans"):
        import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", tmp_path / "out")
