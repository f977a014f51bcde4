import numpy as np

from app.coarse import gaps_mm, roi_box
from app.geometry import Box, bounding_box, cut_faces, expand_box_mm, grow_faces, map_box, resampled_shape


def test_bounding_box():
    m = np.zeros((5, 6, 7), bool)
    assert bounding_box(m) is None
    m[1:3, 2, 4:6] = True
    assert bounding_box(m) == Box((1, 2, 4), (3, 3, 6))


def test_map_box_covers_the_same_extent():
    # coarse voxel 2..4 of 10 along an axis is voxels 20..40 of 100
    assert map_box(Box((2, 0, 5), (4, 10, 10)), (10, 10, 10), (100, 50, 33)) == Box((20, 0, 16), (40, 50, 33))


def test_expand_box_in_millimetres_is_clipped():
    box = expand_box_mm(Box((10, 10, 10), (20, 20, 20)), spacing=(5.0, 1.0, 0.7), margin_mm=20, shape=(25, 100, 200))
    assert box == Box((6, 0, 0), (24, 40, 49))
    box = expand_box_mm(Box((10, 40, 10), (20, 60, 20)), spacing=(5.0, 1.0, 0.7), margin_mm=20, shape=(22, 70, 30))
    assert box == Box((6, 20, 0), (22, 70, 30))


def test_cut_faces_are_those_an_organ_crosses_inside_the_scan():
    labels = np.zeros((10, 20, 30), np.uint8)  # a crop of voxels 2 x 1 x 0.5 mm
    labels[3:6, 0:4, 10:20] = 1  # on the y start face: 3 x 10 voxels
    labels[9, 5:7, 5:7] = 3  # 4 voxels of 0.5 mm^2 on the last z face: 2 mm^2, a speck
    box, scan = Box((5, 10, 0), (15, 30, 30)), Box.full((40, 60, 30))
    assert cut_faces(labels, box, scan, (2.0, 1.0, 0.5), min_area_mm2=15) == [(1, 0)]  # 3 x 10 voxels of 2 x 0.5 mm = 30 mm^2
    assert cut_faces(labels, box, scan, (2.0, 1.0, 0.5), min_area_mm2=31) == []
    assert cut_faces(labels, box, scan, (2.0, 1.0, 0.5), min_area_mm2=2) == [(0, 1), (1, 0)]
    labels[:, :, 0] = 2  # 400 mm^2 on the x start face, but the box is at the scan's edge there: nothing beyond
    assert cut_faces(labels, box, scan, (2.0, 1.0, 0.5), min_area_mm2=15) == [(1, 0)]
    assert cut_faces(labels, Box((5, 10, 5), (15, 30, 35)), Box.full((40, 60, 40)), (2.0, 1.0, 0.5), min_area_mm2=15) == [(1, 0), (2, 0)]
    assert cut_faces(labels, box, Box((5, 10, 0), (15, 30, 30)), (2.0, 1.0, 0.5), min_area_mm2=1) == []  # limit = box


def test_grow_faces_moves_only_those_faces_within_the_limit():
    box, limit = Box((5, 10, 10), (15, 30, 20)), Box((2, 0, 0), (40, 35, 30))
    assert grow_faces(box, [(1, 0), (1, 1), (0, 0)], (4, 6, 6), limit) == Box((2, 4, 10), (15, 35, 20))
    assert grow_faces(box, [], (4, 6, 6), limit) == box


def test_resampled_shape():
    assert resampled_shape((100, 512, 512), (2.5, 0.8, 0.8), (5.0, 1.6, 1.6)) == (50, 256, 256)
    assert resampled_shape((1, 4, 4), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)


def test_roi_box_ignores_stray_voxels_and_adds_margin():
    coarse = np.zeros((10, 20, 20), np.uint8)  # each coarse voxel is 5 x 10 x 20 mm = 1 mL of the full grid
    coarse[4:6, 5:10, 5:10] = 1  # 50 mL of liver
    coarse[4:6, 10:15, 10:15] = 13  # touching kidney: one blob with the liver
    coarse[0, 19, 19] = 1  # a stray 1 mL voxel far away
    box = roi_box(coarse, full_shape=(100, 200, 200), spacing=(0.5, 1.0, 2.0), margin_mm=3, max_gap_mm=60)
    assert box == Box((34, 47, 48), (66, 153, 152))  # margin: 6 slices of 0.5 mm, 3 rows of 1 mm, 2 columns of 2 mm
    assert roi_box(np.zeros((4, 4, 4), np.uint8), (8, 8, 8), (1.0, 1.0, 1.0), 20, 60) is None


def test_roi_box_of_a_binary_coarse_model_keeps_separate_organs_nearby():
    coarse = np.zeros((20, 20, 20), np.uint8)  # 1 mL voxels of 10 mm
    coarse[2:6, 2:6, 2:6] = 255  # 64 mL
    coarse[9:12, 2:5, 2:5] = 255  # 27 mL, 40 mm away along z: kept
    coarse[18, 0, 18] = 255  # 1 mL speck: dropped
    box = roi_box(coarse, full_shape=(20, 20, 20), spacing=(10.0, 10.0, 10.0), margin_mm=0, max_gap_mm=60)
    assert box == Box((2, 2, 2), (12, 6, 6))


def test_roi_box_leaves_out_blobs_far_from_the_organ_cluster():
    """A whole-body scan where the coarse model also fires on the brain: the box stays on the abdomen."""
    coarse = np.zeros((60, 10, 10), np.uint8)  # 10 mm voxels along z, 20 mm in-plane
    coarse[10:20, 2:8, 2:8] = 1  # abdominal organs, 1.4 L
    coarse[22:24, 4:6, 4:6] = 1  # a blob 30 mm above them: chained on
    coarse[26:40, 4:5, 4:5] = 1  # a tube 20 mm above that: chained on too
    coarse[50:58, 3:7, 3:7] = 1  # a brain, 100 mm above the tube: left out
    spacing = (10.0, 20.0, 20.0)
    assert roi_box(coarse, (60, 10, 10), spacing, margin_mm=0, max_gap_mm=60) == Box((10, 2, 2), (40, 8, 8))
    assert roi_box(coarse, (60, 10, 10), spacing, margin_mm=0, max_gap_mm=float("inf")) == Box((10, 2, 2), (58, 8, 8))
    assert roi_box(coarse, (60, 10, 10), spacing, margin_mm=0, max_gap_mm=10) == Box((10, 2, 2), (20, 8, 8))


def test_gaps_measured_in_a_window_equal_those_over_the_whole_grid():
    """The distance transform runs only near the kept blob: every gap within reach must be the
    whole grid's, and every blob out of reach must read as farther than reach."""
    import cc3d
    from scipy import ndimage

    rng = np.random.default_rng(7)
    spacing = (6.0, 4.0, 5.0)
    checked = 0
    for trial in range(20):
        blobs = cc3d.connected_components(ndimage.gaussian_filter(rng.random((40, 30, 30)), 1.5) > 0.56, connectivity=26)
        ids = [int(i) for i in np.unique(blobs) if i]
        if len(ids) < 3:
            continue
        kept, checked = blobs == ids[0], checked + 1
        truth = ndimage.minimum(ndimage.distance_transform_edt(~kept, sampling=spacing), blobs, ids[1:])
        for reach in (10.0, 30.0, float("inf")):
            for got, want in zip(gaps_mm(kept, blobs, ids[1:], spacing, reach), np.atleast_1d(truth)):
                assert got == want if want <= reach else got > reach, (trial, reach)
    assert checked >= 10
