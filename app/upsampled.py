"""Whether a scan was brought up from a coarser grid by repeating voxels (nearest-neighbour).

Sample and teaching copies of public CT are often such thumbnails, stored back at a fine grid: one
of the real scans here repeats every slice 4 times and every pixel in 4 x 4 blocks, so its header's
7.5 x 0.79 x 0.79 mm are in truth 30 x 3.1 x 3.1 mm. Nothing in the header says so, and the
models, trained on scans with real resolution, lose whole organs on them: the user is told.
"""

from __future__ import annotations

import numpy as np

AXES = ("slices", "rows", "columns")  # the stored array's axes (z, y, x)
MIN_REPEAT = 0.5  # share of neighbouring planes that are identical before a run is reported
MIN_DISTINCT = 64  # distinct values in a sample: fewer is a drawing (a test body), not a scan with noise
SAMPLE = 65536


def repeated_planes(array: np.ndarray, stride: int = 4) -> dict[int, int]:
    """Axes along which neighbouring planes repeat, each with the typical run length (planes per
    block: the median over runs not cut by the scan's ends), for a volume with noise (a
    piecewise-constant drawing repeats everywhere and says nothing). Planes are compared on every
    ``stride``-th voxel of the other axes: a plane that differs by noise differs there too, and the
    test costs ``stride**2`` times less."""
    flat = array.reshape(-1)
    sample = flat[np.random.default_rng(0).integers(0, flat.size, min(SAMPLE, flat.size))]
    if len(np.unique(sample)) < MIN_DISTINCT:
        return {}
    runs = {}
    for axis in range(3):
        if array.shape[axis] < 4:
            continue
        view = np.moveaxis(array, axis, 0)[:, ::stride, ::stride]
        planes = view.reshape(view.shape[0], -1)
        varied = planes.min(axis=1) != planes.max(axis=1)  # constant planes (air outside the body) repeat anyway
        pairs = varied[1:] & varied[:-1]
        if pairs.sum() < 3:
            continue
        same = (planes[1:] == planes[:-1]).all(axis=1)
        if same[pairs].mean() >= MIN_REPEAT:
            lengths = np.diff(np.r_[-1, np.flatnonzero(~same), len(same)])  # planes per run
            inner = lengths[1:-1]  # the first and last runs may be cut by the scan's ends
            runs[axis] = int(np.median(inner)) if len(inner) else int(lengths.max())
    return runs


def describe(runs: dict[int, int], spacing_zyx: tuple[float, float, float]) -> str:
    """One warning for ``repeated_planes``' result, with the resolution the scan really has."""
    parts = [f"{AXES[a]} in runs of {n} (about {n * spacing_zyx[a]:.3g} mm, not {spacing_zyx[a]:.3g})" for a, n in sorted(runs.items())]
    return ("repeats " + ", ".join(parts) + ": it was upsampled from a coarser copy by repeating voxels; "
            "results will be unreliable, most for small organs")
