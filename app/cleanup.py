"""Per-organ largest-connected-component cleanup, each organ within its own bounding box."""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np


def keep_largest_components(mask: np.ndarray, labels: Iterable[int] | None = None, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of each label in ``labels`` (all when None); on a
    tie, the component met first in raster order. A new array; labels not listed (e.g. lesions,
    which come several per scan) are left untouched.

    One pass finds every label's bounding box; each organ's components are then labelled inside
    its box only. Labelling the whole crop at once, as one multilabel pass, wrote and re-read
    32-bit component ids for every voxel: 0.55 s against 0.3 s on a 300 x 262 x 413 crop.
    """
    out = mask.copy()
    if not mask.any():
        return out
    stats = cc3d.statistics(mask)
    counts, boxes = stats["voxel_counts"], stats["bounding_boxes"]
    wanted = range(1, len(counts)) if labels is None else [int(v) for v in labels if 0 < int(v) < len(counts)]
    for label in wanted:
        if counts[label] == 0:
            continue
        box = boxes[label]
        organ = out[box] == label
        components, n = cc3d.connected_components(organ, connectivity=connectivity, return_N=True)
        if n > 1:
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            sizes[0] = 0
            out[box][organ & (components != sizes.argmax())] = 0
    return out
