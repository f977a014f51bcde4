"""DSC/NSD against hand-computed cases, the challenge's special rules, and the organisers' scorer."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from evaluation.metrics import ORGANS, dice, nsd, score_arrays, score_folder
from tests.helpers import SHARED

REPO = Path(__file__).resolve().parents[1]


def _cube(shape=(40, 40, 40), lo=10, hi=30, label=1):
    m = np.zeros(shape, np.uint8)
    m[lo:hi, lo:hi, lo:hi] = label
    return m


def test_dice_of_shifted_cubes():
    gt = _cube() == 1
    pred = np.roll(gt, 2, axis=0)  # 20x20x20 cubes overlapping on 18 slices
    assert dice(gt, pred) == pytest.approx(2 * 18 / 40)


def test_nsd_of_nested_cubes_at_known_tolerances():
    gt, pred = _cube(lo=10, hi=30) == 1, _cube(lo=12, hi=28) == 1  # faces 2 mm apart, corners 2*sqrt(3) = 3.46 mm
    assert dice(gt, pred) == pytest.approx(2 * 16**3 / (20**3 + 16**3))
    assert nsd(gt, pred, (1.0, 1.0, 1.0), 3.5) == pytest.approx(1.0)
    assert nsd(gt, pred, (1.0, 1.0, 1.0), 1.9) == pytest.approx(0.0)
    # spacing stretches the gap: 2 voxels of 2 mm are 4 mm along the first axis only
    assert 0.0 < nsd(gt, pred, (2.0, 1.0, 1.0), 3.0) < 1.0


def test_spheres_identical_and_one_voxel_apart():
    z, y, x = np.ogrid[:40, :40, :40]
    sphere = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 12**2
    assert nsd(sphere, sphere, (1.0, 1.0, 1.0), 0.0) == pytest.approx(1.0)
    assert nsd(sphere, np.roll(sphere, 1, 2), (1.0, 1.0, 1.0), 1.0) == pytest.approx(1.0)


def test_empty_mask_rules():
    gt = _cube(label=3)  # spleen only
    pred = gt.copy()
    pred[0, 0, 0] = 1  # liver predicted where the ground truth has none
    d, n = score_arrays(gt, pred, (1.0, 1.0, 1.0))
    assert (d["Spleen"], n["Spleen"]) == (1.0, 1.0)
    assert (d["Liver"], n["Liver"]) == (0.0, 0.0)  # only the prediction has it
    assert (d["Pancreas"], n["Pancreas"]) == (1.0, 1.0)  # neither has it
    d, n = score_arrays(gt, np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert (d["Spleen"], n["Spleen"]) == (0.0, 0.0)  # only the ground truth has it


def test_low_dice_sets_nsd_to_zero():
    gt = _cube(lo=10, hi=30, label=1)
    pred = np.zeros_like(gt)
    pred[10:30, 10:30, 28:34] = 1  # DSC = 2*2/26 < 0.2, but part of its surface is within 5 mm
    d, n = score_arrays(gt, pred, (1.0, 1.0, 1.0))
    assert d["Liver"] == pytest.approx(2 * 2 * 400 / (8000 + 6 * 400))
    assert d["Liver"] < 0.2 and n["Liver"] == 0.0
    assert nsd(gt == 1, pred == 1, (1.0, 1.0, 1.0), 5.0) > 0.2  # what the surfaces alone would give


@pytest.mark.parametrize("label, name", [(5, "Aorta"), (6, "IVC"), (10, "Esophagus")])
def test_tubes_are_scored_on_the_ground_truths_slices_only(label, name):
    gt = np.zeros((30, 30, 40), np.uint8)
    gt[10:20, 10:20, 5:15] = label  # third axis 5..14: scored on [5, 14)
    pred = gt.copy()
    pred[10:20, 10:20, 15:30] = label  # beyond the range: ignored
    pred[:, :, 14] = 0  # the last labelled slice is excluded anyway
    d, n = score_arrays(gt, pred, (1.0, 1.0, 1.0))
    assert d[name] == 1.0 and n[name] == 1.0
    d, _ = score_arrays(gt, np.where(np.arange(40)[None, None, :] < 10, gt, 0).astype(np.uint8), (1.0, 1.0, 1.0))
    assert d[name] == pytest.approx(2 * 5 / 14)  # slices 5..9 of the 9 scored


def test_lesion_only_under_flare23_and_outside_the_organ_mean():
    gt = _cube(label=14)
    d22, _ = score_arrays(gt, gt, (1.0, 1.0, 1.0), "flare22")
    d23, n23 = score_arrays(gt, gt, (1.0, 1.0, 1.0), "flare23")
    assert "Lesion" not in d22 and d23["Lesion"] == 1.0 and n23["Lesion"] == 1.0
    assert set(ORGANS) < set(d23)


def _save(arr, path, spacing=(1.0, 1.0, 2.0), flip=False):
    aff = np.diag([*spacing, 1.0])
    if flip:
        aff[0, 0] = -aff[0, 0]
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), str(path))


def _perturbations(label: np.ndarray) -> dict[str, np.ndarray]:
    """Realistic errors: erosion, dilation, shifts, dropped slices, a lost organ."""
    out = {}
    out["eroded"] = np.where(ndimage.binary_erosion(label > 0, iterations=1), label, 0)
    grown = ndimage.grey_dilation(label, size=(3, 3, 1))
    out["dilated"] = np.where(label > 0, label, grown)
    out["shifted"] = np.roll(label, (2, -3, 1), axis=(0, 1, 2))
    dropped = label.copy()
    dropped[:, :, ::3] = 0
    out["dropped"] = dropped
    lost = np.roll(label, 1, axis=0)
    lost[lost == np.max(label)] = 0
    out["lost"] = lost
    return out


@pytest.fixture(scope="module")
def perturbed_cases(tmp_path_factory):
    """Real labels from ../shared perturbed several ways, as gt/ and pred/ NIfTI folders."""
    root = tmp_path_factory.mktemp("agree")
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    for path in sorted((SHARED / "labels").glob("*.nii.gz")):
        img = nib.load(str(path))
        label = np.asarray(img.dataobj).astype(np.uint8)
        if label.shape[0] > 256:  # keep the organisers' full-volume scorer quick: in-plane crop around the labels
            idx = np.argwhere(label > 0)
            lo, hi = idx.min(0), idx.max(0) + 1
            label = label[max(lo[0] - 10, 0):hi[0] + 10, max(lo[1] - 10, 0):hi[1] + 10, :]
        for kind, pred in _perturbations(label).items():
            name = f"{path.name.split('.')[0]}_{kind}.nii.gz"
            _save(label, root / "gt" / name, img.header.get_zooms()[:3])
            _save(pred, root / "pred" / name, img.header.get_zooms()[:3])
    return root


def test_agrees_with_the_organisers_package(perturbed_cases, tmp_path, monkeypatch, capsys):
    from FLARE22_DSC_NSD_TEST.DSC_NSD_TEST import DSC_NSD

    monkeypatch.setattr(np, "Inf", np.inf, raising=False)  # the organisers' code predates NumPy 2

    DSC_NSD(str(perturbed_cases / "pred") + "/", str(perturbed_cases / "gt") + "/", str(tmp_path), "official.csv")
    with open(tmp_path / "official.csv") as f:
        official = {row["Name"]: row for row in csv.DictReader(f)}
    ours = {r.name: r for r in score_folder(perturbed_cases / "pred", perturbed_cases / "gt", "flare22", workers=2, progress=False)}
    assert len(ours) == len(official) == 15
    compared_nsd = 0
    for name, row in official.items():
        for organ in ORGANS:
            assert ours[name].dsc[organ] == pytest.approx(float(row[f"{organ}_DSC"]), abs=1e-4), (name, organ)
            if ours[name].dsc[organ] >= 0.2:  # the PyPI package lacks the DSC < 0.2 -> NSD = 0 rule
                assert ours[name].nsd[organ] == pytest.approx(float(row[f"{organ}_NSD"]), abs=1e-4), (name, organ)
                compared_nsd += 1
            else:
                assert ours[name].nsd[organ] == 0.0
    assert compared_nsd > 60


def test_cli_tables_plot_and_bad_cases(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = _cube(label=1)
    for name in ("a", "b", "c", "d"):
        _save(gt, gt_dir / f"{name}.nii.gz")
    _save(gt, pred_dir / "a.nii.gz")
    _save(gt, pred_dir / "b.nii.gz", flip=True)  # same array, re-oriented header
    _save(gt[:-1], pred_dir / "c.nii.gz")  # wrong shape
    # d: missing
    out = tmp_path / "res" / "results.csv"
    proc = subprocess.run([sys.executable, "-m", "evaluation.metrics", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out), "--workers", "2"],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 1, proc.stderr  # one case failed
    assert "b.nii.gz: affine differs" in proc.stderr and "WARNING" in proc.stderr
    assert "c.nii.gz: ValueError: shape" in proc.stderr
    assert "d.nii.gz: no prediction" in proc.stderr
    rows = list(csv.reader(open(out)))
    assert rows[0][:3] == ["Name", "Liver_DSC", "RK_DSC"] and rows[0][14] == "Liver_NSD" and len(rows[0]) == 27
    by_name = {r[0]: r for r in rows[1:]}
    assert sorted(by_name) == ["a.nii.gz", "b.nii.gz", "d.nii.gz"]
    assert float(by_name["b.nii.gz"][1]) == 1.0 and float(by_name["d.nii.gz"][1]) == 0.0
    md = out.with_suffix(".md").read_text()
    assert "Cases scored: 3 of 4" in md and "c.nii.gz (ValueError" in md and "Missing predictions (scored as empty): d.nii.gz" in md
    assert "| Liver | 0.6667 ± 0.4714 |" in md
    assert out.with_suffix(".png").stat().st_size > 1000


def test_nan_free_for_regular_cases():
    d, n = score_arrays(_cube(label=2), _cube(label=2), (0.8, 0.8, 2.5))
    assert not any(math.isnan(v) for v in [*d.values(), *n.values()])
