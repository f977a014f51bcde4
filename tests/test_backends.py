"""Backends behind one seam: choice, ONNX export, parity with torch on the CPU, and bad cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from app.backend import (
    BackendError,
    MeanEnsemble,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    Placement,
    build_network,
    choose,
    coarse_placement,
    cpu_has_bf16,
    make_backend,
)
from app.convert.export_onnx import export_onnx
from app.convert.tensors import save_tensors
from app.cleanup import keep_largest_components
from app.labels import ORGANS
from app.pipeline import Options, predict_folder
from app.weights import read_spec, write_config
from synthetic.phantoms import generate, write
from evaluation.metrics import mean_organ_dice
from tests.helpers import REAL_CASES, make_weights, tiny_unet, write_image

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights"


def test_choice_follows_the_measurement(monkeypatch):
    import app.backend

    # BF16 by default only for a model whose config says it keeps its masks, where the CPU runs it natively
    for native, default in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(app.backend, "cpu_has_bf16", lambda native=native: native)
        assert choose("auto", "cpu", "auto", "bf16") == Placement("openvino", "cpu", default)
        assert choose("openvino", "cpu", "auto", "bf16") == Placement("openvino", "cpu", default)
        assert choose("openvino", "cpu", "fp32", "bf16") == Placement("openvino", "cpu", "fp32")
        assert choose("torch", "cpu", "auto", "bf16") == Placement("torch", "cpu", "fp32")
        assert choose("onnxruntime", "cpu", "auto", "bf16") == Placement("onnxruntime", "cpu", "fp32")
        assert choose("auto", "cpu") == choose("auto", "cpu", "auto", "fp32") == Placement("openvino", "cpu", "fp32")
    monkeypatch.undo()
    assert read_spec(SHIPPED / "fine").cpu_precision == "bf16"  # measured: test_reduced_precision_keeps_the_network_s_masks
    assert read_spec(SHIPPED / "coarse").cpu_precision == "fp32"  # and the coarse pass stays FP32 under BF16 anyway
    assert choose("auto", "cuda") == Placement("torch", "cuda", "fp16")
    assert choose("auto", "cuda", "fp32") == Placement("torch", "cuda", "fp32")
    assert choose("onnxruntime", "cpu", "fp16") == Placement("onnxruntime", "cpu", "fp16")
    if cpu_has_bf16():
        assert choose("openvino", "cpu", "bf16") == Placement("openvino", "cpu", "bf16")
    for engine, precision in (("onnxruntime", "bf16"), ("torch", "fp16"), ("openvino", "fp16")):
        with pytest.raises(BackendError, match=f"--precision {precision}"):
            choose(engine, "cpu", precision)
    with pytest.raises(BackendError, match="CPU only"):
        choose("openvino", "cuda")
    with pytest.raises(BackendError, match="unknown backend"):
        choose("tensorflow", "cpu")


def test_the_coarse_model_stays_fp32_where_the_fine_model_runs_bf16():
    """The coarse output is a box that every mask follows; BF16 moved a real slab's box by a few rows
    (test_reduced_precision_keeps_the_network_s_masks: 0.885 on TS_example_dicom with a BF16 coarse
    pass). FP16 on CUDA keeps the fine model's placement."""
    assert coarse_placement(Placement("openvino", "cpu", "bf16")) == Placement("openvino", "cpu", "fp32")
    for placement in (Placement("torch", "cuda", "fp16"), Placement("openvino", "cpu", "fp32"), Placement("onnxruntime", "cpu", "fp16")):
        assert coarse_placement(placement) == placement


def test_checking_a_weights_folder_imports_no_torch():
    code = "import sys; from app.weights import read_spec; read_spec('weights/fine', 'fine'); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_shipped_onnx_files_are_current():
    for role in ("coarse", "fine"):
        spec = read_spec(SHIPPED / role, role)
        assert set(spec.onnx) == {"fp32", "fp16"}
        for precision in ("fp32", "fp16"):
            make_backend(spec, Placement("onnxruntime", "cpu", precision))  # raises when stale or missing


@pytest.fixture(params=["instance"])
def exported(tmp_path, request):
    weights = make_weights(tmp_path / "w", fine_norm=request.param)
    for role in ("coarse", "fine"):
        export_onnx(weights / role)
    return weights


@pytest.mark.parametrize("exported, shape", [("instance", (16, 64, 64)), ("instance", (32, 96, 128)), ("batch", (32, 96, 128))],
                         indirect=["exported"])
def test_export_has_dynamic_axes_and_matches_torch(exported, shape):
    spec = read_spec(exported / "fine", "fine")
    net = build_network(spec)
    tile = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(tile)
    for backend in (OnnxRuntimeBackend(spec, Placement("onnxruntime", "cpu", "fp32")), OpenVinoBackend(spec, Placement("openvino", "cpu", "fp32"))):
        out = backend(tile)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert torch.allclose(out, ref, atol=1e-3, rtol=1e-3), type(backend).__name__
    half = OnnxRuntimeBackend(spec, Placement("onnxruntime", "cpu", "fp16"))(tile)
    assert half.dtype == torch.float32 and (half.argmax(1) == ref.argmax(1)).float().mean() > 0.99


def test_logits_outlive_the_next_call(exported):
    """The sliding window keeps one tile's logits while the mirrored tile runs: an engine that handed
    back a view of its reusable output buffer would overwrite them without a word."""
    spec = read_spec(exported / "fine", "fine")
    a, b = (torch.randn(1, 1, 16, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    for backend in (OnnxRuntimeBackend(spec, Placement("onnxruntime", "cpu", "fp32")), OpenVinoBackend(spec, Placement("openvino", "cpu", "fp32"))):
        first = backend(a)
        kept = first.clone()
        backend(b)
        assert torch.equal(first, kept), type(backend).__name__


def test_an_ensemble_exports_as_one_graph_that_averages_its_folds(tmp_path):
    folder = tmp_path / "ens"
    for i in range(2):
        save_tensors(folder, tiny_unet(seed=10 + i), f"fold_{i}.safetensors")
    cfg = json.loads((make_weights(tmp_path / "w") / "fine" / "config.json").read_text())
    write_config(folder, {**{k: v for k, v in cfg.items() if k != "format_version"}, "files": ["fold_0.safetensors", "fold_1.safetensors"]})
    export_onnx(folder, ("fp32",))
    spec = read_spec(folder, "fine")
    net = build_network(spec)
    assert isinstance(net, MeanEnsemble)
    tile = torch.randn(1, 1, 16, 64, 64)
    with torch.inference_mode():
        ref = net(tile)
    assert torch.allclose(OnnxRuntimeBackend(spec, Placement("onnxruntime", "cpu", "fp32"))(tile), ref, atol=1e-3, rtol=1e-3)


# --- parity through the pipeline, shipped weights ---------------------------------------------


@pytest.fixture(scope="module")
def parity_cases(tmp_path_factory):
    """The three real scans and a phantom the training never saw."""
    folder = tmp_path_factory.mktemp("parity") / "in"
    folder.mkdir()
    for case in REAL_CASES:
        (folder / case.name).symlink_to(case)
    write(generate([4242, 1], fov="abdomen", slices=40, spacing=(1.2, 4.0), size=320), folder / "phantom_0000.nii.gz", None)
    return folder


def _masks(folder: Path, out: Path, engine: str, precision: str = "fp32") -> dict[str, dict[str, np.ndarray]]:
    """Each case's mask without the largest-component step ("raw") and with it ("full"): the step is
    the pipeline's own function, applied as the pipeline applies it, so one run gives both."""
    options = Options(weights=SHIPPED, device="cpu", backend=engine, precision=precision, keep_largest=(), progress=False)
    results = predict_folder(folder, out, options)
    assert all(r.ok for r in results) and {r.info["backend"] for r in results} == {f"{engine} on cpu, {precision}"}
    raw = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.iterdir())}
    return {"raw": raw, "full": {name: keep_largest_components(m, ORGANS) for name, m in raw.items()}}


@pytest.fixture(scope="module")
def torch_masks(parity_cases, tmp_path_factory):
    return _masks(parity_cases, tmp_path_factory.mktemp("torch"), "torch")


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fp32_engines_agree_with_torch_on_real_scans_and_a_phantom(parity_cases, torch_masks, tmp_path, engine):
    masks = _masks(parity_cases, tmp_path, engine)["full"]
    assert masks.keys() == torch_masks["full"].keys() and len(masks) == 4
    for name, mask in masks.items():
        assert (mask == torch_masks["full"][name]).mean() >= 0.999, name


# Mean organ DSC and the share of equal voxels against torch FP32's masks, without the
# largest-component step: on real scans this phantom-trained model leaves small uncertain blobs
# whose labels flip with any rounding, which says little of the precision. Measured 2026-12-02
# (the shipped pair, one pass; under BF16 the coarse pass in FP32): the FP16 graph 0.9948-0.9999 at
# >= 99.960 % of voxels; OpenVINO BF16 0.9880-0.9996 at >= 99.941 % (earlier fine tensors,
# 2026-11-26: 0.885 on TS_example_dicom with a BF16 coarse pass, whose box moved). A precision bug
# (overflow, a wrong cast) moves whole organs: far below these bars.
REDUCED = [("onnxruntime", "fp16", 0.99, 0.9995), ("openvino", "bf16", 0.985, 0.998)]


@pytest.mark.parametrize("engine, precision, bar, voxels", REDUCED)
def test_reduced_precision_keeps_the_network_s_masks(parity_cases, torch_masks, tmp_path, engine, precision, bar, voxels):
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no BF16 instructions")
    masks = _masks(parity_cases, tmp_path, engine, precision)["raw"]
    for name, mask in masks.items():
        assert mean_organ_dice(mask, torch_masks["raw"][name]) >= bar, name
        assert (mask == torch_masks["raw"][name]).mean() >= voxels, name


# --- bad cases: one line naming the file, and the run goes on with torch ------------------------


def _run(weights: Path, inp: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app", "predict", "-i", str(inp), "-o", str(out), "--weights", str(weights), "--device", "cpu", "--quiet", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False, env=env)


@pytest.fixture()
def one_scan(tmp_path):
    scan = np.full((8, 32, 32), -1000, np.int16)
    scan[2:6, 8:24, 8:24] = 40
    write_image(tmp_path / "in" / "a_0000.nii.gz", scan)
    return tmp_path / "in"


def _fell_back(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert warnings and all(any(w in ln for ln in warnings) for w in words), proc.stderr[-2000:]
    assert "models ready: torch on cpu, fp32" in proc.stderr


def test_openvino_not_installed(exported, one_scan, tmp_path):
    blocker = tmp_path / "blocker" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named openvino')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{blocker.parent}:{REPO}"}
    _fell_back(_run(exported, one_scan, tmp_path / "out", "--backend", "openvino", env=env), "needs the openvino package")


def test_stale_onnx_file_is_refused(exported, one_scan, tmp_path):
    save_tensors(exported / "fine", tiny_unet(seed=99))  # new tensors, the old export stays
    _fell_back(_run(exported, one_scan, tmp_path / "out", "--backend", "onnxruntime"), str(exported / "fine" / "model.onnx"), "(stale)")


def test_corrupt_onnx_file_is_refused(exported, one_scan, tmp_path):
    (exported / "fine" / "model.onnx").write_bytes(b"not a graph" * 100)
    for engine in ("onnxruntime", "openvino"):
        _fell_back(_run(exported, one_scan, tmp_path / engine, "--backend", engine), str(exported / "fine" / "model.onnx"), f"cannot be loaded by {engine}")


def test_onnx_file_that_does_not_fit_the_config(exported, one_scan, tmp_path):
    other = tmp_path / "other"
    cfg = json.loads((exported / "fine" / "config.json").read_text())
    save_tensors(other, tiny_unet(num_classes=3))
    write_config(other, {**{k: v for k, v in cfg.items() if k not in ("format_version", "onnx")}, "architecture": tiny_unet(num_classes=3).config.to_dict(),
                         "labels": {"0": "background", "1": "liver", "2": "spleen"}})
    export_onnx(other, ("fp32",))
    shutil.copy(other / "model.onnx", exported / "fine" / "model.onnx")  # 3 channels out; config.json says 15
    for engine in ("onnxruntime", "openvino"):
        _fell_back(_run(exported, one_scan, tmp_path / engine, "--backend", engine), str(exported / "fine" / "model.onnx"), "do not match config.json")


def test_a_model_runs_bf16_by_default_only_where_its_config_says_so(exported, one_scan, tmp_path):
    """Other weights (an nnU-Net import, your own) keep FP32 by default: BF16 was measured to keep
    the shipped fine model's masks, no other's."""
    from app.pipeline import Options, predict_folder

    config = exported / "fine" / "config.json"
    backend = {}
    for said in (None, "bf16"):
        if said:
            cfg = json.loads(config.read_text())
            cfg["input"]["cpu_precision"] = said
            config.write_text(json.dumps(cfg))
        results = predict_folder(one_scan, tmp_path / str(said), Options(weights=exported, device="cpu", progress=False))
        backend[said] = results[0].info["backend"]
    assert backend[None] == "openvino on cpu, fp32"
    assert backend["bf16"] == ("openvino on cpu, bf16" if cpu_has_bf16() else "openvino on cpu, fp32")


def test_auto_without_an_export_runs_torch_and_says_so_quietly(one_scan, tmp_path):
    weights = make_weights(tmp_path / "w")  # no ONNX files
    proc = _run(weights, one_scan, tmp_path / "out")
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-2000:]
    assert "no fp32 ONNX export; run python -m app export-onnx" in proc.stderr and "models ready: torch on cpu, fp32" in proc.stderr


def test_a_worker_given_one_core_uses_one_thread_and_does_not_pin(monkeypatch):
    """Ray sets OMP_NUM_THREADS per worker: OpenVINO then runs that many threads, unpinned (pinned,
    every worker's thread went to the same core and two workers ran no faster than one)."""
    import os

    from app.backend import physical_cores, shares_the_machine

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert not shares_the_machine()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert shares_the_machine() and physical_cores() == 1
    backend = OpenVinoBackend(read_spec(Path(__file__).resolve().parents[1] / "weights" / "fine"), Placement("openvino", "cpu", "fp32"))
    assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert backend.compiled.get_property("ENABLE_CPU_PINNING") is False
