"""Resampling on whatever device the tensors live on (GPU when there is one).

Images use trilinear interpolation, or nnU-Net's B-spline rules for models imported from nnU-Net
(``Resampling``); label maps use exact nearest-neighbour gathering (integer dtypes, no float copy);
logits are resized one channel at a time and reduced to labels on the fly so a full-resolution
probability volume never exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .weights import Resampling


def resize_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a 3D ``[Z, Y, X]`` or ``[C, Z, Y, X]`` tensor (grids share their extent)."""
    if tuple(image.shape[-3:]) == tuple(shape):
        return image
    x = image[None, None] if image.ndim == 3 else image[None]
    out = F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)
    return out[0, 0] if image.ndim == 3 else out[0]


def nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output voxel for nearest resampling of voxel centres."""
    idx = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor()
    return idx.clamp_(0, n_in - 1).long()


def resize_labels(labels: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``[Z, Y, X]`` label map, any dtype."""
    out = labels
    for axis, n_out in enumerate(shape):
        n_in = out.shape[axis]
        if n_in != n_out:
            out = out.index_select(axis, nearest_indices(n_in, n_out, out.device))
    return out


def argmax_resized(logits: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Labels of ``[C, Z, Y, X]`` logits after trilinear resize to ``shape``, channel by channel."""
    return running_argmax(logits, lambda channel: resize_image(channel, shape))


def running_argmax(logits: torch.Tensor, resize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Argmax over channels of ``resize(logits[c])``, one channel resized at a time (ties: the first).

    Peak extra memory is two channels at the target size plus the label map, instead of C.
    """
    best = resize(logits[0]).clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        channel = resize(logits[c])
        better = channel > best
        labels[better] = c
        best = torch.maximum(best, channel, out=best)
    return labels


# --- nnU-Net's resampling, on the device -------------------------------------------------------
# nnU-Net v2 (``resample_data_or_seg_to_shape``) resizes images with scikit-image's ``resize``
# (scipy ``zoom``: B-splines, grid mode, edges repeated, output clipped to the input's range) and,
# where one axis's spacing exceeds the others' by more than a threshold, in-plane only with that
# order and then nearest along the coarse axis. The functions below do the same per axis in torch:
# every step is separable, so a 3-D zoom is three 1-D ones in any order.

SPLINE_POLE = math.sqrt(3.0) - 2.0  # the cubic B-spline prefilter's pole
SPLINE_EDGE_PAD = 12  # scipy repeats 'nearest' edges this far before prefiltering (_prepad_for_spline_filter)
SPLINE_ORDERS = (0, 1, 3)


def grid_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinate of each output sample when both grids span the same extent (voxel edges
    aligned): scipy's ``grid_mode``, torch's ``align_corners=False``; float64 as scipy computes it."""
    return float(n_in) / n_out * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5


def spline_prefilter(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Cubic B-spline coefficients of ``x`` along ``axis`` (mirror boundaries), as scipy's
    ``spline_filter1d``: the samples are then reproduced exactly by the spline. A new tensor."""
    z = SPLINE_POLE
    c = x.movedim(axis, 0).mul(6.0).contiguous()  # 6 = the filter's gain (1 - z)(1 - 1/z)
    n = c.shape[0]
    if n == 1:
        return c.div_(6.0).movedim(0, axis)
    horizon = min(n, 32)  # z**32 ~ 5e-19: the causal start needs no more samples
    powers = torch.tensor([z**k for k in range(horizon)], dtype=c.dtype, device=c.device)
    c[0] = torch.tensordot(powers, c[:horizon], dims=1)
    for k in range(1, n):
        c[k].add_(c[k - 1], alpha=z)
    c[n - 1].add_(c[n - 2], alpha=z).mul_(z / (z * z - 1.0))
    for k in range(n - 2, -1, -1):
        c[k].sub_(c[k + 1]).mul_(-z)
    return c.movedim(0, axis)


def _taps(coords: np.ndarray, order: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """First source index and the weights of the ``order + 1`` samples around each coordinate."""
    if order == 0:
        return np.floor(coords + 0.5), [np.ones_like(coords)]
    base = np.floor(coords)
    t = coords - base
    if order == 1:
        return base, [1.0 - t, t]
    t2, t3 = t * t, t * t * t
    return base - 1, [(1.0 - t) ** 3 / 6.0, (4.0 - 6.0 * t2 + 3.0 * t3) / 6.0, (1.0 + 3.0 * t + 3.0 * t2 - 3.0 * t3) / 6.0, t3 / 6.0]


def zoom_axis(x: torch.Tensor, axis: int, n_out: int, order: int) -> torch.Tensor:
    """``scipy.ndimage.zoom(x, order=order, mode='nearest', grid_mode=True)`` along one axis.

    Order 0 is nearest (ties rounded up, as scipy does), 1 linear, 3 the prefiltered cubic B-spline
    with scipy's edge handling (edges repeated 12 samples, then mirror boundaries).
    """
    if order not in SPLINE_ORDERS:
        raise ValueError(f"spline order must be one of {SPLINE_ORDERS}, got {order}")
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    coords = grid_coordinates(n_in, n_out)
    src = x
    if order == 3:
        edges = np.clip(np.arange(-SPLINE_EDGE_PAD, n_in + SPLINE_EDGE_PAD), 0, n_in - 1)
        src = spline_prefilter(x.index_select(axis, torch.from_numpy(edges).to(x.device)), axis)
        coords = coords + SPLINE_EDGE_PAD
    first, weights = _taps(coords, order)
    n_src = src.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = None
    for k, w in enumerate(weights):
        index = torch.from_numpy(np.clip(first + k, 0, n_src - 1).astype(np.int64)).to(x.device)
        term = src.index_select(axis, index)
        if order:
            term.mul_(torch.from_numpy(w).to(device=x.device, dtype=x.dtype).reshape(shape))
        out = term if out is None else out.add_(term)
    return out  # type: ignore[return-value]


def separate_axis(spacing_from: Sequence[float], spacing_to: Sequence[float], force: bool | None, threshold: float) -> int | None:
    """The axis nnU-Net resamples on its own (nearest), or None: the coarsest axis of the source
    spacing, else of the target one, where it is over ``threshold`` times the finest
    (``determine_do_sep_z_and_axis``); never when two or three axes tie for coarsest."""
    def coarsest(spacing: Sequence[float]) -> list[int]:
        return [i for i, s in enumerate(spacing) if max(spacing) / s == 1]

    if force is not None:
        axes = coarsest(spacing_from) if force else []
    elif max(spacing_from) / min(spacing_from) > threshold:
        axes = coarsest(spacing_from)
    elif max(spacing_to) / min(spacing_to) > threshold:
        axes = coarsest(spacing_to)
    else:
        axes = []
    return axes[0] if len(axes) == 1 else None


def resize_nnunet(image: torch.Tensor, shape: tuple[int, int, int], spacing_from: Sequence[float], spacing_to: Sequence[float],
                  order: int, order_z: int, force_separate_z: bool | None = None, threshold: float = 3.0) -> torch.Tensor:
    """One ``[Z, Y, X]`` channel resampled as nnU-Net's ``resample_data_or_seg_to_shape`` (images
    and logits, not label maps) does it; the input itself when the shape is already right."""
    if tuple(image.shape) == tuple(shape):
        return image
    axis = separate_axis(spacing_from, spacing_to, force_separate_z, threshold)
    planar = [a for a in range(3) if a != axis]
    out = image
    if axis is not None and shape[axis] < image.shape[axis] and (order_z == 0 or order <= 1):
        out = zoom_axis(out, axis, shape[axis], order_z)  # the same slices either way: fewer to resize in-plane
    before = out
    for a in sorted(planar, key=lambda a: shape[a] / out.shape[a]):  # shrink first: less work after
        out = zoom_axis(out, a, shape[a], order)
    if order > 1 and out is not before:  # scikit-image clips to the range of what it resized
        if axis is None:
            out = out.clamp_(before.min(), before.max())
        else:  # one 2-D resize per slice along the separate axis, each clipped to its own range
            out = torch.clamp(out, before.amin(dim=planar, keepdim=True), before.amax(dim=planar, keepdim=True))
    if axis is not None:
        out = zoom_axis(out, axis, shape[axis], order_z)
    return out


def to_model_grid(image: torch.Tensor, shape: tuple[int, int, int], spacing_from: Sequence[float], spacing_to: Sequence[float],
                  how: Resampling) -> torch.Tensor:
    """A normalised volume on a model's grid, by the model's rule (float32 throughout for nnU-Net's)."""
    if how.scheme == "nnunet":
        return resize_nnunet(image.float(), shape, spacing_from, spacing_to, how.order, how.order_z, how.force_separate_z, how.anisotropy_threshold)
    return resize_image(image, shape)


def labels_from_logits(logits: torch.Tensor, shape: tuple[int, int, int], spacing_from: Sequence[float], spacing_to: Sequence[float],
                       how: Resampling) -> torch.Tensor:
    """uint8 labels of ``[C, Z, Y, X]`` logits brought to ``shape`` by the model's rule."""
    if how.scheme != "nnunet":
        return argmax_resized(logits, shape)
    return running_argmax(logits, lambda channel: resize_nnunet(channel.float(), shape, spacing_from, spacing_to, how.logits_order,
                                                               how.logits_order_z, how.force_separate_z, how.anisotropy_threshold))
