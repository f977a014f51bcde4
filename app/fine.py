"""Fine stage: the ROI crop at the fine model's resolution -> labels on the crop's own grid.

Upsampling back to the crop grid is either ``logits`` (trilinear on the logits, one channel at
a time, then argmax) or ``labels`` (argmax on the fine grid, then nearest). See benchmarks/README.md
"Upsampling choice" for the measurement behind the default.

``scales`` other than ``(1.0,)`` is test-time scale augmentation (``--tta``, ``cli.TTA_SCALES``): one pass per scale,
their softmax averaged on the unscaled pass's grid (``scale_averaged_logits``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .architecture import UNetConfig
from .model import Model
from .resample import channel_argmax, resize_image, resize_labels

log = logging.getLogger("app")

UPSAMPLE_MODES = ("logits", "labels")


def scale_averaged_logits(
    model: Model,
    crop: np.ndarray,
    spacing: tuple[float, float, float],
    scales: tuple[float, ...],
    patch: tuple[int, int, int] | None = None,
    accumulate_on: torch.device | None = None,
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Log of the mean softmax over passes that read the crop as if its voxels were ``s`` times their
    size (organs seen ``s`` times larger), one per ``s`` in ``scales``, each brought to the grid of
    the pass at ``s = 1`` (trilinear on its logits) and summed on ``accumulate_on`` (default: the
    model's device); with that grid's spacing.

    Why: the networks learned organ sizes from synthetic bodies, and one pass at one size can lose a
    whole organ where passes a tenth larger and smaller agree on it.
    """
    if model.spec.spacing is None:
        raise ValueError("scale augmentation needs a model with an input spacing, not a fixed input size")
    shape = tuple(crop.shape)
    grid = model.grid(shape, spacing)
    total: torch.Tensor | None = None
    for s in scales:
        x, _ = model.on_grid(crop, tuple(v * s for v in spacing))  # type: ignore[arg-type]
        logits = model.logits(x, patch=patch, accumulate_on=accumulate_on)
        del x
        probs = torch.softmax(resize_image(logits.to(accumulate_on or model.device, torch.float32), grid), dim=0)
        del logits
        total = probs if total is None else total.add_(probs)
    assert total is not None, "scales is empty"
    return total.div_(len(scales)).log_().to(model.device), model.grid_spacing(shape, spacing)


def segment_crop(
    model: Model,
    crop: np.ndarray,
    spacing: tuple[float, float, float],
    upsample: str = "logits",
    patch: tuple[int, int, int] | None = None,
    accumulate_on: torch.device | None = None,
    scales: tuple[float, ...] = (1.0,),
) -> torch.Tensor:
    """FLARE labels (uint8) of a raw-HU ``[Z, Y, X]`` crop, on the crop's grid and the model's device."""
    shape = tuple(crop.shape)
    if tuple(scales) == (1.0,):
        x, grid_spacing = model.on_grid(crop, spacing)
        logits = model.logits(x, patch=patch, accumulate_on=accumulate_on)
        del x
        logits = logits.to(model.device)
    else:
        logits, grid_spacing = scale_averaged_logits(model, crop, spacing, tuple(scales), patch, accumulate_on)
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


def segment_crop_with_fallback(model: Model, crop: np.ndarray, spacing: tuple[float, float, float], upsample: str, case: str,
                               scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """``segment_crop`` that survives the device running out of memory: smaller tiles with sums on
    the CPU, then the backend's own fallback (the CPU); each retry is logged."""
    backend = model.backend
    try:
        return segment_crop(model, crop, spacing, upsample, scales=scales)
    except Exception as e:
        if not backend.is_out_of_memory(e):
            raise
        backend.release()
    patch = smaller_patch(model)
    log.warning("%s: out of memory in the fine stage; retrying with smaller tiles %s and sums on the CPU", case, list(patch))
    try:
        return segment_crop(model, crop, spacing, upsample, patch=patch, accumulate_on=torch.device("cpu"), scales=scales)
    except Exception as e:
        fallback = backend.fallback() if backend.is_out_of_memory(e) else None
        if fallback is None:
            raise
        backend.release()
    log.warning("%s: still out of memory; running the fine stage on %s", case, fallback.placement)
    return segment_crop(model.on(fallback), crop, spacing, upsample, scales=scales).to(model.device)
