"""Whether a mask's organs lie on the sides the scan's header gives them.

Public scans come with headers that swap left and right (one of the real scans here puts its
spleen on the patient's right). A model that learned where organs lie then names them wrong, and
nothing else in the output shows it. The spleen and the stomach lie on the patient's left of the
liver in every body but situs inversus: measured on the real scans here (masks of the weights of
2026-11-26), their centres lie 103-188 and 2-125 mm to the liver's left, and 82 and 130 mm to its
right on the mirrored one (the weights of 2026-12-02: its stomach 131 mm right).

The engine then segments the scan mirrored left-right under the same header, and keeps that pass
only if it shows a normal body: no spleen or stomach right of the liver, and the liver's centre
well right of the body's (``liver_right_of_body``: 71-76 mm on the real scans here as read, 63 mm
on the mirrored one mirrored back, 20 mm and less on normal scans mirrored).
"""

from __future__ import annotations

import numpy as np

LIVER, SPLEEN, STOMACH = 1, 3, 11
LEFT_OF_LIVER = {SPLEEN: "spleen", STOMACH: "stomach"}
MIN_SHIFT_MM = 20.0  # how far right of the liver's centre an organ's centre must lie to count
MIN_VOXELS = 20  # of the voxels counted (one in eight): fewer say little of where an organ is
BODY_HU = -500.0  # above this, the patient (not the air around)


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


def liver_right_of_body(labels: np.ndarray, image: np.ndarray, left_mm: tuple[float, float, float]) -> float | None:
    """How far the liver's centre lies to the patient's right of the body's (mm; negative: to its
    left), or None without a liver. ``image``: the scan in HU on the grid of ``labels``; the body
    is where it exceeds ``BODY_HU``. A normal body has its liver right of its midline; a mirrored
    reading has it left."""
    sub, inside = labels[::2, ::2, ::2], image[::2, ::2, ::2] > BODY_HU  # every eighth voxel, as organs_right_of_liver
    step = tuple(2 * s for s in left_mm)
    liver = sub == LIVER
    if liver.sum() < MIN_VOXELS or inside.sum() < MIN_VOXELS:
        return None
    return round(centre_along(inside, step) - centre_along(liver, step), 1)  # type: ignore[arg-type]
