"""What surrounds each organ (training.domain_gap): the measure the clutter option was built on."""

from __future__ import annotations

import numpy as np

from training.domain_gap import on_grid, soft_tissue_around


def test_soft_tissue_around_counts_the_unlabelled_body_in_the_band_outside_each_organ():
    """A cube of liver in fat: no soft tissue around it. Then soft tissue from 6 mm beyond one face,
    air beyond the opposite face, a labelled neighbour in the band: the share is the soft voxels'
    among the band's unlabelled body voxels, the band measured from the cube's surface (as a box
    distance, worked out here without a distance transform)."""
    image = np.full((40, 40, 40), -100.0, np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[15:25, 15:25, 15:25] = 1
    image[labels == 1] = 60.0
    assert soft_tissue_around(image, labels, (1.0, 1.0, 1.0)) == {1: 0.0}

    image[:, :, 30:] = 40.0
    image[:, :, :10] = -1000.0
    labels[15:25, 15:25, 26:28] = 2
    shares = soft_tissue_around(image, labels, (1.0, 1.0, 1.0))
    z, y, x = np.indices(image.shape)
    gap = [np.maximum(0, np.maximum(15 - c, c - 24)) for c in (z, y, x)]
    band = (np.sqrt(sum(g ** 2 for g in gap)) > 4.5) & (np.sqrt(sum(g ** 2 for g in gap)) <= 9.5)
    counted = band & (labels == 0) & (image > -500)
    assert abs(shares[1] - (counted & (image > -30)).sum() / counted.sum()) < 1e-9
    assert 0.05 < shares[1] < 0.5 and set(shares) == {1, 2}


def test_on_grid_averages_fine_voxels_and_keeps_labels_nearest():
    image = np.zeros((30, 60, 60), np.float32)
    image[:, :, ::2] = 100.0  # stripes finer than 3 mm average out
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 20:40, 20:40] = 5
    coarse, coarse_labels = on_grid(image, labels, (3.0, 1.0, 1.0))
    assert coarse.shape == (30, 20, 20) and coarse_labels.shape == (30, 20, 20)
    assert np.abs(coarse[:, 5:15, 5:15] - 50.0).max() < 10
    assert set(np.unique(coarse_labels)) == {0, 5} and abs((coarse_labels == 5).sum() - 30 * 7 * 7) <= 30 * 15
