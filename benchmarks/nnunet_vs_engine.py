"""nnU-Net's own predictor against this engine on the same imported model and the same scans.

Each (method, case) runs in a fresh subprocess, so wall time includes model loading and reading and
writing NIfTI, and peak memory is the process's own (max RSS on the CPU; torch's peak allocation
on a GPU). Methods: nnU-Net's nnUNetPredictor (no mirroring, step 0.5, Gaussian); our engine with
--no-roi (the same settings: the like-for-like comparison) as imported (``exact``: nnU-Net's
B-spline resampling and FP16 tile sums; on the default backend, and on torch: ``exact-torch``) and
with those two set back to ours (``trilinear``); with
--coarse, also the coarse-to-fine mode (a coarse model in front, ROI + 20 mm). The imported model is
exported to ONNX first, so the engine runs its default backend (OpenVINO on the CPU).

    python -m benchmarks.nnunet_vs_engine (--model NNUNET_DIR | --from-weights weights/fine) [--coarse weights/coarse]
                                          [--cases DIR] [--phantoms] [--device cpu|cuda] [--repeats N] [--methods ...]

--phantoms adds phantoms at 0.6-1.0 mm in-plane and 0.7, 0.8, 1.0, 2.5 and 5 mm slices
(320 x 320 voxels in-plane, about 120 mm long, fixed seeds).

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
method, model, case, out, device, weights, use_roi, backend = sys.argv[1:9]
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
    r = predict_folder(tmp, Path(out).parent, Options(weights=Path(weights), device=device, use_roi=use_roi == "1", keep_largest=(), laterality="header", progress=False,
                                                         backend=backend, precision="fp32"))  # parity: FP32 on every CPU
    assert r[0].ok, r[0].error
    produced = Path(out).parent / r[0].name.replace("_0000.nii.gz", ".nii.gz")
    produced.rename(out)
peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak}))
"""


def run(method: str, model: Path, case: Path, out: Path, device: str, weights: Path, use_roi: bool = False, backend: str = "auto") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, method, str(model), str(case), str(out), device, str(weights), str(int(use_roi)), backend],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {case.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: Path, b: Path, lut: np.ndarray | None) -> tuple[float, float]:
    """Mean DSC over the labels either mask has (b mapped through lut to FLARE ids), and the share of equal voxels."""
    import SimpleITK as sitk

    from evaluation.metrics import dice

    x = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
    if lut is not None:
        y = lut[y]
    labels = sorted((set(np.unique(x)) | set(np.unique(y))) - {0})
    return (float(np.mean([dice(x == v, y == v) for v in labels])) if labels else 1.0), float((x == y).mean())


def demo_model(root: Path) -> Path:
    """A random nnU-Net folder of real-entry size (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    from tests import test_nnunet as t

    t.ARCH.update(n_stages=5, features_per_stage=[16, 32, 64, 128, 256], kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 4,
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    return t.make_nnunet_folder(root, spacing=(3.0, 1.5, 1.5), patch=(48, 128, 128))


def nnunet_folder_from_weights(weights: Path, root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.test_nnunet import nnunet_folder_from_weights as build

    return build(weights, root)


PHANTOM_SPACINGS = [(0.6, 0.7), (0.7, 0.8), (0.8, 1.0), (0.9, 2.5), (1.0, 5.0)]  # (in-plane, slice) mm


def write_phantoms(folder: Path) -> None:
    from synthetic.phantoms import generate, write

    for i, (inplane, thick) in enumerate(PHANTOM_SPACINGS):
        ph = generate([3016, i], spacing=(inplane, thick), size=320, slices=int(round(120 / thick)))
        write(ph, folder / f"phantom_{inplane}x{thick}_0000.nii.gz", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--from-weights", type=Path, default=None, help="export this weights folder as the nnU-Net model")
    ap.add_argument("--coarse", type=Path, default=None, help="a coarse model folder: adds the coarse-to-fine row")
    ap.add_argument("--cases", type=Path, default=SHARED / "images")
    ap.add_argument("--phantoms", action="store_true", help="add phantoms at other spacings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["nnunet", "exact", "exact-torch", "trilinear"],
                    choices=["nnunet", "exact", "exact-torch", "trilinear"], help="nnunet is always run (the reference)")
    args = ap.parse_args()
    from app.convert.export_onnx import export_onnx
    from app.convert.nnunet_import import import_nnunet
    from app.labels import flare_id

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.model:
            model = args.model
        elif args.from_weights:
            model = nnunet_folder_from_weights(args.from_weights, tmp / "nnunet")
        else:
            model = demo_model(tmp / "nnunet")
        weights = {"exact": tmp / "exact", "trilinear": tmp / "trilinear"}
        import_nnunet(model, ["all"], "checkpoint_final.pth", "fine", weights["exact"] / "fine")
        export_onnx(weights["exact"] / "fine")
        shutil.copytree(weights["exact"], weights["trilinear"])
        config = weights["trilinear"] / "fine" / "config.json"
        cfg = json.loads(config.read_text())
        cfg["input"].update(resample="trilinear", blending="fp32")
        config.write_text(json.dumps(cfg, indent=1))
        methods = ["nnunet", *[m for m in args.methods if m != "nnunet"]]
        if args.coarse:
            shutil.copytree(args.coarse, weights["exact"] / "coarse")
            methods.append("roi")
        labels = json.loads((model / "dataset.json").read_text())["labels"]
        lut = np.zeros(max(labels.values()) + 1, np.uint8)
        for name, value in labels.items():
            lut[value] = flare_id(name) or 0
        cases = sorted(args.cases.glob("*.nii.gz"))
        if args.phantoms:
            (tmp / "phantoms").mkdir()
            write_phantoms(tmp / "phantoms")
            cases += sorted((tmp / "phantoms").glob("*.nii.gz"))
        print(f"model {model.name}, device {args.device}, median of {args.repeats}")
        print(f"{'case':<30} {'spacing (mm)':<18} {'method':<10} {'seconds':>8} {'peak MiB':>9} {'speed-up':>9} {'mem ratio':>9} "
              f"{'agreement':>9} {'voxels':>8}")
        for case in cases:
            res = {}
            for m in methods:
                w = weights["trilinear" if m == "trilinear" else "exact"]
                backend = "torch" if m == "exact-torch" else "auto"
                runs = [run(m, model, case, tmp / f"{m}.nii.gz", args.device, w, m == "roi", backend) for _ in range(args.repeats)]
                res[m] = {"seconds": statistics.median(r["seconds"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs)}
            spacing = "x".join(f"{s:.2f}".rstrip("0").rstrip(".") for s in _spacing(case))
            for m in methods:
                r, base = res[m], res["nnunet"]
                agree = ("-", "-") if m == "nnunet" else agreement(tmp / f"{m}.nii.gz", tmp / "nnunet.nii.gz", lut)
                agree_s = agree if m == "nnunet" else (f"{agree[0]:.4f}", f"{agree[1]:.5f}")
                print(f"{case.name:<30} {spacing:<18} {m:<10} {r['seconds']:8.2f} {r['peak_mib']:9.0f} {base['seconds'] / r['seconds']:9.2f} "
                      f"{r['peak_mib'] / base['peak_mib']:9.2f} {agree_s[0]:>9} {agree_s[1]:>8}", flush=True)


def _spacing(case: Path) -> tuple[float, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(case))
    reader.ReadImageInformation()
    return tuple(reader.GetSpacing()[::-1])


if __name__ == "__main__":
    main()
