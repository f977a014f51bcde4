"""Patch-based inference with Gaussian weighting, as nnU-Net and MONAI do it."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Importance map built exactly as nnU-Net builds it (a blurred delta at ``p // 2``, sigma =
    patch/8, peak 1, no zeros), so imported nnU-Net models blend tiles the same way."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    w = gaussian_filter(delta, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    w /= w.max()
    w[w == 0] = w[w > 0].min()
    return w.astype(np.float32)


BLENDINGS = ("fp32", "nnunet")


@functools.lru_cache(maxsize=8)
def nnunet_gaussian(patch: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's own FP16 importance map (``compute_gaussian(value_scaling_factor=10)``): peak 10,
    cast to FP16, then the values that underflowed to 0 raised to the smallest non-zero one."""
    w = torch.from_numpy(gaussian_weights(patch).astype(np.float64) * 10).half()
    w[w == 0] = w[w != 0].min()
    return w


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Evenly spread tile origins covering ``size`` with overlap ``1 - step`` (nnU-Net's rule)."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def pad_to(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the last three axes up to the patch size (centred); return the crop to undo it."""
    pads, crop = [], []
    for n, p in zip(image.shape[-3:], patch):
        diff = max(0, p - n)
        lo = diff // 2
        pads.append((lo, diff - lo))
        crop.append(slice(lo, lo + n))
    if any(d for pair in pads for d in pair):
        flat = [v for pair in reversed(pads) for v in pair]
        image = F.pad(image, flat, value=0.0)
    return image, tuple(crop)


@torch.inference_mode()
def sliding_window_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    patch: Sequence[int],
    num_classes: int,
    step: float | Sequence[float] = 0.5,
    accumulate_on: torch.device | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    mirror_axes: Sequence[int] = (),
    blending: str = "fp32",
    importance: np.ndarray | None = None,
) -> torch.Tensor:
    """Logits ``[C, Z, Y, X]`` for a normalised ``[Z, Y, X]`` image; ``model`` is any ``tile -> logits``
    callable (``[1, 1, z, y, x] -> [1, C, z, y, x]``), a backend or a plain module.

    Tiles run on the image's device; the weighted sums live on ``accumulate_on`` (the same
    device by default, the CPU as an out-of-memory fallback) in ``accumulate_dtype``. Blending
    ``nnunet`` does nnU-Net's own arithmetic instead (FP16 sums, each tile's FP32 product rounded
    once as it is added, weights ``nnunet_gaussian``): where the outer tiles' weights are tiny or
    underflow, at the volume's faces, nnU-Net's logits are coarsely rounded, and imported models
    then give nnU-Net's very masks there too. ``step`` may differ per axis; ``importance`` replaces
    the Gaussian (``large_tiles`` gives both).
    """
    if blending not in BLENDINGS:
        raise ValueError(f"blending must be one of {BLENDINGS}, got {blending!r}")
    device = image.device
    acc_dev = accumulate_on or device
    padded, crop = pad_to(image, patch)
    shape = padded.shape
    if blending == "nnunet":
        accumulate_dtype = torch.float16
        weight = nnunet_gaussian(tuple(patch)).to(device)
    else:
        weight = torch.from_numpy(gaussian_weights(tuple(patch)) if importance is None else importance).to(device=device, dtype=image.dtype)
    logits = torch.zeros((num_classes, *shape), dtype=accumulate_dtype, device=acc_dev)
    norm = torch.zeros(tuple(shape), dtype=accumulate_dtype, device=acc_dev)
    w_acc = weight.to(device=acc_dev, dtype=accumulate_dtype)
    steps = [step] * 3 if isinstance(step, (int, float)) else list(step)
    starts = [tile_starts(n, p, st) for n, p, st in zip(shape, patch, steps)]
    for z, y, x in itertools.product(*starts):
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        tile = padded[sl][None, None]
        pred = model(tile)
        for axes in _mirror_sets(mirror_axes):
            pred = pred + torch.flip(model(torch.flip(tile, [a + 2 for a in axes])), [a + 2 for a in axes])
        pred = pred[0] / (1 + len(_mirror_sets(mirror_axes)))
        if blending == "nnunet":  # FP32 product, rounded to FP16 once, in the sum
            logits[(slice(None), *sl)] += (pred.float() * weight).to(acc_dev)
        else:
            logits[(slice(None), *sl)] += (pred * weight).to(device=acc_dev, dtype=accumulate_dtype)
        norm[sl] += w_acc
    logits /= norm
    return logits[(slice(None), *crop)]


def _mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All non-empty subsets of the mirror axes (nnU-Net's test-time mirroring)."""
    return [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


@torch.inference_mode()
def whole_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    divisor: Sequence[int],
    min_shape: Sequence[int] = (1, 1, 1),
    accumulate_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logits ``[C, Z, Y, X]`` of a normalised ``[Z, Y, X]`` image in one pass of a fully
    convolutional network: zero-padded (centred, as the sliding window pads) to a multiple of the
    network's total stride and at least ``min_shape``, then cropped back. No voxel is computed twice."""
    target = [max(m, -(-n // d) * d) for n, d, m in zip(image.shape, divisor, min_shape)]
    padded, crop = pad_to(image, target)
    out = model(padded[None, None])[0]
    return out[(slice(None), *crop)].to(accumulate_dtype)


def large_tiles(shape: Sequence[int], divisor: Sequence[int], min_shape: Sequence[int], overlap: Sequence[int],
                budget: int) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """Tiles for a fully convolutional network over an input too large for one pass: as few as fit
    ``budget`` voxels each, neighbours sharing at least ``overlap`` voxels along each axis they split.

    Returns the tile shape (multiples of the network's stride ``divisor``, at least ``min_shape``),
    a step per axis giving exactly those tiles, and their blending weights: 1 inside, falling
    linearly to the tile's faces across ``overlap`` (a voxel is taken mostly from the tile in
    which it has the most context). Each split goes where it adds the least computed volume.
    """
    counts = [1, 1, 1]

    def extent(a: int, n: int) -> int:
        t = shape[a] if n == 1 else -(-(shape[a] + (n - 1) * overlap[a]) // n)
        return max(min_shape[a], -(-t // divisor[a]) * divisor[a])

    def fewer(a: int) -> int | None:  # the next tile count along axis a that shortens its tiles
        return next((n for n in range(counts[a] + 1, shape[a] + 1) if extent(a, n) < extent(a, counts[a])), None)

    def work(a: int, n: int) -> int:  # voxels computed over all tiles with n tiles along axis a
        return math.prod((n if b == a else counts[b]) * extent(b, n if b == a else counts[b]) for b in range(3))

    while math.prod(extent(a, counts[a]) for a in range(3)) > budget:
        splits = {a: n for a in range(3) if (n := fewer(a)) is not None}
        if not splits:
            break  # every axis at its shortest tile: the budget cannot be met
        a = min(splits, key=lambda a: work(a, splits[a]))
        counts[a] = splits[a]
    tile = tuple(extent(a, counts[a]) for a in range(3))
    # tile_starts makes ceil((size - tile) / (tile * step)) + 1 tiles: this step gives counts[a]
    steps = tuple(1.0 if n == 1 or size <= t else (size - t) / ((n - 1) * t) * (1 + 1e-9) for size, t, n in zip(shape, tile, counts))
    ramps = [np.minimum(1.0, np.minimum(np.arange(1, t + 1), np.arange(t, 0, -1)) / min(o + 1, t // 2)) if n > 1 else np.ones(t)
             for t, o, n in zip(tile, overlap, counts)]
    weights = (ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]).astype(np.float32)
    return tile, steps, weights  # type: ignore[return-value]
