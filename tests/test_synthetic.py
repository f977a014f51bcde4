"""Real-anatomy phantoms (FLARE22 label maps in a synthetic body) and CT randomisation."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic.label_maps import HOLD_OUT, LABEL_MAPS, anatomy_phantom, label_map_files, read_label_map
from synthetic.randomise import (ORGAN_TISSUES, PHASES, TISSUE_HU, archive_copy, free_contrast, scanner, slice_profile, smooth_field,
                                 soften, tissue_values, truncate_field_of_view)
from training.organ_geometry import clearance_mm


def test_the_label_maps_are_there_and_ten_are_held_out():
    training, held_out = label_map_files(), label_map_files(held_out=True)
    assert len(held_out) == 10 and {p.name for p in held_out} == set(HOLD_OUT)
    assert len(training) == 40 and not {p.name for p in training} & set(HOLD_OUT)


@pytest.fixture(scope="module")
def phantom():
    return anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5)


def test_anatomy_phantom_keeps_the_real_organs(phantom):
    source, spacing = read_label_map(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz")
    assert phantom.image.dtype == np.int16 and phantom.image.shape == phantom.labels.shape
    assert phantom.spacing == (2.5, 1.6, 1.6)
    voxel = float(np.prod(phantom.spacing))
    for organ in range(1, 14):
        ours = (phantom.labels == organ).sum() * voxel
        real = (source == organ).sum() * float(np.prod(spacing))
        assert 0.6 * real < ours < 1.5 * real, (organ, ours, real)  # warped (size +-10 % per axis), not lost


def test_organs_sit_in_a_body_not_in_air(phantom):
    """Context: what surrounds an organ is tissue (fat, muscle, other organs), not the air outside."""
    from scipy import ndimage

    organs = phantom.labels > 0
    shell = ndimage.binary_dilation(organs, iterations=2) & ~organs
    air = phantom.image[shell] < -900
    lung_or_gas = 0.1  # lung bases above the liver and stomach gas touch organs; the outside air does not
    assert air.mean() < lung_or_gas, air.mean()
    body = phantom.image > -500
    assert body.mean() > 0.3  # a body fills the field of view around the organs


def test_organ_intensities_follow_the_drawn_tissue_values(phantom):
    liver = phantom.image[phantom.labels == 1].astype(float)
    spleen = phantom.image[phantom.labels == 3].astype(float)
    assert -50 < np.median(liver) < 250 and -50 < np.median(spleen) < 250
    aorta = phantom.image[phantom.labels == 5].astype(float)
    assert np.median(aorta) > -20


def test_anatomy_phantoms_are_reproducible_and_vary_with_the_seed():
    a = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0002.nii.gz", seed=[1, 2], inplane=2.0, thickness=5.0, deform=False)
    b = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0002.nii.gz", seed=[1, 2], inplane=2.0, thickness=5.0, deform=False)
    c = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0002.nii.gz", seed=[1, 3], inplane=2.0, thickness=5.0, deform=False)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.spacing[0] == pytest.approx(5.0, rel=0.05)
    assert not np.array_equal(a.image, c.image)


def test_tissue_values_cover_every_phase():
    rng = np.random.default_rng(0)
    draws = [tissue_values(rng, p) for p in range(len(PHASES)) for _ in range(200)]
    aorta = np.array([d["aorta"] for d in draws]).reshape(len(PHASES), -1).mean(1)
    assert aorta.argmax() == PHASES.index("arterial") and aorta.argmin() == PHASES.index("native")
    assert set(draws[0]) == set(TISSUE_HU)


def test_scanner_noise_blur_and_truncation():
    rng = np.random.default_rng(3)
    flat = np.full((8, 64, 64), 40.0, np.float32)
    out = scanner(flat, (2.0, 1.0, 1.0), rng)
    assert out.dtype == np.int16 and out.shape == flat.shape
    assert 2 < out[:, 8:56, 8:56].std() < 80  # noise of a few to a few tens of HU, some bias
    thick = slice_profile(np.repeat(np.eye(1, 16, 8).T, 4, axis=1)[:, :, None].astype(np.float32).repeat(4, 2), (1.0, 1.0, 1.0), 5.0)
    assert thick[8, 0, 0] < 1.0 and thick[6, 0, 0] > 0.0  # one bright slice spread over ~5 mm
    image = np.zeros((2, 40, 40), np.float32)
    truncate_field_of_view(image, (1.0, 1.0, 1.0), np.random.default_rng(0))
    assert image[0, 0, 0] == -1024 and image[0, 20, 20] == 0


@pytest.mark.parametrize("shape,cells", [((37, 50, 61), 4), ((3, 80, 9), 5), ((1, 20, 20), 4)])
def test_smooth_field_is_scipys_cubic_zoom_of_the_coarse_grid(shape, cells):
    from scipy import ndimage

    got = smooth_field(shape, np.random.default_rng(3), cells)
    coarse = np.random.default_rng(3).uniform(-1, 1, [min(cells, n) for n in shape])
    ref = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=3, mode="nearest", grid_mode=True)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, np.clip(ref, -1, 1), atol=1e-5)
    assert got.std() > 0.05 or min(shape) == 1


def test_back_muscles_replace_fat_behind_the_organs_only_when_asked(phantom):
    """``muscles``: erector spinae, psoas and quadratus lumborum where the body had only fat behind
    the aorta; the labels are the same, and at 0 the phantom is the one drawn without the option."""
    path = LABEL_MAPS / "FLARE22_Tr_0001.nii.gz"
    same = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, muscles=0.0)
    assert np.array_equal(same.image, phantom.image) and np.array_equal(same.labels, phantom.labels)
    backed = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, muscles=1.0)
    assert np.array_equal(backed.labels, phantom.labels)
    rows = np.arange(phantom.image.shape[1])[None, :, None]
    aorta_row = np.argwhere(phantom.labels == 5)[:, 1].mean()
    became_muscle = (phantom.image < -50) & (backed.image > -30) & (phantom.labels == 0)
    cm3 = float(np.prod(phantom.spacing)) / 1000
    behind = (became_muscle & (rows > aorta_row)).sum() * cm3
    in_front = (became_muscle & (rows < aorta_row - 10 / phantom.spacing[1])).sum() * cm3
    assert behind > 500 and in_front < 0.02 * behind, (behind, in_front)


def test_bowel_fills_fat_around_the_organs_only_when_asked(phantom):
    """``bowel``: colon and small-bowel loops (stool with gas, fluid, contrast) in the fat between
    the organs, above the kidneys too, unlabelled; at 0 the phantom is the one drawn without it."""
    path = LABEL_MAPS / "FLARE22_Tr_0001.nii.gz"
    same = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, bowel=0.0)
    assert np.array_equal(same.image, phantom.image)
    with_bowel = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, bowel=1.0)
    assert np.array_equal(with_bowel.labels, phantom.labels)
    fat = (phantom.image > -200) & (phantom.image < -50) & (phantom.labels == 0)
    filled = fat & ((with_bowel.image < -500) | (with_bowel.image > -20))  # gas, or stool, fluid, contrast
    above_kidneys = np.arange(phantom.image.shape[0])[:, None, None] > np.argwhere(phantom.labels == 2)[:, 0].mean()
    cm3 = float(np.prod(phantom.spacing)) / 1000
    assert (filled & above_kidneys).sum() * cm3 > 100, (filled & above_kidneys).sum() * cm3
    assert (with_bowel.image[filled] < -500).any() and (with_bowel.image[filled] > -20).any()


def test_arms_beside_the_trunk_only_when_asked(phantom):
    """``arms``: a wider field of view with tissue and bone lateral to the body; at 0 the phantom is
    the one drawn without the option (their stream is separate)."""
    same = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, arms=0.0)
    assert np.array_equal(same.image, phantom.image) and np.array_equal(same.labels, phantom.labels)
    armed = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, arms=1.0)
    assert armed.image.shape[2] > phantom.image.shape[2] and armed.image.shape[:2] == phantom.image.shape[:2]
    z = int(np.argwhere(armed.labels == 1)[:, 0].mean())  # a liver slice
    row = armed.image[z, armed.image.shape[1] // 3: armed.image.shape[1] * 2 // 3]
    tissue = (row > -500).any(axis=0)
    runs = np.flatnonzero(np.diff(tissue.astype(int)))  # left arm, trunk, right arm: three runs of tissue
    assert len(runs) >= 5 and row.max() > 500  # and the humerus's bone
    assert np.array_equal(np.unique(armed.labels), np.unique(phantom.labels))  # arms carry no label


def _changed_by(option: str, phantom, over: tuple[int, ...] = (0,)) -> tuple[np.ndarray, object]:
    """Voxels that ``option`` at 1 changes in the fixture's phantom (same seed, noise, labels), and
    that phantom; the option may paint only over the labels in ``over``."""
    same = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, **{option: 0.0})
    assert np.array_equal(same.image, phantom.image)  # its own stream: at 0 the phantom is the one drawn without it
    drawn = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, **{option: 1.0})
    assert np.array_equal(drawn.labels, phantom.labels)  # unlabelled: no organ gains or loses a voxel
    changed = np.abs(drawn.image.astype(int) - phantom.image) > 30
    other = changed & ~np.isin(phantom.labels, over)  # blur carries an edge a voxel into its neighbours, no further
    assert other.sum() < 0.02 * changed.sum(), (other.sum(), changed.sum())
    return changed, drawn


def test_vessels_run_beside_and_inside_the_organs_only_when_asked(phantom):
    """``vessels``: tubes over unlabelled tissue (splenic vein behind the pancreas, portal and renal
    veins, SMA) and over the liver (hepatic veins, portal branches), never over another organ; the
    labels are the same, and at 0 the phantom is the one drawn without the option."""
    from scipy import ndimage

    changed, _ = _changed_by("vessels", phantom, over=(0, 1))  # the noise is the same draw: only the vessels differ
    cm3 = float(np.prod(phantom.spacing)) / 1000
    outside, in_liver = changed & (phantom.labels == 0), changed & (phantom.labels == 1)
    assert outside.sum() * cm3 > 5 and in_liver.sum() * cm3 > 2, (outside.sum() * cm3, in_liver.sum() * cm3)
    pancreas = phantom.labels == 4
    behind = ndimage.binary_dilation(pancreas, np.ones((1, 7, 1), bool), origin=(0, -3, 0)) & ~pancreas  # 0-6 voxels posterior (+y)
    assert (outside & behind).sum() * cm3 > 0.5  # the splenic vein along its back


def test_crura_hug_the_aorta_and_the_vertebrae_from_the_kidneys_up_only_when_asked(phantom):
    """``crura``: muscle bands beside the aorta and along the vertebral bodies' front and sides,
    between the kidneys' level and above the adrenals, where the body had fat; nowhere far from both.
    The right crus reaches back along the vertebra, beside the right adrenal's level: where it did
    not, a network labelled a real right crus right adrenal."""
    from scipy import ndimage

    changed, drawn = _changed_by("crura", phantom)
    cm3 = float(np.prod(phantom.spacing)) / 1000
    assert changed.sum() * cm3 > 5, changed.sum() * cm3
    idx = np.argwhere(changed)
    centre = {k: np.argwhere(phantom.labels[k] == 5).mean(0) for k in np.unique(idx[:, 0])}  # the aorta's, per slice
    shift = (idx[:, 1:] - np.array([centre[k] for k in idx[:, 0]])) * phantom.spacing[1:]  # (y, x) mm; +x: the patient's left
    off = np.hypot(*shift.T)
    column = ndimage.maximum_filter1d(phantom.image, int(32 / phantom.spacing[0]) | 1, axis=0) > 180  # bone within 16 mm along z: discs too
    bone = np.stack([ndimage.distance_transform_edt(~sl, sampling=phantom.spacing[1:]) for sl in column])[tuple(idx.T)]
    assert np.quantile(np.minimum(off - 30, bone - 15), 0.99) < 0  # mm from the aorta's centre or off the bone, in-plane
    limb = (off > 30) & (shift[:, 1] < -10) & (shift[:, 0] > 0) & (bone < 12)  # right of and behind the aorta, on the vertebra
    assert limb.sum() * cm3 > 0.5, limb.sum() * cm3
    kidney_z = np.argwhere(np.isin(phantom.labels, (2, 13)))[:, 0].mean()
    adrenal_top = np.argwhere(np.isin(phantom.labels, (7, 8)))[:, 0].max()
    assert idx[:, 0].min() > kidney_z - 30 / phantom.spacing[0] and idx[:, 0].max() <= adrenal_top + 30 / phantom.spacing[0]
    muscle = drawn.image[changed & (phantom.image < -50)]
    assert len(muscle) and 0 < np.median(muscle) < 110  # fat became muscle


def test_jejunal_loops_fill_fat_beside_the_pancreas_only_when_asked(phantom):
    """``jejunum``: small-bowel loops with enhancing walls (collapsed ones as dense as the pancreas)
    and mesenteric vessels in the fat around and below the pancreas, none above it."""
    changed, drawn = _changed_by("jejunum", phantom)
    cm3 = float(np.prod(phantom.spacing)) / 1000
    from_fat = changed & (phantom.image > -200) & (phantom.image < -50)
    assert from_fat.sum() * cm3 > 10, from_fat.sum() * cm3
    pancreas = np.argwhere(phantom.labels == 4)
    idx = np.argwhere(changed)
    assert idx[:, 0].max() <= pancreas[:, 0].max() + 20 / phantom.spacing[0]  # no loop above the pancreas
    assert np.abs(idx[:, 2].mean() - pancreas[:, 2].mean()) * phantom.spacing[2] < 80
    values = drawn.image[from_fat]
    assert ((values > 40) & (values < 200)).mean() > 0.2  # walls and collapsed loops: soft-tissue dense


def test_gastric_colon_lies_against_the_stomach_only_when_asked(phantom):
    """``colon``: a bowel tube through the fat along the stomach's greater curvature, touching it, and
    on to the patient's right; its lumen gas, or stool with gas pockets, inside a soft-tissue wall."""
    from scipy import ndimage

    changed, drawn = _changed_by("colon", phantom)
    cm3 = float(np.prod(phantom.spacing)) / 1000
    from_fat = changed & (phantom.image > -200) & (phantom.image < -50)
    assert from_fat.sum() * cm3 > 20 and from_fat.sum() > 0.95 * changed.sum(), (from_fat.sum() * cm3, changed.sum())
    to_stomach = ndimage.distance_transform_edt(phantom.labels != 11, sampling=phantom.spacing)
    assert (changed & (to_stomach < 4)).sum() * cm3 > 0.5  # it touches the stomach
    assert np.quantile(to_stomach[changed], 0.5) < 60, np.quantile(to_stomach[changed], 0.5)
    stomach_x = np.argwhere(phantom.labels == 11)[:, 2].mean()
    assert np.argwhere(changed)[:, 2].min() < stomach_x - 30 / phantom.spacing[2]  # on across to the patient's right
    values = drawn.image[changed]
    assert (values < -700).mean() > 0.3, (values < -700).mean()  # gas, in pockets at least


@pytest.fixture(scope="module")
def cluttered(phantom):
    """``_changed_by("clutter", ...)``: the fixture's phantom with the clutter, drawn once for the tests that read it."""
    return _changed_by("clutter", phantom)


def test_soft_tissue_clutter_packs_the_fat_near_the_organs_only_when_asked(phantom, cluttered):
    """``clutter``: soft-tissue parcels over the fat within 30 mm of the organs, none in the 5 mm of
    fat the kidneys and adrenals keep; what lies 5-10 mm outside the organs turns from mostly fat to
    a good part soft tissue (a real scan here: 34-62 % for most organs; the phantoms without: 7-17 %)."""
    from scipy import ndimage

    changed, drawn = cluttered
    cm3 = float(np.prod(phantom.spacing)) / 1000
    from_fat = changed & (phantom.image > -200) & (phantom.image < -30)
    assert from_fat.sum() * cm3 > 20 and from_fat.sum() > 0.95 * changed.sum(), (from_fat.sum() * cm3, changed.sum())
    own_fat = np.isin(phantom.labels, (2, 7, 8, 13))
    to_others = ndimage.distance_transform_edt(~((phantom.labels > 0) & ~own_fat), sampling=phantom.spacing)
    assert np.quantile(to_others[changed], 0.99) < 30 + 2 * phantom.spacing[1]  # 2 mm distance grid, a voxel of blur
    to_own = ndimage.distance_transform_edt(~own_fat, sampling=phantom.spacing)
    assert (changed & (to_own < 3)).sum() < 0.01 * changed.sum()

    organs = phantom.labels > 0
    to_organs = ndimage.distance_transform_edt(~organs, sampling=phantom.spacing)
    shell = (to_organs > 5) & (to_organs <= 10) & (phantom.image > -500)
    soft = {k: ((ph.image[shell] >= -30) & (ph.image[shell] < 200)).mean() for k, ph in (("without", phantom), ("with", drawn))}
    assert soft["with"] > soft["without"] + 0.15, soft


def test_enlarge_organ_scales_it_about_its_centre_over_background_only():
    """Organomegaly: the organ grows by about the product of the factors where fat was, keeps its
    centre, and no neighbour loses a voxel; an absent organ leaves the map as it is."""
    from synthetic.label_maps import enlarge_organ

    labels = np.zeros((40, 60, 60), np.uint8)
    labels[10:30, 20:40, 20:40] = 3  # a 20-voxel cube
    labels[18:22, 18:42, 41:45] = 2  # a neighbour just beside it
    grown = enlarge_organ(labels, 3, (1.0, 1.3, 1.3))
    assert ((grown == 2) == (labels == 2)).all()  # the neighbour keeps every voxel
    new = (grown == 3) & (labels != 3)
    assert (labels[new] == 0).all() and ((grown == 3) >= (labels == 3)).all()
    assert 1.55 < (grown == 3).sum() / (labels == 3).sum() < 1.75  # 1.3 x 1.3 = 1.69, less the neighbour's place
    np.testing.assert_allclose(np.argwhere(grown == 3).mean(0), [19.5, 29.5, 29.5], atol=1.0)
    assert enlarge_organ(labels, 1, (1.3, 1.3, 1.3)) is labels


def test_enlarge_grows_the_spleen_of_a_phantom_only_when_asked(phantom):
    """``enlarge``: the spleen (and sometimes the liver) larger, over what was background; every other
    organ's voxels as they were; at 0 the phantom is the one drawn without the option."""
    path = LABEL_MAPS / "FLARE22_Tr_0001.nii.gz"
    same = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, enlarge=0.0)
    assert np.array_equal(same.image, phantom.image) and np.array_equal(same.labels, phantom.labels)
    grown = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, enlarge=1.0)
    assert (grown.labels == 3).sum() > 1.15 * (phantom.labels == 3).sum()
    kept = ~np.isin(phantom.labels, (0, 1, 3))
    assert np.array_equal(grown.labels[kept], phantom.labels[kept])
    assert (phantom.labels[(grown.labels == 3) & (phantom.labels != 3)] == 0).all()
    spleen = grown.image[grown.labels == 3].astype(float)
    assert -50 < np.median(spleen) < 250  # rendered as spleen where it grew


def test_move_organ_shifts_it_into_background_only():
    """The organ moves by the offset; the voxels it leaves are background, a neighbour keeps every
    voxel (the part that would land on it is dropped), and an absent organ leaves the map as it is."""
    from synthetic.label_maps import move_organ

    labels = np.zeros((20, 30, 30), np.uint8)
    labels[5:10, 10:16, 10:16] = 7
    labels[5:10, 10:16, 18:24] = 6  # a neighbour two voxels to the right
    moved = move_organ(labels, 7, (0, 1, 4))
    assert ((moved == 6) == (labels == 6)).all()
    expected = np.zeros_like(labels, bool)
    expected[5:10, 11:17, 14:20] = True
    expected &= labels != 6  # less what would land on the neighbour
    assert 0 < expected.sum() < (labels == 7).sum()
    assert ((moved == 7) == expected).all()
    assert (moved[(labels == 7) & ~expected] == 0).all()
    assert move_organ(labels, 8, (0, 1, 4)) is labels


def test_freest_offset_leads_away_from_the_neighbours():
    """An adrenal with the liver to its right and the IVC in front goes left and back, about the
    asked distance, and so lies further from both than before."""
    from synthetic.label_maps import freest_offset, move_organ

    spacing = (2.0, 1.0, 1.0)
    labels = np.zeros((20, 60, 60), np.uint8)
    labels[:, :, :25] = 1  # liver, small x
    labels[:, :25, 25:40] = 6  # IVC in front, small y
    labels[8:12, 26:32, 26:30] = 7  # the adrenal in the corner between them
    offset = freest_offset(labels, 7, spacing, 6.0)
    assert offset[1] > 0 and offset[2] > 0, offset
    assert 4.0 < np.linalg.norm(np.multiply(offset, spacing)) < 8.0, offset
    assert clearance_mm(move_organ(labels, 7, offset), 7, spacing) > clearance_mm(labels, 7, spacing) + 3.0
    assert freest_offset(labels, 8, spacing, 6.0) == (0, 0, 0)


def test_adrenal_shift_frees_the_right_adrenal_of_a_phantom_only_when_asked(phantom):
    """``adrenal_shift``: the right adrenal, next to the liver and IVC on the map, lies several mm
    further from any organ, whole; every other organ's voxels and the image away from the adrenals
    are the phantom drawn without the option."""
    from scipy import ndimage

    moved = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, adrenal_shift=1.0)
    assert clearance_mm(moved.labels, 7, phantom.spacing) > clearance_mm(phantom.labels, 7, phantom.spacing) + 4.0
    assert (moved.labels == 7).sum() == (phantom.labels == 7).sum()
    kept = ~np.isin(phantom.labels, (0, 7, 8))
    assert np.array_equal(moved.labels[kept], phantom.labels[kept]) and (np.isin(moved.labels, (7, 8)) <= ~kept).all()
    adrenals = np.isin(phantom.labels, (7, 8)) | np.isin(moved.labels, (7, 8))
    far = ndimage.distance_transform_edt(~adrenals, sampling=phantom.spacing) > 20
    assert np.array_equal(moved.image[far], phantom.image[far])


def test_fatty_pancreas_turns_part_of_it_to_fat_only_when_asked(phantom):
    """``fatty``: fat between the pancreas's lobules, inside its outline only, the labels unchanged."""
    changed, drawn = _changed_by("fatty", phantom, over=(4,))
    pancreas = phantom.labels == 4
    share = (changed & pancreas).sum() / pancreas.sum()
    assert 0.1 < share < 0.9, share
    assert np.median(drawn.image[changed]) < -50 < np.median(phantom.image[pancreas])  # fat where it was soft tissue


def test_archive_copy_repeats_block_means_or_interpolates_between_them():
    """Blocks of 12 mm along z and 4 mm in-plane on a (3, 1, 1) mm grid: 4 voxels a side. Repeated,
    each block is one value, the block's mean (the volume's mean kept); linear, a ramp comes back as
    the ramp between the first and last block centres; blocks under a voxel leave the image as it is."""
    rng = np.random.default_rng(3)
    ramp = np.broadcast_to((np.arange(40) * 10.0)[:, None, None], (40, 24, 24)).astype(np.int16)
    noisy = (ramp + rng.normal(0, 30, ramp.shape)).astype(np.int16)
    blocks = ((12.0, 12.0), (4.0, 4.0))
    stairs = archive_copy(noisy, (3.0, 1.0, 1.0), np.random.default_rng(0), blocks, nearest=1.0)
    assert stairs.dtype == np.int16 and stairs.shape == noisy.shape
    for axis in range(3):
        steps = (np.diff(stairs.astype(int), axis=axis) != 0).any(axis=tuple(a for a in range(3) if a != axis))
        assert steps.sum() <= noisy.shape[axis] // 4  # a value changes only between blocks
    assert abs(stairs.mean() - noisy.mean()) < 0.5
    clean = archive_copy(ramp, (3.0, 1.0, 1.0), np.random.default_rng(0), blocks, nearest=1.0)  # same draw, same blocks
    assert (stairs.astype(int) - clean).std() < 30 / 8 + 1  # the mean of 64 voxels: the noise an eighth
    smooth = archive_copy(ramp, (3.0, 1.0, 1.0), np.random.default_rng(0), blocks, nearest=0.0)
    assert np.abs(smooth[4:-4].astype(int) - ramp[4:-4]).max() <= 1  # linear between centres: the ramp itself
    assert len(np.unique(smooth[:, 0, 0])) > 20  # not a staircase
    fine = archive_copy(noisy, (3.0, 1.0, 1.0), np.random.default_rng(0), ((0.5, 1.0), (0.1, 0.4)))
    assert np.array_equal(fine, noisy)


def test_archive_option_blocks_the_image_only_when_asked(phantom):
    """``archive``: the same phantom, its labels as they were, its image a low-resolution copy on the
    same grid (organ means kept, voxel noise averaged away); at 0 the phantom drawn without it."""
    path = LABEL_MAPS / "FLARE22_Tr_0001.nii.gz"
    same = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, archive=0.0)
    assert np.array_equal(same.image, phantom.image)
    copy = anatomy_phantom(path, seed=[5, 0], inplane=1.6, thickness=2.5, archive=1.0)
    assert np.array_equal(copy.labels, phantom.labels) and copy.spacing == phantom.spacing
    liver = phantom.labels == 1
    assert abs(np.median(copy.image[liver]) - np.median(phantom.image[liver])) < 15
    pairs = liver[1:] & liver[:-1]  # neighbours along z, both in the liver
    step = {k: np.abs(np.diff(ph.image.astype(int), axis=0))[pairs].mean() for k, ph in (("copy", copy), ("scan", phantom))}
    assert step["copy"] < 0.7 * step["scan"], step


def test_mimics_skip_what_a_map_lacks():
    """A map without an aorta, adrenals, pancreas or stomach gets no crura, loops or colon, and no error;
    one with kidneys only, no clutter (they keep their own fat)."""
    from synthetic.mimics import crura, gastric_colon, jejunal_loops, soft_tissue_clutter
    from synthetic.phantoms import _Canvas

    labels = np.zeros((30, 50, 50), np.uint8)
    labels[5:10, 30:40, 5:12] = 2  # a kidney only
    cv = _Canvas(labels.shape, (2.5, 2.0, 2.0), (0.0, 0.0, 0.0), np.random.default_rng(0))
    cv.image[:] = -100.0
    crura(cv, labels, 55.0, np.random.default_rng(1))
    jejunal_loops(cv, labels, 90.0, 150.0, np.random.default_rng(2))
    gastric_colon(cv, labels, 60.0, np.random.default_rng(3))
    soft_tissue_clutter(cv, labels, np.random.default_rng(4))
    assert (cv.image == -100.0).all()


def test_free_contrast_draws_every_organ_anywhere_and_keeps_the_rest():
    hu = tissue_values(np.random.default_rng(0), PHASES.index("venous"))
    draws = [free_contrast(hu, np.random.default_rng(k)) for k in range(200)]
    for name in ORGAN_TISSUES:
        values = np.array([d[name] for d in draws])
        assert values.min() >= -20 and values.max() <= 220 and values.std() > 50  # spread over the span
    assert all(d["fat"] == hu["fat"] and d["muscle"] == hu["muscle"] for d in draws)
    liver, ivc = (np.array([d[n] for d in draws]) for n in ("liver", "ivc"))
    assert abs(np.corrcoef(liver, ivc)[0, 1]) < 0.25 and (np.abs(liver - ivc) < 15).mean() > 0.05  # often isodense


def test_soften_blurs_in_plane_only():
    rng = np.random.default_rng(1)
    image = np.zeros((4, 64, 64), np.int16)
    image[1::2] = 100  # slices alternate: a blur along z would mix them
    image += rng.normal(0, 20, image.shape).astype(np.int16)
    out = soften(image, (2.0, 0.8, 0.8), np.random.default_rng(2))
    assert out.dtype == np.int16 and out.shape == image.shape
    assert out[1::2].mean() - out[::2].mean() > 95  # slices kept apart
    assert out[0, 8:56, 8:56].std() < 0.5 * image[0, 8:56, 8:56].std()  # noise averaged in-plane


def test_vessels_skip_what_a_map_lacks():
    """A map with only some organs (a kidney in two pieces far apart, no pancreas, no liver) gets
    the vessels it can have and no error: a training run must not stop on an odd map."""
    from synthetic.phantoms import _Canvas
    from synthetic.vessels import abdominal_vessels

    labels = np.zeros((40, 60, 60), np.uint8)
    labels[:, 28:34, 28:34] = 5  # aorta
    labels[:, 28:34, 18:24] = 6  # IVC
    labels[2:6, 30:40, 5:12] = 2  # right kidney: two pieces, nothing near its middle level
    labels[34:38, 30:40, 5:12] = 2
    cv = _Canvas(labels.shape, (2.5, 2.0, 2.0), (0.0, 0.0, 0.0), np.random.default_rng(0))
    cv.image[:] = -100.0
    before = cv.image.copy()
    abdominal_vessels(cv, labels, 2, 160.0, np.random.default_rng(1))
    assert np.array_equal(cv.image[labels > 0], before[labels > 0])  # no organ painted


def test_adrenal_fat_keeps_the_clutter_out_of_the_adrenals_surroundings(phantom, cluttered):
    """``adrenal_fat`` with ``clutter``: no parcel within 10 mm of an adrenal (the perirenal space),
    where the narrow pad alone lets parcels reach within 4 mm; elsewhere the clutter is the same draw,
    and the labels are the same."""
    from scipy import ndimage

    wide = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, clutter=1.0, adrenal_fat=1.0)
    assert np.array_equal(wide.labels, phantom.labels)
    to_adrenal = ndimage.distance_transform_edt(~np.isin(phantom.labels, (7, 8)), sampling=phantom.spacing)
    painted = {"narrow": cluttered[0], "wide": np.abs(wide.image.astype(int) - phantom.image) > 30}
    band = (to_adrenal > 6) & (to_adrenal <= 10)  # outside the narrow pad and its 2 mm grid, inside the wide one
    assert painted["narrow"][band].sum() > 200, painted["narrow"][band].sum()
    assert painted["wide"][band].sum() < 0.02 * painted["narrow"][band].sum(), painted["wide"][band].sum()
    far = to_adrenal > 30
    assert (painted["wide"][far] == painted["narrow"][far]).mean() > 0.99  # the same parcels away from the adrenals


def test_behind_the_liver_is_the_fat_at_the_livers_back_on_the_patients_right():
    """Behind a liver voxel of the same column (larger y) and right of the aorta (smaller x): in;
    in front of the liver, inside it, or left of the aorta: out. No aorta: the IVC sets the side;
    no liver: nothing."""
    from synthetic.mimics import behind_the_liver

    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 5:9, 2:16] = 1  # liver across the midline
    labels[:, 12:15, 12:14] = 5  # aorta, its middle at x = 12.5
    back = behind_the_liver(labels)
    assert back[:, 9:, 2:13].all()
    assert not back[:, :9].any() and not back[:, :, 13:].any() and not back[:, :, :2].any()
    labels[labels == 5] = 6  # the IVC where the aorta was
    assert np.array_equal(behind_the_liver(labels), back)
    assert not behind_the_liver(np.where(labels == 1, 0, labels).astype(np.uint8)).any()


def test_liver_back_keeps_the_clutter_out_of_the_fat_behind_the_liver(phantom, cluttered):
    """``liver_back`` with ``clutter``: no parcel behind the liver on the patient's right, where the
    clutter alone paints hundreds of voxels; elsewhere the same parcels, the same labels."""
    from synthetic.mimics import behind_the_liver

    spared = anatomy_phantom(LABEL_MAPS / "FLARE22_Tr_0001.nii.gz", seed=[5, 0], inplane=1.6, thickness=2.5, clutter=1.0, liver_back=1.0)
    assert np.array_equal(spared.labels, phantom.labels)
    back = behind_the_liver(phantom.labels)
    painted = {"clutter": cluttered[0], "spared": np.abs(spared.image.astype(int) - phantom.image) > 30}
    assert painted["clutter"][back].sum() > 200, painted["clutter"][back].sum()
    assert painted["spared"][back].sum() < 0.02 * painted["clutter"][back].sum(), painted["spared"][back].sum()
    away = ~back
    assert (painted["spared"][away] == painted["clutter"][away]).mean() > 0.99
