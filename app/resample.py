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


def torch_linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output sample of torch's trilinear ``align_corners=False`` resize: the two source indices
    and the float32 weight of the second, from the float32 scale torch uses. A 3-D resize with them
    lands within 2e-6 of torch's; with weights from the exact grid coordinates, 3e-4 away."""
    scale = float(np.float32(n_in) / np.float32(n_out))
    src = np.maximum(scale * (np.arange(n_out) + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), np.clip(src - i0, 0, 1).astype(np.float32)


SAMPLED_SHARE = 1 / 8  # below this share of the voxels read, resize_sampled gathers them instead of copying the volume


def resize_sampled(volume: np.ndarray, shape: tuple[int, int, int], prepare: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Trilinear resize (torch's ``align_corners=False`` rule) of a ``[Z, Y, X]`` numpy volume of any
    strides, such as a flipped view of a scan, with ``prepare`` (an elementwise intensity window, the
    move to the device) applied to the voxels before interpolating.

    A trilinear sample reads 2 voxels per axis: a 6 mm grid over a 0.8 mm scan reads about 1 voxel
    in 50. Where that share is small, only those voxels are copied and prepared and the resize runs
    axis by axis on them (within 2e-6 of torch's); elsewhere the volume is copied whole and torch
    resizes it. Either way the full-resolution volume is never copied in float32.
    """
    taps = [torch_linear_taps(n, m) for n, m in zip(volume.shape, shape)]
    needed = [np.unique(np.concatenate([i0, i1])) for i0, i1, _ in taps]
    if math.prod(len(n) for n in needed) > SAMPLED_SHARE * volume.size:
        return resize_image(prepare(torch.from_numpy(np.ascontiguousarray(volume))), shape)
    x = prepare(torch.from_numpy(volume[np.ix_(*needed)]))
    for axis in (2, 1, 0):  # x first, as torch nests its sums
        i0, i1, w = taps[axis]
        if volume.shape[axis] == shape[axis]:
            continue
        at = [-1 if a == axis else 1 for a in range(3)]
        w1 = torch.from_numpy(w).to(device=x.device, dtype=x.dtype).reshape(at)
        first, second = (torch.from_numpy(np.searchsorted(needed[axis], i)).to(x.device) for i in (i0, i1))
        x = x.index_select(axis, first) * (1 - w1) + x.index_select(axis, second) * w1
    return x


def nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output voxel for nearest resampling of voxel centres."""
    idx = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor()
    return idx.clamp_(0, n_in - 1).long()


def gather_grid(volume: torch.Tensor, z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``volume[z][:, y][:, :, x]`` for index vectors per axis, the last axis first: gathering single
    elements along x is the slow part, done so on the smallest array (5x faster than index_select
    in axis order on a 512x512x300 mask)."""
    return volume[:, :, x][:, y][z]


def resize_labels(labels: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``[Z, Y, X]`` label map, any dtype."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    return gather_grid(labels, *(nearest_indices(n, m, labels.device) for n, m in zip(labels.shape, shape)))


def grid_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Source coordinate of each output sample when both grids span the same extent (voxel edges
    aligned): scipy's ``grid_mode``, torch's ``align_corners=False``; float64 as scipy computes it."""
    return float(n_in) / n_out * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5


def linear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output sample of a linear resize (torch's ``align_corners=False`` rule): the two source
    indices and the weight of the second."""
    src = torch.from_numpy(grid_coordinates(n_in, n_out)).to(device).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    return i0, (i0 + 1).clamp_(max=n_in - 1), (src - i0).float()


def argmax_resized(logits: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Labels of ``[C, Z, Y, X]`` logits after trilinear resize to ``shape``: the argmax of every
    channel interpolated, computed only where it can differ from the source voxels'.

    Trilinear values are convex combinations of 8 source voxels, so where those 8 share an argmax
    (first maximum on ties) the interpolated argmax is theirs: only output voxels whose 8 sources
    disagree, at label boundaries, are interpolated channel by channel. Exact, up to the rounding of
    near-ties; a few times faster than resizing every channel when the boundaries are a small part.
    """
    if logits.shape[0] > 128:  # the "mixed" flag shares the label's byte below
        return running_argmax(logits, lambda channel: resize_image(channel, shape))
    source = channel_argmax(logits)
    if tuple(logits.shape[1:]) == tuple(shape):
        return source
    taps = [linear_taps(n, m, logits.device) for n, m in zip(logits.shape[1:], shape)]
    (z0, _, _), (y0, _, _), (x0, _, _) = taps
    coded = source | (_mixed_cells(source).to(torch.uint8) << 7)  # label and "mixed" in one gather
    labels = gather_grid(coded, z0, y0, x0)
    where = (labels >= 128).nonzero(as_tuple=True)
    labels &= 127
    if where[0].numel():
        labels[where] = _interpolated_argmax(logits, where, taps)
    return labels


def _mixed_cells(source: torch.Tensor) -> torch.Tensor:
    """Per source voxel: whether it and its 7 neighbours towards +z, +y, +x (the edge repeated at
    the far faces, as linear resizing clamps) carry more than one label."""
    padded = torch.cat([source, source[-1:]], 0)
    padded = torch.cat([padded, padded[:, -1:]], 1)
    padded = torch.cat([padded, padded[:, :, -1:]], 2)
    nz, ny, nx = source.shape
    mixed = torch.zeros(source.shape, dtype=torch.bool, device=source.device)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                if dz or dy or dx:
                    mixed |= padded[dz:dz + nz, dy:dy + ny, dx:dx + nx] != source
    return mixed


def _interpolated_argmax(logits: torch.Tensor, where: tuple[torch.Tensor, ...], taps: list) -> torch.Tensor:
    """Trilinear argmax at the output voxels ``where`` only, all channels at once (ties: the first)."""
    (z0, z1, wz), (y0, y1, wy), (x0, x1, wx) = taps
    z, y, x = where
    rows = logits.reshape(logits.shape[0], -1).t()  # a source voxel's channels side by side: one row per gather
    ny, nx = logits.shape[2], logits.shape[3]
    total = torch.zeros((z.numel(), logits.shape[0]), dtype=torch.float32, device=logits.device)
    for zi, fz in ((z0, 1 - wz), (z1, wz)):
        for yi, fy in ((y0, 1 - wy), (y1, wy)):
            for xi, fx in ((x0, 1 - wx), (x1, wx)):
                index = (zi[z] * ny + yi[y]) * nx + xi[x]
                total += rows[index].float() * (fz[z] * fy[y] * fx[x])[:, None]
    return total.argmax(1).to(torch.uint8)


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over the channels of ``[C, Z, Y, X]`` logits (ties: the first), one channel at a
    time: torch's ``argmax(0)`` reduces across a strided axis and took 1 s for 2 x 96 x 335 x 335 on the CPU."""
    return running_argmax(logits, lambda channel: channel)


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
