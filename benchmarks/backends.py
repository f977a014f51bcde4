"""Backends side by side: start-up (process start to models ready) and the stages, per engine.

Builds a 512 x 512 x ~300 abdominal phantom (0.8 mm in-plane, 1 mm slices) from a fixed seed,
then runs ``python -m app predict`` on it as a fresh process per run, as the organisers do, once
per backend and repeat, interleaved so that a noisy neighbour hurts all backends alike. Prints the
medians, ratios to torch FP32 measured in the same run, peak RSS, and each backend's mask
agreement with torch FP32's.

Usage: python -m benchmarks.backends [--repeats 3] [--out bench/backends] [--backends torch:fp32 openvino:fp32 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CPU_DEFAULT = ["torch:fp32", "onnxruntime:fp32", "openvino:fp32", "openvino:bf16"]
CUDA_DEFAULT = ["torch:fp16", "onnxruntime:fp16"]
STAGES = ("startup", "read", "coarse", "fine", "cleanup", "write")


def run_once(image_dir: Path, out: Path, engine: str, precision: str, device: str) -> dict:
    """One prediction process; its stage timings, wall time and peak RSS (MiB)."""
    timings = out.with_suffix(".jsonl")
    timings.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "app", "predict", "-i", str(image_dir), "-o", str(out), "--device", device,
           "--backend", engine, "--precision", precision, "--timings", str(timings), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{engine}:{precision} failed:\n{stderr[-2000:]}")
    row = json.loads(timings.read_text().splitlines()[0])
    return {**{s: row.get(s, 0.0) for s in STAGES}, "total": row["total"], "wall": wall, "rss_mib": usage.ru_maxrss / 1024, "backend": row["backend"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backends", nargs="+", default=None, help="engine:precision pairs (default: the device's set)")
    ap.add_argument("--seed", type=int, nargs=2, default=[20261125, 0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="keep the phantom and masks here (default: a temp folder)")
    args = ap.parse_args()
    backends = args.backends or (CUDA_DEFAULT if args.device == "cuda" else CPU_DEFAULT)

    import SimpleITK as sitk

    from synthetic.phantoms import generate, write

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-backends-"))
    image_dir = root / "in"
    image_dir.mkdir(parents=True, exist_ok=True)
    write(generate(args.seed, fov="abdomen", slices=args.slices, spacing=(0.8, 1.0)), image_dir / "phantom_0000.nii.gz", None)

    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for r in range(args.repeats):
        for b in backends:
            engine, precision = b.split(":")
            runs[b].append(run_once(image_dir, root / f"{engine}-{precision}", engine, precision, args.device))
            print(f"[{r + 1}/{args.repeats}] {b}: fine {runs[b][-1]['fine']:.2f} s, wall {runs[b][-1]['wall']:.2f} s", file=sys.stderr)

    masks = {b: sitk.GetArrayFromImage(sitk.ReadImage(str(root / b.replace(":", "-") / "phantom.nii.gz"))) for b in backends}
    base = backends[0]
    med = {b: {k: statistics.median(run[k] for run in runs[b]) for k in (*STAGES, "total", "wall", "rss_mib")} for b in backends}
    print(f"\nphantom 512 x 512 x {args.slices}, 0.8 x 1 mm, seed {args.seed}; {args.device}; medians of {args.repeats}; ratios to {base}\n")
    print("| backend | startup (s) | coarse (s) | fine (s) | process wall (s) | x fine | x wall | peak RSS (MiB) | voxels = " + base + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b in backends:
        m, agree = med[b], float(np.mean(masks[b] == masks[base]))
        print(f"| {runs[b][0]['backend']} | {m['startup']:.2f} | {m['coarse']:.2f} | {m['fine']:.2f} | {m['wall']:.2f} | "
              f"{med[base]['fine'] / m['fine']:.2f} | {med[base]['wall'] / m['wall']:.2f} | {m['rss_mib']:.0f} | {agree:.5f} |")


if __name__ == "__main__":
    main()
