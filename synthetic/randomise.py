"""CT domain randomisation: what a scanner, a protocol and a patient change in an image, drawn wide.

SynthSeg (Billot et al., 2023) trains on label maps rendered with random intensities so that the
network keeps only shape and context; here the draws stay near CT physics: per-tissue Hounsfield
means around real values in every contrast phase (native, arterial, portal venous, delayed), or on
request drawn freely for every organ, then the scanner: slice profile and reconstruction blur
(partial volume), a smooth bias, correlated noise, metal with its streaks, a truncated
reconstruction circle, and on request an archive copy's lower in-plane resolution or its blocks
(a low-resolution copy brought back to its grid). Pure functions
of an image, its spacing and a ``numpy`` generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASES = ("native", "arterial", "venous", "delayed")

# Hounsfield mean per tissue and phase, and the spread each draw may take around it (1 SD).
TISSUE_HU: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "liver": ((55, 70, 110, 90), 15), "spleen": ((45, 120, 115, 95), 15), "kidney": ((30, 170, 160, 130), 25),
    "pancreas": ((40, 110, 100, 80), 15), "aorta": ((40, 300, 160, 110), 40), "ivc": ((38, 80, 140, 110), 25),
    "adrenal": ((25, 60, 55, 50), 12), "gallbladder": ((8, 10, 12, 15), 8), "esophagus": ((40, 60, 70, 65), 10),
    "stomach_wall": ((40, 80, 90, 80), 12), "duodenum_wall": ((38, 75, 85, 75), 12), "heart": ((40, 250, 140, 110), 35),
    "muscle": ((50, 55, 60, 58), 6), "bladder": ((8, 10, 15, 60), 10), "fat": ((-100, -100, -100, -100), 8),
    "lesion_offset": ((-40, -50, -50, -40), 15),
}


def tissue_values(rng: np.random.Generator, phase: int) -> dict[str, float]:
    """One draw of every tissue's mean HU for contrast phase ``phase`` (index into PHASES)."""
    return {name: float(rng.normal(means[phase], spread)) for name, (means, spread) in TISSUE_HU.items()}


ORGAN_TISSUES = ("liver", "spleen", "kidney", "pancreas", "aorta", "ivc", "adrenal", "gallbladder", "esophagus",
                 "stomach_wall", "duodenum_wall")


def free_contrast(hu: dict[str, float], rng: np.random.Generator, span: tuple[float, float] = (-20.0, 220.0)) -> dict[str, float]:
    """``hu`` with every organ's mean drawn anywhere in ``span``, each on its own (SynthSeg's draw,
    kept to soft tissue and contrast): fat, muscle and the rest stay as drawn.

    Why: drawn near real values, an organ's brightness alone often names it; real scans break that
    (an IVC as bright as the liver around it, a fatty pancreas near 0 HU, a native scan's kidneys
    below the spleen), and a network that saw free contrasts has to read shape and neighbours.
    """
    return {**hu, **{name: float(rng.uniform(*span)) for name in ORGAN_TISSUES}}


def soften(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
           sigma_mm: tuple[float, float] = (0.6, 1.4)) -> np.ndarray:
    """A scan kept at a lower in-plane resolution than it was acquired (an archive copy at 2-3 mm
    voxels, resampled back): in-plane blur over edges and noise alike. int16 in, int16 out."""
    from scipy import ndimage

    sigma = rng.uniform(*sigma_mm)
    out = ndimage.gaussian_filter(image.astype(np.float32), (0, sigma / spacing[1], sigma / spacing[2]), mode="nearest")
    return np.rint(out).astype(np.int16)


def archive_copy(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                 block_mm: tuple[tuple[float, float], tuple[float, float]] = ((5.0, 30.0), (1.5, 4.0)),
                 nearest: float = 0.7) -> np.ndarray:
    """A scan as a low-resolution archive copy brought back to its own grid: the mean over blocks of
    ``block_mm`` (z, in-plane; a block at least one voxel) and, with chance ``nearest``, each block
    repeated (a thumbnail upsampled nearest-neighbour, every block of voxels alike), else linear
    between block centres. int16 in, int16 out.

    Why: real scans reach users that way (a teaching copy, a sample set: one here is 4 x 4 pixels and
    4 slices of 7.5 mm per block), and the fine model, having seen only sharp grids, loses whole
    organs on them (a real scan's spleen from 0.78 to 0.02 DSC with 20 mm blocks).
    """
    out = image.astype(np.float32)
    linear = rng.random() >= nearest
    for axis, (lo, hi) in zip(range(3), (block_mm[0], block_mm[1], block_mm[1])):
        n = out.shape[axis]
        size = max(1, int(round(rng.uniform(lo, hi) / spacing[axis])))
        if size == 1 or n < 2:
            continue
        phase = int(rng.integers(0, size))  # where the first full block starts
        starts = np.unique(np.r_[0, np.arange(phase, n, size)])
        counts = np.diff(np.r_[starts, n])
        shape = [1, 1, 1]
        shape[axis] = len(starts)
        means = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
        out = _blocks_back(means, axis, starts, counts, linear)
    return np.rint(out).astype(np.int16)


def _blocks_back(means: np.ndarray, axis: int, starts: np.ndarray, counts: np.ndarray, linear: bool) -> np.ndarray:
    """Block means along ``axis`` back to one value per voxel: repeated, or linear between block centres."""
    if not linear or len(starts) < 2:
        return np.repeat(means, counts, axis=axis)
    centres = starts + (counts - 1) / 2
    pos = np.arange(int(starts[-1] + counts[-1]))
    i = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(centres) - 2)
    w = np.clip((pos - centres[i]) / (centres[i + 1] - centres[i]), 0.0, 1.0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(pos)
    w = w.reshape(shape)
    return np.take(means, i, axis=axis) * (1 - w) + np.take(means, i + 1, axis=axis) * w


@dataclass(frozen=True)
class Scanner:
    """Ranges the scanner draw takes (uniform unless said)."""

    blur_inplane_mm: tuple[float, float] = (0.0, 0.8)  # reconstruction kernel, Gaussian sigma
    noise_hu: tuple[float, float] = (4.0, 35.0)  # sigma of the quantum noise
    noise_grain_mm: tuple[float, float] = (0.0, 0.8)  # noise correlation (sigma of its smoothing)
    bias_hu: tuple[float, float] = (0.0, 25.0)  # amplitude of a smooth additive field (beam hardening, scatter)
    metal_chance: float = 0.15
    truncation_chance: float = 0.15


def slice_profile(image: np.ndarray, spacing: tuple[float, float, float], thickness_mm: float) -> np.ndarray:
    """Partial volume along z: each slice integrates ``thickness_mm`` (a Gaussian of that FWHM),
    whatever the sampling distance; a thick-slice scan from a thin-grid rendering."""
    from scipy import ndimage

    sigma = thickness_mm / 2.355 / spacing[0]
    return ndimage.gaussian_filter1d(image, sigma, axis=0, mode="nearest") if sigma > 0.3 else image


def cubic_upsampling_matrix(n: int, cells: int) -> np.ndarray:
    """``(n, cells)``: column ``i`` is the 1-D cubic-spline zoom of the ``i``-th unit vector to ``n`` samples."""
    from scipy import ndimage

    return np.stack([ndimage.zoom(e, n / cells, order=3, mode="nearest", grid_mode=True)[:n] for e in np.eye(cells)], axis=1)


def smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1]: a few random values per axis, cubic upsampling.

    ``scipy.ndimage.zoom`` of the coarse grid, computed as its separable form (one small matrix per
    axis) because zoom's full-volume spline evaluation took about 10 s per field at scanner size.
    """
    coarse = rng.uniform(-1, 1, [min(cells, n) for n in shape])
    mz, my, mx = (cubic_upsampling_matrix(n, c) for n, c in zip(shape, coarse.shape))
    field = np.einsum("yj,zjk->zyk", my, np.einsum("zi,ijk->zjk", mz, coarse)).astype(np.float32)
    return np.clip(field @ mx.T.astype(np.float32), -1, 1)


def add_metal(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator, body: np.ndarray) -> None:
    """A metal object inside the body and the streaks it throws across its slices (in place)."""
    inside = np.argwhere(body)
    if not len(inside):
        return
    cz, cy, cx = inside[rng.integers(len(inside))]
    radius_mm = rng.uniform(2, 8)
    nz = max(1, int(round(rng.uniform(5, 30) / spacing[0])))
    z0, z1 = max(0, cz - nz // 2), min(image.shape[0], cz + nz // 2 + 1)
    y, x = np.ogrid[: image.shape[1], : image.shape[2]]
    dy, dx = (y - cy) * spacing[1], (x - cx) * spacing[2]
    r = np.sqrt(dy * dy + dx * dx) + 1e-3
    angle = np.arctan2(dy, dx)
    streaks = np.zeros(image.shape[1:], np.float32)
    for _ in range(int(rng.integers(3, 9))):
        theta = rng.uniform(0, np.pi)
        width = rng.uniform(0.01, 0.04)
        along = np.exp(-((np.sin(angle - theta) / width) ** 2))  # a line through the metal, both ways
        streaks += rng.choice([-1.0, 1.0]) * rng.uniform(150, 600) * along * np.exp(-r / rng.uniform(60, 200))
    core = r < radius_mm
    image[z0:z1] += streaks
    image[z0:z1, core] = rng.uniform(2000, 3071)


def truncate_field_of_view(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator) -> None:
    """Outside a reconstruction circle smaller than the matrix: the scanner's -1024 (in place)."""
    ny, nx = image.shape[1:]
    half = min(ny * spacing[1], nx * spacing[2]) / 2
    radius = rng.uniform(0.6, 0.95) * half
    y, x = np.ogrid[:ny, :nx]
    dy, dx = (y - ny / 2) * spacing[1], (x - nx / 2) * spacing[2]
    image[:, dy * dy + dx * dx > radius * radius] = -1024


def scanner(image: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator, body: np.ndarray | None = None,
            ranges: Scanner = Scanner()) -> np.ndarray:
    """A rendered HU volume as a random scanner would return it: blur, bias, metal, noise, circle.

    Returns int16 HU in [-1024, 3071]; ``body`` (a mask) says where metal may sit.
    """
    from scipy import ndimage

    out = image.astype(np.float32, copy=True)
    blur = rng.uniform(*ranges.blur_inplane_mm)
    if blur > 0.1:
        out = ndimage.gaussian_filter(out, (0, blur / spacing[1], blur / spacing[2]), mode="nearest")
    out += rng.uniform(*ranges.bias_hu) * smooth_field(out.shape, rng)
    if body is not None and rng.random() < ranges.metal_chance:
        add_metal(out, spacing, rng, body)
    noise = rng.standard_normal(out.shape, dtype=np.float32)
    grain = rng.uniform(*ranges.noise_grain_mm)
    if grain > 0.1:
        noise = ndimage.gaussian_filter(noise, (0, grain / spacing[1], grain / spacing[2]))
        noise /= max(float(noise.std()), 1e-6)
    out += noise * rng.uniform(*ranges.noise_hu)
    if rng.random() < ranges.truncation_chance:
        truncate_field_of_view(out, spacing, rng)
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)
