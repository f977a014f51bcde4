"""Per-organ largest-connected-component cleanup in one multilabel cc3d pass."""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np


def keep_largest_components(mask: np.ndarray, labels: Iterable[int] | None = None, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of each label in ``labels`` (all when None).

    Labels not listed (e.g. lesions, which come several per scan) are left untouched.
    One cc3d pass labels the components of every organ at once; the winner per organ is
    picked from the component voxel counts.
    """
    if not mask.any():
        return mask
    cc, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    if n == 0:
        return mask
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    comp_label = np.zeros(n + 1, dtype=mask.dtype)
    comp_label[cc.ravel()] = mask.ravel()
    comp_label[0] = 0
    # For each label, the component with the most voxels.
    order = np.lexsort((-counts[1:], comp_label[1:])) + 1
    first = np.ones(len(order), dtype=bool)
    first[1:] = comp_label[order[1:]] != comp_label[order[:-1]]
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[first]] = True
    selected = np.ones(int(mask.max()) + 1, dtype=bool) if labels is None else np.isin(np.arange(int(mask.max()) + 1), list(labels))
    keep |= ~selected[comp_label]
    keep[0] = False
    return np.where(keep[cc], mask, 0).astype(mask.dtype, copy=False)
