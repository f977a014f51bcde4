"""Bring a scan's array to one canonical axis order by permutations and flips only.

Canonical layout (numpy order): axis 0 runs inferior->superior, axis 1 anterior->posterior,
axis 2 right->left, i.e. the identity direction of ITK's LPS world. No voxel is ever
interpolated here, so the transform is undone exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """How a scan's numpy array maps to the canonical layout.

    ``canonical = np.flip(array.transpose(perm), axis=flips)``
    """

    perm: tuple[int, int, int]
    flips: tuple[int, ...]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array.transpose(self.perm)
        return np.flip(out, axis=self.flips) if self.flips else out

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        out = np.flip(array, axis=self.flips) if self.flips else array
        return out.transpose(np.argsort(self.perm))

    def spacing_to_canonical(self, spacing_np: tuple[float, float, float]) -> tuple[float, float, float]:
        return tuple(float(spacing_np[a]) for a in self.perm)  # type: ignore[return-value]


def orientation_from_direction(direction: np.ndarray) -> Orientation:
    """Orientation for an ITK direction matrix (3x3, columns = index axes x, y, z in LPS).

    Each numpy axis ``a`` (index axis ``2 - a``) goes to the world axis it points along most;
    ties between oblique axes are settled by the assignment with the largest total alignment.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    # align[a, k]: how much numpy axis a points along canonical axis k (world axis 2 - k).
    align = np.array([[abs(d[2 - k, 2 - a]) for k in range(3)] for a in range(3)])
    best = max(itertools.permutations(range(3)), key=lambda p: sum(align[p[k], k] for k in range(3)))
    perm = tuple(int(a) for a in best)  # perm[k] = numpy axis that becomes canonical axis k
    flips = tuple(k for k in range(3) if d[2 - k, 2 - perm[k]] < 0)
    return Orientation(perm=perm, flips=flips)  # type: ignore[arg-type]
