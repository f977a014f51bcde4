"""--preview: one PNG per case, three views in radiological convention, mask over the scan, legend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from app.preview import COLOURS, PANEL_PX, panel_sizes, render, views
from tests.helpers import REAL_CASES, make_weights

REPO = Path(__file__).resolve().parents[1]


def test_views_put_patient_right_left_and_superior_up():
    """Canonical LPS: axis 0 inferior->superior, 1 anterior->posterior, 2 right->left."""
    ct = np.zeros((10, 20, 30), np.int16)
    mask = np.zeros(ct.shape, np.uint8)
    mask[4:6, 8:12, 12:18] = 1
    ct[9, :, :] = 1  # the most superior slice
    ct[:, 0, :] += 2  # the most anterior row
    ct[:, :, 0] += 4  # the patient's rightmost column
    (_, axial, _, _), (_, coronal, _, _), (_, sagittal, _, _) = views(ct, mask)
    assert (axial[0, :] & 2).all() and (axial[:, 0] & 4).all()  # anterior at the top, patient right on the left
    assert (coronal[0, :] & 1).all() and (coronal[:, 0] & 4).all()  # superior at the top, patient right on the left
    assert (sagittal[0, :] & 1).all() and (sagittal[:, 0] & 2).all()  # superior at the top, anterior on the left


def test_render_keeps_millimetres_square_and_draws_the_mask():
    ct = np.full((20, 100, 100), 40, np.int16)
    mask = np.zeros(ct.shape, np.uint8)
    mask[5:15, 30:70, 30:70] = 3
    image = render(ct, mask, (5.0, 1.0, 1.0), "case")
    pixels = np.asarray(image)
    spleen = (1 - 0.45) * 255 * (40 + 160) / 400 + 0.45 * COLOURS[3]
    assert (np.abs(pixels.reshape(-1, 3) - spleen).max(axis=1) <= 1).sum() > 1000
    # 20 slices of 5 mm: the coronal and sagittal views are 100 mm tall like the axial one, not 20 pixels
    assert panel_sizes(views(ct, mask), (5.0, 1.0, 1.0)) == [(PANEL_PX, PANEL_PX)] * 3
    assert panel_sizes(views(ct, mask), (2.5, 1.0, 0.5)) == [(160, 320), (160, 160), (320, 160)]


def test_cli_writes_one_png_per_case_beside_the_mask_or_into_a_folder(tmp_path):
    weights = make_weights(tmp_path / "w")
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "x_0000.nii.gz").symlink_to(REAL_CASES[-1])
    base = [sys.executable, "-m", "app", "predict", "-i", str(inp), "--weights", str(weights), "--device", "cpu", "--quiet"]
    for extra, where in (([], None), (["--preview"], tmp_path / "beside"), (["--preview", str(tmp_path / "pngs")], tmp_path / "pngs")):
        out = tmp_path / f"out{len(extra)}"
        proc = subprocess.run([*base, "-o", str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        if where is None:
            assert [p.name for p in out.iterdir()] == ["x.nii.gz"]
            continue
        png = (out if where.name == "beside" else where) / "x.png"
        assert png.is_file() and not [p for p in png.parent.iterdir() if p.name.startswith(".")]
        image = Image.open(png)
        assert image.format == "PNG" and image.mode == "RGB" and image.width >= 600
        assert sitk.ReadImage(str(out / "x.nii.gz")).GetSize() == sitk.ReadImage(str(REAL_CASES[-1])).GetSize()
