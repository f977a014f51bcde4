"""Averaging weights folders: the element-wise mean, a folder the engine loads, and refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from app.backend import Placement
from app.convert.tensors import save_model
from app.model import load_model
from app.unet import UNet3D, UNetConfig
from app.weights import read_spec
from training.average import average_folders, main

CFG = UNetConfig(features=[4, 8], strides=[(1, 1, 1), (1, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3)], num_classes=2, norm="batch")
CONFIG = {"role": "coarse", "input": {"spacing": [4.0, 4.0, 4.0], "patch_size": [8, 16, 16]},
          "intensity": {"clip": [-200.0, 400.0], "mean": 50.0, "std": 120.0}, "labels": {"0": "background", "1": "foreground"}}


def folder(path, seed: int, stats_seed: int = 0):
    torch.manual_seed(seed)
    net = UNet3D(CFG)
    g = torch.Generator().manual_seed(stats_seed)
    for m in net.modules():  # stored statistics, as training/norm_statistics.py sets them
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    save_model(path, net, CONFIG)
    return net.state_dict()


def test_the_average_is_the_element_wise_mean_and_loads(tmp_path):
    states = [folder(tmp_path / f"m{k}", seed=k) for k in range(3)]
    main(["--out", str(tmp_path / "avg"), *(str(tmp_path / f"m{k}") for k in range(3))])
    avg = load_file(tmp_path / "avg" / "model.safetensors")
    conv = next(k for k in avg if k.endswith("conv.weight"))
    assert not torch.equal(states[0][conv], states[1][conv])
    for key, value in avg.items():
        expected = states[0][key] if "running" in key or "num_batches" in key else sum(s[key].double() for s in states) / 3
        assert value.dtype == states[0][key].dtype and torch.allclose(value.double(), expected.double(), atol=1e-7), key
    config = json.loads((tmp_path / "avg" / "config.json").read_text())
    assert config["averaged_from"] == [str(tmp_path / f"m{k}") for k in range(3)] and "onnx" not in config
    load_model(read_spec(tmp_path / "avg", "coarse"), Placement("torch", "cpu", "fp32"))


def test_networks_with_other_statistics_or_shapes_are_refused(tmp_path):
    folder(tmp_path / "a", seed=0)
    folder(tmp_path / "b", seed=1, stats_seed=1)
    with pytest.raises(ValueError, match="stored norm statistics .* differ"):
        average_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    torch.manual_seed(0)
    save_model(tmp_path / "wide", UNet3D(replace(CFG, features=[4, 16])), CONFIG)
    with pytest.raises(ValueError, match="architecture or labels"):
        average_folders([tmp_path / "a", tmp_path / "wide"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
