"""Coarse stage: the whole scan at low resolution -> organ mask -> ROI box in millimetres."""

from __future__ import annotations

import numpy as np
import torch

from .cleanup import keep_largest_components
from .geometry import Box, bounding_box, expand_box_mm, map_box, resampled_shape
from .model import Model
from .resample import resize_image


def model_grid(model: Model, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, int, int]:
    """The grid a model sees a volume on: its fixed size, or the volume at the model's spacing."""
    if model.spec.size is not None:
        return model.spec.size
    return resampled_shape(shape, spacing, model.spec.spacing)  # type: ignore[arg-type, return-value]


def coarse_labels(model: Model, image: torch.Tensor, spacing: tuple[float, float, float]) -> np.ndarray:
    """FLARE labels of the whole scan on the coarse grid (uint8, CPU)."""
    x = resize_image(model.normalize(image), model_grid(model, tuple(image.shape), spacing))
    patch = model.spec.size or model.spec.patch_size
    labels = model.logits(x, patch=patch).argmax(0)
    return model.lut[labels].cpu().numpy()


def roi_box(coarse: np.ndarray, full_shape: tuple[int, ...], spacing: tuple[float, ...], margin_mm: float) -> Box | None:
    """Box around the coarse organs (largest component each, so stray voxels don't widen it),
    mapped to the full grid and grown by ``margin_mm``; None when the coarse model found nothing."""
    box = bounding_box(keep_largest_components(coarse) > 0)
    if box is None:
        return None
    return expand_box_mm(map_box(box, coarse.shape, full_shape), spacing, margin_mm, full_shape)
