"""How much accuracy and time each way of returning fine-grid predictions to the scan grid costs.

For every labelled real scan in ../shared/data/ct, the reference labels are turned into ideal
soft predictions on the fine model's grid (one-hot, trilinear to the fine spacing), then brought
back to the scan grid by the two engine modes:

  labels        argmax on the fine grid, nearest-neighbour up (FLARE22 winner's choice)
  logits        the engine's: the trilinear argmax, interpolated only where the 8 source voxels
                disagree (label boundaries)
  logits-every  the same argmax from every channel resized, one channel at a time (the engine
                before 2026-11-25; the masks must agree)

and scored by DSC against the reference. This isolates the upsampling step from any model.
--phantom adds a 512x512x300 abdominal phantom (0.8 x 1 mm, fixed seed) and its labels.
Usage: python -m benchmarks.upsampling [--spacing 2.5 1.2 1.2] [--repeats 3] [--device cpu] [--phantom]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from app.geometry import resampled_shape
from app.nifti import read_scan
from app.resample import argmax_resized, channel_argmax, resize_image, resize_labels, running_argmax

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.5, 1.2, 1.2], help="fine grid spacing z y x (mm)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--phantom", action="store_true", help="add a 512x512x300 abdominal phantom")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(f"device {device}, fine spacing {args.spacing} mm, {args.repeats} repeats (median)")
    print(f"{'case':<18} {'mode':<13} {'mean DSC':>8} {'time s':>8} {'voxels unlike logits-every':>27}")
    cases = []
    for label_path in sorted((SHARED / "labels").glob("*.nii.gz")):
        array, spacing, _ = read_scan(label_path).layout("LPS")
        cases.append((label_path.name.split(".")[0], array, spacing))
    if args.phantom:
        from synthetic.phantoms import generate

        ph = generate([20261125, 0], fov="abdomen", spacing=(0.8, 1.0), slices=300)
        cases.append(("phantom 512x300", ph.labels, ph.spacing))
    for name, array, spacing in cases:
        ref = torch.from_numpy(array.astype(np.int64))
        organs = [int(v) for v in np.unique(array) if v]
        fine_shape = resampled_shape(ref.shape, spacing, tuple(args.spacing))
        onehot = torch.nn.functional.one_hot(ref, int(ref.max()) + 1).permute(3, 0, 1, 2).to(device, dtype)
        scores = resize_image(onehot, fine_shape)  # type: ignore[arg-type]
        del onehot
        shape = tuple(ref.shape)
        modes = {
            "labels": lambda s=scores, n=shape: resize_labels(channel_argmax(s), n),
            "logits-every": lambda s=scores, n=shape: running_argmax(s, lambda c, n=n: resize_image(c, n)),
            "logits": lambda s=scores, n=shape: argmax_resized(s, n),
        }
        outs = {}
        for mode, fn in modes.items():
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            outs[mode] = pred = out.cpu().numpy()
            dsc = statistics.mean(dice(pred == o, array == o) for o in organs)
            unlike = str(int((pred != outs["logits-every"]).sum())) if mode == "logits" else ""
            print(f"{name:<18} {mode:<13} {dsc:8.4f} {statistics.median(times):8.3f} {unlike:>27}")


if __name__ == "__main__":
    main()
