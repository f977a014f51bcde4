import json

import pytest
import torch

from app.labels import flare_id
from app.backend import Placement
from app.model import load_model

from app.weights import WeightsError, read_spec
from tests.helpers import make_weights

CPU = Placement("torch", "cpu", "fp32")


@pytest.fixture()
def weights(tmp_path):
    return make_weights(tmp_path / "w")


def _edit(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path.write_text(json.dumps(cfg))


def test_round_trip_loads(weights):
    spec = read_spec(weights / "fine", "fine")
    model = load_model(spec, CPU)
    assert model.dtype == torch.float32
    assert list(spec.lut) == list(range(15))


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(WeightsError, match="weights folder not found"):
        read_spec(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json: missing"):
        read_spec(tmp_path / "empty")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input__patch_size": [15, 64, 64]}, "not divisible"),
        ({"input__size": [16, 32, 32]}, "exactly one of"),
        ({"labels__3": "spleen-ish"}, "no FLARE id"),
        ({"labels__14": None}, "must name channels"),
        ({"intensity__std": 0}, "std be positive"),
        ({"architecture__features": [4, 8]}, "one entry per stage"),
        ({"files": ["missing.safetensors"]}, "tensor files missing"),
        ({"format_version": 7}, "format_version 7"),
        ({"role": "coarse"}, "used as the fine model"),
        ({"input__tiling": "hexagonal"}, "input.tiling must be one of"),
        ({"input__whole_max_voxels": 0}, "whole_max_voxels must be positive"),
        ({"onnx": {"fp32": {"file": "model.onnx"}}}, "onnx.fp32 needs 'file' and 'sources'"),
        ({"input__resample": "lanczos"}, r"input.resample.scheme must be one of \['trilinear', 'nnunet'\]"),
        ({"input__resample": 3}, "input.resample must be one of"),
        ({"input__resample": {"scheme": "nnunet", "order": 2}}, "input.resample.order must be a spline order 0, 1 or 3"),
        ({"input__resample": {"scheme": "nnunet", "order": True}}, "input.resample.order must be a spline order"),
        ({"input__resample": {"scheme": "nnunet", "orders": 3}}, r"input.resample: unknown fields \['orders'\]"),
        ({"input__resample": {"scheme": "nnunet", "force_separate_z": "yes"}}, "force_separate_z must be null, true or false"),
        ({"input__resample": {"scheme": "nnunet", "anisotropy_threshold": -1}}, "anisotropy_threshold must be a positive number"),
        ({"input__blending": "fp8"}, "input.blending must be one of"),
        ({"input__cpu_precision": "fp16"}, r"input.cpu_precision must be one of \['fp32', 'bf16'\]"),
    ],
)
def test_inconsistent_config_is_a_one_line_error(weights, change, message):
    _edit(weights / "fine", **change)
    with pytest.raises(WeightsError, match=message) as err:
        read_spec(weights / "fine", "fine")
    assert "\n" not in str(err.value) and "config.json" in str(err.value) or "fine" in str(err.value)


def test_resampling_defaults_and_nnunet_shorthand(weights):
    from app.weights import Resampling

    assert read_spec(weights / "fine").resampling == Resampling("trilinear")
    _edit(weights / "fine", input__resample="nnunet")
    how = read_spec(weights / "fine").resampling
    assert (how.scheme, how.order, how.order_z, how.logits_order, how.logits_order_z, how.force_separate_z) == ("nnunet", 3, 0, 1, 0, None)


def test_tensors_that_do_not_fit_the_architecture(weights):
    _edit(weights / "fine", architecture__features=[4, 8, 32])
    with pytest.raises(WeightsError, match="do not match config.json's architecture"):
        load_model(read_spec(weights / "fine"), CPU)


def test_label_names_in_other_spellings():
    assert flare_id("Liver") == 1
    assert flare_id("kidney_left") == 13
    assert flare_id("Inferior Vena Cava") == 6
    assert flare_id("adrenal_gland_right") == 7
    assert flare_id("brain") is None


@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
def test_normalize_never_changes_the_scan_it_reads(weights, dtype):
    """Both stages normalise the same scan; a float32 scan must not come back clipped and scaled."""
    model = load_model(read_spec(weights / "fine", "fine"), CPU)
    scan = torch.tensor([[[-3000, -1000, 0, 40, 3000]]], dtype=dtype)
    before = scan.clone()
    out = model.normalize(scan)
    assert torch.equal(scan, before)
    assert out.dtype == torch.float32 and out.data_ptr() != scan.data_ptr()
    assert torch.allclose(model.normalize(scan), out)
