"""The default weights in weights/ segment a phantom the training never saw, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import score_case
from synthetic.phantoms import generate, write

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
UNSEEN = [31337, 0]  # training draws its phantoms from [20261122 + role offset + 10 * cycle, n]


def test_model_card_says_demonstration_first_and_weights_stay_small():
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    head = " ".join(card.splitlines()[:8]).lower()
    assert "demonstration" in head and "not for clinical" in head and "leaderboard" in head
    assert "import-nnunet" in card and "synthetic" in head
    files = [p for p in WEIGHTS.rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    assert sum(p.stat().st_size for p in files if p.suffix == ".safetensors") < 50e6  # the networks stay challenge-sized
    assert sum(p.stat().st_size for p in files) < 100e6  # with their FP32 and FP16 ONNX exports
    assert {p.relative_to(WEIGHTS).as_posix() for p in files} >= {
        f"{role}/{name}" for role in ("coarse", "fine") for name in ("config.json", "model.safetensors", "model.onnx", "model.fp16.onnx")}


def test_default_weights_segment_an_unseen_phantom(tmp_path):
    ph = generate(UNSEEN, fov="abdomen", spacing=(0.8, 3.0))
    image, labels = tmp_path / "in" / "phantom_0000.nii.gz", tmp_path / "gt" / "phantom.nii.gz"
    write(ph, image, labels)
    proc = subprocess.run([sys.executable, "-m", "app", "predict", "-i", str(image.parent), "-o", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred_path = tmp_path / "out" / "phantom.nii.gz"
    src, out = sitk.ReadImage(str(image)), sitk.ReadImage(str(pred_path))
    assert out.GetPixelID() == sitk.sitkUInt8
    assert out.GetSize() == src.GetSize()
    assert np.allclose(out.GetSpacing(), src.GetSpacing()) and np.allclose(out.GetOrigin(), src.GetOrigin())
    assert np.allclose(out.GetDirection(), src.GetDirection())
    score = score_case(labels, pred_path, "flare22")
    assert not score.error and not score.warnings, (score.error, score.warnings)
    organs = score.dsc
    assert len(organs) == 13
    mean = float(np.mean(list(organs.values())))
    # Measured 0.962 (every organ 0.90-0.99; see MODEL_CARD.md): issue 5's bar is 0.90.
    assert mean >= 0.90, f"mean organ DSC {mean:.3f}: {organs}"
    assert min(organs.values()) >= 0.80, organs  # no organ missed
