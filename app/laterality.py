"""Whether a mask's organs lie on the sides the scan's header gives them.

Public scans come with headers that swap left and right (one of the real scans here puts its
spleen on the patient's right). A model that learned where organs lie then names them wrong, and
nothing else in the output shows it. The spleen and the stomach lie on the patient's left of the
liver in every body but situs inversus: measured on the real scans here (masks of the weights of
2026-11-26), their centres lie 103-188 and 2-125 mm to the liver's left, and 82 and 130 mm to its
right on the mirrored one (the weights of 2026-12-02: its stomach 131 mm right).
"""

from __future__ import annotations

import numpy as np

LIVER = 1
LEFT_OF_LIVER = {3: "spleen", 11: "stomach"}
MIN_SHIFT_MM = 20.0  # how far right of the liver's centre an organ's centre must lie to count
MIN_VOXELS = 20  # of the voxels counted (one in eight): fewer say little of where an organ is


def centre_along(mask: np.ndarray, step_mm: tuple[float, float, float]) -> float:
    """The mean of ``index . step_mm`` over a boolean mask's voxels: its centre's coordinate in mm
    along the direction whose per-index-step component is ``step_mm``."""
    total = 0.0
    count = int(mask.sum())
    for axis, step in enumerate(step_mm):
        if step:
            profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
            total += step * float(profile @ np.arange(mask.shape[axis]))
    return total / count


def organs_right_of_liver(labels: np.ndarray, left_mm: tuple[float, float, float]) -> dict[str, float]:
    """Organs of ``LEFT_OF_LIVER`` whose centre lies at least ``MIN_SHIFT_MM`` to the patient's right
    of the liver's centre, with that distance in mm. ``left_mm``: how far one index step along each
    axis of ``labels`` moves towards the patient's left (LPS x), in mm."""
    sub = labels[::2, ::2, ::2]  # every second voxel along each axis: the centres move by under a voxel, 8x less work
    step = tuple(2 * s for s in left_mm)
    liver = sub == LIVER
    if liver.sum() < MIN_VOXELS:
        return {}
    centre = centre_along(liver, step)  # type: ignore[arg-type]
    found = {}
    for label, name in LEFT_OF_LIVER.items():
        organ = sub == label
        if organ.sum() >= MIN_VOXELS and (shift := centre - centre_along(organ, step)) >= MIN_SHIFT_MM:  # type: ignore[arg-type]
            found[name] = round(shift, 1)
    return found
