import numpy as np
import pytest
import torch

from app.sliding_window import gaussian_weights, large_tiles, sliding_window_logits, tile_starts, whole_logits
from app.unet import UNet3D, UNetConfig, count_macs, count_parameters


def _cfg(**kw):
    base = dict(features=[4, 8, 16], strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)], num_classes=3)
    return UNetConfig(**{**base, **kw})


def test_unet_shapes_and_counts():
    net = UNet3D(_cfg()).eval()
    assert net.config.divisor == (2, 4, 4)
    out = net(torch.zeros(2, 1, 4, 8, 12))
    assert out.shape == (2, 3, 4, 8, 12)
    assert count_parameters(net) > 0
    assert count_macs(net, (4, 8, 8)) > 0
    assert UNetConfig.from_dict(net.config.to_dict()) == net.config
    feats = net.decoder_features(torch.zeros(2, 1, 4, 8, 12))
    assert [f.shape[2:] for f in feats] == [(4, 4, 6), (4, 8, 12)]  # coarsest first, finest last
    assert torch.equal(net.decoder.seg(feats[-1]), out)


def test_bad_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="one entry per stage"):
        _cfg(strides=[(1, 1, 1)])
    with pytest.raises(ValueError, match="unknown architecture fields"):
        UNetConfig.from_dict({**_cfg().to_dict(), "dropout": 0.1})


def test_norm_is_part_of_the_architecture():
    assert UNetConfig.from_dict(_cfg(norm="batch").to_dict()).norm == "batch"
    assert UNetConfig.from_dict({k: v for k, v in _cfg().to_dict().items() if k != "norm"}).norm == "instance"
    with pytest.raises(ValueError, match="norm must be one of"):
        _cfg(norm="group")


@pytest.mark.parametrize("norm, same", [("batch", True), ("instance", False)])
def test_only_stored_statistics_make_a_voxel_independent_of_the_input_s_extent(norm, same):
    """Why ``tiling: whole`` suits ``norm: batch``: away from the cut, a voxel's logits are the same
    over a half of the input as over all of it; with instance norm they follow the input's extent."""
    torch.manual_seed(0)
    net = UNet3D(_cfg(norm=norm)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 1, 8, 32, 96)
        x[..., 48:] += 3.0  # the half left out differs, so instance statistics over all of it differ
        full, half = net(x), net(x[..., :48])
    near = (slice(None), slice(None), slice(None), slice(None), slice(0, 16))
    assert torch.allclose(full[near], half[near], atol=1e-5) == same


def test_tile_starts_cover_the_axis():
    assert tile_starts(10, 16, 0.5) == [0]
    starts = tile_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))


def test_gaussian_has_its_peak_in_the_centre_and_no_zeros():
    w = gaussian_weights((8, 16, 16))
    assert w.max() == 1.0 and w.min() > 0
    assert np.unravel_index(w.argmax(), w.shape) == (4, 8, 8)  # nnU-Net's centre: p // 2
    assert w[4, 8, 2] == pytest.approx(np.exp(-0.5 * (6 / 2) ** 2), rel=0.02)  # sigma = 16 / 8 voxels


class _Affine(torch.nn.Module):
    """A position-independent 'network': the sliding window must reproduce it exactly."""

    def forward(self, x):
        return torch.cat([x, 2 * x + 1], dim=1)


@pytest.mark.parametrize("shape", [(20, 37, 41), (3, 10, 9)])
def test_sliding_window_reproduces_a_pointwise_model(shape):
    img = torch.randn(shape)
    out = sliding_window_logits(_Affine(), img, (8, 16, 16), num_classes=2, step=0.5, mirror_axes=(0, 2))
    assert out.shape == (2, *shape)
    assert torch.allclose(out[0], img, atol=1e-5)
    assert torch.allclose(out[1], 2 * img + 1, atol=1e-5)


def test_sliding_window_accumulates_on_another_device():
    img = torch.randn(9, 20, 20)
    out = sliding_window_logits(_Affine(), img, (8, 16, 16), num_classes=2, accumulate_on=torch.device("cpu"), accumulate_dtype=torch.float64)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("shape", [(20, 37, 41), (3, 10, 9)])
def test_whole_pass_pads_to_the_stride_and_crops_back(shape):
    img = torch.randn(shape)
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        return _Affine()(x)

    out = whole_logits(model, img, divisor=(4, 8, 8))
    assert len(seen) == 1 and all(n % d == 0 and n >= s for n, d, s in zip(seen[0][2:], (4, 8, 8), shape))
    assert out.shape == (2, *shape)
    assert torch.allclose(out[0], img, atol=1e-6) and torch.allclose(out[1], 2 * img + 1, atol=1e-6)


@pytest.mark.parametrize("shape, budget", [((175, 150, 210), 2_000_000), ((60, 273, 273), 1_500_000), ((300, 40, 300), 900_000),
                                           ((20, 64, 64), 10**9), ((500, 300, 300), 100)])
def test_large_tiles_fit_the_budget_cover_the_input_and_overlap(shape, budget):
    divisor, min_shape, overlap = (8, 16, 16), (48, 128, 128), (24, 64, 64)
    tile, steps, weights = large_tiles(shape, divisor, min_shape, overlap, budget)
    if budget > 100:
        assert np.prod(tile) <= budget
    else:  # no tile fits: the smallest the overlap allows
        assert tile == min_shape
    assert all(t % d == 0 and t >= m for t, d, m in zip(tile, divisor, min_shape))
    assert weights.shape == tile and weights.max() == 1.0 and weights.min() > 0
    for size, t, st, o in zip(shape, tile, steps, overlap):
        padded = max(size, t)  # the sliding window pads an axis thinner than the tile
        starts = tile_starts(padded, t, st)
        assert starts[0] == 0 and starts[-1] + t == padded  # the whole axis
        assert all(b - a <= t - o for a, b in zip(starts, starts[1:]))  # neighbours share at least the overlap
        n_min = 1 if padded <= t else -(-(padded - o) // (t - o))
        assert len(starts) == n_min  # no more tiles than needed


def test_large_tiles_give_the_one_pass_labels_of_a_stored_statistics_network():
    """Over an input above ``whole_max_voxels`` the engine runs large tiles of half that: the
    network's labels must stay those of one pass (stored statistics, overlap of half a patch)."""
    torch.manual_seed(0)
    net = UNet3D(_cfg(norm="batch")).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    img = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 40, 96, 120), 3, 1, 1)[0, 0] * 3
    seen = []

    def model(x):
        seen.append(x.numel())
        with torch.no_grad():
            return net(x)

    one = whole_logits(model, img, net.config.divisor, (8, 32, 32))
    tile, steps, weights = large_tiles(img.shape, net.config.divisor, (8, 32, 32), (4, 16, 16), img.numel() // 4)
    seen.clear()
    tiled = sliding_window_logits(model, img, tile, 3, step=steps, importance=weights)
    assert len(seen) > 2 and max(seen) <= img.numel() // 4
    assert (tiled.argmax(0) == one.argmax(0)).float().mean() >= 0.999
