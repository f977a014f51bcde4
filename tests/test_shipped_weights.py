"""The default weights in weights/ segment a phantom the training never saw, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.labels import ORGANS
from app.weights import read_spec
from evaluation.metrics import mean_organ_dice, score_case
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


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """The unseen phantom and the default weights' mask of it, through the CLI."""
    root = tmp_path_factory.mktemp("unseen")
    ph = generate(UNSEEN, fov="abdomen", spacing=(0.8, 3.0))
    image, labels = root / "in" / "phantom_0000.nii.gz", root / "gt" / "phantom.nii.gz"
    write(ph, image, labels)
    return image, labels, _predict(image, root / "out")


def _predict(image: Path, out: Path, *options: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "app", "predict", "-i", str(image.parent), "-o", str(out), "--device", "cpu", *options],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "phantom.nii.gz"


def test_default_weights_segment_an_unseen_phantom(unseen):
    image, labels, pred_path = unseen
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
    # Measured 0.958, the lowest organ 0.83 (MODEL_CARD.md); the bar is 0.90.
    assert mean >= 0.90, f"mean organ DSC {mean:.3f}: {organs}"
    # No organ missed. The lowest is the duodenum (0.831; 0.73 in stage 3): the geometric phantoms
    # draw it as a tube, and real-anatomy fine-tuning taught a real one (held-out real-anatomy phantoms: 0.93).
    assert min(organs.values()) >= 0.70, organs


def test_the_fine_model_gives_the_same_masks_in_one_pass_and_in_tiles(unseen, tmp_path):
    """The shipped fine model runs over the whole crop at once (``tiling: whole``), which is only
    sound for a network whose output does not depend on the input's extent (stored norm
    statistics): its masks must be those of nnU-Net-style tiles. Measured 0.9935 mean organ DSC
    (every organ >= 0.980, 99.967 % of voxels equal; tiles see zeros past their own faces, which is
    the difference); an instance-norm model loses 0.05-0.14 DSC in one pass."""
    image, _, pred_path = unseen
    spec = read_spec(WEIGHTS / "fine", "fine")
    other = "sliding" if spec.tiling == "whole" else "whole"
    tiled = _predict(image, tmp_path / "out", "--tiling", other)
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (pred_path, tiled))
    assert sum((a == o).any() or (b == o).any() for o in ORGANS) == 13
    assert mean_organ_dice(a, b) >= 0.98
