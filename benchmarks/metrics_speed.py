"""Time evaluation.metrics against the organisers' FLARE22 scorer on the same cases.

Two sets, each scored against a perturbed copy of itself (shifted by (2, -3, 1) voxels, so every
organ has real surface errors): the labelled real scans in ../shared/data/ct (small: 20-32 slices),
and one synthetic phantom label map of real size (512x512x300, 13 organs). Prints the median wall
time of each scorer over --repeats runs and the ratio.

    python -m benchmarks.metrics_speed [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from evaluation.metrics import score_folder
from synthetic.phantoms import generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from FLARE22_DSC_NSD_TEST.DSC_NSD_TEST import DSC_NSD

    np.Inf = np.inf  # type: ignore[attr-defined]  # the organisers' code predates NumPy 2
    real = []
    for path in sorted((SHARED / "labels").glob("*.nii.gz")):
        img = nib.load(str(path))
        real.append((path.name, np.asarray(img.dataobj).astype(np.uint8), img.affine))
    ph = generate(7, slices=300, spacing=(0.8, 1.0))
    # canonical [z, y, x] -> nibabel's (x, y, z) axis order
    phantom = [("phantom_512x512x300.nii.gz", np.ascontiguousarray(ph.labels.transpose(2, 1, 0)), np.diag([0.8, 0.8, 1.0, 1.0]))]
    for title, cases in (("real scans (../shared)", real), ("phantom 512x512x300", phantom)):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "gt").mkdir()
            (root / "pred").mkdir()
            for name, lab, affine in cases:
                nib.save(nib.Nifti1Image(lab, affine), str(root / "gt" / name))
                nib.save(nib.Nifti1Image(np.roll(lab, (2, -3, 1), axis=(0, 1, 2)), affine), str(root / "pred" / name))
            ours, theirs = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                score_folder(root / "pred", root / "gt", "flare22", workers=1, progress=False)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    DSC_NSD(str(root / "pred") + "/", str(root / "gt") + "/", tmp, "official.csv")
                theirs.append(time.perf_counter() - t0)
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{title}: {len(cases)} case(s), median of {args.repeats}: evaluation.metrics {o:.2f} s (1 worker), "
              f"organisers' flare22-dsc-nsd-test {t:.2f} s, speed-up x{t / o:.1f}")


if __name__ == "__main__":
    main()
