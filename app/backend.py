"""The one place that knows engines, devices and precisions.

A backend turns a weights folder's network into a callable ``tile -> logits`` (torch tensors
``[1, 1, Z, Y, X] -> [1, C, Z, Y, X]`` on the backend's device, in its tensor dtype), says where
it runs, waits for its device so stage timings are real, and offers the backend to fall back to
when the device runs out of memory. The sliding window takes any such callable, as MONAI's
``sliding_window_inference`` takes a predictor. Adding an engine means adding one class here;
nothing else imports an engine's library.

Engines: ``torch`` (eager; FP16 on CUDA, FP32 on the CPU), ``onnxruntime`` (CPU FP32, CUDA FP16
with IO binding, TensorRT FP16 where its libraries are present) and ``openvino`` (CPU, FP32 or
BF16). The ONNX engines read the files ``python -m app export-onnx`` wrote beside the tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .weights import ModelSpec, OnnxExport, WeightsError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("app")

ENGINES = ("torch", "onnxruntime", "openvino")
CHOICES = ("auto", *ENGINES)


class BackendError(WeightsError):
    """A backend that cannot be built: one line naming the file or library and the reason."""


@dataclass(frozen=True)
class Placement:
    """What runs where, in which precision: the decision every stage follows."""

    engine: str  # torch | onnxruntime | openvino
    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 | bf16

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def tensor_dtype(self) -> torch.dtype:
        """The dtype images and sums have on the device: FP16 only on CUDA (CPU kernels are slow in it)."""
        return torch.float16 if self.device == "cuda" and self.precision == "fp16" else torch.float32

    def __str__(self) -> str:
        return f"{self.engine} on {self.device}, {self.precision}"


def pick_device(name: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda was asked for, but no CUDA GPU is visible to torch")
    if name not in ("cpu", "cuda"):
        raise BackendError(f"unknown device {name!r} (auto, cuda or cpu)")
    return name


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: where OpenVINO's BF16 runs natively (elsewhere it would emulate it)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads share one),
    and no more than ``OMP_NUM_THREADS`` where a scheduler set it (Ray gives each worker its CPUs so)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            siblings = str(cpu)
        cores.add(siblings)
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(len(cores), int(budget)) if budget.isdigit() and int(budget) > 0 else len(cores))


def shares_the_machine() -> bool:
    """True when a scheduler gave this process fewer threads than the cores it may run on
    (``OMP_NUM_THREADS``, as Ray sets it per worker): other processes then run beside it."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return budget.isdigit() and 0 < int(budget) < len(cpus)


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def choose(engine: str, device: str, precision: str = "auto", cpu_precision: str = "fp32") -> Placement:
    """The placement for ``--backend ENGINE --device DEVICE --precision PRECISION``.

    ``auto`` follows the measurements in benchmarks/README.md ("Backends", "BF16 on the CPU"):
    OpenVINO on the CPU, torch on CUDA (the only GPU path measured so far); FP16 on CUDA; on the CPU
    the model's own ``cpu_precision`` (config.json ``input.cpu_precision``): ``bf16`` where BF16 was
    measured to keep that model's masks (the shipped fine model: 1.2-1.4x faster per case, >= 0.99
    mean organ DSC of FP32's on every real scan), run where OpenVINO runs it natively (avx512_bf16
    or AMX), else FP32. So those default masks may differ a little between CPUs, as FP16's on a GPU
    differ from FP32's; ``fp32`` gives the same masks on every CPU. Also possible: the FP16 graph
    through onnxruntime on the CPU (to check the GPU's graph where no GPU is).
    """
    if engine == "auto":
        engine = "torch" if device == "cuda" else "openvino"
    if engine not in ENGINES:
        raise BackendError(f"unknown backend {engine!r} (one of {', '.join(CHOICES)})")
    if engine == "openvino" and device == "cuda":
        raise BackendError("the openvino backend runs on the CPU only; use --device cpu, or torch/onnxruntime on CUDA")
    native_bf16 = engine == "openvino" and cpu_has_bf16()
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "bf16" if native_bf16 and cpu_precision == "bf16" else "fp32"
    if precision == "bf16" and not native_bf16:
        raise BackendError("--precision bf16 needs the openvino backend on a CPU with BF16 instructions (avx512_bf16 or amx_bf16)")
    if precision == "fp16" and device == "cpu" and engine != "onnxruntime":
        raise BackendError(f"--precision fp16 on the CPU runs only through onnxruntime (the GPU's FP16 graph), not {engine}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    return Placement(engine, device, precision)


def coarse_placement(placement: Placement) -> Placement:
    """The coarse model's placement: the fine model's, but FP32 where that is BF16.

    Why: the coarse output is a box, and every mask follows it; BF16's 8-bit mantissa moved the
    box of a real 40 mm slab by a few rows (and the grown box with it), which moved the slab's small
    organs more than BF16 moves them in the fine model. The coarse pass is a small part of the time.
    """
    return replace(placement, precision="fp32") if placement.precision == "bf16" else placement


class Backend(ABC):
    """``tile -> logits`` on one engine, device and precision."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement

    @abstractmethod
    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        """``[1, 1, z, y, x]`` in the placement's tensor dtype on its device -> ``[1, C, z, y, x]`` likewise."""

    def sync(self) -> None:
        """Wait for the device, so that a stage's wall time includes its queued work."""
        if self.placement.device == "cuda":
            torch.cuda.synchronize()

    def release(self) -> None:
        """Give cached device memory back after an out-of-memory error."""
        if self.placement.device == "cuda":
            torch.cuda.empty_cache()

    def fallback(self) -> Backend | None:
        """The backend to finish on when this one's device is out of memory (None: nothing smaller)."""
        return None

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether ``error`` means the device ran out of memory (then ``fallback`` may finish the work)."""
        return isinstance(error, torch.OutOfMemoryError)


# --- torch -------------------------------------------------------------------------------------


class MeanEnsemble(torch.nn.Module):
    """Average of several networks' logits (nnU-Net's fold ensemble)."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)


def build_network(spec: ModelSpec) -> nn.Module:
    """The folder's network(s) as one torch module in eval mode (FP32, CPU)."""
    from safetensors.torch import load_file

    from .unet import UNet3D, UNetConfig

    cfg = UNetConfig.from_dict(spec.architecture)
    nets = []
    for name in spec.files:
        net = UNet3D(cfg)
        path = spec.folder / name
        if not os.access(path, os.R_OK):
            raise WeightsError(f"{path}: cannot be read (permission denied for this user)")
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: cannot read tensors ({e})") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()
            raise WeightsError(f"{path}: tensors do not match config.json's architecture ({' '.join(first[:3])[:300]})") from None
        nets.append(net.eval())
    return nets[0] if len(nets) == 1 else MeanEnsemble(nets).eval()


class TorchBackend(Backend):
    def __init__(self, spec: ModelSpec, placement: Placement) -> None:
        super().__init__(placement)
        self.spec = spec
        self.net = build_network(spec).to(device=placement.torch_device, dtype=placement.tensor_dtype)

    @torch.inference_mode()
    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        return self.net(tile)

    def fallback(self) -> Backend | None:
        if self.placement.device == "cpu":
            return None
        return TorchBackend(self.spec, Placement("torch", "cpu", "fp32"))


# --- ONNX files --------------------------------------------------------------------------------


def tensor_digest(spec: ModelSpec) -> dict[str, str]:
    """sha256 of each tensor file: an ONNX export records these, so a stale one is caught."""
    out = {}
    for name in spec.files:
        h = hashlib.sha256()
        with open(spec.folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def onnx_file(spec: ModelSpec, precision: str) -> Path:
    """The exported graph for a precision, checked against the tensors it was exported from."""
    export: OnnxExport | None = spec.onnx.get(precision)
    if export is None:
        raise BackendError(f"{spec.folder / 'config.json'}: no {precision} ONNX export; run python -m app export-onnx --weights {spec.folder.parent}")
    path = spec.folder / export.file
    if not path.is_file():
        raise BackendError(f"{path}: missing (config.json names it as the {precision} ONNX export)")
    if tensor_digest(spec) != export.sources:
        raise BackendError(f"{path}: exported from other tensors than {', '.join(spec.files)} (stale); run python -m app export-onnx --weights {spec.folder.parent}")
    return path


def _check_io(path: Path, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]], spec: ModelSpec) -> None:
    """One image in, ``num_classes`` channels out, five axes each: what config.json promises."""
    ok = len(inputs) == 1 and len(outputs) == 1 and len(inputs[0][1]) == 5 and len(outputs[0][1]) == 5
    ok = ok and inputs[0][1][1] in (1, None, "") and outputs[0][1][1] in (len(spec.labels), None, "")
    if not ok:
        raise BackendError(f"{path}: inputs/outputs {inputs} -> {outputs} do not match config.json (one [1, 1, z, y, x] image in, [1, {len(spec.labels)}, z, y, x] logits out)")


# --- ONNX Runtime ------------------------------------------------------------------------------


def _import(engine: str):
    try:
        if engine == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import openvino

        return openvino
    except ImportError as e:
        raise BackendError(f"the {engine} backend needs the {engine} package, which is not installed ({e})") from None


class OnnxRuntimeBackend(Backend):
    """CPU: FP32, threads = physical cores, no busy spinning between runs. CUDA: the FP16 graph with
    IO binding on torch's device buffers (no host round trip per tile), TensorRT first when present."""

    def __init__(self, spec: ModelSpec, placement: Placement) -> None:
        super().__init__(placement)
        ort = _import("onnxruntime")
        self.spec = spec
        path = onnx_file(spec, "fp16" if placement.precision == "fp16" else "fp32")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = physical_cores()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the CPU memory arena stays on: measured 12 % faster over a sliding window for 6 % more peak RAM (benchmarks/README.md)
        providers: list = ["CPUExecutionProvider"]
        if placement.device == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"onnxruntime has no CUDA execution provider here (has {available}); install onnxruntime-gpu")
            providers = [("CUDAExecutionProvider", {"device_id": torch.cuda.current_device()}), "CPUExecutionProvider"]
            if "TensorrtExecutionProvider" in available:
                cache = _trt_cache(spec)
                providers.insert(0, ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{path}: cannot be loaded by onnxruntime ({str(e).splitlines()[0][:200]})") from None
        inputs = [(i.name, list(i.shape)) for i in self.session.get_inputs()]
        outputs = [(o.name, list(o.shape)) for o in self.session.get_outputs()]
        _check_io(path, inputs, outputs, spec)
        self.input_name, self.output_name = inputs[0][0], outputs[0][0]
        self.graph_dtype = torch.float16 if placement.precision == "fp16" else torch.float32
        self.num_classes = len(spec.labels)

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        if self.placement.device == "cuda":
            return self._run_bound(tile)
        x = tile.detach().to(self.graph_dtype).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(out).to(self.placement.tensor_dtype)

    def _run_bound(self, tile: torch.Tensor) -> torch.Tensor:
        """Input and output stay in torch's CUDA buffers; onnxruntime reads and writes them in place."""
        x = tile.to(self.graph_dtype).contiguous()
        out = torch.empty((x.shape[0], self.num_classes, *x.shape[2:]), dtype=self.graph_dtype, device=x.device)
        binding = self.session.io_binding()
        element = _numpy_dtype(self.graph_dtype)
        binding.bind_input(self.input_name, "cuda", x.device.index or 0, element, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", out.device.index or 0, element, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream().synchronize()  # x is ready before onnxruntime's stream reads it
        self.session.run_with_iobinding(binding)
        return out.to(self.placement.tensor_dtype)

    def fallback(self) -> Backend | None:
        if self.placement.device == "cpu":
            return None
        return OnnxRuntimeBackend(self.spec, Placement("onnxruntime", "cpu", "fp32"))

    def is_out_of_memory(self, error: BaseException) -> bool:
        """onnxruntime reports a failed CUDA allocation as its own exception, with the reason in words."""
        text = str(error).lower()
        return isinstance(error, torch.OutOfMemoryError) or (type(error).__module__.startswith("onnxruntime") and ("memory" in text or "alloc" in text))


def _numpy_dtype(dtype: torch.dtype):
    import numpy as np

    return np.float16 if dtype == torch.float16 else np.float32


def _trt_cache(spec: ModelSpec) -> Path:
    """TensorRT's engine cache: beside the weights where writable (built once), else a temp folder."""
    import tempfile

    folder = spec.folder / "trt_cache"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="trt_cache_"))


# --- OpenVINO ----------------------------------------------------------------------------------


class OpenVinoBackend(Backend):
    """CPU, latency mode, threads = physical cores; BF16 inference precision where asked for."""

    def __init__(self, spec: ModelSpec, placement: Placement) -> None:
        super().__init__(placement)
        ov = _import("openvino")
        path = onnx_file(spec, "fp32")
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": physical_cores(),
            # pinned threads of several processes (Ray workers, one core each) land on the same cores
            "ENABLE_CPU_PINNING": not shares_the_machine(),
            "INFERENCE_PRECISION_HINT": "bf16" if placement.precision == "bf16" else "f32",
        }
        try:
            model = core.read_model(str(path))
            inputs = [(p.get_any_name(), _ov_shape(p)) for p in model.inputs]
            outputs = [(p.get_any_name(), _ov_shape(p)) for p in model.outputs]
            _check_io(path, inputs, outputs, spec)
            self.compiled = core.compile_model(model, "CPU", config)
        except BackendError:
            raise
        except Exception as e:  # openvino raises its own exception types
            raise BackendError(f"{path}: cannot be loaded by openvino ({str(e).splitlines()[0][:200]})") from None
        self.request = self.compiled.create_infer_request()

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        x = tile.detach().to(torch.float32).contiguous().numpy()
        # share_outputs=False (the default, spelled out): openvino copies the logits out of the
        # request's buffer, which the next call overwrites; a second copy here cost 0.4 s per case
        return torch.from_numpy(self.request.infer({0: x}, share_outputs=False)[0])


def _ov_shape(port) -> list:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


# --- choosing ----------------------------------------------------------------------------------

_CLASSES = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}


def make_backend(spec: ModelSpec, placement: Placement, chosen_by_auto: bool = False) -> Backend:
    """The backend for a placement; a non-torch one that cannot start says why in one line and the
    run goes on with torch on the same device (the ``torch`` backend's own errors stop the run).

    A fallback from ``--backend auto`` is news, not a problem (a weights folder without an ONNX
    export runs on torch), so it is logged as information; from an engine asked for by name, as a warning.
    """
    try:
        return _CLASSES[placement.engine](spec, placement)
    except BackendError as e:
        if placement.engine == "torch":
            raise
        fallback = replace(placement, engine="torch", precision="fp16" if placement.device == "cuda" and placement.precision == "fp16" else "fp32")
        log.log(logging.INFO if chosen_by_auto else logging.WARNING, "%s; using %s for the %s model", e, fallback, spec.role or "")
        return TorchBackend(spec, fallback)
