"""Fine stage: the ROI crop at the fine model's resolution -> labels on the crop's own grid.

Upsampling back to the crop grid is either ``logits`` (trilinear on the logits, one channel at
a time, then argmax) or ``labels`` (argmax on the fine grid, then nearest). See benchmarks/README.md
"Upsampling choice" for the measurement behind the default.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .architecture import UNetConfig
from .model import Model
from .resample import channel_argmax, resize_labels

log = logging.getLogger("app")

UPSAMPLE_MODES = ("logits", "labels")


def segment_crop(
    model: Model,
    crop: np.ndarray,
    spacing: tuple[float, float, float],
    upsample: str = "logits",
    patch: tuple[int, int, int] | None = None,
    accumulate_on: torch.device | None = None,
) -> torch.Tensor:
    """FLARE labels (uint8) of a raw-HU ``[Z, Y, X]`` crop, on the crop's grid and the model's device."""
    shape = tuple(crop.shape)
    x, grid_spacing = model.on_grid(crop, spacing)
    logits = model.logits(x, patch=patch, accumulate_on=accumulate_on)
    del x
    logits = logits.to(model.device)
    if upsample == "labels":
        labels = resize_labels(channel_argmax(logits), shape)  # type: ignore[arg-type]
    elif upsample == "logits":
        labels = model.labels_back(logits, shape, grid_spacing, spacing)  # type: ignore[arg-type]
    else:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
    del logits
    return model.lut[labels.long()] if _needs_lut(model) else labels


def _needs_lut(model: Model) -> bool:
    return not torch.equal(model.lut.cpu(), torch.arange(len(model.lut), dtype=torch.uint8))


def smaller_patch(model: Model) -> tuple[int, int, int]:
    """Half the patch along each axis, kept a multiple of the network's total stride."""
    div = UNetConfig.from_dict(model.spec.architecture).divisor
    return tuple(max(d, (p // 2) // d * d) for p, d in zip(model.spec.patch_size, div))  # type: ignore[return-value]


def segment_crop_with_fallback(model: Model, crop: np.ndarray, spacing: tuple[float, float, float], upsample: str, case: str) -> torch.Tensor:
    """``segment_crop`` that survives the device running out of memory: smaller tiles with sums on
    the CPU, then the backend's own fallback (the CPU); each retry is logged."""
    backend = model.backend
    try:
        return segment_crop(model, crop, spacing, upsample)
    except Exception as e:
        if not backend.is_out_of_memory(e):
            raise
        backend.release()
    patch = smaller_patch(model)
    log.warning("%s: out of memory in the fine stage; retrying with smaller tiles %s and sums on the CPU", case, list(patch))
    try:
        return segment_crop(model, crop, spacing, upsample, patch=patch, accumulate_on=torch.device("cpu"))
    except Exception as e:
        fallback = backend.fallback() if backend.is_out_of_memory(e) else None
        if fallback is None:
            raise
        backend.release()
    log.warning("%s: still out of memory; running the fine stage on %s", case, fallback.placement)
    return segment_crop(model.on(fallback), crop, spacing, upsample).to(model.device)
