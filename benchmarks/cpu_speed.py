"""The engine against an earlier commit of itself on the CPU, in the same run: time, RAM and masks.

Checks the earlier commit out as a git worktree, builds phantoms from fixed seeds, and runs each
engine as the organisers do: one ``python -m app predict`` process per case, default options.
Prints per scan the medians of the repeats (process wall time, the stages from ``--timings``,
peak RSS) and the speed-up, then each engine's mean organ DSC against the phantoms' labels and
the agreement of the two engines' masks on the real scans in ../shared/data/ct.

Usage: python -m benchmarks.cpu_speed [--baseline b50d041] [--repeats 3] [--out bench/cpu_speed] [--weights DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ct" / "images"
# name -> (seed, field of view, slices, (in-plane, thickness) mm)
TIMED = {"abdomen_300": ([20261125, 1], "abdomen", 300, (0.8, 1.0)), "whole_body_350": ([20261125, 2], "whole-body", 350, (0.8, 5.0))}
SCORED = {"abdomen_a": ([777, 1], "abdomen", None, (0.8, 1.0)), "abdomen_b": ([777, 2], "abdomen", None, (0.7, 2.5)),
          "chest_abdomen_pelvis": ([777, 3], "chest-abdomen-pelvis", None, (0.8, 3.0)), "whole_body": ([777, 4], "whole-body", 350, (0.8, 5.0))}


def predict(code: Path, image: Path, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """One process over a folder holding one scan; wall time, peak RSS (MiB) and its --timings line."""
    folder = out / "in"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / image.name
    if not link.exists():
        link.symlink_to(image)
    timings = out / "timings.jsonl"
    timings.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "app", "predict", "-i", str(folder), "-o", str(out / "masks"), "--timings", str(timings), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{code}: {image.name} failed:\n{(proc.stderr.read() if proc.stderr else '')[-2000:]}")
    return {"wall": wall, "rss": usage.ru_maxrss / 1024, **json.loads(timings.read_text().splitlines()[0])}


def organ_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean DSC over the 13 organs either mask has."""
    scores = [2 * float(((pred == o) & (ref == o)).sum()) / float((pred == o).sum() + (ref == o).sum())
              for o in range(1, 14) if (pred == o).any() or (ref == o).any()]
    return float(np.mean(scores)) if scores else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="b50d041", help="the commit to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="keep phantoms and masks here (default: a temp folder)")
    ap.add_argument("--weights", type=Path, default=None, help="the current engine's weights folder (default: its shipped ones)")
    args = ap.parse_args()

    import SimpleITK as sitk

    from synthetic.phantoms import generate, write

    root = args.out or Path(tempfile.mkdtemp(prefix="cpu-speed-"))
    baseline = root / "baseline-code"
    if not baseline.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True, capture_output=True)
    engines = {args.baseline: baseline, "current": REPO}
    extra = {args.baseline: (), "current": ("--weights", str(args.weights.resolve())) if args.weights else ()}
    scans = root / "scans"
    for name, (seed, fov, slices, spacing) in {**TIMED, **SCORED}.items():
        image = scans / f"{name}_0000.nii.gz"
        if not image.exists():
            write(generate(seed, fov=fov, slices=slices, spacing=spacing), image, scans / "labels" / f"{name}.nii.gz")

    try:
        print(f"timing: medians of {args.repeats}, one process per case, engines interleaved", file=sys.stderr)
        rows = {(n, e): [] for n in TIMED for e in engines}
        for r in range(args.repeats):
            for name in TIMED:
                for engine, code in engines.items():
                    rows[name, engine].append(predict(code, scans / f"{name}_0000.nii.gz", root / "runs" / engine / name, extra[engine]))
                    print(f"[{r + 1}/{args.repeats}] {name} {engine}: {rows[name, engine][-1]['wall']:.1f} s", file=sys.stderr)
        masks: dict[tuple[str, str], np.ndarray] = {}
        for name in [*SCORED, *(p.name.replace("_0000.nii.gz", "") for p in sorted(SHARED.glob("*_0000.nii.gz")))]:
            image = scans / f"{name}_0000.nii.gz" if name in SCORED else SHARED / f"{name}_0000.nii.gz"
            for engine, code in engines.items():
                predict(code, image, root / "runs" / engine / name, extra[engine])
                masks[name, engine] = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "runs" / engine / name / "masks" / f"{name}.nii.gz")))
    finally:
        if args.out is None:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False, capture_output=True)

    base, cur = engines
    stages = ("startup", "read", "coarse", "fine", "cleanup", "write")
    print(f"\n| scan | engine | process wall (s) | {' | '.join(stages)} | peak RSS (MiB) | speed-up |")
    print("|---|---|---|" + "---|" * len(stages) + "---|---|")
    for name in TIMED:
        base_wall = statistics.median(r["wall"] for r in rows[name, base])
        for engine in engines:
            med = {k: statistics.median(r.get(k, float("nan")) for r in rows[name, engine]) for k in ("wall", "rss", *stages)}
            cells = " | ".join("-" if np.isnan(med[s]) else f"{med[s]:.2f}" for s in stages)
            print(f"| {name} | {engine} | {med['wall']:.2f} | {cells} | {med['rss']:.0f} | {base_wall / med['wall']:.2f} |")
    print("\n| phantom | mean organ DSC, " + base + " | mean organ DSC, current | difference |\n|---|---|---|---|")
    for name in SCORED:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(scans / "labels" / f"{name}.nii.gz")))
        a, b = organ_dice(masks[name, base], ref), organ_dice(masks[name, cur], ref)
        print(f"| {name} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    print("\n| real scan | mean organ DSC of current against " + base + " |\n|---|---|")
    for (name, engine), mask in masks.items():
        if engine == cur and name not in SCORED:
            print(f"| {name} | {organ_dice(mask, masks[name, base]):.4f} |")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
