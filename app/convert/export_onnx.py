"""``python -m app export-onnx``: ONNX graphs of a weights folder's network, for the ONNX Runtime
and OpenVINO backends.

Writes ``model.onnx`` (FP32) and ``model.fp16.onnx`` (for GPUs) beside the tensors, opset 17, with
dynamic batch and spatial axes so whole crops and tiles of any multiple of the network's stride
run; a fold ensemble becomes one graph that averages its folds. ``config.json`` records each
graph and the sha256 of the tensor files it came from, so a graph left over from other tensors
is refused at load with a clear message instead of running stale.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from ..architecture import UNetConfig
from ..backend import build_network, tensor_digest
from ..nifti import write_atomically
from ..weights import CONFIG_NAME, read_spec, write_config

OPSET = 17
FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


def model_folders(weights: Path) -> list[Path]:
    """A single model folder (it has a config.json), or the coarse/ and fine/ of a weights folder."""
    if (weights / CONFIG_NAME).is_file():
        return [weights]
    return [weights / role for role in ("coarse", "fine") if (weights / role / CONFIG_NAME).is_file()]


def export_onnx(folder: Path, precisions: tuple[str, ...] = ("fp32", "fp16")) -> dict[str, dict]:
    """Export one model folder; returns the ``onnx`` entries written into its config.json."""
    spec = read_spec(folder)
    net = build_network(spec)
    divisor = UNetConfig.from_dict(spec.architecture).divisor
    example = torch.zeros(1, 1, *(2 * d for d in divisor))  # the smallest input every stage can take; axes stay dynamic
    sources = tensor_digest(spec)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    entries = {}
    for precision in precisions:
        half = precision == "fp16"
        module, x = (copy.deepcopy(net).half(), example.half()) if half else (net, example)
        path = folder / FILES[precision]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notes
            write_atomically(path, lambda tmp, module=module, x=x: torch.onnx.export(
                module, (x,), tmp, dynamo=False, opset_version=OPSET, input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes}))
        entries[precision] = {"file": path.name, "sources": sources, "opset": OPSET}
    raw = {k: v for k, v in json.loads((folder / CONFIG_NAME).read_text()).items() if k != "format_version"}
    write_config(folder, {**raw, "onnx": entries})
    return entries
