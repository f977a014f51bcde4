"""How an organ lies in a label map (training.organ_geometry): what set the lost held-out adrenal apart."""

from __future__ import annotations

import numpy as np

from synthetic.label_maps import LABEL_MAPS, read_label_map
from training.organ_geometry import clearance_mm, describe, summary, thickness_mm, volume_ml


def test_clearance_is_the_median_distance_in_mm_to_the_nearest_other_organ():
    """Two voxels of the organ 4 and 6 voxels from a neighbour along x at 2 mm: 8 and 12 mm, median
    10; a farther organ does not count; no organ gives nan, no neighbour inf."""
    labels = np.zeros((3, 3, 30), np.uint8)
    labels[1, 1, 10], labels[1, 1, 8], labels[1, 1, 14], labels[1, 1, 29] = 7, 7, 1, 5
    assert clearance_mm(labels, 7, (1.0, 1.0, 2.0)) == 10.0
    assert clearance_mm(labels, 7, (1.0, 1.0, 1.0)) == 5.0
    assert np.isnan(clearance_mm(labels, 8, (1.0, 1.0, 1.0)))
    alone = np.where(labels == 7, 7, 0).astype(np.uint8)
    assert clearance_mm(alone, 7, (1.0, 1.0, 1.0)) == np.inf


def test_thickness_reads_the_thick_part_in_mm_not_a_thin_tip():
    """A slab 3 voxels thick measures 4 mm at 1 mm (a third of its voxels lie 2 from the background,
    the 95th percentile), 8 mm with 2 mm voxels across it; one 7 voxels thick 8 mm (a seventh lie
    4 deep); a one-voxel strand on its side does not thin it."""
    labels = np.zeros((40, 40, 12), np.uint8)
    labels[2:38, 2:38, 4:7] = 7
    assert thickness_mm(labels, 7, (1.0, 1.0, 1.0)) == 4.0
    assert thickness_mm(labels, 7, (1.0, 1.0, 2.0)) == 8.0
    labels[20, 20, 7:11] = 7
    assert thickness_mm(labels, 7, (1.0, 1.0, 1.0)) == 4.0
    thick = np.zeros((40, 40, 12), np.uint8)
    thick[2:38, 2:38, 2:9] = 7
    assert thickness_mm(thick, 7, (1.0, 1.0, 1.0)) == 8.0
    assert np.isnan(thickness_mm(thick, 8, (1.0, 1.0, 1.0)))


def test_volume_and_summary():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5, :4, :2] = 3
    assert volume_ml(labels, 3, (2.0, 1.0, 0.5)) == 40 * 1.0 / 1000.0
    assert summary([1.0, 2.0, 3.0, float("nan"), float("inf")]) == "median 2.0, p90 2.8, 1.0-3.0 (n=3)"
    assert summary([float("nan")]) == "-"


def test_the_lost_held_out_adrenal_lies_farther_from_its_neighbours_than_a_training_maps():
    """FLARE22_Tr_0045's right adrenal (held out; networks trained with the clutter lose it) lies a
    median 9.3 mm from any other organ, FLARE22_Tr_0001's (training) 3.9 mm; neither is thin."""
    labels, spacing = read_label_map(LABEL_MAPS / "FLARE22_Tr_0045.nii.gz")
    far = describe(labels, 7, spacing)
    labels, spacing = read_label_map(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz")
    near = describe(labels, 7, spacing)
    assert abs(far["clearance_mm"] - 9.3) < 0.1 and abs(near["clearance_mm"] - 3.9) < 0.1
    assert far["thickness_mm"] > near["thickness_mm"] > 4.0
    assert 7.5 < far["volume_ml"] < 8.0
