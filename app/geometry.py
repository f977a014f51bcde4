"""Voxel-box arithmetic for the ROI stage: pure functions on shapes, spacings and masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Half-open voxel box ``[start, stop)`` per axis."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def is_empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @classmethod
    def full(cls, shape: tuple[int, ...]) -> Box:
        return cls(start=(0,) * len(shape), stop=tuple(shape))


def intersect(a: Box, b: Box) -> Box:
    """Overlap of two boxes (may be empty: stop <= start on some axis)."""
    return Box(tuple(max(x, y) for x, y in zip(a.start, b.start)), tuple(min(x, y) for x, y in zip(a.stop, b.stop)))


def bounding_box(mask: np.ndarray) -> Box | None:
    """Tight box around the non-zero voxels, or None for an empty mask."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        start.append(int(idx[0]))
        stop.append(int(idx[-1]) + 1)
    return Box(tuple(start), tuple(stop))


def map_box(box: Box, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> Box:
    """Box on a resampled grid of the same extent -> the covering box on another grid.

    Both grids span the same physical extent (voxel edges aligned), so the box edges scale
    linearly; start is floored and stop ceiled so the mapped box never shrinks.
    """
    start = tuple(int(np.floor(a * d / s)) for a, s, d in zip(box.start, src_shape, dst_shape))
    stop = tuple(int(np.ceil(b * d / s)) for b, s, d in zip(box.stop, src_shape, dst_shape))
    return Box(start, stop)


def expand_box_mm(box: Box, spacing: tuple[float, ...], margin_mm: float, shape: tuple[int, ...]) -> Box:
    """Grow a box by a margin in millimetres on every side, clipped to the scan."""
    pad = [int(np.ceil(margin_mm / s)) for s in spacing]
    start = tuple(max(0, a - p) for a, p in zip(box.start, pad))
    stop = tuple(min(n, b + p) for b, p, n in zip(box.stop, pad, shape))
    return Box(start, stop)


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Grid size that covers the same extent at the target spacing (at least one voxel).

    Computed as nnU-Net's ``compute_new_shape`` does (``s / t * n``, Python's round), so an imported
    model sees the grid it was trained on even where a product lands on .5.
    """
    return tuple(max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target))


Face = tuple[int, int]  # (axis, 0 for the start side or 1 for the stop side)


def cut_faces(labels: np.ndarray, box: Box, limit: Box, spacing: tuple[float, ...], min_area_mm2: float) -> list[Face]:
    """Faces of ``box`` that cut through an organ: at least ``min_area_mm2`` of labelled voxels
    (``labels``, the crop's) on the face, where ``limit`` (the scan, or the part a model may see)
    goes on beyond it.

    Why: the ROI comes from a coarse model; where it saw only part of an organ, the fine model's
    organ stops flat at the crop's face, a wrong mask with nothing to say so.
    """
    faces: list[Face] = []
    for axis in range(labels.ndim):
        area = float(np.prod([s for a, s in enumerate(spacing) if a != axis]))
        for side, (edge, bound) in enumerate(((box.start[axis], limit.start[axis]), (box.stop[axis], limit.stop[axis]))):
            if edge == bound:
                continue
            face = np.take(labels, 0 if side == 0 else labels.shape[axis] - 1, axis=axis)
            if np.count_nonzero(face) * area >= min_area_mm2:
                faces.append((axis, side))
    return faces


def grow_faces(box: Box, faces: list[Face], grow: tuple[int, ...], limit: Box) -> Box:
    """``box`` moved out by ``grow[axis]`` voxels on each of ``faces``, within ``limit``."""
    start, stop = list(box.start), list(box.stop)
    for axis, side in faces:
        if side == 0:
            start[axis] = max(limit.start[axis], start[axis] - grow[axis])
        else:
            stop[axis] = min(limit.stop[axis], stop[axis] + grow[axis])
    return Box(tuple(start), tuple(stop))
