import numpy as np
import torch

from app.resample import argmax_resized, resize_image, resize_labels


def test_nearest_labels_are_exact_for_integer_factors():
    lab = torch.randint(0, 14, (4, 5, 6), dtype=torch.uint8)
    up = resize_labels(lab, (8, 10, 18))
    assert up.dtype == torch.uint8
    assert torch.equal(up, lab.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(3, 2))
    assert torch.equal(resize_labels(up, (4, 5, 6)), lab)


def test_argmax_resized_matches_full_interpolation():
    logits = torch.randn(5, 6, 7, 8)
    shape = (11, 9, 17)
    full = torch.nn.functional.interpolate(logits[None], size=shape, mode="trilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(argmax_resized(logits, shape).long(), full)


def test_resize_image_keeps_constant_and_shape():
    img = torch.full((3, 4, 5), 7.0)
    out = resize_image(img, (6, 8, 2))
    assert out.shape == (6, 8, 2)
    assert np.allclose(out.numpy(), 7.0)


# --- nnU-Net's B-spline resampling (app.resample.zoom_axis / resize_nnunet) ----------------------

import pytest  # noqa: E402
from scipy import ndimage  # noqa: E402

from app.resample import separate_axis, spline_prefilter, zoom_axis  # noqa: E402


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("n_out", [1, 2, 13, 40, 41, 97])
def test_zoom_axis_is_scipys_zoom_in_grid_mode_with_nearest_edges(order, n_out):
    x = np.random.default_rng(order * 100 + n_out).normal(size=(5, 40, 7))
    ref = ndimage.zoom(x, (1, n_out / 40, 1), order=order, mode="nearest", grid_mode=True)
    got = zoom_axis(torch.from_numpy(x), 1, n_out, order).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_spline_coefficients_reproduce_the_samples():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(30, 4)))
    c = spline_prefilter(x, 0)
    inner = (c[:-2] + 4 * c[1:-1] + c[2:]) / 6  # the cubic B-spline at the sample points
    torch.testing.assert_close(inner, x[1:-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "src, dst, force, axis",
    [
        ((7.5, 0.8, 0.8), (3.0, 1.5, 1.5), None, 0),  # the scan is anisotropic: its coarse axis
        ((1.0, 0.8, 0.8), (5.0, 0.8, 0.8), None, 0),  # only the model's spacing is
        ((0.8, 0.8, 5.0), (1.0, 1.0, 1.0), None, 2),
        ((2.0, 0.98, 0.98), (3.0, 1.5, 1.5), None, None),  # ratios 2.04 and 2: under the threshold of 3
        ((3.0, 3.0, 0.5), (1.0, 1.0, 1.0), None, None),  # two axes tie for coarsest
        ((2.0, 0.98, 0.98), (3.0, 1.5, 1.5), True, 0),  # forced: the source's coarse axis
        ((7.5, 0.8, 0.8), (3.0, 1.5, 1.5), False, None),
    ],
)
def test_separate_axis_follows_nnunets_rule(src, dst, force, axis):
    assert separate_axis(src, dst, force, 3.0) == axis


def test_argmax_resized_interpolates_only_at_label_boundaries(monkeypatch):
    """Where the 8 source voxels agree the label is theirs, exactly; the rest is interpolated."""
    import app.resample as resample

    g = torch.Generator().manual_seed(4)
    labels = torch.zeros(20, 40, 40, dtype=torch.long)
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in labels.shape], indexing="ij")
    for c in range(1, 6):
        cz, cy, cx = (float(torch.randint(4, n - 4, (1,), generator=g)) for n in labels.shape)
        labels[((z - cz) / 5) ** 2 + ((y - cy) / 9) ** 2 + ((x - cx) / 9) ** 2 < 1] = c
    logits = torch.nn.functional.one_hot(labels, 6).permute(3, 0, 1, 2).float() * 4 + torch.randn(6, 20, 40, 40, generator=g) * 0.3
    shape = (50, 90, 90)
    full = torch.nn.functional.interpolate(logits[None], size=shape, mode="trilinear", align_corners=False)[0].argmax(0)
    seen = []
    real = resample._interpolated_argmax
    monkeypatch.setattr(resample, "_interpolated_argmax", lambda lg, where, taps: seen.append(where[0].numel()) or real(lg, where, taps))
    got = argmax_resized(logits, shape).long()
    assert (got != full).sum() <= 2  # near-ties may round either way
    assert 0 < seen[0] < 0.3 * full.numel()  # only the boundaries were interpolated
