"""Efficiency harness: the organisers' one-container-run-per-case loop, measured their way.

For each case: a fresh temporary input folder holding only that case, one run (the organisers'
``docker container run`` with ``--image``, or ``sh predict.sh`` locally with ``--command``), then the
output moved to ``--outputs``. A separate process samples GPU memory (NVML), CPU and RAM every
0.1 s. Figures follow ../shared/reference/challenge-rules.md. With ``--command`` the engine also
reports its own stages (``--timings``: startup, read, coarse, roi, fine, cleanup, write), summed up
per stage in the report beside the organisers' figures; progress is a bar on a terminal.

    python -m evaluation.efficiency --inputs DIR --outputs DIR (--image IMAGE | --command "sh predict.sh")
                                    [--gpu 0] [--timeout 3600] [--report DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .sampling import INTERVAL_S, MemoryReader, Sample, Sampler, open_gpu_reader

log = logging.getLogger("evaluation")

PENALTY_TIME_S = 3600.0  # what the organisers scored a stuck container
FLARE22_GPU_TOLERANCE_MIB = 2048.0
FLARE23_TIME_TOLERANCE_S = 15.0  # quoted in FLARE23 briefs, not confirmed from code
FLARE23_GPU_TOLERANCE_MIB = 4096.0
STABLE_PEAK_SHARE = 0.02
CSV_COLUMNS = ["Name", "Time", "MaxGPU_Mem", "AUC_GPU_Time", "MaxCPU_Utilization", "AUC_CPU_Time", "MaxRAM", "AUC_RAM_Time"]
EXTRA_COLUMNS = ["status", "wall_s", "AUC_GPU_Time_integral", "MaxGPU_Mem_FLARE22_stable", "AUC_GPU_Time_FLARE22_tol",
                 "Time_FLARE23_tol", "AUC_GPU_Time_FLARE23_tol", "samples"]


# ---- arithmetic on sample series (pure) ----

def area_organisers(values: Sequence[float], interval: float = INTERVAL_S) -> float:
    """The organisers' area: sum of the samples times the 0.1 s sleep."""
    return float(np.sum(values)) * interval


def area_integral(times: Sequence[float], values: Sequence[float]) -> float:
    """Time-weighted area (trapezoid rule on the real timestamps)."""
    if len(values) < 2:
        return 0.0
    return float(np.trapezoid(np.asarray(values, float), np.asarray(times, float)))


def stable_peak(values: Sequence[float], share: float = STABLE_PEAK_SHARE) -> float:
    """FLARE22's peak: the largest value seen in more than ``share`` of the samples (max if none is)."""
    if not values:
        return 0.0
    counts = Counter(values)
    common = [v for v, c in counts.items() if c / len(values) > share]
    return float(max(common)) if common else float(max(values))


def above(values: Sequence[float], tolerance: float) -> list[float]:
    return [max(0.0, v - tolerance) for v in values]


def figures(samples: Sequence[Sample], wall_s: float, failed: bool) -> dict[str, float | str | None]:
    """Every CSV figure of one case from its samples; GPU figures None when not measured."""
    t = [s.t for s in samples]
    cpu = [s.cpu_percent for s in samples]
    ram = [s.ram_mib for s in samples]
    gpu = [s.gpu_mib for s in samples if s.gpu_mib is not None]
    measured = bool(samples) and len(gpu) == len(samples)
    time_s = PENALTY_TIME_S if failed else wall_s
    out: dict[str, float | str | None] = {
        "Time": round(time_s, 3),
        "MaxCPU_Utilization": round(max(cpu), 1) if cpu else None,
        "AUC_CPU_Time": round(area_organisers(cpu), 2),
        "MaxRAM": round(max(ram), 1) if ram else None,
        "AUC_RAM_Time": round(area_organisers(ram), 2),
        "wall_s": round(wall_s, 3),
        "Time_FLARE23_tol": round(max(0.0, time_s - FLARE23_TIME_TOLERANCE_S), 3),
        "samples": len(samples),
    }
    if measured:
        out.update({
            "MaxGPU_Mem": round(max(gpu), 1),
            "AUC_GPU_Time": round(area_organisers(gpu), 2),
            "AUC_GPU_Time_integral": round(area_integral(t, gpu), 2),
            "MaxGPU_Mem_FLARE22_stable": round(stable_peak(gpu), 1),
            "AUC_GPU_Time_FLARE22_tol": round(area_organisers(above(gpu, FLARE22_GPU_TOLERANCE_MIB)), 2),
            "AUC_GPU_Time_FLARE23_tol": round(area_organisers(above(gpu, FLARE23_GPU_TOLERANCE_MIB)), 2),
        })
    else:
        out.update(dict.fromkeys(("MaxGPU_Mem", "AUC_GPU_Time", "AUC_GPU_Time_integral", "MaxGPU_Mem_FLARE22_stable",
                                  "AUC_GPU_Time_FLARE22_tol", "AUC_GPU_Time_FLARE23_tol")))
    return out


# ---- the loop ----

@dataclass
class CaseRun:
    name: str
    status: str  # ok, failed (exit N), timeout
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # the engine's own timings (--command runs only)


STAGE_NAMES = ("startup", "read", "coarse", "roi", "fine", "cleanup", "write", "total")


def read_stage_timings(path: Path) -> dict[str, float]:
    """The engine's ``--timings`` JSON line for the case (empty when it wrote none: a failed case)."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return {}
    record = json.loads(lines[-1]) if lines else {}
    return {k: float(record[k]) for k in STAGE_NAMES if isinstance(record.get(k), (int, float))}


def docker_command(image: str, gpu: int, name: str, inputs: Path, outputs: Path) -> list[str]:
    """The organisers' command, with FLARE23's --shm-size and -m."""
    return ["docker", "container", "run", "--gpus", f"device={gpu}", "--shm-size=28gb", "-m", "28G", "--name", name, "--rm",
            "-v", f"{inputs}/:/workspace/inputs/", "-v", f"{outputs}/:/workspace/outputs/", image, "/bin/bash", "-c", "sh predict.sh"]


def _kill(proc: subprocess.Popen, container: str | None) -> None:
    if container:
        subprocess.run(["docker", "kill", container], capture_output=True, check=False)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_case(case: Path, outputs: Path, reader: MemoryReader | None, timeout: float, image: str | None = None,
             command: str | None = None, gpu: int = 0, workdir: Path | None = None) -> CaseRun:
    """One case, the organisers' way: its own input folder, one run, outputs moved out."""
    name = case.name
    with tempfile.TemporaryDirectory(prefix="flare-eff-") as tmp:
        tin, tout = Path(tmp) / "inputs", Path(tmp) / "outputs"
        tin.mkdir()
        tout.mkdir()
        os.chmod(tout, 0o777)  # the container may write as another user
        shutil.copy2(case, tin / name)
        container = None
        if image:
            container = f"flare-eff-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
            argv, shell, env = docker_command(image, gpu, container, tin, tout), False, None
        else:
            argv, shell = command, True
            timings = Path(tmp) / "timings.jsonl"
            extra = f"{os.environ.get('PREDICT_ARGS', '')} --timings {timings}".strip()
            env = {**os.environ, "INPUT_DIR": str(tin), "OUTPUT_DIR": str(tout), "PREDICT_ARGS": extra}
        with Sampler(reader) as sampler:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, shell=shell, env=env, cwd=workdir, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                _, err = proc.communicate(timeout=timeout)
                status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                _kill(proc, container)
                err, status = "", f"timeout ({timeout:g} s)"
            wall = time.perf_counter() - t0
        if status != "ok":
            tail = (err or "").strip().splitlines()[-1:] or [""]
            log.error("%s: %s %s", name, status, tail[0][:200])
        outputs.mkdir(parents=True, exist_ok=True)
        for produced in tout.iterdir():
            shutil.move(str(produced), outputs / produced.name)
        stages = read_stage_timings(Path(tmp) / "timings.jsonl") if not image else {}
    run = CaseRun(name, status, wall, sampler.samples, stages=stages)
    run.figures = figures(run.samples, wall, failed=status != "ok")
    return run


def write_report(runs: list[CaseRun], report: Path, gpu_note: str) -> None:
    report.mkdir(parents=True, exist_ok=True)
    with open(report / "efficiency.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS + EXTRA_COLUMNS)
        for r in runs:
            row = {"Name": r.name, "status": r.status, **r.figures}
            w.writerow(["NA" if row.get(c) is None else row[c] for c in CSV_COLUMNS + EXTRA_COLUMNS])
    samples_dir = report / "samples"
    samples_dir.mkdir(exist_ok=True)
    for r in runs:
        payload = {"case": r.name, "status": r.status, "interval_s": INTERVAL_S,
                   "samples": [{"t": s.t, "gpu_mib": s.gpu_mib, "cpu_percent": s.cpu_percent, "ram_mib": s.ram_mib} for s in r.samples]}
        (samples_dir / f"{_stem(r.name)}.json").write_text(json.dumps(payload))
    _plots(runs, report)
    (report / "efficiency.md").write_text(summary_markdown(runs, gpu_note))


def _stem(name: str) -> str:
    return name.split(".nii")[0]


def _plots(runs: list[CaseRun], report: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = all(s.gpu_mib is not None for r in runs for s in r.samples) and any(r.samples for r in runs)
    key, label = ("gpu_mib", "GPU memory used (MiB)") if gpu else ("ram_mib", "system RAM used (MiB); GPU not measured")
    curves_dir = report / "curves"
    curves_dir.mkdir(exist_ok=True)
    fig_all, ax_all = plt.subplots(figsize=(9, 4.5))
    for r in runs:
        if not r.samples:
            continue
        t = np.array([s.t for s in r.samples]) - r.samples[0].t
        v = np.array([getattr(s, key) for s in r.samples], float)
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(t, v, lw=1.2)
        ax.fill_between(t, v, alpha=0.2)
        ax.set(xlabel="time since start (s)", ylabel=label, title=f"{r.name}: {r.status}, {r.wall_s:.1f} s")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(curves_dir / f"{_stem(r.name)}.png", dpi=90)
        plt.close(fig)
        ax_all.plot(t, v, lw=1, label=_stem(r.name))
    ax_all.set(xlabel="time since start (s)", ylabel=label, title=f"{len(runs)} case(s)")
    ax_all.grid(alpha=0.3)
    if len(runs) <= 12:
        ax_all.legend(fontsize=7)
    fig_all.tight_layout()
    fig_all.savefig(report / "curves_all.png", dpi=90)
    plt.close(fig_all)


def summary_markdown(runs: list[CaseRun], gpu_note: str) -> str:
    def stat(key: str) -> str:
        vals = [r.figures[key] for r in runs if r.figures.get(key) is not None]
        return "not measured" if not vals else f"{statistics.mean(vals):.2f} | {statistics.median(vals):.2f}"

    rows = [("Time (s)", "Time"), ("Time, FLARE23 15 s band (s)", "Time_FLARE23_tol"),
            ("AUC GPU (MiB·s, sum x 0.1)", "AUC_GPU_Time"), ("AUC GPU (MiB·s, time integral)", "AUC_GPU_Time_integral"),
            ("AUC GPU, FLARE22 2 GiB band", "AUC_GPU_Time_FLARE22_tol"), ("AUC GPU, FLARE23 4 GB band", "AUC_GPU_Time_FLARE23_tol"),
            ("Peak GPU (MiB, max, FLARE23)", "MaxGPU_Mem"), ("Peak GPU (MiB, FLARE22 stable)", "MaxGPU_Mem_FLARE22_stable"),
            ("Peak CPU (%)", "MaxCPU_Utilization"), ("AUC CPU (%·s)", "AUC_CPU_Time"), ("Peak RAM (MiB)", "MaxRAM"), ("AUC RAM (MiB·s)", "AUC_RAM_Time")]
    failed = [f"{r.name} ({r.status})" for r in runs if r.status != "ok"]
    lines = ["# Efficiency", "", f"GPU: {gpu_note}.", f"Cases: {len(runs)}; failed: {', '.join(failed) or 'none'} "
             f"(failed and timed-out cases count {PENALTY_TIME_S:g} s, the organisers' penalty).", "",
             "| figure | mean | median |", "|---|---|---|"]
    lines += [f"| {title} | {stat(key)} |" for title, key in rows]
    lines += ["", "The FLARE23 15 s / 4 GB bands are as quoted in FLARE23 briefs, not confirmed from the organisers' code."]
    lines += stage_table(runs)
    return "\n".join(lines) + "\n"


def stage_table(runs: list[CaseRun]) -> list[str]:
    """Markdown lines: the engine's own seconds per stage over the cases that reported them."""
    timed = [r.stages for r in runs if r.stages]
    if not timed:
        return []
    lines = ["", f"Engine stages (s, its own --timings; {len(timed)} of {len(runs)} cases; wall = the organisers' Time):", "",
             "| stage | mean | median | max |", "|---|---|---|---|"]
    for stage in STAGE_NAMES:
        vals = [t[stage] for t in timed if stage in t]
        if vals:
            lines.append(f"| {stage} | {statistics.mean(vals):.2f} | {statistics.median(vals):.2f} | {max(vals):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=Path, required=True)
    ap.add_argument("--outputs", type=Path, required=True)
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--image", help="docker image, run as the organisers do")
    how.add_argument("--command", help="local command run with INPUT_DIR/OUTPUT_DIR set, e.g. 'sh predict.sh'")
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=PENALTY_TIME_S)
    ap.add_argument("--report", type=Path, default=None, help="folder for CSV, samples, curves and summary (default: OUTPUTS/../efficiency)")
    ap.add_argument("--workdir", type=Path, default=Path.cwd(), help="where --command runs (default: here)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if not args.inputs.is_dir():
        log.error("%s is not a folder", args.inputs)
        return 2
    cases = sorted(p for p in args.inputs.iterdir() if p.is_file() and p.name.endswith((".nii.gz", ".nii")))
    if not cases:
        log.error("no NIfTI cases in %s", args.inputs)
        return 2
    reader, note = open_gpu_reader(args.gpu)
    if reader is None:
        log.warning("GPU memory not measured: %s; timing, CPU and RAM only", note)
    from app.progress import Progress

    runs = []
    with Progress(len(cases)) as progress:  # a bar on a terminal, a line per case in a log
        for i, case in enumerate(cases, 1):
            progress.start_case(i, case.name)
            run = run_case(case, args.outputs, reader, args.timeout, args.image, args.command, args.gpu, args.workdir)
            progress.end_case()
            f = run.figures
            gpu_txt = "GPU not measured" if f["AUC_GPU_Time"] is None else f"GPU peak {f['MaxGPU_Mem']:.0f} MiB, area {f['AUC_GPU_Time']:.0f} MiB·s"
            stage_txt = ", ".join(f"{k} {v:.2f}" for k, v in run.stages.items() if k != "total")
            log.info("[%d/%d] %s: %s, %.2f s, %s%s", i, len(cases), case.name, run.status, run.wall_s, gpu_txt,
                     f" (engine: {stage_txt})" if stage_txt else "")
            runs.append(run)
    report = args.report or args.outputs.parent / "efficiency"
    write_report(runs, report, note if reader is not None else f"not measured ({note})")
    print((report / "efficiency.md").read_text())
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
