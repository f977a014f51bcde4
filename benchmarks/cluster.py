"""Throughput of ``python -m app cluster`` against ``predict`` on the same folder, in the same run.

    python -m benchmarks.cluster [--cases 8] [--size 256] [--weights weights] [--repeats 1]

A folder of phantoms from fixed seeds (abdomen, ``--size`` voxels in-plane at 0.8-1.0 mm,
2.5 mm slices) is segmented by ``predict`` (one process, every core) and by ``cluster`` with
1 and 2 local Ray workers (one core each), each a fresh process, wall time from launch to exit
(Ray's start and every model load included). Printed per row: cases per minute, the model loads
per worker process (must be 1), and the masks against ``predict`` run with one thread, as a worker
computes (identical expected; OpenVINO's FP32 results move with the thread count).
Then what N workers would give: N x the per-worker rate measured here, and the bound a shared
filesystem sets (bytes read and written per case, measured here, against its bandwidth).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, cases: int, size: int) -> None:
    from synthetic.phantoms import generate, write

    folder.mkdir(parents=True)
    for i in range(cases):
        ph = generate([4242, i], spacing=(0.8 + 0.2 * (i % 2), 2.5), size=size, slices=100)
        write(ph, folder / f"phantom{i:02d}_0000.nii.gz", None)


def run(cmd: list[str], threads: int | None = None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "app", *cmd, "--quiet"], cwd=REPO, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:1])} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return time.perf_counter() - t0


def masks(folder: Path) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--weights", type=Path, default=REPO / "weights")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        make_folder(tmp / "in", args.cases, args.size)
        common = ["-i", str(tmp / "in"), "--weights", str(args.weights), "--device", "cpu"]
        # (command, threads): a worker computes with one core (Ray sets OMP_NUM_THREADS=1), and
        # OpenVINO's FP32 sums depend on the thread count, so predict with one thread is the mask reference
        rows = {"predict (1 process)": (["predict"], None), "predict, 1 thread": (["predict"], 1),
                "cluster, 1 worker": (["cluster", "--workers", "1"], None), "cluster, 2 workers": (["cluster", "--workers", "2"], None)}
        results = {}
        for label, (cmd, threads) in rows.items():
            out = tmp / label.replace(" ", "_").replace(",", "")
            seconds = []
            for _ in range(args.repeats):
                for p in out.glob("*"):
                    p.unlink()
                seconds.append(run([*cmd, *common, "-o", str(out)], threads))
            results[label] = (statistics.median(seconds), out)
        reference = masks(results["predict, 1 thread"][1])
        in_bytes = sum(p.stat().st_size for p in (tmp / "in").glob("*.nii.gz")) / args.cases
        out_bytes = sum(p.stat().st_size for p in results["predict (1 process)"][1].glob("*.nii.gz")) / args.cases
        print(f"{args.cases} phantoms, {args.size} x {args.size} x 100, shipped weights, CPU, median of {args.repeats}")
        print(f"{'run':<22} {'wall (s)':>9} {'cases/min':>10} {'vs predict':>11} {'loads/worker':>13} {'workers':>8}  masks vs predict, 1 thread")
        base = results["predict (1 process)"][0]
        per_worker_rate = None
        for label, (wall, out) in results.items():
            loads, workers = "-", "-"
            summary = out / "cluster_summary.csv"
            if summary.is_file():
                with open(summary) as f:
                    records = list(csv.DictReader(f))
                workers = str(len({r["worker"] for r in records}))
                loads = "/".join(sorted({r["models_loaded"] for r in records}))  # the process's count when it finished a case
                if label.endswith("1 worker"):
                    per_worker_rate = args.cases / wall * 60
            got = masks(out)
            if got.keys() != reference.keys():
                same = "MISSING"
            else:
                differ = sum(int((got[k] != reference[k]).sum()) for k in got)
                same = "identical" if differ == 0 else f"{differ / sum(m.size for m in got.values()):.5%} differ"
            print(f"{label:<22} {wall:9.1f} {args.cases / wall * 60:10.2f} {base / wall:11.2f} {loads:>13} {workers:>8}  {same}")
        print(f"\nper case: {in_bytes / 2**20:.1f} MiB read, {out_bytes / 2**20:.2f} MiB written")
        if per_worker_rate:
            print("N workers (one core each, per-worker rate as measured with 1 worker; a shared filesystem of B MiB/s caps at "
                  f"B / {(in_bytes + out_bytes) / 2**20:.1f} cases/s):")
            for n in (1, 2, 4, 8, 16):
                print(f"  N = {n:>2}: {n * per_worker_rate:8.1f} cases/min before the filesystem bound")


if __name__ == "__main__":
    main()
