"""What surrounds each organ (training.domain_gap): the measure the clutter option was built on."""

from __future__ import annotations

import numpy as np

from training.domain_gap import MIX_HU, body_mask, on_grid, soft_tissue_around, tissue_mix_around


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


def test_tissue_mix_around_counts_bowel_gas_inside_the_body_and_not_the_air_outside_it():
    """A body of fat (a cylinder in air) with a cube of liver: gas enclosed in the body beside the
    cube counts as gas, the air outside the body does not count at all; the shares sum to one and
    the soft class agrees with ``soft_tissue_around`` where no gas lies in the band."""
    z, y, x = np.indices((30, 60, 60))
    image = np.where((y - 30) ** 2 + (x - 30) ** 2 < 28 ** 2, -100.0, -1000.0).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[10:20, 25:35, 25:35] = 1
    image[labels == 1] = 60.0
    image[:, 25:35, 40:54] = 30.0  # soft tissue from 6 voxels right of the cube
    assert body_mask(image).sum() == ((y - 30) ** 2 + (x - 30) ** 2 < 28 ** 2).sum()
    mix = tissue_mix_around(image, labels, (1.0, 1.0, 1.0))[1]
    assert abs(sum(mix.values()) - 1) < 1e-9 and set(mix) == set(MIX_HU)
    assert mix["gas"] == 0 and abs(mix["soft"] - soft_tissue_around(image, labels, (1.0, 1.0, 1.0))[1]) < 1e-9

    image[:, 25:35, 18:21] = -1000.0  # a gas pocket 5-7 voxels left of the cube, enclosed by the body
    mask = body_mask(image)
    assert mask[:, 25:35, 18:21].all() and not mask[0, 0, 0]
    mix = tissue_mix_around(image, labels, (1.0, 1.0, 1.0))[1]
    gap = [np.maximum(0, np.maximum(lo - c, c - hi)) for c, lo, hi in ((z, 10, 19), (y, 25, 34), (x, 25, 34))]
    distance = np.sqrt(sum(g ** 2 for g in gap))
    counted = (distance > 4.5) & (distance <= 9.5) & mask
    assert 0 < mix["gas"] == (counted & (image < -400)).sum() / counted.sum()
    assert mix["soft"] < soft_tissue_around(image, labels, (1.0, 1.0, 1.0))[1]  # gas now in the denominator
