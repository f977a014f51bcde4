"""A mask whose spleen or stomach lies right of its liver is said, not written silently."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from app.laterality import organs_right_of_liver
from app.orientation import IDENTITY, orientation_from_direction, patient_left_steps
from app.pipeline import Options, predict_folder
from tests.helpers import REAL_CASES

LPS_X = (0.0, 0.0, 0.8)  # canonical LPS layout: the last axis runs to the patient's left


def _body(width: int = 120) -> np.ndarray:
    labels = np.zeros((20, 60, width), np.uint8)
    labels[5:15, 10:50, 10:50] = 1  # liver on the patient's right (low x)
    labels[6:12, 20:40, 90:110] = 3  # spleen on the left
    labels[8:14, 10:25, 60:80] = 11  # stomach between them
    return labels


def test_a_normal_body_passes_and_a_mirrored_one_is_found():
    assert organs_right_of_liver(_body(), LPS_X) == {}
    mirrored = organs_right_of_liver(_body()[..., ::-1], LPS_X)
    assert mirrored.keys() == {"spleen", "stomach"}
    assert mirrored["spleen"] == pytest.approx(0.8 * 70, abs=1.0)  # centres 100 and 30 voxels from the right
    assert mirrored["stomach"] == pytest.approx(0.8 * 40, abs=1.0)
    # a spleen a few mm right of the liver's centre says nothing; as many voxels of 8 mm do
    labels = _body()
    labels[labels == 3] = 0
    labels[6:12, 20:40, 20:30] = 3
    assert organs_right_of_liver(labels, LPS_X) == {}
    assert "spleen" in organs_right_of_liver(labels, (0.0, 0.0, 8.0))
    # nor do a few voxels far right; a spleen there does
    labels[labels == 3] = 0
    labels[8:10, 20:22, 0:2] = 3
    assert organs_right_of_liver(labels, LPS_X) == {}
    labels[6:12, 20:40, 0:4] = 3
    assert "spleen" in organs_right_of_liver(labels, LPS_X)
    assert organs_right_of_liver(np.zeros((8, 8, 8), np.uint8), LPS_X) == {}


def test_patient_left_follows_the_header_into_any_layout():
    ras = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # x and y stored from the patient's left and back
    spacing = (3.0, 0.7, 0.8)
    assert patient_left_steps(ras, orientation_from_direction(np.array(ras)), spacing) == (0.0, 0.0, 0.8)  # laid out as LPS
    assert patient_left_steps(ras, IDENTITY, spacing) == (0.0, 0.0, -0.8)  # as stored: x runs to the right
    # so a normal body stored from the left is read correctly, and the same array under an LPS header is not
    stored = np.ascontiguousarray(_body()[..., ::-1])
    assert organs_right_of_liver(stored, patient_left_steps(ras, IDENTITY, spacing)) == {}
    assert organs_right_of_liver(stored, patient_left_steps(tuple(np.eye(3).ravel()), IDENTITY, spacing)).keys() == {"spleen", "stomach"}


def test_the_real_scan_with_a_mirrored_header_is_reported(tmp_path, caplog):
    """MSD_spleen_8's header puts its spleen on the patient's right; the shipped models, which learned
    where organs lie, call that spleen liver and name a spleen or stomach right of it (which of the
    two depends on the weights and precision: the stage-7 fine model both, stage 8's the stomach,
    stage 9's the spleen in FP32 and the stomach in BF16). The run says
    so for that file alone, and goes on."""
    folder = tmp_path / "in"
    folder.mkdir()
    for case in REAL_CASES:
        (folder / case.name).symlink_to(case)
    with caplog.at_level(logging.WARNING, logger="app"):
        results = predict_folder(folder, tmp_path / "out", Options(device="cpu", progress=False))
    assert [r.ok for r in results] == [True] * 3
    flagged = {r.name: r.info["right_of_liver"] for r in results if r.info["right_of_liver"]}
    assert list(flagged) == ["MSD_spleen_8_0000.nii.gz"] and set(flagged["MSD_spleen_8_0000.nii.gz"]) <= {"spleen", "stomach"}
    lines = [m for m in caplog.messages if "right of the liver" in m]
    assert len(lines) == 1 and lines[0].startswith("MSD_spleen_8_0000.nii.gz: ") and "header may swap left and right" in lines[0]
    blocky = [m for m in caplog.messages if "upsampled from a coarser copy" in m]  # and the user learns it is a thumbnail
    assert len(blocky) == 1 and blocky[0].startswith("MSD_spleen_8_0000.nii.gz: repeats slices in runs of 4 (about 30 mm, not 7.5)")
