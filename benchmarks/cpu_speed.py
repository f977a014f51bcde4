"""The engine against an earlier commit of itself on the CPU, in the same run: time, RAM and masks.

Checks the earlier commit out as a git worktree, builds phantoms from fixed seeds, and runs each
engine as the organisers do: one ``python -m app predict`` process per case, default options.
Prints per scan the medians of the repeats (process wall time, the stages from ``--timings``,
peak RSS) and the speed-up, then each engine's mean organ DSC against the phantoms' labels and
the agreement of the masks on the real scans in ../shared/data/ct (labelled or not): the current
engine against the earlier commit, and each ``--precision`` or ``--also`` run against the current default.
Last, the engine alone: the earlier commit's own weights, configs as they were, run by the
current engine (default backend and precision) against the earlier commit, so that a change of
weights since then does not hide what the rest of the engine changed.

Usage: python -m benchmarks.cpu_speed [--baseline b50d041] [--repeats 3] [--out bench/cpu_speed] [--weights DIR] [--precision bf16]
       [--also=--tta]
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
SHARED = REPO.parent / "shared" / "data" / "ct"
REAL = ("images", "unlabelled")  # the real scans of SHARED, with labels or without
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


def weights_for_current_engine(baseline: Path, out: Path) -> Path:
    """The baseline checkout's weights, configs as they were (their tiles: one pass is only sound
    for networks with stored norm statistics, which the baseline's are not), with an ONNX export
    for the current engine's backends."""
    from app.convert.export_onnx import export_onnx

    for role in ("coarse", "fine"):
        shutil.rmtree(out / role, ignore_errors=True)
        (out / role).mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(baseline / "weights" / role / name, out / role)
        export_onnx(out / role)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="b50d041", help="the commit to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="keep phantoms and masks here (default: a temp folder)")
    ap.add_argument("--weights", type=Path, default=None, help="the current engine's weights folder (default: its shipped ones)")
    ap.add_argument("--precision", action="append", default=[], help="also time the current engine with this --precision (repeatable)")
    ap.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                    help="also time the current engine with these predict options, e.g. --also=--tta (repeatable)")
    args = ap.parse_args()

    import SimpleITK as sitk

    from evaluation.metrics import mean_organ_dice
    from synthetic.phantoms import generate, write

    root = args.out or Path(tempfile.mkdtemp(prefix="cpu-speed-"))
    baseline = root / "baseline-code"
    if not baseline.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True, capture_output=True)
    variants = {**{f"current {p}": ("--precision", p) for p in args.precision}, **{f"current {a}": tuple(a.split()) for a in args.also}}
    engines = {args.baseline: baseline, "current": REPO, **{v: REPO for v in variants}}
    weights = ("--weights", str(args.weights.resolve())) if args.weights else ()
    extra = {args.baseline: (), "current": weights, **{v: (*weights, *opts) for v, opts in variants.items()}}
    same = f"current, {args.baseline} weights"  # masks only: the engine's change with the weights held fixed
    extra[same] = ("--weights", str(weights_for_current_engine(baseline, root / "baseline-weights")))
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
        real = {p.name.replace("_0000.nii.gz", ""): p for folder in REAL for p in sorted((SHARED / folder).glob("*_0000.nii.gz"))}
        for name in [*SCORED, *real]:
            image = scans / f"{name}_0000.nii.gz" if name in SCORED else real[name]
            for engine, code in {**engines, same: REPO}.items():
                predict(code, image, root / "runs" / engine / name, extra[engine])
                masks[name, engine] = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "runs" / engine / name / "masks" / f"{name}.nii.gz")))
    finally:
        if args.out is None:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False, capture_output=True)

    base, cur, *others = engines
    stages = ("startup", "read", "coarse", "fine", "cleanup", "write")
    print(f"\n| scan | engine | process wall (s) | {' | '.join(stages)} | peak RSS (MiB) | speed-up |")
    print("|---|---|---|" + "---|" * len(stages) + "---|---|")
    for name in TIMED:
        base_wall = statistics.median(r["wall"] for r in rows[name, base])
        for engine in engines:
            med = {k: statistics.median(r.get(k, float("nan")) for r in rows[name, engine]) for k in ("wall", "rss", *stages)}
            cells = " | ".join("-" if np.isnan(med[s]) else f"{med[s]:.2f}" for s in stages)
            print(f"| {name} | {engine} | {med['wall']:.2f} | {cells} | {med['rss']:.0f} | {base_wall / med['wall']:.2f} |")
    print(f"\n| phantom | {' | '.join(f'mean organ DSC, {e}' for e in engines)} | {' | '.join(f'{e} - {base}' for e in (cur, *others))} |")
    print("|---|" + "---|" * (2 * len(engines) - 1))
    for name in SCORED:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(scans / "labels" / f"{name}.nii.gz")))
        dsc = {e: mean_organ_dice(masks[name, e], ref) for e in engines}
        print(f"| {name} | {' | '.join(f'{v:.4f}' for v in dsc.values())} | {' | '.join(f'{dsc[e] - dsc[base]:+.4f}' for e in (cur, *others))} |")
    pairs = [(cur, base), *((e, cur) for e in others)]
    print(f"\n| real scan | {' | '.join(f'mean organ DSC of {a} against {b}' for a, b in pairs)} |\n|---|" + "---|" * len(pairs))
    for name in (n for n, e in masks if e == cur and n not in SCORED):
        print(f"| {name} | {' | '.join(f'{mean_organ_dice(masks[name, a], masks[name, b]):.4f}' for a, b in pairs)} |")
    print(f"\n| engine alone: {base}'s weights | mean organ DSC, {base} | mean organ DSC, {same} | difference, or agreement of the masks |\n|---|---|---|---|")
    for name in (n for n, e in masks if e == same):
        if name in SCORED:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(scans / "labels" / f"{name}.nii.gz")))
            a, b = mean_organ_dice(masks[name, base], ref), mean_organ_dice(masks[name, same], ref)
            print(f"| {name} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
        else:
            print(f"| {name} | - | - | {mean_organ_dice(masks[name, same], masks[name, base]):.4f} |")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
