"""``python -m app cluster``: a folder over local Ray workers gives ``predict``'s masks, survives a
worker killed mid-case, resumes with --skip-existing, and writes a summary CSV."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("ray", reason="Ray is the cluster's optional dependency (requirements-cluster.txt; make test installs it)")

from app.cluster import ClusterOptions, run_cluster  # noqa: E402
from app.nifti import find_scans  # noqa: E402
from app.pipeline import Options, Stages, predict_folder  # noqa: E402
from synthetic.phantoms import generate, write  # noqa: E402
from tests.helpers import REAL_CASES, DieOnce, make_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six scans (the real ones and three small phantoms) and one corrupt file; tiny networks."""
    root = tmp_path_factory.mktemp("cluster")
    inputs = root / "in"
    inputs.mkdir()
    for case in REAL_CASES:
        shutil.copy(case, inputs / case.name)
    for i in range(3):
        write(generate([1717, i], spacing=(1.6, 4.0), size=96, slices=24), inputs / f"phantom{i}_0000.nii.gz", None)
    (inputs / "corrupt_0000.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    weights = make_weights(root / "w")
    reference = root / "predict"
    results = predict_folder(inputs, reference, Options(weights=weights, device="cpu", progress=False))
    assert sum(not r.ok for r in results) == 1
    return inputs, weights, reference


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nii.gz"))}


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "cluster_summary.csv") as f:
        return list(csv.DictReader(f))


def test_two_workers_give_predicts_masks_and_report_the_corrupt_scan(folder, tmp_path):
    inputs, weights, reference = folder
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "cluster", "-i", str(inputs), "-o", str(out), "--weights", str(weights),
                           "--device", "cpu", "--workers", "2", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "FAILED corrupt_0000.nii.gz" in proc.stderr
    ours, theirs = _masks(out), _masks(reference)
    assert sorted(ours) == sorted(theirs) and len(ours) == 6
    for name, mask in theirs.items():
        assert np.array_equal(ours[name], mask), name  # bit-identical to predict's
    rows = _summary(out)
    assert sorted(r["case"] for r in rows) == sorted(p.name for p in find_scans(inputs)[0])
    assert {r["case"]: r["ok"] for r in rows}["corrupt_0000.nii.gz"] == "False"
    assert len({r["worker"] for r in rows if r["worker"]}) == 2  # both workers took cases
    assert all(float(r["total"]) > 0 for r in rows if r["ok"] == "True")
    assert sorted(p.name for p in out.iterdir()) == sorted([*theirs, "cluster_summary.csv"])  # no temp file left


def test_a_worker_killed_mid_case_has_its_case_retried_elsewhere(folder, tmp_path):
    inputs, weights, reference = folder
    marker = tmp_path / "killed.pid"
    victim = "phantom1_0000.nii.gz"
    stages = Stages.default()
    stages = Stages(coarse_labels=stages.coarse_labels, segment_crop=DieOnce(marker, victim))
    clean = tmp_path / "clean"
    clean.mkdir()
    for p in find_scans(inputs)[0]:
        if "corrupt" not in p.name:
            shutil.copy(p, clean / p.name)
    out = tmp_path / "out"
    results = run_cluster(clean, out, Options(weights=weights, device="cpu", progress=False), ClusterOptions(workers=2), stages)
    assert marker.is_file(), "the fault was never injected"
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    killed = int(marker.read_text())
    redo = next(r for r in results if r.name == victim)
    assert not redo.info["worker"].endswith(f":{killed}")  # another process (the restarted worker) did it
    assert all(r.info["models_loaded"] == 1 for r in results)  # models loaded once per worker process
    ours, theirs = _masks(out), _masks(reference)
    assert sorted(ours) == sorted(theirs)
    for name, mask in theirs.items():
        assert np.array_equal(ours[name], mask), name
    assert sorted(p.name for p in out.iterdir()) == sorted([*theirs, "cluster_summary.csv"])  # the victim's temp file is gone


def test_skip_existing_writes_only_the_missing_masks(folder, tmp_path):
    inputs, weights, reference = folder
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    missing = ["phantom0.nii.gz", "TS_example_sm.nii.gz"]
    for name in missing:
        (out / name).unlink()
    (out / ".phantom0.nii.gz.otherhost-1.tmp").write_bytes(b"half a mask")  # an interrupted write is not a mask
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    results = run_cluster(inputs, out, Options(weights=weights, device="cpu", progress=False, skip_existing=True), ClusterOptions(workers=2))
    ran = {r.name for r in results if "worker" in r.info}
    assert ran == {"phantom0_0000.nii.gz", "TS_example_sm_0000.nii.gz", "corrupt_0000.nii.gz"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz") if p.name in before} == before  # untouched
    ours, theirs = _masks(out), _masks(reference)
    for name in missing:
        assert np.array_equal(ours[name], theirs[name])
