"""Synthetic abdominal CT phantoms with FLARE labels, deterministic from a seed.

Anatomy is laid out in millimetres in the patient's LPS frame (x to the patient's left, y to the
back, z up; z = 0 at the kidneys' centre) and rasterised on any grid, so the same generator makes
512x512 scans of real size for speed measurements and small low-resolution volumes for training.
Organs are randomly deformed ellipsoids and tubes at plausible positions and sizes; Hounsfield
values follow a random contrast phase, with smooth texture and scanner noise.

    python -m synthetic.phantoms --out DIR --cases N --seed S [--fov abdomen|chest-abdomen-pelvis|whole-body]
                                  [--slices N] [--spacing INPLANE THICKNESS] [--size 512] [--no-lesions]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOVS = {"abdomen": (-190.0, 170.0), "chest-abdomen-pelvis": (-420.0, 330.0), "whole-body": (-1000.0, 760.0)}
THICKNESSES = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
ORIENTATIONS = ("LPS", "RAS", "RPS", "LAS", "RAI", "LPI")

# Hounsfield means per tissue and contrast phase: non-contrast, arterial, portal venous.
PHASES = ("native", "arterial", "venous")
HU = {
    "liver": (55, 70, 110), "spleen": (45, 120, 115), "kidney": (30, 170, 160), "pancreas": (40, 110, 100),
    "aorta": (40, 300, 160), "ivc": (38, 80, 140), "adrenal": (25, 60, 55), "gallbladder": (8, 10, 12),
    "esophagus": (40, 60, 70), "stomach_wall": (40, 80, 90), "duodenum_wall": (38, 75, 85), "heart": (40, 250, 140),
    "muscle": (50, 55, 60), "bladder": (8, 10, 15),
}


@dataclass
class Phantom:
    image: np.ndarray  # int16 HU, canonical [z, y, x] (LPS identity direction)
    labels: np.ndarray  # uint8 FLARE ids, same grid
    spacing: tuple[float, float, float]  # [z, y, x] mm
    origin: tuple[float, float, float]  # world (x, y, z) of voxel 0
    orientation: str  # how the files are stored (DICOMOrient code)


SPINE_Y = 0.55  # the vertebral bodies' centre lies at SPINE_Y * b behind the trunk's centre (b: its half-depth)
VERTEBRA_MM = (18.0, 21.0)  # a vertebral body's half-depth (y) and half-width (x)


class _Canvas:
    """The grid in mm, with helpers that rasterise shapes only inside their bounding box."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], origin_zyx: tuple[float, float, float], rng: np.random.Generator) -> None:
        self.shape, self.spacing, self.origin, self.rng = shape, spacing, origin_zyx, rng
        self.axes = [o + s * np.arange(n, dtype=np.float32) for o, s, n in zip(origin_zyx, spacing, shape)]
        self.image = np.full(shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index slices and broadcastable mm coordinates (z, y, x) of a box given in mm."""
        sl, coords = [], []
        for a, (low, high) in enumerate(zip(lo, hi)):
            ax = self.axes[a]
            i0, i1 = int(np.searchsorted(ax, low)), int(np.searchsorted(ax, high, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
            shape = [1, 1, 1]
            shape[a] = i1 - i0
            coords.append(ax[i0:i1].reshape(shape))
        return tuple(sl), coords

    def box(self, mask: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        """Index slices of ``mask``'s bounding box and its broadcastable mm coordinates (z, y, x):
        fields drawn over an organ or a region need only that box, not the whole volume."""
        idx = np.argwhere(mask)
        sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
        return sl, [self.axes[a][sl[a]].reshape([-1 if i == a else 1 for i in range(3)]) for a in range(3)]

    def texture(self, coords: list[np.ndarray], amplitude: float, waves: int = 4, wavelength: tuple[float, float] = (15.0, 60.0)) -> np.ndarray:
        """Smooth random field (sum of plane waves, wavelengths in mm) over a window."""
        out = np.zeros(np.broadcast_shapes(*[c.shape for c in coords]), np.float32)
        for _ in range(waves):
            k = self.rng.normal(size=3)
            k *= 2 * np.pi / self.rng.uniform(*wavelength) / np.linalg.norm(k)
            # cos(kz z + ky y + kx x + p) as a product of 1D complex exponentials: one full-size multiply.
            e = [np.exp(1j * (k[i] * coords[i])).astype(np.complex64) for i in range(3)]
            out += ((np.exp(1j * self.rng.uniform(0, 2 * np.pi)) * e[0] * e[1]) * e[2]).real
        return out * (amplitude / np.sqrt(waves / 2))

    def paint(self, sl: tuple[slice, ...], mask: np.ndarray, hu: float | np.ndarray, label: int | None) -> None:
        region = self.image[sl]
        region[mask] = hu[mask] if isinstance(hu, np.ndarray) else hu
        if label is not None:
            self.labels[sl][mask] = label


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Small random rotation (z, y, x order)."""
    a, b, c = np.deg2rad(rng.uniform(-degrees, degrees, 3))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _blob(cv: _Canvas, center_zyx, radii_zyx, wobble: float = 0.15, tilt: float = 15.0):
    """Randomly deformed ellipsoid: (slices, mask, coords) or None when off the grid."""
    c = np.asarray(center_zyx, float)
    r = np.asarray(radii_zyx, float)
    reach = r.max() * (1 + 2 * wobble)
    win = cv.window(c - reach, c + reach)
    if win is None:
        return None
    sl, (z, y, x) = win
    rot = _rotation(cv.rng, tilt)
    dz, dy, dx = z - c[0], y - c[1], x - c[2]
    q = sum((rot[i, 0] * dz + rot[i, 1] * dy + rot[i, 2] * dx) ** 2 / r[i] ** 2 for i in range(3))
    mask = q + cv.texture([z, y, x], wobble, waves=3, wavelength=(r.max() * 1.2, r.max() * 3.0)) < 1.0
    return sl, mask, [z, y, x]


def _tube(cv: _Canvas, points_zyx: np.ndarray, radius: float | np.ndarray):
    """Union of capsules along a polyline (vessels, esophagus, pancreas, duodenum)."""
    pts = np.asarray(points_zyx, float)
    rad = np.broadcast_to(np.asarray(radius, float), (len(pts),))
    win = cv.window(pts.min(0) - rad.max(), pts.max(0) + rad.max())
    if win is None:
        return None
    sl, (z, y, x) = win
    mask = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), bool)
    for (p, q, rp, rq) in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        d = q - p
        t = ((z - p[0]) * d[0] + (y - p[1]) * d[1] + (x - p[2]) * d[2]) / max(float(d @ d), 1e-6)
        t = np.clip(t, 0, 1)
        dist2 = (z - p[0] - t * d[0]) ** 2 + (y - p[1] - t * d[1]) ** 2 + (x - p[2] - t * d[2]) ** 2
        mask |= dist2 < (rp + t * (rq - rp)) ** 2
    return sl, mask, [z, y, x]


def _organ(cv: _Canvas, shape, base_hu: float, label: int | None, texture: float = 8.0):
    """Paint a shape with textured HU (and a label); return (slices, mask) or None."""
    if shape is None:
        return None
    sl, mask, coords = shape
    hu = base_hu + cv.texture(coords, texture)
    cv.paint(sl, mask, np.broadcast_to(hu, mask.shape).astype(np.float32), label)
    return sl, mask


FAT_PAD_MM = 4.0  # retroperitoneal fat between an adrenal and the liver it lies against


def _fat_pad(cv: _Canvas, shape, width_mm: float) -> None:
    """Fat around a shape, over the liver and unlabelled tissue only (kidneys and vessels stay).

    Why: the right adrenal sits in a fat-filled recess behind the liver, not inside it; painted
    straight into the liver it is invisible in phases where both enhance alike.
    """
    if shape is None:
        return
    from scipy import ndimage

    sl, mask, _ = shape
    ring = (ndimage.distance_transform_edt(~mask, sampling=cv.spacing) <= width_mm) & ~mask
    ring &= np.isin(cv.labels[sl], (0, 1))
    cv.paint(sl, ring, -95.0, 0)


@dataclass(frozen=True)
class Arms:
    """Arms down beside the trunk (mm; ``shift`` front-back as a share of the body's half-depth)."""

    half_width: float
    half_depth: float
    gap: float
    shift: float
    z_range: tuple[float, float]
    fat: float

    @staticmethod
    def draw(rng: np.random.Generator) -> Arms:
        return Arms(rng.uniform(30, 48), rng.uniform(35, 50), rng.uniform(3, 40), rng.uniform(-0.25, 0.25),
                    (rng.uniform(-280, -120), rng.uniform(230, 330)), rng.uniform(4, 15))

    @property
    def reach(self) -> float:
        """How far the arms reach beyond the trunk's side."""
        return self.gap + 2 * self.half_width


@dataclass(frozen=True)
class Back:
    """The muscles around the spine (mm, body frame): erector spinae behind it, psoas beside the
    lumbar vertebrae, quadratus lumborum behind the kidneys, a spinous process, and the room the
    back needs (``depth``: how much deeper the trunk is behind its centre).

    Why: without them the only soft tissue near the spine is the organs, and a network trained so
    calls real back muscle spleen or kidney.
    """

    depth: float
    hu: float
    erector: tuple[float, float]  # centre x (each side), half-width; it fills from the arch to the wall
    psoas: tuple[float, float]  # top z, largest radius
    quadratus: tuple[float, float]  # centre x (each side), radius
    spinous: float  # length behind the arch

    @staticmethod
    def draw(rng: np.random.Generator) -> Back:
        return Back(rng.uniform(15, 40), rng.uniform(30, 75), (rng.uniform(22, 32), rng.uniform(17, 27)),
                    (rng.uniform(-10, 40), rng.uniform(14, 26)), (rng.uniform(48, 66), rng.uniform(9, 15)), rng.uniform(20, 32))


def _body(cv: _Canvas, a: float, b: float, fat: float, phase: int, arms: Arms | None = None, back: Back | None = None) -> None:
    """Body outline, fat, muscle wall, spine, ribs, lungs, heart, pelvis, bowel and table, and the
    arms and back muscles where given.

    Cross-sections are 2D masks cached per (rounded) radius and assigned slice by slice, which
    keeps a 512x512x300 phantom to a few seconds.
    """
    rng = cv.rng
    z, y, x = cv.axes
    Y, X = y[:, None], x[None, :]
    sy = b * SPINE_Y  # spine centre (y)
    cache: dict[tuple, np.ndarray] = {}
    depth = back.depth if back is not None else 0.0

    def ellipse(ra: float, rb: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
        key = (round(ra), round(rb), round(cx), round(cy))
        if key not in cache:
            cache[key] = ((X - cx) / max(key[0], 1)) ** 2 + ((Y - cy) / max(key[1], 1)) ** 2 < 1
        return cache[key]

    def trunk(ra: float, rb: float) -> np.ndarray:
        """The trunk's cross-section: an ellipse, ``depth`` mm deeper behind its centre."""
        if not depth:
            return ellipse(ra, rb)
        key = ("trunk", round(ra), round(rb))
        if key not in cache:
            cache[key] = np.where(Y < 0, ellipse(ra, rb), ellipse(ra, rb + depth))
        return cache[key]

    fat_hu, cavity_hu, muscle_hu = -100 + rng.normal(0, 4), -95 + rng.normal(0, 5), HU["muscle"][phase]
    if back is not None:
        muscle_hu = back.hu
    vert = ellipse(VERTEBRA_MM[1], VERTEBRA_MM[0], 0, sy)
    canal = ellipse(9, 9, 0, sy + 27)
    arch = ellipse(14, 14, 0, sy + 27) & ~canal
    table = (Y > b + depth + 25) & (Y < b + depth + 45) & (np.abs(X) < a * 1.1)
    if back is not None:
        spinous = (np.abs(X) < 3.5) & (Y > sy + 36) & (Y < sy + 36 + back.spinous)
    dome = 75 + 20 * np.exp(-(((X + a * 0.4) / (a * 0.45)) ** 2)) + 10 * np.exp(-(((X - a * 0.4) / (a * 0.45)) ** 2)) - 25 * (Y / b) ** 2
    mediastinum = (np.abs(X - 10) < 35) & (Y < sy - 10)
    for k, zk in enumerate(z):
        sl = cv.image[k]
        if zk < -520:  # legs with femurs
            for side in (-1, 1):
                sl[ellipse(a * 0.4, b * 0.8, side * a * 0.45)] = fat_hu
                sl[ellipse(a * 0.3, b * 0.62, side * a * 0.45)] = muscle_hu
                sl[ellipse(14, 14, side * a * 0.45)] = 700
        elif zk > 560:  # head
            r = np.sqrt(max(0.0, 1 - ((zk - 660) / 110) ** 2))
            if r > 0:
                sl[ellipse(80 * r, 95 * r, 0, -10)] = 600
                sl[ellipse(80 * r - 7, 95 * r - 7, 0, -10)] = 35
        else:
            az = a * (1 + 0.05 * np.sin(zk / 90.0)) * (0.35 if zk > 330 else 1.0)
            bz = b * (0.55 if zk > 330 else 1.0)
            sl[trunk(az, bz) if zk <= 330 else ellipse(az, bz)] = fat_hu
            if zk <= 330:
                sl[trunk(az - fat, bz - fat)] = muscle_hu
                sl[trunk(az - fat - 12, bz - fat - 12)] = cavity_hu
                if -40 < zk and (zk + 5) % 28.0 < 9:  # ribs
                    rib = trunk(az - fat - 2, bz - fat - 2) & ~trunk(az - fat - 10, bz - fat - 10) & (Y > -bz * 0.6)
                    sl[rib] = 650
                if zk > dome.min():  # lungs above the diaphragm
                    lung = (zk > dome) & trunk(az - fat - 16, bz - fat - 16) & ~mediastinum
                    sl[lung] = -850
                if back is not None:
                    _back_muscles(sl, back, zk, sy, bz + depth - fat, ellipse, trunk(az - fat, bz - fat), muscle_hu)
            if arms is not None and arms.z_range[0] < zk < arms.z_range[1]:
                ra, rb, dy = arms.half_width, arms.half_depth, arms.shift * b
                for side in (-1, 1):
                    cx = side * (az + arms.gap + ra)
                    sl[ellipse(ra, rb, cx, dy)] = fat_hu
                    sl[ellipse(ra - arms.fat, rb - arms.fat, cx, dy)] = muscle_hu
                    sl[ellipse(11, 11, cx, dy)] = 650  # humerus
                    sl[ellipse(6, 6, cx, dy)] = 120  # marrow
            sl[vert] = 85 if zk % 32.0 < 7 else 260
            sl[canal] = 15
            sl[arch] = 500
            if back is not None and zk <= 330 and zk % 32.0 < 22:
                sl[spinous] = 500
        sl[table] = 150
    heart = _blob(cv, (float(dome.max()) + 55, -b * 0.25, 15), (55, 55, 65), wobble=0.08)
    _organ(cv, heart, HU["heart"][phase], None)
    for side in (-1, 1):  # pelvis: iliac wings and bladder
        wing = _blob(cv, (-200, sy - 10, side * a * 0.55), (45, 18, 35), wobble=0.1)
        if wing is not None:
            cv.paint(wing[0], wing[1], 420.0, None)
    _organ(cv, _blob(cv, (-290, -b * 0.35, 0), (35, 35, 45)), HU["bladder"][phase], None)
    for _ in range(rng.integers(10, 18)):  # bowel loops in the lower abdomen: fluid and gas, unlabelled
        c = (rng.uniform(-170, -40), rng.uniform(-b * 0.6, b * 0.1), rng.uniform(-a * 0.55, a * 0.55))
        loop = _blob(cv, c, rng.uniform(12, 24, 3), wobble=0.2)
        if loop is not None:
            sl_, m, coords = loop
            gas = cv.texture(coords, 1.0, waves=2) > 0.6
            cv.paint(sl_, m, np.broadcast_to(np.where(gas, -950.0, 25.0 + rng.normal(0, 8)), m.shape).astype(np.float32), None)


def _back_muscles(sl: np.ndarray, back: Back, zk: float, sy: float, wall: float, ellipse: Callable[..., np.ndarray],
                  inside: np.ndarray, hu: float) -> None:
    """One slice of the back's muscles (in place), within the trunk's muscle wall ``inside`` whose
    back edge lies at y = ``wall``."""
    ex, erx = back.erector
    top, largest = back.psoas
    front = sy + 12  # erector spinae: from beside the vertebral arch back into the wall, the whole trunk
    for side in (-1, 1):
        sl[ellipse(erx, (wall - front) / 2 + 6, side * ex, (wall + front) / 2) & inside] = hu
        if -240 < zk < top:  # psoas: from the first lumbar vertebra down, growing and moving out
            radius = largest * min(1.0, (top - zk) / 110) ** 0.6
            if radius > 4:
                sl[ellipse(radius, radius * 0.9, side * (24 + 0.12 * (top - zk)), sy - 4)] = hu
        if -130 < zk < top - 15:  # quadratus lumborum behind the kidney
            qx, qr = back.quadratus
            sl[ellipse(qr, qr * 0.7, side * qx, sy + 14) & inside] = hu


def abdominal_bowel(cv: _Canvas, a: float, b: float, rng: np.random.Generator) -> None:
    """Colon (ascending, transverse, descending) and small-bowel loops through the abdomen, in the
    fat only and unlabelled (in place); shapes and contents drawn from ``rng`` alone.

    Why: the body has bowel only below the kidneys, so next to the stomach, liver and pancreas a
    network saw fat alone and called any loop there stomach or duodenum.
    """
    with lent_stream(cv, rng):
        top = rng.uniform(0, 50)  # the flexures, above the kidneys' centre
        frame = np.array([[-160, -0.05 * b, -0.72 * a], [top, -0.3 * b, -0.68 * a], [top - 15, -0.75 * b, -0.1 * a],
                          [top + 20, -0.35 * b, 0.66 * a], [-160, -0.05 * b, 0.72 * a]])
        t = np.linspace(0, len(frame) - 1, 24)
        path = np.stack([np.interp(t, np.arange(len(frame)), frame[:, d]) for d in range(3)], 1) + rng.normal(0, 6, (len(t), 3))
        _bowel_contents(cv, _tube(cv, path, rng.uniform(15, 26)), rng, stool=True)
        for _ in range(int(rng.integers(6, 16))):
            centre = (rng.uniform(-140, 40), rng.uniform(-0.75 * b, 0.15 * b), rng.uniform(-0.6 * a, 0.6 * a))
            _bowel_contents(cv, _blob(cv, centre, rng.uniform(10, 20, 3), wobble=0.2), rng, stool=False)


@contextmanager
def lent_stream(cv: _Canvas, rng: np.random.Generator) -> Iterator[None]:
    """The canvas draws its shapes and textures (``_blob``, ``texture``) from ``rng`` inside the
    block, so that an optional part drawn from a stream of its own leaves the canvas's stream as it was."""
    main, cv.rng = cv.rng, rng
    try:
        yield
    finally:
        cv.rng = main


def stool_contents(cv: _Canvas, coords: list[np.ndarray], rng: np.random.Generator, gas_above: tuple[float, float] = (0.0, 0.8)) -> np.ndarray:
    """Colon contents over a window: stool (-20..60 HU, mottled) with gas where the mottle passes a
    threshold drawn from ``gas_above`` (a lower threshold, more gas). Draws the texture from the
    canvas's stream, then the threshold and the stool's HU from ``rng``."""
    mottle = cv.texture(coords, 1.0, waves=10, wavelength=(5.0, 20.0))
    return np.where(mottle > rng.uniform(*gas_above), -900.0, rng.uniform(-20, 60) + 25 * mottle)


def _bowel_contents(cv: _Canvas, shape, rng: np.random.Generator, stool: bool) -> None:
    """Paint a bowel segment over fat: gas pockets in stool (colon), or fluid, sometimes oral
    contrast, with a gas bubble (small bowel)."""
    if shape is None:
        return
    sl, mask, coords = shape
    mask = mask & (cv.image[sl] > -200) & (cv.image[sl] < -50)
    if stool:
        hu = stool_contents(cv, coords, rng)
    else:
        fluid = rng.uniform(150, 400) if rng.random() < 0.25 else rng.uniform(0, 40)
        hu = np.where(cv.texture(coords, 1.0, waves=2) > 0.8, -950.0, fluid)
    cv.paint(sl, mask, np.broadcast_to(hu, mask.shape).astype(np.float32), None)


def _abdominal_organs(cv: _Canvas, a: float, b: float, phase: int, lesions: bool) -> None:
    """The 13 FLARE organs (and optional lesions), painted so neighbours overlap plausibly."""
    rng = cv.rng

    def j(v, s):  # jitter a position or size
        return np.asarray(v, float) + rng.normal(0, s, np.shape(v))

    def scale(v, s=0.12):
        return np.asarray(v, float) * rng.uniform(1 - s, 1 + s, np.shape(v))

    hu = {k: v[phase] + rng.normal(0, 10) for k, v in HU.items()}
    sy = b * SPINE_Y  # spine centre (y)
    organs: dict[str, tuple | None] = {}
    organs["liver"] = _organ(cv, _blob(cv, j((55, -b * 0.05, -a * 0.42), 8), scale((75, b * 0.62, a * 0.5)), wobble=0.12), hu["liver"], 1)
    _organ(cv, _blob(cv, j((0, -b * 0.35, -a * 0.25), 6), scale((38, 16, 16), 0.2), wobble=0.15), hu["gallbladder"], 9, texture=3)
    organs["spleen"] = _organ(cv, _blob(cv, j((50, sy * 0.55, a * 0.62), 7), scale((50, 42, 26)), wobble=0.15), hu["spleen"], 3)
    for side, lab, dz in ((-1, 2, -12), (1, 13, 0)):
        k = _organ(cv, _blob(cv, j((dz, sy * 0.75, side * a * 0.4), 5), scale((52, 26, 25)), wobble=0.08, tilt=20), hu["kidney"], lab, texture=12)
        organs["rk" if side < 0 else "lk"] = k
        adrenal = _blob(cv, j((dz + 60, sy * 0.55, side * a * 0.3), 4), scale((18, 14, 6), 0.15), wobble=0.1, tilt=25)
        _fat_pad(cv, adrenal, FAT_PAD_MM)
        _organ(cv, adrenal, hu["adrenal"], 7 if side < 0 else 8, texture=3)
    # Stomach: wall plus fluid and a gas cap, all labelled stomach.
    stomach = _blob(cv, j((45, -b * 0.3, a * 0.3), 8), scale((55, 38, 42)), wobble=0.15)
    if stomach is not None:
        sl, m, coords = stomach
        content = np.where(coords[0] > coords[0].mean() + 25, -950.0, 15.0)
        hu_s = np.where(cv.texture(coords, 1.0, 2) > -0.2, content, hu["stomach_wall"]).astype(np.float32) * np.ones(m.shape, np.float32)
        cv.paint(sl, m, hu_s, 11)
    # Duodenal C-loop around the pancreatic head, pancreas across to the spleen.
    t = np.linspace(-0.3, 1.25, 10) * np.pi
    hx, hy, hz = -a * 0.12 + rng.normal(0, 5), -b * 0.05 + rng.normal(0, 5), -10 + rng.normal(0, 5)
    loop = np.stack([hz + 35 * np.cos(t), hy + 12 * np.sin(t), hx - 30 * np.sin(t) * 0.9 - 10], axis=1)
    _organ(cv, _tube(cv, loop, rng.uniform(9, 12)), hu["duodenum_wall"], 12, texture=10)
    pts = np.array([[hz, hy, hx], [hz + 8, hy + 8, 0], [hz + 18, hy + 20, a * 0.2], [hz + 30, sy * 0.45, a * 0.42]]) + rng.normal(0, 3, (4, 3))
    organs["pancreas"] = _organ(cv, _tube(cv, pts, np.array([15, 11, 10, 9]) * rng.uniform(0.9, 1.15)), hu["pancreas"], 4, texture=10)
    # Vessels and esophagus: tubes along z.
    zs = np.linspace(-130, 330, 12)
    aorta = np.stack([zs, sy - 28 + 4 * np.sin(zs / 150), 12 + 5 * np.sin(zs / 120 + 1)], 1)
    _organ(cv, _tube(cv, aorta + rng.normal(0, 1.5, aorta.shape), rng.uniform(10, 13)), hu["aorta"], 5, texture=3)
    zi = np.linspace(-130, 110, 9)
    ivc = np.stack([zi, sy - 30 + 3 * np.sin(zi / 90), -a * 0.17 + 4 * np.cos(zi / 100)], 1)
    _organ(cv, _tube(cv, ivc + rng.normal(0, 1.5, ivc.shape), rng.uniform(10, 13)), hu["ivc"], 6, texture=3)
    ze = np.linspace(55, 330, 8)
    eso = np.stack([ze, sy - 35 + 0 * ze, 8 + 12 * np.clip((120 - ze) / 65, 0, 1)], 1)
    _organ(cv, _tube(cv, eso + rng.normal(0, 1.0, eso.shape), rng.uniform(7, 9)), hu["esophagus"], 10, texture=3)
    if lesions:
        for _ in range(rng.integers(0, 4)):
            host = organs[str(rng.choice(["liver", "liver", "rk", "lk", "pancreas"]))]
            if host is None or not host[1].any():
                continue
            hsl, hmask = host
            idx = np.argwhere(hmask)[rng.integers(int(hmask.sum()))] + [s.start for s in hsl]
            centre = np.array([cv.axes[d][i] for d, i in enumerate(idx)])
            les = _blob(cv, centre, rng.uniform(5, 18, 3), wobble=0.1)
            if les is not None:
                sl, m, _ = les
                inside = np.zeros(cv.shape, bool)[sl]
                full = np.zeros(cv.shape, bool)
                full[hsl] = hmask
                inside = m & full[sl] & (cv.labels[sl] != 0)
                cv.paint(sl, inside, float(cv.image[tuple(idx)]) - rng.uniform(30, 70), 14)


def generate(seed: int | list[int], fov: str = "abdomen", slices: int | None = None, spacing: tuple[float, float] | None = None,
             size: int = 512, lesions: bool = True, noise: float | None = None, centre_z: float | None = None) -> Phantom:
    """One phantom. ``spacing`` is (in-plane, slice thickness) mm; ``size`` the in-plane voxels."""
    rng = np.random.default_rng(seed)
    if fov not in FOVS:
        raise ValueError(f"fov must be one of {list(FOVS)}, got {fov!r}")
    inplane, thick = spacing if spacing else (float(rng.uniform(0.6, 1.0)), float(rng.choice(THICKNESSES)))
    lo, hi = FOVS[fov]
    extent = hi - lo
    if slices is None:
        slices = int(np.clip(round(extent / thick), 55, 1000))
    mid = (lo + hi) / 2 + (rng.normal(0, 15) if centre_z is None else centre_z - (lo + hi) / 2)
    shape = (int(slices), int(size), int(size))
    sp = (float(thick), float(inplane), float(inplane))
    origin = (mid - (slices - 1) * thick / 2, -(size - 1) * inplane / 2 + 10, -(size - 1) * inplane / 2)
    cv = _Canvas(shape, sp, origin, rng)
    half_fov = size * inplane / 2
    a = min(rng.uniform(140, 175), half_fov * 0.92)
    b = min(a * rng.uniform(0.68, 0.8), half_fov * 0.7)
    phase = int(rng.integers(0, 3))
    _body(cv, a, b, fat=rng.uniform(10, 30), phase=phase)
    _abdominal_organs(cv, a, b, phase, lesions)
    sigma = float(rng.uniform(8, 22)) if noise is None else noise
    cv.image += rng.standard_normal(shape, dtype=np.float32) * sigma
    image = np.clip(np.rint(cv.image), -1024, 3071).astype(np.int16)
    return Phantom(image, cv.labels, sp, (origin[2], origin[1], origin[0]), str(rng.choice(ORIENTATIONS)))


def write(ph: Phantom, image_path: Path, label_path: Path | None) -> None:
    """Write image (and labels) as NIfTI in the phantom's stored orientation."""
    import SimpleITK as sitk

    for arr, path in ((ph.image, image_path), (ph.labels, label_path)):
        if path is None:
            continue
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(reversed(ph.spacing)))
        img.SetOrigin(ph.origin)
        img = sitk.DICOMOrient(img, ph.orientation)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(path), useCompression=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fov", choices=list(FOVS), default="abdomen")
    ap.add_argument("--slices", type=int, default=None)
    ap.add_argument("--spacing", type=float, nargs=2, default=None, metavar=("INPLANE", "THICKNESS"))
    ap.add_argument("--size", type=int, default=512, help="in-plane voxels (default 512)")
    ap.add_argument("--no-lesions", action="store_true")
    args = ap.parse_args(argv)
    for i in range(args.cases):
        name = f"phantom_s{args.seed}_{i:03d}"
        ph = generate([args.seed, i], args.fov, args.slices, tuple(args.spacing) if args.spacing else None, args.size, not args.no_lesions)
        write(ph, args.out / "images" / f"{name}_0000.nii.gz", args.out / "labels" / f"{name}.nii.gz")
        print(f"{name}: {ph.image.shape[::-1]} voxels, spacing {ph.spacing[::-1]} mm, {ph.orientation}, labels {[int(v) for v in np.unique(ph.labels) if v]}")


if __name__ == "__main__":
    main()
