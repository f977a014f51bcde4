"""The container's contract: Dockerfile lint, predict.sh environment, CI = README test command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REAL_CASES, make_weights

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_holds_only_what_prediction_needs():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-cudnn-runtime-", text, re.M)
    assert "WORKDIR /workspace" in text
    copied = [src for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for src in line.split()]
    assert sorted(copied) == ["app/", "predict.sh", "requirements-cluster.txt", "requirements-gpu.txt", "requirements.txt", "weights/"]
    assert re.search(r"^ARG WITH_RAY=0$", text, re.M)  # Ray only in the cluster variant
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "app/convert/" in ignored and "weights/checkpoints/" in ignored
    reqs = (REPO / "requirements.txt").read_text()
    pins = [ln for ln in reqs.splitlines() if ln and not ln.startswith("#")]
    assert pins and all("==" in ln for ln in pins)
    assert "pytest" not in reqs and "nnunet" not in reqs.lower() and not any(ln.startswith("ray") for ln in pins)
    cluster = [ln for ln in (REPO / "requirements-cluster.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert "ray==2.60.0" in cluster and all("==" in ln for ln in cluster)


def test_the_image_runs_as_an_unprivileged_user():
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert text.index("USER ") > text.rindex("COPY ")  # set after the files are in place, before CMD


def test_predict_sh_reads_the_environment(tmp_path):
    text = (REPO / "predict.sh").read_text()
    assert 'INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"' in text
    assert 'OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"' in text
    weights = make_weights(tmp_path / "w")
    inp = tmp_path / "inputs"
    inp.mkdir()
    shutil.copy(REAL_CASES[-1], inp)
    env = {**os.environ, "INPUT_DIR": str(inp), "OUTPUT_DIR": str(tmp_path / "outputs"), "PYTHON": sys.executable, "PREDICT_ARGS": f"--weights {weights} --device cpu"}
    proc = subprocess.run(["sh", "predict.sh"], cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "outputs" / REAL_CASES[-1].name.replace("_0000", "")).is_file()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make predict" in readme
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == "make test"
