"""A mask whose spleen or stomach lies right of its liver is said, not written silently."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from app.laterality import liver_right_of_body, organs_right_of_liver
from app.orientation import IDENTITY, left_right_axis, orientation_from_direction, patient_left_steps
from app.pipeline import Options, Segmentation, normal_body, predict_folder
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


def test_where_the_liver_lies_in_the_body():
    body = np.full((20, 60, 120), -1000, np.int16)
    body[:, 5:55, 5:115] = 40  # soft tissue, centre at x 59.5
    assert liver_right_of_body(_body(), body, LPS_X) == pytest.approx(0.8 * 30, abs=1.0)  # liver centre at x 29.5
    assert liver_right_of_body(_body()[..., ::-1], body, LPS_X) == pytest.approx(-0.8 * 30, abs=1.0)
    assert liver_right_of_body(np.zeros_like(_body()), body, LPS_X) is None


def test_the_left_right_axis_of_a_stored_array():
    assert left_right_axis((1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)) == 2  # i runs along x: the last numpy axis
    assert left_right_axis((0, 0, 1.0, 1.0, 0, 0, 0, 1.0, 0)) == 0  # k runs along x
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert left_right_axis((c, -s, 0, s, c, 0, 0, 0, 1.0)) == 2  # oblique: the closest


def test_only_a_pass_that_shows_a_normal_body_replaces_the_first():
    seg = Segmentation(np.zeros((2, 2, 2), np.uint8), None, 0, [1, 3, 11], {}, 1.0, 60.0)
    assert normal_body(seg)
    assert not normal_body(replace(seg, right_of_liver={"spleen": 40.0}))
    assert not normal_body(replace(seg, liver_right_mm=10.0)) and not normal_body(replace(seg, liver_right_mm=None))
    assert not normal_body(replace(seg, found=[1, 2, 13])) and not normal_body(replace(seg, found=[3, 11]))


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_the_real_scan_with_a_mirrored_header_is_segmented_mirrored_and_said(tmp_path, caplog):
    """MSD_spleen_8's header puts its spleen on the patient's right; the shipped models, which learned
    where organs lie, label a spleen or stomach right of the liver on it. By default the engine then
    segments the scan mirrored, keeps that pass because it shows a normal body, and says so for that
    file alone: its spleen is found where the reference has it. With ``laterality="header"`` the
    mask keeps the header's sides and the warning says the names may be wrong."""
    import SimpleITK as sitk

    folder = tmp_path / "in"
    folder.mkdir()
    for case in REAL_CASES:
        (folder / case.name).symlink_to(case)
    with caplog.at_level(logging.WARNING, logger="app"):
        results = predict_folder(folder, tmp_path / "out", Options(device="cpu", progress=False))
    assert [r.ok for r in results] == [True] * 3
    flagged = {r.name: r.info["right_of_liver"] for r in results if r.info["right_of_liver"]}
    assert list(flagged) == ["MSD_spleen_8_0000.nii.gz"] and set(flagged["MSD_spleen_8_0000.nii.gz"]) <= {"spleen", "stomach"}
    assert [r.info["mirrored"] for r in results] == [True, False, False]
    lines = [m for m in caplog.messages if "right of the liver" in m]
    assert len(lines) == 1 and lines[0].startswith("MSD_spleen_8_0000.nii.gz: ") and "the header seems to swap left and right" in lines[0]
    blocky = [m for m in caplog.messages if "upsampled from a coarser copy" in m]  # and the user learns it is a thumbnail
    assert len(blocky) == 1 and blocky[0].startswith("MSD_spleen_8_0000.nii.gz: repeats slices in runs of 4 (about 30 mm, not 7.5)")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_CASES[0].parents[1] / "labels" / "MSD_spleen_8.nii.gz"))) == 3
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "MSD_spleen_8.nii.gz")))
    assert _dsc(mask == 3, reference) > 0.4  # 0.528 in FP32 with the shipped pair (0 with the header's sides)
    caplog.clear()
    (folder / "TS_example_dicom_0000.nii.gz").unlink()
    (folder / "TS_example_sm_0000.nii.gz").unlink()
    with caplog.at_level(logging.WARNING, logger="app"):
        kept = predict_folder(folder, tmp_path / "header", Options(device="cpu", progress=False, laterality="header"))
    assert kept[0].ok and kept[0].info["right_of_liver"] and not kept[0].info["mirrored"]
    assert [m for m in caplog.messages if "header may swap left and right" in m and "may name them wrongly" in m]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "header" / "MSD_spleen_8.nii.gz")))
    assert _dsc(mask == 3, reference) < 0.1


def test_a_normal_scan_under_a_header_that_swaps_sides_gets_its_own_mask_mirrored(tmp_path):
    """TS_example_dicom's voxels mirrored left-right under its own header (what a header that swaps
    the sides gives): the engine finds the organs mirrored (the shipped pair's stomach 134 mm right
    of its liver), segments the scan mirrored (its true reading), and writes exactly the mask of the
    true scan, mirrored."""
    import SimpleITK as sitk

    source = next(c for c in REAL_CASES if c.name.startswith("TS_example_dicom"))
    image = sitk.ReadImage(str(source))
    axis = left_right_axis(image.GetDirection())
    swapped = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(image), axis)))
    swapped.CopyInformation(image)
    for name, img in (("true", image), ("swapped", swapped)):
        (tmp_path / name).mkdir()
        sitk.WriteImage(img, str(tmp_path / name / "case_0000.nii.gz"))
    true = predict_folder(tmp_path / "true", tmp_path / "true_out", Options(device="cpu", progress=False))
    mirrored = predict_folder(tmp_path / "swapped", tmp_path / "swapped_out", Options(device="cpu", progress=False))
    assert not true[0].info["right_of_liver"] and mirrored[0].info["right_of_liver"] and mirrored[0].info["mirrored"]
    masks = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}_out" / "case.nii.gz"))) for n in ("true", "swapped")}
    assert np.array_equal(masks["swapped"], np.flip(masks["true"], axis))
