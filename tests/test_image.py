"""What the image holds is enough, and prediction runs as a careful site runs a container.

Docker cannot run on the development machines, so this builds the image's equivalent: a fresh
virtual environment from requirements.txt alone, and only what the Dockerfile copies in an empty
folder. ``sh predict.sh`` then runs there as an unprivileged user, with the input folder
read-only, HOME and the code folder unwritable, and no network, and must write nothing but the
masks. The mask must be the one the development tree makes.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from tests.helpers import REAL_CASES, open_tmpdir, unprivileged

REPO = Path(__file__).resolve().parents[1]
SCAN = REAL_CASES[-1]  # TS_example_sm: a small real scan


def _dockerfile_copies() -> list[str]:
    """What the Dockerfile copies into its working folder (the requirements files only serve the install)."""
    copied = [src for line in re.findall(r"^COPY (.+) \S+$", (REPO / "Dockerfile").read_text(), re.M) for src in line.split()]
    return [src for src in copied if not src.startswith("requirements")]


def _dockerignored() -> list[str]:
    """The plain paths .dockerignore leaves out of the build context (app/convert/, weights/checkpoints/)."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith(("!", "*", "#"))]


def _in_image(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return "__pycache__" not in rel and not any(rel == p or rel.startswith(p + "/") for p in _dockerignored())


OPTIONAL = {"ray"}  # the cluster variant's (requirements-cluster.txt, docker build --build-arg WITH_RAY=1)


def _third_party_imports() -> set[str]:
    """Top-level modules outside the standard library that the image's app/ imports anywhere, lazily too."""
    found = set()
    for path in filter(_in_image, (REPO / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "app"}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(root, workspace, python) of the image's equivalent; built once, removed afterwards."""
    root = open_tmpdir("image-")
    shutil.copy(REPO / "requirements.txt", root / "requirements.txt")
    # --copies: the interpreter lies inside the venv, as the image's does, not behind a link to a
    # home folder that an unprivileged user's PATH lookup cannot see into
    subprocess.run([sys.executable, "-m", "venv", "--copies", str(root / "venv")], check=True)
    pip = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(root / "requirements.txt")],
                         capture_output=True, text=True, check=False, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    workspace = root / "workspace"
    workspace.mkdir()
    for src in _dockerfile_copies():  # what .dockerignore keeps out stays out here too
        for path in [REPO / src, *(REPO / src).rglob("*")]:
            if path.is_file() and _in_image(path):
                (workspace / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, workspace / path.relative_to(REPO))
    for p in [root / "venv", workspace]:
        subprocess.run(["chmod", "-R", "a-w", str(p)], check=True)  # code is read-only, as in an image layer
    yield root, workspace
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    shutil.rmtree(root, ignore_errors=True)


def test_every_module_the_engine_imports_is_in_the_image(image):
    """Lazy imports (a terminal's progress bar, --preview) run only on some paths: import them all."""
    root, _ = image
    modules = sorted(_third_party_imports() - OPTIONAL)
    assert {"torch", "SimpleITK", "cc3d", "tqdm", "PIL", "onnxruntime", "openvino"} <= set(modules)
    assert "dynamic_network_architectures" not in modules  # the importer's, in app/convert/, not in the image
    proc = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", f"import {', '.join(modules)}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_cluster_command_without_ray_says_how_to_add_it(image, tmp_path):
    root, workspace = image
    proc = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "app", "cluster", "-i", str(tmp_path), "-o", str(tmp_path / "o")],
                          cwd=workspace, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "pip install -r requirements-cluster.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_authoring_tools_are_left_out_with_a_clear_line(image):
    root, workspace = image
    assert not (workspace / "app" / "convert").exists()
    proc = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "app", "export-onnx"], cwd=workspace, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "export-onnx is an authoring tool" in proc.stderr


def test_predict_sh_runs_sandboxed_with_only_the_image_contents(image, tmp_path):
    root, workspace = image
    inputs, outputs, tmpdir = root / "inputs", root / "outputs", root / "tmp"
    inputs.mkdir()
    shutil.copy(SCAN, inputs / SCAN.name)
    os.chmod(inputs / SCAN.name, 0o444)
    os.chmod(inputs, 0o555)
    for folder in (outputs, tmpdir):
        folder.mkdir()
        os.chmod(folder, 0o777)  # the mounted output folder is the user's to write; so is TMPDIR, which must stay empty
    before = {p: _snapshot(p) for p in (workspace, inputs, root / "venv")}

    env = {
        "PATH": f"{root / 'venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",  # no home to write caches into
        "TMPDIR": str(tmpdir),
        "INPUT_DIR": str(inputs),
        "OUTPUT_DIR": str(outputs),
        "PREDICT_ARGS": "--preview",  # Pillow is in the image too
        "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "",
    }
    cut_network = ["unshare", "--net"] if os.geteuid() == 0 else []
    proc = subprocess.run([*cut_network, *unprivileged(), "sh", "predict.sh"], cwd=workspace, env=env,
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    mask = outputs / SCAN.name.replace("_0000", "")
    assert sorted(p.name for p in outputs.iterdir()) == [mask.name, mask.name.replace(".nii.gz", ".png")]
    assert list(tmpdir.iterdir()) == []
    for folder, snapshot in before.items():
        assert _snapshot(folder) == snapshot, f"{folder} changed"

    src, got = sitk.ReadImage(str(SCAN)), sitk.ReadImage(str(mask))
    assert got.GetSize() == src.GetSize() and got.GetSpacing() == src.GetSpacing()
    assert got.GetOrigin() == src.GetOrigin() and got.GetDirection() == src.GetDirection()
    dev = subprocess.run([sys.executable, "-m", "app", "predict", "-i", str(inputs), "-o", str(tmp_path), "--device", "cpu", "--quiet"],
                         cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert dev.returncode == 0, dev.stderr[-2000:]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / mask.name))).tobytes() == sitk.GetArrayFromImage(got).tobytes()
