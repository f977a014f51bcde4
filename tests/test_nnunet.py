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
from synthetic.phantoms import generate, write  # noqa: E402
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


def nnunet_folder_from_weights(weights: Path, root: Path, spacing=None, patch=None, folds=("all",), seed=0) -> Path:
    """One of our weights folders as an nnU-Net v2 results folder (the importer's inverse), so that a
    trained network, whose labels are stable, is compared. Plans may claim another ``spacing`` and
    ``patch``; folds after the first are the same network with 1 % multiplicative noise (an ensemble
    whose members differ, as trained folds do)."""
    import re

    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from safetensors.torch import load_file

    cfg = json.loads((weights / "config.json").read_text())
    a = cfg["architecture"]
    arch = dict(ARCH, n_stages=len(a["features"]), features_per_stage=a["features"], kernel_sizes=a["kernel_sizes"], strides=a["strides"],
                n_conv_per_stage=a["n_conv_per_stage"], n_conv_per_stage_decoder=a["n_conv_per_stage_decoder"])
    plans = _plans(list(spacing or cfg["input"]["spacing"]), list(patch or cfg["input"]["patch_size"]))
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"] = arch
    lo, hi = cfg["intensity"]["clip"]
    plans["foreground_intensity_properties_per_channel"]["0"].update(percentile_00_5=lo, percentile_99_5=hi, mean=cfg["intensity"]["mean"], std=cfg["intensity"]["std"])
    dataset = {"channel_names": {"0": "CT"}, "labels": {n: int(c) for c, n in cfg["labels"].items()}, "numTraining": 1, "file_ending": ".nii.gz"}
    batch_norm = a.get("norm", "instance") == "batch"  # nnU-Net's BatchNorm3d runs on its stored statistics in eval mode, as ours does
    if batch_norm:  # arch is the plans' arch_kwargs
        arch["norm_op"] = "torch.nn.modules.batchnorm.BatchNorm3d"
    kw = dict(arch, conv_op=torch.nn.Conv3d, norm_op=torch.nn.BatchNorm3d if batch_norm else torch.nn.InstanceNorm3d, dropout_op=None,
              nonlin=torch.nn.LeakyReLU)
    net = PlainConvUNet(input_channels=1, num_classes=len(cfg["labels"]), deep_supervision=False, **kw)
    ours = load_file(str(weights / cfg["files"][0]))
    last = len(a["features"]) - 2
    state = {}
    for key, value in net.state_dict().items():
        k = re.sub(r"^decoder\.encoder\.", "encoder.", key).replace("all_modules.0", "conv").replace("all_modules.1", "norm")
        k = re.sub(r"^encoder\.stages\.(\d+)\.0\.convs\.", r"encoder.stages.\1.", k)
        k = re.sub(r"^decoder\.stages\.(\d+)\.convs\.", r"decoder.stages.\1.", k)
        k = re.sub(rf"^decoder\.seg_layers\.{last}\.", "decoder.seg.", k)
        state[key] = ours.get(k, value)
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    net.load_state_dict(state)
    noise = torch.Generator().manual_seed(seed)
    for i, fold in enumerate(folds):
        if i:  # parameters, not state-dict entries: the decoder holds the encoder's tensors under a second name
            with torch.no_grad():
                for p in net.parameters():
                    p.mul_(1 + 0.01 * torch.randn(p.shape, generator=noise))
        (root / f"fold_{fold}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "init_args": {"configuration": "3d_fullres"},
                    "inference_allowed_mirroring_axes": (0, 1, 2)}, root / f"fold_{fold}" / "checkpoint_final.pth")
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
    resample = {"scheme": "nnunet", "order": 3, "order_z": 0, "logits_order": 1, "logits_order_z": 0, "force_separate_z": None,
                "anisotropy_threshold": 3.0}
    assert cfg["input"] == {"spacing": [3.0, 3.0, 3.0], "patch_size": [16, 48, 48], "step": 0.5, "mirror_axes": [], "orientation": "stored",
                            "crop_nonzero": True, "resample": resample, "blending": "nnunet"}
    assert cfg["intensity"] == {"clip": [-150.0, 400.0], "mean": 80.0, "std": 120.0}
    assert cfg["labels"]["1"] == "spleen" and cfg["files"] == ["fold_all.safetensors"]


def test_batch_norm_models_import_with_their_stored_statistics(tmp_path):
    """nnU-Net's BatchNorm3d variant: the importer keeps the running statistics (nnU-Net infers with
    them) and its own check against nnU-Net's network passes only if they are used."""
    from safetensors.torch import load_file

    weights = make_weights(tmp_path / "w", fine_norm="batch")
    model = nnunet_folder_from_weights(weights / "fine", tmp_path / "nnunet")
    cfg = import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", tmp_path / "out")
    assert cfg["architecture"]["norm"] == "batch"
    ours, imported = load_file(weights / "fine" / "model.safetensors"), load_file(tmp_path / "out" / "fold_all.safetensors")
    stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(ours[k], imported[k]) for k in stats)


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
    results = predict_folder(inputs, tmp_path / "out", Options(weights=weights, device="cpu", use_roi=False, keep_largest=(), laterality="header"))
    assert all(r.ok for r in results)
    model = load_model(read_spec(weights / "fine"), Placement("torch", "cpu", "fp32"))
    for case in cases:
        predictor, seg = nnunet_predict(nnunet_model, case)
        theirs = _to_flare(seg)
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / case.name.replace("_0000", ""))))
        # The whole volume, faces included: imported models blend tiles with nnU-Net's own FP16
        # arithmetic ("blending": "nnunet"), whose coarse rounding where the outer tiles' weights
        # underflow once cost 1 % of the voxels at the faces.
        assert (ours == theirs).mean() >= 0.999, (case.name, (ours == theirs).mean())
        present = [int(v) for v, n in zip(*np.unique(theirs, return_counts=True)) if v and n >= 200]
        assert len(present) >= 5, present
        for organ in present:
            assert dice(ours == organ, theirs == organ) >= 0.995, (case.name, organ)
        # logits on the same normalised input, both sliding windows, within a few FP16 steps everywhere
        array, _, _ = read_scan(case).layout("stored")
        box = bounding_box(array != 0)
        x = model.normalize(torch.from_numpy(array[box.slices]))
        ref = predictor.predict_sliding_window_return_logits(x[None]).float()
        got = model.logits(x)
        scale = float(ref.abs().max())
        assert float((got - ref).abs().max()) <= 0.002 * scale, (float((got - ref).abs().max()), scale)


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
    results = predict_folder(case_only, tmp_path / "out", Options(weights=tmp_path / "w", device="cpu", use_roi=False, keep_largest=(), laterality="header"))
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
        options = Options(weights=tmp_path / "w", device="cpu", use_roi=False, keep_largest=(), laterality="header", backend=engine, precision=precision,
                          progress=False)
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
        (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(norm_op="torch.nn.modules.batchnorm.BatchNorm2d"), "norm_op"),
        (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="resample_torch_fornnunet"), "resampling_fn_data"),
        (lambda p: p["configurations"]["3d_fullres"]["resampling_fn_probabilities_kwargs"].update(order=2), "resampling_fn_probabilities_kwargs.order"),
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


# --- nnU-Net's masks at spacings other than the model's -----------------------------------------

@pytest.mark.parametrize("case, target", [(0, (3.0, 1.5, 1.5)), (1, (3.0, 1.5, 1.5)), (2, (1.0, 0.8, 0.8)), (2, (5.0, 0.8, 0.8)),
                                          (0, (2.0, 0.7, 0.7))])
def test_resampling_is_nnunets_own_on_real_scans(case, target):
    """Image (order 3) and logits (order 1) both ways, on real scans: separate-z and 3-D paths."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    from app.resample import resize_nnunet

    image = sitk.ReadImage(str(REAL_CASES[case]))
    array = ((np.clip(sitk.GetArrayFromImage(image).astype(np.float32), -150, 400) - 80) / 120).astype(np.float32)
    spacing = image.GetSpacing()[::-1]
    shape = tuple(int(n) for n in compute_new_shape(array.shape, spacing, target))
    ref = resample_data_or_seg_to_shape(array[None], shape, spacing, target, False, 3, 0, None)[0]
    got = resize_nnunet(torch.from_numpy(array), shape, spacing, target, 3, 0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)
    logits = np.random.default_rng(case).normal(size=shape).astype(np.float32)
    ref = resample_data_or_seg_to_shape(logits[None], array.shape, target, spacing, False, 1, 0, None)[0]
    got = resize_nnunet(torch.from_numpy(logits), array.shape, target, spacing, 1, 0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)


def _agreement(ours: np.ndarray, theirs: np.ndarray, min_voxels: int = 100) -> tuple[float, float]:
    """Share of equal voxels and mean DSC over the labels either mask has at least ``min_voxels`` of.

    Why the floor: one voxel at a near-tie moves the DSC of a 31-voxel speck by 0.02 (a stray liver
    speck on a phantom crop, 31 voxels against nnU-Net's 30, while 99.998 % of voxels agree); the
    share of equal voxels still counts every label.
    """
    labels = [v for v in sorted((set(np.unique(ours)) | set(np.unique(theirs))) - {0})
              if max((ours == v).sum(), (theirs == v).sum()) >= min_voxels]
    return float((ours == theirs).mean()), float(np.mean([dice(ours == v, theirs == v) for v in labels]))


def _central_columns(src: Path, dst: Path, size: int = 256) -> Path:
    """A real scan's central ``size`` x ``size`` columns, every slice, same spacing and direction."""
    image = sitk.ReadImage(str(src))
    nx, ny = image.GetSize()[:2]
    x0, y0 = max(0, (nx - size) // 2), max(0, (ny - size) // 2)
    sitk.WriteImage(image[x0:x0 + size, y0:y0 + size, :], str(dst))
    return dst


PHANTOM_SPACINGS = {"phantom_0.8x2.5": (0.8, 2.5, 48), "phantom_0.7x5": (0.7, 5.0, 24), "phantom_0.6x1": (0.6, 1.0, 72)}


def _other_spacing_cases(folder: Path, real: bool = True) -> list[Path]:
    """The real scans (512 x 512 ones cut to their central 256 x 256 columns, for time) and phantoms
    at spacings other than the model's; 5 mm slices take nnU-Net's separate-z path."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = [_central_columns(c, folder / c.name) for c in REAL_CASES] if real else []
    for i, (name, (inplane, thick, slices)) in enumerate(PHANTOM_SPACINGS.items()):
        write(generate([2611, i], spacing=(inplane, thick), size=192, slices=slices), folder / f"{name}_0000.nii.gz", None)
        cases.append(folder / f"{name}_0000.nii.gz")
    return cases


@pytest.mark.parametrize("variant", ["3x1.5x1.5", "two folds", "anisotropic 5x0.8x0.8"])
def test_imported_model_gives_nnunets_masks_at_other_spacings(variant, tmp_path):
    """The shipped fine network written out as an nnU-Net folder, imported: with nnU-Net's resampling
    (B-splines, separate z) the engine's masks are nnU-Net's at every spacing (trilinear gave 0.77-0.94)."""
    folds = ("0", "1") if variant == "two folds" else ("all",)
    spacing, patch = ((5.0, 0.8, 0.8), (16, 128, 128)) if variant.startswith("anisotropic") else (None, None)
    model = nnunet_folder_from_weights(REPO / "weights" / "fine", tmp_path / "nnunet", spacing, patch, folds)
    cfg = import_nnunet(model, list(folds), "checkpoint_final.pth", "fine", tmp_path / "w" / "fine")
    assert cfg["input"]["resample"]["scheme"] == "nnunet"
    cases = _other_spacing_cases(tmp_path / "in", real=variant == "3x1.5x1.5")
    if variant != "3x1.5x1.5":
        shutil.copy(REAL_CASES[-1], tmp_path / "in" / REAL_CASES[-1].name)  # TS_example_sm, 3 mm
        cases.append(tmp_path / "in" / REAL_CASES[-1].name)
    results = predict_folder(tmp_path / "in", tmp_path / "out", Options(weights=tmp_path / "w", device="cpu", use_roi=False,
                                                                         keep_largest=(), laterality="header", backend="torch", progress=False))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    lut = np.zeros(len(cfg["labels"]), np.uint8)
    for channel, name in cfg["labels"].items():
        lut[int(channel)] = flare_id(name) or 0
    for case in cases:
        _, seg = nnunet_predict(model, case, folds=folds)
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / case.name.replace("_0000", ""))))
        voxels, mean_dsc = _agreement(ours, lut[seg])
        assert voxels >= 0.999 and mean_dsc >= 0.999, (variant, case.name, voxels, mean_dsc)
