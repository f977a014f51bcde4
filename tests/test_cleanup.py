import cc3d
import numpy as np

from app.cleanup import keep_largest_components


def _blobs():
    m = np.zeros((20, 20, 20), np.uint8)
    m[1:5, 1:5, 1:5] = 1  # liver, large
    m[15:17, 15:17, 15:17] = 1  # liver, small island
    m[8:12, 1:4, 1:4] = 3  # spleen
    m[8:10, 15:19, 1:3] = 3  # spleen, smaller island
    m[1:3, 15:17, 15:17] = 14  # lesion 1
    m[15:17, 1:3, 15:17] = 14  # lesion 2
    return m


def test_keeps_the_largest_component_of_each_label():
    out = keep_largest_components(_blobs(), labels=range(1, 14))
    assert (out == 1).sum() == 64
    assert (out == 3).sum() == 36 and out[8, 1, 1] == 3 and out[8, 15, 1] == 0
    assert (out == 14).sum() == 16  # lesions are left alone
    for label in (1, 3):
        assert cc3d.connected_components(out == label, return_N=True)[1] == 1


def test_all_labels_and_none():
    m = _blobs()
    assert (keep_largest_components(m) == 14).sum() == 8
    assert np.array_equal(keep_largest_components(m, labels=[]), m)
    assert not keep_largest_components(np.zeros((3, 3, 3), np.uint8)).any()


def test_touching_organs_stay_separate():
    m = np.zeros((6, 6, 6), np.uint8)
    m[:, :3] = 1
    m[:, 3:] = 2
    assert np.array_equal(keep_largest_components(m), m)


def test_same_as_labelling_each_organ_over_the_whole_mask():
    """Random organs of many pieces, ties included: each organ's box must hold all of it."""
    rng = np.random.default_rng(11)
    for trial in range(10):
        m = rng.integers(0, 6, size=(18, 20, 22), dtype=np.uint8) * (rng.random((18, 20, 22)) < 0.3)
        want = m.copy()
        for label in range(1, 5):  # 5 is left alone
            components, n = cc3d.connected_components(m == label, connectivity=26, return_N=True)
            if n > 1:
                sizes = np.bincount(components.ravel(), minlength=n + 1)
                sizes[0] = 0
                want[(m == label) & (components != sizes.argmax())] = 0
        assert np.array_equal(keep_largest_components(m, labels=range(1, 5)), want), trial
