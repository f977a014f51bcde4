"""nnU-Net's own predictor against this engine on the same imported model and the same scans.

Each (method, case) runs in a fresh subprocess, so wall time includes model loading and reading and
writing NIfTI, and peak memory is the process's own (max RSS on the CPU; torch's peak allocation
on a GPU). Methods: nnU-Net's nnUNetPredictor (no mirroring, step 0.5, Gaussian); our engine with
--no-roi (the same settings: the like-for-like comparison); and our coarse-to-fine mode (a coarse
model in front, ROI + 20 mm), with its agreement to nnU-Net's output.

    python -m benchmarks.nnunet_vs_engine (--model NNUNET_DIR | --from-weights weights/fine) [--coarse weights/coarse]
                                          [--cases DIR] [--device cpu|cuda]

--from-weights writes one of our trained weights folders out as an nnU-Net v2 results folder
(plans, dataset.json, fold_all/checkpoint_final.pth), so a trained network is compared when no
nnU-Net model is at hand; without either, a randomly initialised folder of real-entry size is built
(5 stages, 16-256 features, 3 x 1.5 x 1.5 mm, patch 48 x 128 x 128): speed and memory are then
meaningful, agreement is not (a random network's labels flip with any change of interpolation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ct"

CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
t0 = time.perf_counter()
method, model, case, out, device, weights = sys.argv[1:7]
dev = torch.device(device)
if method == "nnunet":
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=dev.type == "cuda",
                        device=dev, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(model, use_folds=("all",), checkpoint_name="checkpoint_final.pth")
    data, props = SimpleITKIO().read_images([case])
    seg = p.predict_single_npy_array(data, props, None, None, False)
    SimpleITKIO().write_seg(seg, out, props)
else:
    from app.pipeline import Options, predict_folder
    import shutil, tempfile
    tmp = Path(tempfile.mkdtemp()); shutil.copy(case, tmp / Path(case).name)
    r = predict_folder(tmp, Path(out).parent, Options(weights=Path(weights), device=device, use_roi=method == "roi", keep_largest=()))
    assert r[0].ok, r[0].error
    produced = Path(out).parent / r[0].name.replace("_0000.nii.gz", ".nii.gz")
    produced.rename(out)
peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak}))
"""


def run(method: str, model: Path, case: Path, out: Path, device: str, weights: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, method, str(model), str(case), str(out), device, str(weights)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {case.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path, lut: np.ndarray | None) -> float:
    """Mean DSC over the labels either mask has (b mapped through lut to FLARE ids)."""
    import SimpleITK as sitk

    from evaluation.metrics import dice

    x = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
    if lut is not None:
        y = lut[y]
    labels = sorted((set(np.unique(x)) | set(np.unique(y))) - {0})
    return float(np.mean([dice(x == v, y == v) for v in labels])) if labels else 1.0


def demo_model(root: Path) -> Path:
    """A random nnU-Net folder of real-entry size (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    from tests import test_nnunet as t

    t.ARCH.update(n_stages=5, features_per_stage=[16, 32, 64, 128, 256], kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 4,
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    return t.make_nnunet_folder(root, spacing=(3.0, 1.5, 1.5), patch=(48, 128, 128))


def export_as_nnunet(weights: Path, root: Path) -> Path:
    """Our weights folder as an nnU-Net v2 results folder (the inverse of app.convert.nnunet_import)."""
    import re

    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO))
    from tests import test_nnunet as t

    cfg = json.loads((weights / "config.json").read_text())
    a = cfg["architecture"]
    arch = dict(t.ARCH, n_stages=len(a["features"]), features_per_stage=a["features"], kernel_sizes=a["kernel_sizes"], strides=a["strides"],
                n_conv_per_stage=a["n_conv_per_stage"], n_conv_per_stage_decoder=a["n_conv_per_stage_decoder"])
    plans = t._plans(cfg["input"]["spacing"], cfg["input"]["patch_size"])
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"] = arch
    lo, hi = cfg["intensity"]["clip"]
    plans["foreground_intensity_properties_per_channel"]["0"].update(percentile_00_5=lo, percentile_99_5=hi, mean=cfg["intensity"]["mean"], std=cfg["intensity"]["std"])
    dataset = {"channel_names": {"0": "CT"}, "labels": {n: int(c) for c, n in cfg["labels"].items()}, "numTraining": 1, "file_ending": ".nii.gz"}
    kw = dict(arch, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, dropout_op=None, nonlin=torch.nn.LeakyReLU)
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
    (root / "fold_all").mkdir()
    torch.save({"network_weights": state, "trainer_name": "nnUNetTrainer", "init_args": {"configuration": "3d_fullres"},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, root / "fold_all" / "checkpoint_final.pth")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--from-weights", type=Path, default=None, help="export this weights folder as the nnU-Net model")
    ap.add_argument("--coarse", type=Path, default=REPO / "weights" / "coarse")
    ap.add_argument("--cases", type=Path, default=SHARED / "images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    from app.labels import flare_id
    from app.convert.nnunet_import import import_nnunet

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.model:
            model = args.model
        elif args.from_weights:
            model = export_as_nnunet(args.from_weights, tmp / "nnunet")
        else:
            model = demo_model(tmp / "nnunet")
        weights = tmp / "weights"
        import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", weights / "fine")
        if args.coarse.is_dir():
            shutil.copytree(args.coarse, weights / "coarse")
        labels = json.loads((model / "dataset.json").read_text())["labels"]
        lut = np.zeros(max(labels.values()) + 1, np.uint8)
        for name, value in labels.items():
            lut[value] = flare_id(name) or 0
        methods = ["nnunet", "noroi"] + (["roi"] if (weights / "coarse").is_dir() else [])
        print(f"model {model.name}, device {args.device}, median of {args.repeats}")
        print(f"{'case':<28} {'method':<8} {'seconds':>8} {'peak MiB':>9} {'speed-up':>9} {'mem ratio':>9} {'agreement':>9}")
        for case in sorted(args.cases.glob("*.nii.gz")):
            res = {}
            for m in methods:
                runs = [run(m, model, case, tmp / f"{m}.nii.gz", args.device, weights) for _ in range(args.repeats)]
                res[m] = {"seconds": statistics.median(r["seconds"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs)}
            for m in methods:
                r = res[m]
                base = res["nnunet"]
                agree = "-" if m == "nnunet" else f"{agreement(tmp / f'{m}.nii.gz', tmp / 'nnunet.nii.gz', lut):.4f}"
                print(f"{case.name:<28} {m:<8} {r['seconds']:8.2f} {r['peak_mib']:9.0f} {base['seconds'] / r['seconds']:9.2f} "
                      f"{r['peak_mib'] / base['peak_mib']:9.2f} {agree:>9}")


if __name__ == "__main__":
    main()
