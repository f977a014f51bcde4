import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from app.orientation import orientation_from_direction


def _direction(perm, signs):
    d = np.zeros((3, 3))
    for col, (row, s) in enumerate(zip(perm, signs)):
        d[row, col] = s
    return d


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product((1, -1), repeat=3)))
def test_round_trip_and_canonical_direction(perm, signs):
    d = _direction(perm, signs)
    o = orientation_from_direction(d)
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    c = o.to_canonical(a)
    assert np.array_equal(o.from_canonical(c), a)
    # The canonical array is the same one SimpleITK's own reorientation to LPS gives.
    img = sitk.GetImageFromArray(a.astype(np.int16))
    img.SetDirection(d.ravel().tolist())
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    assert np.array_equal(c, lps)


def test_oblique_direction_picks_closest_axes():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    d = _direction((1, 0, 2), (1, -1, 1))
    assert orientation_from_direction(rot @ d) == orientation_from_direction(d)
    assert orientation_from_direction(d).perm == (0, 2, 1)
    assert orientation_from_direction(d).flips == (2,)  # index y runs to the right: flipped


def test_spacing_follows_permutation():
    o = orientation_from_direction(_direction((2, 0, 1), (1, 1, 1)))
    # numpy spacing is (z, y, x) of the stored array
    assert o.spacing_to_canonical((3.0, 2.0, 1.0)) == tuple(np.array((3.0, 2.0, 1.0))[list(o.perm)])


@pytest.mark.parametrize("target", ["RAS", "LPI", "SLP"])
def test_other_target_codes_match_dicomorient(target):
    a = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    img = sitk.GetImageFromArray(a)
    img.SetDirection(_direction((1, 2, 0), (-1, 1, 1)).ravel().tolist())
    o = orientation_from_direction(np.array(img.GetDirection()), target)
    assert np.array_equal(o.to_canonical(a), sitk.GetArrayFromImage(sitk.DICOMOrient(img, target)))


def test_stored_layout_is_the_identity():
    o = orientation_from_direction(_direction((1, 0, 2), (-1, 1, -1)), "stored")
    a = np.arange(24).reshape(2, 3, 4)
    assert o.to_canonical(a) is a or np.array_equal(o.to_canonical(a), a)


def test_bad_code_is_rejected():
    with pytest.raises(ValueError, match="not an orientation code"):
        orientation_from_direction(np.eye(3), "LPX")


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_boxes_map_between_layouts_exactly(perm):
    from app.geometry import Box, bounding_box

    rng = np.random.default_rng(sum(perm))
    stored = np.zeros((6, 7, 8), bool)
    stored[1:4, 2:6, 3:5] = True
    a = orientation_from_direction(_direction(perm, rng.choice((-1, 1), 3)), "LPS")
    b = orientation_from_direction(_direction(perm, rng.choice((-1, 1), 3)), "RAS")
    box_stored = bounding_box(stored)
    box_a = a.box_to_canonical(box_stored, stored.shape)
    assert box_a == bounding_box(a.to_canonical(stored))
    assert a.box_from_canonical(box_a, a.to_canonical(stored).shape) == box_stored
    assert b.box_to_canonical(box_stored, stored.shape) == bounding_box(b.to_canonical(stored))
    assert isinstance(box_a, Box)
