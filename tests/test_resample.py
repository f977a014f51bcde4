import numpy as np
import pytest
import torch

from app.resample import argmax_resized, resize_image, resize_labels, resize_sampled


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


@pytest.mark.parametrize("source, target", [((120, 96, 90), (15, 12, 11)), ((60, 64, 48), (20, 40, 48)), ((9, 10, 11), (13, 5, 11))])
def test_resize_sampled_is_torch_s_trilinear_resize_of_the_prepared_volume(source, target):
    """Read from a flipped, transposed int16 view as the engine reads a scan: only the sampled voxels
    (the first case), or the whole volume copied (the others, where the samples read most of it)."""
    stored = np.random.default_rng(3).integers(-1000, 1500, size=source[::-1], dtype=np.int16)
    view = np.flip(stored.transpose(2, 1, 0), axis=(0, 2))

    def prepare(t: torch.Tensor) -> torch.Tensor:
        return t.float().clamp_(-200, 400).sub_(50).div_(120)

    want = resize_image(prepare(torch.from_numpy(np.ascontiguousarray(view))), target)
    got = resize_sampled(view, target, prepare)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_resize_image_keeps_constant_and_shape():
    img = torch.full((3, 4, 5), 7.0)
    out = resize_image(img, (6, 8, 2))
    assert out.shape == (6, 8, 2)
    assert np.allclose(out.numpy(), 7.0)


# --- nnU-Net's B-spline resampling (app.resample.zoom_axis / resize_nnunet) ----------------------

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
