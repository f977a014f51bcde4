"""A scan upsampled by repeating voxels is recognised, and only such a scan."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from app.upsampled import describe, repeated_planes
from tests.helpers import REAL_CASES


def _scan(shape=(24, 64, 64), seed=0) -> np.ndarray:
    """Soft tissue with noise in air, as a real scan has."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000.0)
    arr[:, 8:-8, 8:-8] = 40.0
    return (arr + rng.normal(0, 12, shape)).astype(np.int16)


def test_a_scan_with_noise_repeats_nothing():
    assert repeated_planes(_scan()) == {}


def test_repeated_slices_and_pixels_are_found_with_their_run_length():
    coarse = _scan((8, 32, 32))
    assert repeated_planes(coarse.repeat(3, 0)) == {0: 3}
    assert repeated_planes(coarse.repeat(5, 0)[3:-4]) == {0: 5}  # runs of 2 and 1 where the scan's ends cut them
    assert repeated_planes(coarse.repeat(4, 1).repeat(4, 2)) == {1: 4, 2: 4}
    text = describe({0: 4, 1: 4}, (7.5, 0.8, 0.8))
    assert "slices in runs of 4 (about 30 mm, not 7.5)" in text and "rows in runs of 4 (about 3.2 mm, not 0.8)" in text


def test_air_planes_and_noise_free_drawings_do_not_count():
    """Constant planes (air beyond the body, padding) repeat in every scan; a drawing with a few values
    (a test body) repeats everywhere: neither is a thumbnail."""
    padded = np.pad(_scan(), ((0, 0), (0, 0), (30, 30)), constant_values=-1024)
    assert repeated_planes(padded) == {}
    drawing = np.full((16, 48, 48), -1000, np.int16)
    drawing[4:12, 10:38, 10:38] = 40
    assert repeated_planes(drawing) == {}


def test_the_real_scans_here():
    """MSD_spleen_8 is a 4 x 4 x 4 nearest-neighbour copy; the TotalSegmentator examples are not."""
    found = {p.name: repeated_planes(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))) for p in REAL_CASES}
    assert found == {"MSD_spleen_8_0000.nii.gz": {0: 4, 1: 4, 2: 4}, "TS_example_dicom_0000.nii.gz": {}, "TS_example_sm_0000.nii.gz": {}}
