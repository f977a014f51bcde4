"""Test-time scale augmentation (``--tta``): passes at other scales line up with the plain pass,
their probabilities are averaged, and the option reaches the fine stage."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import app.fine
from app.backend import Backend, Placement
from app.cli import TTA_SCALES
from app.model import Model
from app.pipeline import Options, SetupError, Stages, predict_folder
from app.weights import read_spec
from tests.helpers import REAL_CASES, make_weights, write_image

CPU = Placement("torch", "cpu", "fp32")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))


class _Bright(Backend):
    """A network that calls every voxel brighter than the window's middle channel 1 (liver)."""

    def __init__(self, classes: int) -> None:
        super().__init__(CPU)
        self.classes = classes

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        x = tile.float()
        out = torch.full((tile.shape[0], self.classes, *tile.shape[2:]), -50.0)
        out[:, 0:1], out[:, 1:2] = -4 * x, 4 * x
        return out


class _Sequence(Backend):
    """A network whose n-th call gives the n-th row of ``per_call`` as the logits of every voxel (one
    call per pass where the model's tiling is ``whole``)."""

    def __init__(self, per_call: list[list[float]]) -> None:
        super().__init__(CPU)
        self.per_call, self.calls = per_call, 0

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        row = torch.tensor(self.per_call[self.calls])
        self.calls += 1
        return row.reshape(1, -1, 1, 1, 1).expand(tile.shape[0], -1, *tile.shape[2:]).clone()


def _model(weights, backend: Backend, tiling: str = "model") -> Model:
    spec = read_spec(weights / "fine", "fine")
    spec = spec if tiling == "model" else replace(spec, tiling=tiling)
    return Model(spec, backend, torch.as_tensor(spec.lut))


def test_scaled_passes_line_up_with_the_plain_pass(weights):
    """Each scale's pass is resampled onto the plain pass's grid: an organ ends where it ends in the
    plain pass, not shifted or stretched by the scale it was seen at."""
    crop = np.full((20, 72, 80), -300, np.int16)
    crop[5:15, 14:50, 30:66] = 300  # 40 x 108 x 108 mm, off-centre on y and x
    model = _model(weights, _Bright(15))
    plain = app.fine.segment_crop(model, crop, (4.0, 3.0, 3.0)).numpy()
    tta = app.fine.segment_crop(model, crop, (4.0, 3.0, 3.0), scales=TTA_SCALES).numpy()
    assert tta.shape == crop.shape and set(np.unique(tta)) == {0, 1}
    a, b = plain == 1, tta == 1
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    assert np.abs(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)).max() < 0.5  # voxels
    assert np.array_equal(b, crop > 0)  # the box's faces lie between voxels of the fine grid's cells


def test_passes_average_probabilities_not_logits(weights):
    """Three passes: background sure in one (logits 10 : 0), liver likely in two (0 : 2). The mean of
    their softmax says liver (0.41 : 0.59); the mean of the logits would say background (3.3 : 1.3)."""
    per_call = [[10.0, 0.0] + [-50.0] * 13, [0.0, 2.0] + [-50.0] * 13, [0.0, 2.0] + [-50.0] * 13]
    crop = np.zeros((8, 64, 64), np.int16)
    backend = _Sequence(per_call)
    labels = app.fine.segment_crop(_model(weights, backend, "whole"), crop, (4.0, 3.0, 3.0), scales=(1.0, 0.9, 1.1))
    assert backend.calls == 3 and torch.all(labels == 1)
    plain = app.fine.segment_crop(_model(weights, _Sequence(per_call), "whole"), crop, (4.0, 3.0, 3.0))
    assert torch.all(plain == 0)


def test_the_option_reaches_the_fine_stage_and_is_announced(weights, tmp_path, caplog):
    shutil.copy(REAL_CASES[-1], tmp_path / "x_0000.nii.gz")
    real = Stages.default()
    seen = []

    def spy(model, crop, spacing, upsample, case, scales):
        seen.append(scales)
        return real.segment_crop(model, crop, spacing, upsample, case, scales)

    with caplog.at_level("INFO", logger="app"):
        results = predict_folder(tmp_path, tmp_path / "out", Options(weights=weights, device="cpu", tta_scales=TTA_SCALES),
                                 Stages(real.coarse_labels, spy))
    assert results[0].ok and seen and all(s == TTA_SCALES for s in seen)
    assert "test-time scale augmentation: the fine model sees each crop with organs 0.8, 0.9, 1, 1.1, 1.2 times their size" in caplog.text
    mask = sitk.ReadImage(str(tmp_path / "out" / "x.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(REAL_CASES[-1])).GetSize()


def test_a_fine_model_of_fixed_input_size_is_refused_before_any_case(weights, tmp_path):
    """Scaling the crop cannot change what a fixed-size model sees: five identical passes, refused."""
    fixed = tmp_path / "w"
    shutil.copytree(weights, fixed)
    cfg_path = fixed / "fine" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["input"] = {"size": [16, 64, 64]}
    cfg_path.write_text(json.dumps(cfg))
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.zeros((8, 16, 16), np.int16))
    with pytest.raises(SetupError, match="needs a fine model with an input spacing"):
        predict_folder(tmp_path / "in", tmp_path / "out", Options(weights=fixed, device="cpu", tta_scales=TTA_SCALES))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
