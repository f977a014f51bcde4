"""The efficiency harness: arithmetic on recorded series, and the real per-case loop."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time

import pytest

from evaluation import efficiency
from evaluation.efficiency import area_integral, area_organisers, figures, run_case, stable_peak
from evaluation.sampling import RecordedReader, Sample, Sampler, open_gpu_reader
from tests.helpers import REAL_CASES, make_weights


def _series(values, dt=0.1, t0=1000.0):
    return [Sample(t0 + i * dt, v, 50.0, 8000.0) for i, v in enumerate(values)]


def test_area_is_sum_times_point_one_and_integral_uses_timestamps():
    assert area_organisers([1000, 2000, 3000]) == pytest.approx(600.0)
    assert area_integral([0.0, 0.1, 0.3], [1000, 2000, 2000]) == pytest.approx(150 + 400)


def test_peaks_plain_and_flare22_stable():
    values = [500] * 50 + [4000] * 49 + [9000]  # the 9000 spike is 1 % of the samples
    assert max(values) == 9000
    assert stable_peak(values) == 4000
    assert stable_peak([100, 200, 300]) == 300  # each value is a third of the samples
    assert stable_peak([float(v) for v in range(200)]) == 199  # no value repeats: plain max


def test_figures_with_tolerance_bands():
    f = figures(_series([1024, 3072, 5120, 3072]), wall_s=20.0, failed=False)
    assert f["Time"] == 20.0 and f["Time_FLARE23_tol"] == 5.0
    assert f["MaxGPU_Mem"] == 5120 and f["AUC_GPU_Time"] == pytest.approx(1228.8)
    assert f["AUC_GPU_Time_FLARE22_tol"] == pytest.approx((1024 + 3072 + 1024) * 0.1)
    assert f["AUC_GPU_Time_FLARE23_tol"] == pytest.approx(1024 * 0.1)
    assert f["AUC_GPU_Time_integral"] == pytest.approx(0.1 * (2048 + 4096 + 4096))
    failed = figures(_series([1024]), wall_s=3.0, failed=True)
    assert failed["Time"] == 3600.0 and failed["wall_s"] == 3.0


def test_no_gpu_means_not_measured_not_zero():
    f = figures([Sample(0.0, None, 10.0, 100.0), Sample(0.1, None, 20.0, 100.0)], wall_s=0.2, failed=False)
    assert f["MaxGPU_Mem"] is None and f["AUC_GPU_Time"] is None
    assert f["AUC_CPU_Time"] == pytest.approx(3.0)
    reader, note = open_gpu_reader(0)  # CI has no GPU: a reason, never an exception
    assert reader is None and note


def test_sampler_process_replays_a_recorded_series():
    with Sampler(RecordedReader([100, 200, 300]), interval=0.02) as s:
        time.sleep(0.3)
    values = [x.gpu_mib for x in s.samples]
    assert values[:3] == [100, 200, 300] and set(values[3:]) <= {300}
    assert all(b.t > a.t for a, b in zip(s.samples, s.samples[1:]))


def test_docker_command_is_the_organisers():
    cmd = efficiency.docker_command("team:latest", 0, "team", efficiency.Path("/in"), efficiency.Path("/out"))
    assert " ".join(cmd) == ('docker container run --gpus device=0 --shm-size=28gb -m 28G --name team --rm '
                             '-v /in/:/workspace/inputs/ -v /out/:/workspace/outputs/ team:latest /bin/bash -c sh predict.sh')


def test_failing_and_hanging_commands_are_penalised_and_the_loop_goes_on(tmp_path):
    case = tmp_path / "in" / "x_0000.nii.gz"
    case.parent.mkdir()
    case.write_bytes(b"not really a scan")
    reader = RecordedReader([700.0])
    failed = run_case(case, tmp_path / "out", reader, timeout=30, command="exit 3")
    assert failed.status == "failed (exit 3)" and failed.figures["Time"] == 3600.0
    t0 = time.perf_counter()
    hung = run_case(case, tmp_path / "out", reader, timeout=1.0, command="sleep 60")
    assert time.perf_counter() - t0 < 10
    assert hung.status.startswith("timeout") and hung.figures["Time"] == 3600.0 and 1.0 <= hung.wall_s < 5
    ok = run_case(case, tmp_path / "out", reader, timeout=30, command='test "$(ls "$INPUT_DIR")" = x_0000.nii.gz && touch "$OUTPUT_DIR/x.nii.gz"')
    assert ok.status == "ok" and (tmp_path / "out" / "x.nii.gz").exists()
    assert ok.figures["MaxGPU_Mem"] == 700.0


def test_harness_over_predict_sh_on_real_scans(tmp_path, monkeypatch):
    """The whole loop with --command: real runs of the container script, one case at a time."""
    weights = make_weights(tmp_path / "w")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in REAL_CASES[1:]:  # the two smaller scans
        shutil.copy(case, inputs)
    monkeypatch.setenv("PYTHON", sys.executable)
    monkeypatch.setenv("PREDICT_ARGS", f"--weights {weights} --device cpu")
    report = tmp_path / "report"
    rc = efficiency.main(["--inputs", str(inputs), "--outputs", str(tmp_path / "outputs"), "--command", "sh predict.sh",
                          "--report", str(report), "--timeout", "300", "--workdir", str(efficiency.Path(__file__).resolve().parents[1])])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted(c.name.replace("_0000", "") for c in REAL_CASES[1:])
    rows = list(csv.DictReader(open(report / "efficiency.csv")))
    assert list(rows[0])[:8] == efficiency.CSV_COLUMNS
    for row in rows:
        assert row["status"] == "ok" and float(row["Time"]) > 0.5 and int(row["samples"]) >= 5
        assert row["MaxGPU_Mem"] == "NA" and float(row["AUC_RAM_Time"]) > 0
    samples = json.loads((report / "samples" / "TS_example_sm_0000.json").read_text())
    assert samples["samples"][0]["gpu_mib"] is None and "t" in samples["samples"][0]
    assert (report / "curves_all.png").stat().st_size > 1000 and len(list((report / "curves").glob("*.png"))) == 2
    md = (report / "efficiency.md").read_text()
    assert "GPU: not measured" in md and "| AUC GPU (MiB·s, sum x 0.1) | not measured |" in md
    # the engine's own stages, per case and summed up (local --command runs pass --timings through PREDICT_ARGS)
    assert "Engine stages (s, its own --timings; 2 of 2 cases" in md
    for stage in ("startup", "read", "fine", "write", "total"):
        assert f"| {stage} | " in md, stage
