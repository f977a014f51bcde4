"""Resampling on whatever device the tensors live on (GPU when there is one).

Images use trilinear interpolation; label maps use exact nearest-neighbour gathering
(integer dtypes, no float copy); logits can be resized one channel at a time and reduced to
labels on the fly so a full-resolution probability volume never exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Labels of ``[C, Z, Y, X]`` logits after trilinear resize to ``shape``, channel by channel.

    Peak extra memory is two channels at the target size plus the label map, instead of C.
    """
    best = resize_image(logits[0], shape).clone()
    labels = torch.zeros(shape, dtype=torch.uint8, device=logits.device)
    for c in range(1, logits.shape[0]):
        channel = resize_image(logits[c], shape)
        better = channel > best
        labels[better] = c
        best = torch.maximum(best, channel, out=best)
    return labels
