"""The phantom generator: deterministic, plausible geometry, every label, real sizes on request."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from app.nifti import read_scan
from synthetic.phantoms import FOVS, generate, main


def _volume_ml(ph, label):
    return float((ph.labels == label).sum() * np.prod(ph.spacing) / 1000)


@pytest.fixture(scope="module")
def small():
    return generate(11, spacing=(1.5, 3.0), size=256)


def test_deterministic_from_the_seed(small):
    again = generate(11, spacing=(1.5, 3.0), size=256)
    assert np.array_equal(small.image, again.image) and np.array_equal(small.labels, again.labels)
    other = generate(12, spacing=(1.5, 3.0), size=256)
    assert not np.array_equal(small.labels, other.labels)


def test_labels_hounsfield_and_sizes(small):
    assert small.image.dtype == np.int16 and small.labels.dtype == np.uint8
    assert set(range(1, 14)) <= set(np.unique(small.labels))
    assert small.image.min() <= -900 and small.image.max() >= 300  # air and bone
    volumes = {lab: _volume_ml(small, lab) for lab in range(1, 14)}
    assert 900 < volumes[1] < 2600  # liver
    assert 80 < volumes[2] < 300 and 80 < volumes[13] < 300  # kidneys
    assert 100 < volumes[3] < 500  # spleen
    assert 1 < volumes[7] < 20 and 1 < volumes[8] < 20  # adrenals
    liver = small.labels == 1
    body_hu = small.image[liver].mean()
    assert 20 < body_hu < 200


def test_anatomy_layout(small):
    """In LPS: liver on the patient's right (x < 0), spleen left, kidneys behind the liver's centre."""
    def centre(label):
        idx = np.argwhere(small.labels == label).mean(0)
        return np.array(small.origin[::-1]) + idx * np.array(small.spacing)  # (z, y, x) mm

    liver, spleen, rk, lk, aorta = (centre(i) for i in (1, 3, 2, 13, 5))
    assert liver[2] < 0 < spleen[2]
    assert rk[2] < 0 < lk[2]
    assert rk[1] > liver[1] and lk[1] > liver[1]  # kidneys are posterior
    assert centre(7)[0] > rk[0] and centre(8)[0] > lk[0]  # adrenals sit on top of the kidneys
    assert centre(10)[0] > liver[0]  # esophagus above


def test_adrenals_lie_in_fat_not_inside_the_liver():
    """Each adrenal is mostly bordered by fat: visible whatever the contrast phase."""
    from scipy import ndimage

    ph = generate([31337, 0], spacing=(0.8, 3.0), size=256)
    for label in (7, 8):
        adrenal = ph.labels == label
        border = ndimage.binary_dilation(adrenal, iterations=1) & ~adrenal
        assert np.mean(ph.labels[border] == 1) < 0.1  # little contact with the liver
        assert np.median(ph.image[border]) < -40 < np.median(ph.image[adrenal])  # fat around soft tissue


@pytest.mark.parametrize("fov", list(FOVS))
def test_fields_of_view_and_slice_counts(fov):
    ph = generate(3, fov=fov, spacing=(3.0, 5.0), size=128, lesions=False)
    assert 55 <= ph.image.shape[0] <= 1000
    assert 14 not in np.unique(ph.labels)
    extent = ph.image.shape[0] * ph.spacing[0]
    lo, hi = FOVS[fov]
    assert abs(extent - (hi - lo)) < 10 or ph.image.shape[0] in (55, 1000)


def test_real_size_on_request():
    ph = generate(5, slices=60, spacing=(0.8, 2.5))
    assert ph.image.shape == (60, 512, 512) and ph.spacing == (2.5, 0.8, 0.8)


def test_cli_writes_flare_named_pairs_in_their_orientation(tmp_path, capsys):
    main(["--out", str(tmp_path), "--cases", "2", "--seed", "4", "--spacing", "2.0", "4.0", "--size", "160"])
    images = sorted((tmp_path / "images").iterdir())
    labels = sorted((tmp_path / "labels").iterdir())
    assert [p.name for p in images] == ["phantom_s4_000_0000.nii.gz", "phantom_s4_001_0000.nii.gz"]
    assert [p.name for p in labels] == ["phantom_s4_000.nii.gz", "phantom_s4_001.nii.gz"]
    img, lab = sitk.ReadImage(str(images[0])), sitk.ReadImage(str(labels[0]))
    assert img.GetSize() == lab.GetSize() and img.GetDirection() == lab.GetDirection() and img.GetOrigin() == lab.GetOrigin()
    assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
    # the engine's canonical layout undoes whatever orientation was written
    array, spacing, _ = read_scan(images[0]).layout()
    assert array.shape[1:] == (160, 160) and spacing == (4.0, 2.0, 2.0)
    assert "phantom_s4_001" in capsys.readouterr().out
