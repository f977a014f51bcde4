"""The vessels FLARE does not label, drawn around the organs of a real label map.

Why: a real abdomen shows the portal vein, the splenic vein along the back of the pancreas, the
superior mesenteric vein and artery, the renal veins and arteries and the hepatic veins, bright in
most phases, beside and inside the labelled organs. A body without them teaches a network that any
enhancing tube next to the pancreas is pancreas, and that the only vessel inside the liver is the
IVC. Each centreline follows the map's own organs (the pancreas's back surface, the kidneys' hilum,
the IVC's top); vessels are painted over unlabelled tissue, and inside the liver over the liver
(whose label they keep, as FLARE's references do), never over another organ.
"""

from __future__ import annotations

import numpy as np

from .phantoms import _Canvas, _tube

# Mean HU per contrast phase (native, arterial, venous, delayed) and the spread of a draw (1 SD).
VEIN_HU: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "portal": ((40, 115, 170, 120), 25), "hepatic": ((38, 55, 150, 115), 25), "renal": ((38, 140, 160, 120), 25),
}
LIVER, PANCREAS, AORTA, IVC, SPLEEN, KIDNEYS = 1, 4, 5, 6, 3, (2, 13)


def _points_mm(cv: _Canvas, labels: np.ndarray, label: int, most: int = 20000) -> np.ndarray:
    """Up to ``most`` voxel centres of ``label`` in mm (z, y, x), evenly thinned."""
    idx = np.argwhere(labels == label)
    idx = idx[:: max(1, len(idx) // most)]
    return np.asarray(cv.origin) + idx * np.asarray(cv.spacing)


def _near(points: np.ndarray, axis: int, value: float, within: float) -> np.ndarray:
    return points[np.abs(points[:, axis] - value) < within]


def _paint(cv: _Canvas, labels: np.ndarray, path: np.ndarray, radius: np.ndarray | float, hu: float, over: tuple[int, ...]) -> None:
    """A tube along ``path`` (mm), one capsule per segment, painted where the label is in ``over``."""
    path = np.asarray(path, float)
    rad = np.broadcast_to(np.asarray(radius, float), (len(path),))
    for i in range(len(path) - 1):
        shape = _tube(cv, path[i: i + 2], rad[i: i + 2])
        if shape is not None:
            sl, mask, _ = shape
            cv.image[sl][mask & np.isin(labels[sl], over)] = hu


def _jittered(path: list[np.ndarray], rng: np.random.Generator, mm: float = 2.0) -> np.ndarray:
    """The polyline through ``path`` with its inner points moved by up to about ``mm``."""
    out = np.array(path, float)
    out[1:-1] += rng.normal(0, mm, out[1:-1].shape)
    return out


def abdominal_vessels(cv: _Canvas, labels: np.ndarray, phase: int, artery_hu: float, rng: np.random.Generator) -> None:
    """Portal system, SMA, renal vessels and hepatic veins from the organs of ``labels`` (in place
    on ``cv.image``); ``phase`` indexes ``VEIN_HU``, ``artery_hu`` is the aorta's draw. A vessel
    whose organs are missing from the map is left out."""
    hu = {name: float(rng.normal(means[phase], spread)) for name, (means, spread) in VEIN_HU.items()}
    liver, pancreas, aorta, ivc = (_points_mm(cv, labels, lab) for lab in (LIVER, PANCREAS, AORTA, IVC))
    if len(pancreas) > 50 and len(aorta) > 20:
        confluence = _portal_system(cv, labels, pancreas, aorta, liver, hu["portal"], rng)
        if confluence is not None:  # the SMA: off the aorta above the confluence, then down on its left
            root = _near(aorta, 0, confluence[0] + 15, 8)
            if len(root):
                start = root.mean(0)
                front = np.array([confluence[0], root[:, 1].min() - 10, start[2]])
                down = [front + (-dz, -dz * 0.1, rng.uniform(10, 16)) for dz in (20, 50, 80)]
                _paint(cv, labels, _jittered([start, front, *down], rng), rng.uniform(2.5, 4.0), artery_hu, (0,))
    if len(ivc) > 20:
        for kidney in KIDNEYS:
            _renal_vessels(cv, labels, _points_mm(cv, labels, kidney), ivc, aorta, kidney == KIDNEYS[1], hu["renal"], artery_hu, rng)
        if len(liver) > 100:
            _hepatic_veins(cv, labels, liver, ivc, hu["hepatic"], rng)


def _portal_system(cv: _Canvas, labels: np.ndarray, pancreas: np.ndarray, aorta: np.ndarray, liver: np.ndarray, hu: float,
                   rng: np.random.Generator) -> np.ndarray | None:
    """Splenic vein along the pancreas's back, the confluence behind its neck, the SMV below it and
    the portal vein up into the liver with a right and a left branch; returns the confluence."""
    level = _near(aorta, 0, float(np.median(pancreas[:, 0])), 20)
    x_conf = float((level if len(level) else aorta)[:, 2].mean()) - rng.uniform(10, 25)  # right of the aorta
    radius = rng.uniform(4.0, 6.5)
    centre: list[np.ndarray] = []
    for x0 in np.linspace(x_conf, pancreas[:, 2].max(), 7):  # neck to tail, along the back surface
        part = _near(pancreas, 2, float(x0), 6)
        if len(part):
            centre.append(np.array([np.median(part[:, 0]), part[:, 1].max() + 0.7 * radius, x0]))
    if len(centre) < 2:
        return None
    spleen = _points_mm(cv, labels, SPLEEN)
    if len(spleen):  # on to the splenic hilum
        centre.append(centre[-1] + 0.6 * (spleen.mean(0) - centre[-1]))
    _paint(cv, labels, _jittered(centre, rng), radius, hu, (0,))
    confluence = centre[0]
    smv = [confluence + (-dz, -0.15 * dz, -0.05 * dz) for dz in (0, 30, 60, 90)]
    _paint(cv, labels, _jittered(smv, rng), radius * rng.uniform(0.8, 1.1), hu, (0,))
    if len(liver) > 100:
        aim = confluence + (rng.uniform(40, 60), rng.uniform(-10, 5), -rng.uniform(25, 45))
        hilum = liver[np.argmin(((liver - aim) ** 2).sum(1))]
        right, left = liver[liver[:, 2] < hilum[2] - 20], liver[liver[:, 2] > hilum[2] + 20]
        _paint(cv, labels, _jittered([confluence, (confluence + hilum) / 2, hilum], rng, 3.0), radius * 1.3, hu, (0, LIVER))
        for lobe in (right, left):
            if len(lobe) > 50:
                tip = hilum + 0.75 * (lobe[rng.integers(len(lobe))] - hilum)
                _paint(cv, labels, _jittered([hilum, (hilum + tip) / 2, tip], rng, 3.0), np.array([radius, radius * 0.7, 2.0]), hu, (LIVER,))
    return confluence


def _renal_vessels(cv: _Canvas, labels: np.ndarray, kidney: np.ndarray, ivc: np.ndarray, aorta: np.ndarray, left: bool,
                   vein_hu: float, artery_hu: float, rng: np.random.Generator) -> None:
    """The renal vein from the kidney's hilum to the IVC (the left one in front of the aorta), and
    the renal artery behind it from the aorta."""
    if len(kidney) < 50:
        return
    level = _near(kidney, 0, float(kidney[:, 0].mean()), 10)
    if not len(level):  # no kidney near its mean level (a map cut through it, two pieces)
        return
    hilum = level[np.argmin(level[:, 2])] if left else level[np.argmax(level[:, 2])]  # its medial edge
    target = _near(ivc, 0, float(hilum[0]), 15)
    if not len(target):
        return
    path = [hilum, target.mean(0)]
    at_aorta = _near(aorta, 0, float(hilum[0]), 10)
    if left and len(at_aorta):
        path.insert(1, np.array([hilum[0], at_aorta[:, 1].min() - 5, at_aorta[:, 2].mean()]))
    _paint(cv, labels, _jittered(path, rng), rng.uniform(3.5, 6.0), vein_hu, (0,))
    if len(at_aorta):
        start = at_aorta.mean(0)
        _paint(cv, labels, _jittered([start, hilum + (5, 6, 0)], rng), rng.uniform(2.0, 3.0), artery_hu, (0,))


def _hepatic_veins(cv: _Canvas, labels: np.ndarray, liver: np.ndarray, ivc: np.ndarray, hu: float, rng: np.random.Generator) -> None:
    """Right, middle and left hepatic veins from the IVC's top inside the liver out to the liver's
    upper half, tapering (painted over the liver only)."""
    top_z = min(float(ivc[:, 0].max()), float(liver[:, 0].max()) - 15)
    top = _near(ivc, 0, top_z, 10)
    if not len(top):
        return
    root = top.mean(0)
    upper = liver[liver[:, 0] > np.median(liver[:, 0])]
    for q in (0.1, 0.45, 0.8):
        x = np.quantile(upper[:, 2], q)
        candidates = _near(upper, 2, float(x), 10)
        if len(candidates):
            tip = candidates[rng.integers(len(candidates))]
            _paint(cv, labels, _jittered([root, (root + tip) / 2, tip], rng, 3.0), np.array([rng.uniform(4, 6.5), 3.5, 1.5]), hu, (LIVER,))
