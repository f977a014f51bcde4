"""Coarse stage: the whole scan at low resolution -> organ mask -> ROI box in millimetres."""

from __future__ import annotations

import cc3d
import numpy as np
import torch

from .geometry import Box, bounding_box, expand_box_mm, map_box
from .model import Model
from .resample import resize_image


def coarse_labels(model: Model, image: torch.Tensor, spacing: tuple[float, float, float]) -> np.ndarray:
    """FLARE labels of the whole scan on the coarse grid (uint8, CPU)."""
    x = resize_image(model.normalize(image), model.grid(tuple(image.shape), spacing))
    patch = model.spec.size or model.spec.patch_size
    labels = model.logits(x, patch=patch).argmax(0)
    return model.lut[labels].cpu().numpy()


MIN_BLOB_ML = 2.0  # coarse blobs smaller than this are specks, not organs (an adrenal is about 5 mL)


def roi_box(coarse: np.ndarray, full_shape: tuple[int, ...], spacing: tuple[float, ...], margin_mm: float) -> Box | None:
    """Box around the coarse organs, mapped to the full grid and grown by ``margin_mm``.

    Connected blobs of the organ union under ``MIN_BLOB_ML`` are dropped first so stray voxels
    don't widen the box; works for multi-organ and binary (foreground) coarse models alike.
    None when the coarse model found nothing.
    """
    coarse_voxel_mm3 = float(np.prod([s * n / c for s, n, c in zip(spacing, full_shape, coarse.shape)]))
    organs = cc3d.dust(np.ascontiguousarray(coarse > 0), threshold=int(MIN_BLOB_ML * 1000 / coarse_voxel_mm3), connectivity=26)
    box = bounding_box(organs)
    if box is None:
        return None
    return expand_box_mm(map_box(box, coarse.shape, full_shape), spacing, margin_mm, full_shape)
