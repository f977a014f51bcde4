"""How much accuracy and time each way of returning fine-grid predictions to the scan grid costs.

For every labelled real scan in ../shared/data/ct, the reference labels are turned into ideal
soft predictions on the fine model's grid (one-hot, trilinear to the fine spacing), then brought
back to the scan grid by the two engine modes:

  labels  argmax on the fine grid, nearest-neighbour up (FLARE22 winner's choice)
  logits  trilinear on the scores, one channel at a time, then argmax

and scored by DSC against the reference. This isolates the upsampling step from any model.
Usage: python -m benchmarks.upsampling [--spacing 2.5 1.2 1.2] [--repeats 3] [--device cpu]
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
from app.resample import argmax_resized, resize_image, resize_labels

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.5, 1.2, 1.2], help="fine grid spacing z y x (mm)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(f"device {device}, fine spacing {args.spacing} mm, {args.repeats} repeats (median)")
    print(f"{'case':<18} {'mode':<7} {'mean DSC':>8} {'time s':>8}")
    for label_path in sorted((SHARED / "labels").glob("*.nii.gz")):
        gt = read_scan(label_path)
        ref = torch.from_numpy(gt.array.astype(np.int64))
        organs = [int(v) for v in np.unique(gt.array) if v]
        fine_shape = resampled_shape(ref.shape, gt.spacing, tuple(args.spacing))
        onehot = torch.nn.functional.one_hot(ref, int(ref.max()) + 1).permute(3, 0, 1, 2).to(device, dtype)
        scores = resize_image(onehot, fine_shape)  # type: ignore[arg-type]
        del onehot
        shape = tuple(ref.shape)
        modes = {
            "labels": lambda s=scores, n=shape: resize_labels(s.argmax(0).to(torch.uint8), n),
            "logits": lambda s=scores, n=shape: argmax_resized(s, n),
        }
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
            pred = out.cpu().numpy()
            dsc = statistics.mean(dice(pred == o, gt.array == o) for o in organs)
            print(f"{label_path.name.split('.')[0]:<18} {mode:<7} {dsc:8.4f} {statistics.median(times):8.3f}")


if __name__ == "__main__":
    main()
