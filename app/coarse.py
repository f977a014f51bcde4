"""Coarse stage: the whole scan at low resolution -> organ mask -> ROI box in millimetres."""

from __future__ import annotations

import cc3d
import numpy as np

from .geometry import Box, bounding_box, expand_box_mm, map_box
from .model import Model
from .resample import channel_argmax


def coarse_labels(model: Model, image: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """FLARE labels of the whole scan (raw HU, any strides) on the coarse grid (uint8, CPU)."""
    x, _ = model.on_grid(image, spacing)
    labels = channel_argmax(model.logits(x, patch=model.spec.size))  # a fixed-size model: its one tile
    return model.lut[labels.long()].cpu().numpy()


MIN_BLOB_ML = 2.0  # coarse blobs smaller than this are specks, not organs (an adrenal is about 5 mL)


def organ_cluster(mask: np.ndarray, spacing: tuple[float, ...], min_voxels: int, max_gap_mm: float) -> np.ndarray:
    """The largest blob of ``mask`` plus every blob within ``max_gap_mm`` of what is kept, grown until stable.

    Why: on whole-body scans a coarse model may also fire far from the abdomen (a brain is soft
    tissue inside bone); a box around everything would then run to the head and hand the fine
    model anatomy it never saw. Organs of the abdomen touch or nearly touch, so they chain together.
    """
    blobs, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=26, return_N=True)
    sizes = np.bincount(blobs.ravel(), minlength=n + 1)
    rest = [i for i in range(1, n + 1) if sizes[i] >= min_voxels]
    if not rest:
        return np.zeros(mask.shape, bool)
    largest = max(rest, key=lambda i: sizes[i])
    kept, rest = blobs == largest, [i for i in rest if i != largest]
    while rest:
        near = [i for i, d in zip(rest, gaps_mm(kept, blobs, rest, spacing, max_gap_mm)) if d <= max_gap_mm]
        if not near:
            break
        kept |= np.isin(blobs, near)
        rest = [i for i in rest if i not in near]
    return kept


def gaps_mm(kept: np.ndarray, blobs: np.ndarray, ids: list[int], spacing: tuple[float, ...], reach_mm: float) -> list[float]:
    """Distance in mm from ``kept`` to the nearest voxel of each blob in ``ids``: exact up to
    ``reach_mm``, and some value above it (inf for a blob wholly out of reach) beyond.

    The distance transform runs only over the box of ``kept`` grown by ``reach_mm``, which holds
    every kept voxel and every voxel within reach of one: on a whole-body scan, part of the grid.
    """
    from scipy import ndimage  # 0.25 s to import: only on scans whose coarse mask has several blobs

    box = bounding_box(kept)
    assert box is not None
    grow = [int(np.ceil(reach_mm / s)) + 1 if np.isfinite(reach_mm) else n for s, n in zip(spacing, kept.shape)]
    window = tuple(slice(max(0, a - g), min(n, b + g)) for a, b, g, n in zip(box.start, box.stop, grow, kept.shape))
    distance = ndimage.distance_transform_edt(~kept[window], sampling=spacing)
    local = blobs[window]
    present = np.isin(ids, local)
    closest = ndimage.minimum(distance, local, [i for i, p in zip(ids, present) if p])
    found = iter(np.atleast_1d(closest))
    return [float(next(found)) if p else float("inf") for p in present]


def roi_box(coarse: np.ndarray, full_shape: tuple[int, ...], spacing: tuple[float, ...], margin_mm: float, max_gap_mm: float) -> Box | None:
    """Box around the coarse organs, mapped to the full grid and grown by ``margin_mm``.

    Specks under ``MIN_BLOB_ML`` are ignored, and so are blobs farther than ``max_gap_mm`` from the
    main organ cluster (see ``organ_cluster``); works for multi-organ and binary (foreground)
    coarse models alike. None when the coarse model found nothing.
    """
    coarse_spacing = tuple(s * n / c for s, n, c in zip(spacing, full_shape, coarse.shape))
    min_voxels = int(MIN_BLOB_ML * 1000 / float(np.prod(coarse_spacing)))
    box = bounding_box(organ_cluster(coarse > 0, coarse_spacing, max(min_voxels, 1), max_gap_mm))
    if box is None:
        return None
    return expand_box_mm(map_box(box, coarse.shape, full_shape), spacing, margin_mm, full_shape)
