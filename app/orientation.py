"""Bring a scan's array to a model's axis layout by permutations and flips only.

The default layout is canonical LPS (numpy order): axis 0 runs inferior->superior, axis 1
anterior->posterior, axis 2 right->left, i.e. the identity direction of ITK's LPS world. A model
may ask for another orientation code (ITK/DICOMOrient letters, e.g. ``RAS``) or for the array as
stored (nnU-Net never reorients). No voxel is ever interpolated here, so every transform is undone
exactly, and ROI boxes map between layouts exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .geometry import Box

_AXIS_OF = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
STORED = "stored"


@dataclass(frozen=True)
class Orientation:
    """How a scan's numpy array maps to a layout: ``layout = np.flip(array.transpose(perm), axis=flips)``."""

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

    def box_from_canonical(self, box: Box, canonical_shape: tuple[int, ...]) -> Box:
        """A box in this layout -> the same voxels' box in the stored array."""
        start, stop = list(box.start), list(box.stop)
        for k in self.flips:
            start[k], stop[k] = canonical_shape[k] - stop[k], canonical_shape[k] - start[k]
        inv = np.argsort(self.perm)
        return Box(tuple(start[i] for i in inv), tuple(stop[i] for i in inv))

    def box_to_canonical(self, box: Box, stored_shape: tuple[int, ...]) -> Box:
        """A box in the stored array -> the same voxels' box in this layout."""
        start = [box.start[a] for a in self.perm]
        stop = [box.stop[a] for a in self.perm]
        shape = [stored_shape[a] for a in self.perm]
        for k in self.flips:
            start[k], stop[k] = shape[k] - stop[k], shape[k] - start[k]
        return Box(tuple(start), tuple(stop))


IDENTITY = Orientation(perm=(0, 1, 2), flips=())


def code_direction(code: str) -> np.ndarray:
    """ITK direction matrix (columns = index axes x, y, z) of an orientation code such as LPS or RAS."""
    code = code.upper()
    if len(code) != 3 or set(code) - set(_AXIS_OF) or len({_AXIS_OF[c][0] for c in code}) != 3:
        raise ValueError(f"{code!r} is not an orientation code (three of L/R, P/A, S/I, one per axis)")
    d = np.zeros((3, 3))
    for col, letter in enumerate(code):
        row, sign = _AXIS_OF[letter]
        d[row, col] = sign
    return d


def orientation_from_direction(direction: np.ndarray, target: str = "LPS") -> Orientation:
    """Orientation that lays out an array with ITK ``direction`` as an array of orientation ``target``.

    Each stored numpy axis ``a`` (index axis ``2 - a``) goes to the layout axis it points along
    most; ties between oblique axes are settled by the assignment with the largest total alignment.
    ``target="stored"`` keeps the array as it is.
    """
    if target == STORED:
        return IDENTITY
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    t = code_direction(target)
    # dot[a, k]: numpy axis a of the scan against numpy axis k of the target layout
    dot = np.array([[float(d[:, 2 - a] @ t[:, 2 - k]) for k in range(3)] for a in range(3)])
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(dot[p[k], k]) for k in range(3)))
    perm = tuple(int(a) for a in best)  # perm[k] = numpy axis that becomes layout axis k
    flips = tuple(k for k in range(3) if dot[perm[k], k] < 0)
    return Orientation(perm=perm, flips=flips)  # type: ignore[arg-type]


def patient_left_steps(direction: tuple[float, ...], layout: Orientation, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """How far one index step along each axis of ``layout`` (a scan's array laid out, with that
    layout's ``spacing``) moves towards the patient's left (LPS x), in mm: where organs lie, read
    from a mask in any layout."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return tuple((-1.0 if k in layout.flips else 1.0) * float(d[0, 2 - layout.perm[k]]) * float(spacing[k]) for k in range(3))  # type: ignore[return-value]


def left_right_axis(direction: tuple[float, ...]) -> int:
    """The axis of a stored array (numpy order [k, j, i]) that runs closest to the patient's left-right
    (LPS x): flipped along it, the scan shows the body mirrored under the same header."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return int(np.argmax([abs(d[0, 2 - a]) for a in range(3)]))
