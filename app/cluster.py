"""Many scans over many workers with Ray: ``python -m app cluster -i IN -o OUT``.

Ray places the workers (CPUs, GPUs, nodes), restarts a worker whose process dies and retries the
case it held; this module only hands out file paths. Each worker is one process with one
``Engine`` (models loaded once) that reads, segments and writes atomically itself and returns a
small record: volumes never travel through Ray's object store.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .nifti import output_path, remove_stale_temps, write_atomically
from .pipeline import STAGES, CaseResult, Engine, Options, SetupError, Stages, _timed_read, load_specs, log_summary, plan_run
from .progress import Progress, format_seconds

log = logging.getLogger("app")

APP_ROOT = Path(__file__).resolve().parent.parent  # on every worker's PYTHONPATH: nodes run the same image or checkout
SUMMARY_NAME = "cluster_summary.csv"
LOCAL_OBJECT_STORE = 256 * 2**20  # records only: paths go out, a few hundred bytes come back per case
SUMMARY_FIELDS = ("case", "ok", "error", "worker", "host", "models_loaded", "attempt_note", "startup", *STAGES, "total")


@dataclass
class ClusterOptions:
    address: str | None = None  # None: start a Ray of our own on this machine; "auto" or "ray://HOST:PORT": join one
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    retries: int = 2  # a case is tried again this often when its worker dies; then it is reported as failed
    summary: Path | None = None  # the CSV (default OUT/cluster_summary.csv)


_ENGINES_BUILT = 0  # per process: the model-load count every record carries (it must stay 1)


class CaseWorker:
    """One Ray actor: an ``Engine`` built once, then one case per call."""

    def __init__(self, options: Options, stages: Stages | None, run_started: float, log_level: int = logging.WARNING) -> None:
        global _ENGINES_BUILT
        # the driver reports every case; a worker speaks for itself only in warnings and errors (-v: all)
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        coarse, fine = load_specs(options)
        self.engine = Engine(coarse, fine, options, stages)
        _ENGINES_BUILT += 1
        self.run_started = run_started
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def segment(self, path: str, out_dir: str) -> dict[str, Any]:
        scan, out = Path(path), Path(out_dir)
        mask = output_path(out, scan)
        if mask.is_file() and mask.stat().st_mtime >= self.run_started:
            # a retry after this case's earlier worker died between its rename and its reply
            result = CaseResult(scan.name, ok=True, info={"attempt_note": "written by an earlier attempt in this run"})
        else:
            result = self.engine.run_case(scan, _read_now(scan), out)
        return {"case": result.name, "ok": result.ok, "error": result.error, "timings": result.timings,
                "worker": self.worker, "host": socket.gethostname(), "models_loaded": _ENGINES_BUILT,
                "attempt_note": result.info.get("attempt_note", "")}


def _read_now(path: Path) -> Future:
    """The scan read in this thread, as the future ``Engine.run_case`` takes (errors included)."""
    future: Future = Future()
    try:
        future.set_result(_timed_read(path))
    except BaseException as e:  # noqa: BLE001 - run_case reports read errors as this case's failure
        future.set_exception(e)
    return future


def run_cluster(in_dir: Path, out_dir: Path, options: Options, cluster: ClusterOptions, stages: Stages | None = None) -> list[CaseResult]:
    """Segment every scan of ``in_dir`` on Ray workers; same checks, outputs and results as
    ``predict_folder``, plus a summary CSV. ``stages`` replaces the engine's stages on every worker
    (tests inject faults so)."""
    import ray
    from ray.exceptions import RayActorError, RayError

    if cluster.workers < 1:
        raise SetupError(f"--workers must be at least 1, got {cluster.workers}")
    run_started = time.time()
    plan = plan_run(in_dir, out_dir, options)
    results: dict[Path, CaseResult] = dict(plan.done)
    records: dict[Path, dict[str, Any]] = {}
    if plan.todo:
        _start_ray(ray, cluster)
        try:
            worker_cls = ray.remote(num_cpus=cluster.cpus_per_worker, num_gpus=cluster.gpus_per_worker,
                                    max_restarts=-1, max_task_retries=cluster.retries)(CaseWorker)
            level = logging.getLogger("app").getEffectiveLevel()
            actors = [worker_cls.remote(options, stages, run_started, max(level, logging.WARNING) if level > logging.DEBUG else level)
                      for _ in range(min(cluster.workers, len(plan.todo)))]
            log.info("%d case(s) on %d Ray worker(s)", len(plan.todo), len(actors))
            queue, running = list(plan.todo), {}
            with Progress(len(plan.todo), options.progress) as progress:
                idle = list(actors)
                while queue or running:
                    while idle and queue:  # Ray decides where each actor runs; we only hand out paths
                        actor, path = idle.pop(), queue.pop(0)
                        running[actor.segment.remote(str(path), str(out_dir))] = (actor, path)
                    ready, _ = ray.wait(list(running), num_returns=1)
                    actor, path = running.pop(ready[0])
                    idle.append(actor)
                    try:
                        record = ray.get(ready[0])
                    except RayActorError as e:  # the worker died on every attempt
                        record = {"case": path.name, "ok": False, "error": f"worker lost {cluster.retries + 1} times ({type(e).__name__})"}
                    except RayError as e:  # anything else Ray reports for this case: its own failure only
                        record = {"case": path.name, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                    records[path] = record
                    results[path] = _result(record)
                    progress.end_case()  # a failure is logged by its worker, and again in the closing summary
                    _log_rate(progress)
        finally:
            ray.shutdown()
    removed = remove_stale_temps(out_dir)  # a killed worker's temp file, once its process is gone
    if removed:
        log.info("removed %d temporary file(s) left by lost workers", len(removed))
    ordered = [results[p] for p in plan.scans]
    summary = cluster.summary or out_dir / SUMMARY_NAME
    write_summary(summary, [records.get(p) or _record_of(results[p]) for p in plan.scans])
    log.info("summary: %s", summary)
    log_summary(ordered)
    return ordered


def _start_ray(ray: Any, cluster: ClusterOptions) -> None:
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(APP_ROOT), os.environ.get("PYTHONPATH", "")) if p)}}
    try:
        if cluster.address is None:
            cpus = max(os.cpu_count() or 1, int(cluster.workers * cluster.cpus_per_worker + 0.999))
            ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False, runtime_env=env,
                     log_to_driver=True, configure_logging=False)
        else:
            ray.init(address=cluster.address, runtime_env=env, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SetupError(f"cannot start or join Ray at {cluster.address or 'a new local cluster'}: {str(e).splitlines()[0]}") from None


def _result(record: dict[str, Any]) -> CaseResult:
    return CaseResult(record["case"], ok=bool(record["ok"]), timings=record.get("timings") or {}, error=record.get("error", ""),
                      info={k: record[k] for k in ("worker", "host", "models_loaded", "attempt_note") if k in record})


def _record_of(result: CaseResult) -> dict[str, Any]:
    """A record for a case settled without a worker (name collision, mask already there)."""
    return {"case": result.name, "ok": result.ok, "error": result.error, "attempt_note": result.info.get("skipped", "")}


def _log_rate(progress: Progress) -> None:
    if progress.bar is not None or not progress.enabled:
        return
    elapsed = time.monotonic() - progress.started
    left = progress.seconds_left()
    log.info("%d of %d case(s) done, %.1f per minute%s", progress.done, progress.total, progress.done / elapsed * 60,
             f", about {format_seconds(left)} left" if left else "")


def write_summary(path: Path, records: list[dict[str, Any]]) -> None:
    """One CSV row per case: who ran it where, the stage timings, the error."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = {k: record.get(k, "") for k in SUMMARY_FIELDS}
        row.update({k: f"{v:.3f}" for k, v in (record.get("timings") or {}).items() if k in SUMMARY_FIELDS})
        writer.writerow(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: Path(tmp).write_text(buf.getvalue()), suffix=".csv")

