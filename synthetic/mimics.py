"""Unlabelled structures that look like labelled organs, drawn around a real label map's organs.

Why: on real scans the networks trained without them named the diaphragm's crura (muscle bands
beside the aorta, between it and the IVC and adrenals) IVC or adrenal, collapsed small-bowel
loops beside the pancreas (enhancing walls, soft-tissue dense, lobulated) pancreas or duodenum, and
the gas-distended transverse colon and splenic flexure against the stomach stomach. A body whose
only soft tissue near the aorta is an organ, whose bowel is all fluid or gas pockets in stool, and
whose only large gas volume is the stomach's, lets density alone name those organs; these mimics are
meant to make shape and position do it (what training with them measured: the model card).

``soft_tissue_clutter`` is broader: not one look-alike but the soft tissue that packs a real abdomen
between its organs (bowel, mesentery, muscle, vessels), where the generator's body has fat.

All paint ``cv.image`` in place over unlabelled tissue only (labels stay as they are), with their
shapes and values drawn from the generator they are given.
"""

from __future__ import annotations

import numpy as np

from .phantoms import FAT_PAD_MM, VERTEBRA_MM, _blob, _Canvas, _tube, lent_stream, stool_contents
from .vessels import AORTA, IVC, LIVER, PANCREAS, _jittered, _points_mm

RIGHT_KIDNEY, RIGHT_ADRENAL, LEFT_ADRENAL, LEFT_KIDNEY, STOMACH = 2, 7, 8, 13, 11
IN_THEIR_OWN_FAT = (RIGHT_KIDNEY, RIGHT_ADRENAL, LEFT_ADRENAL, LEFT_KIDNEY)  # perirenal fat: real scans keep it
ADRENAL_FAT_MM = (10.0, 20.0)  # the clean fat an adrenal may keep around it (``soft_tissue_clutter``'s adrenal_pad_mm)


def crura(cv: _Canvas, labels: np.ndarray, muscle_hu: float, rng: np.random.Generator, spine_y: float | None = None) -> None:
    """The diaphragm's right and left crus: muscle bands hugging the aorta's sides from the renal
    hilum (right; the left ends higher) up past the adrenals, arching in front of the aorta above
    the aortic hiatus. Left out where the map has no aorta or no adrenal.

    ``spine_y``: where the vertebral bodies' centre lies (mm along y, at x = 0 of the canvas; their
    size ``VERTEBRA_MM``). Given, each crus also runs back along the vertebral bodies' front and side,
    as the crura do down to where they attach to the lumbar vertebrae: on a real slab at
    the adrenals' level a network trained without that limb labelled the right crus right adrenal."""
    adrenals = np.concatenate([_points_mm(cv, labels, lab) for lab in (RIGHT_ADRENAL, LEFT_ADRENAL)])
    if np.count_nonzero(labels == AORTA) < 20 or len(adrenals) < 10:
        return
    kidneys = np.concatenate([_points_mm(cv, labels, lab) for lab in (RIGHT_KIDNEY, LEFT_KIDNEY)])
    top = float(adrenals[:, 0].max()) + rng.uniform(5, 25)
    low = float(kidneys[:, 0].mean()) if len(kidneys) else float(adrenals[:, 0].min()) - 30
    bottom = {-1: low - rng.uniform(0, 25), 1: low + rng.uniform(0, 20)}  # side -1: the patient's right (-x)
    hiatus = top - rng.uniform(15, 35)  # above it the two crura meet in front of the aorta
    thick = {side: rng.uniform(4, 9) * (1.2 if side < 0 else 1.0) for side in (-1, 1)}
    gap = rng.uniform(0.5, 3.0)
    limb = {side: (rng.uniform(0, 30), rng.uniform(70, 120), rng.uniform(0.5, 2.5)) for side in (-1, 1)} if spine_y is not None else {}
    vertebra = _vertebra_frame(cv, spine_y, max(thick.values()) + 5) if limb else None
    z_mm = cv.axes[0]
    for k in np.flatnonzero((z_mm >= min(bottom.values())) & (z_mm <= top)):
        ring = _points_mm(cv, labels[k: k + 1], AORTA)[:, 1:]  # (y, x) mm of the aorta in slice k
        if len(ring) < 3:
            continue
        cy, cx = ring.mean(0)
        radius = float(np.sqrt(len(ring) * cv.spacing[1] * cv.spacing[2] / np.pi))
        reach = radius + gap + max(thick.values()) + 2
        win = cv.window(np.array([z_mm[k], cy - reach, cx - reach]), np.array([z_mm[k], cy + reach, cx + reach]))
        if win is None:
            continue
        sl, (_, y, x) = win
        dy, dx = y[0] - cy, x[0] - cx
        dist = np.sqrt(dy**2 + dx**2)
        angle = np.degrees(np.arctan2(dx, -dy))  # 0: in front of the aorta, +90: the patient's left
        width = {side: thick[side] * float(np.clip((z_mm[k] - bottom[side]) / 30.0, 0.3, 1.0))
                 for side in (-1, 1) if z_mm[k] >= bottom[side]}  # each crus tapers towards its lower end
        band = np.zeros(dist.shape, bool)
        for side, w in width.items():
            in_band = (dist > radius + gap) & (dist < radius + gap + w)
            nearest = 0.0 if z_mm[k] > hiatus else 20.0  # degrees from the front: 0 where they meet
            band |= in_band & (side * angle >= nearest) & (side * angle <= 160.0)
        value = muscle_hu + rng.normal(0, 4)
        _paint_over_soft_tissue(cv.image[k][sl[1], sl[2]], labels[k][sl[1], sl[2]], band, value)
        if vertebra is not None:  # the same crus, where it lies on the vertebral body
            (ys, xs), off, around = vertebra
            band = np.zeros(off.shape, bool)
            for side, w in width.items():
                first, last, off_bone = limb[side]
                band |= (off > off_bone) & (off < off_bone + w) & (side * around >= first) & (side * around <= last)
            _paint_over_soft_tissue(cv.image[k][ys, xs], labels[k][ys, xs], band, value)


def _vertebra_frame(cv: _Canvas, spine_y: float, reach: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """The in-plane window around the vertebral bodies (``reach`` mm beyond their outline, to the
    front and sides), each pixel's distance outside the outline (mm, near enough for a band a few mm
    thick) and its angle about their centre (degrees; 0: the front midline, +90: the patient's
    left). The same in every slice: the generator's spine is straight."""
    half_y, half_x = VERTEBRA_MM
    z = cv.axes[0][0]
    win = cv.window(np.array([z, spine_y - half_y - reach, -half_x - reach]), np.array([z, spine_y + half_y, half_x + reach]))
    if win is None:
        return None
    sl, (_, y, x) = win
    dy, dx = y[0] - spine_y, x[0]
    off = (np.sqrt((dy / half_y) ** 2 + (dx / half_x) ** 2) - 1) * (half_y + half_x) / 2
    return (sl[1], sl[2]), off, np.degrees(np.arctan2(dx, -dy))


def _paint_over_soft_tissue(region: np.ndarray, labels: np.ndarray, band: np.ndarray, value: float) -> None:
    """Paint ``band`` of one slice's ``region`` with ``value`` over unlabelled fat and soft tissue,
    not over an organ, bone or lung."""
    region[band & (labels == 0) & (region > -500) & (region < 200)] = value


def jejunal_loops(cv: _Canvas, labels: np.ndarray, wall_hu: float, vessel_hu: float, rng: np.random.Generator) -> None:
    """Small-bowel loops in the fat beside and below the pancreas: an enhancing wall of 1.5-3 mm
    around collapsed (wall-dense, feathery folds), fluid or oral-contrast contents, and the
    mesentery's small vessels fanning out from the pancreas's lower edge. ``wall_hu`` is drawn as
    dense as the pancreas and duodenum are, on purpose. Left out where the map has no pancreas."""
    from scipy import ndimage

    pancreas = _points_mm(cv, labels, PANCREAS)
    if len(pancreas) < 50:
        return
    z_lo, z_hi = float(pancreas[:, 0].min()) - rng.uniform(40, 90), float(pancreas[:, 0].max())
    aorta = _points_mm(cv, labels, AORTA)
    front = float(aorta[:, 1].mean()) if len(aorta) else float(pancreas[:, 1].max())  # loops lie in front of the spine
    fat = (cv.image > -200) & (cv.image < -50) & (labels == 0)
    lo, hi = pancreas.min(0) - (0, 50, 30), pancreas.max(0) + (0, 0, 30)  # beside and in front of it, not in the wall's fat
    lo[0], hi[0], hi[1] = z_lo, z_hi, front
    (zs, ys, xs) = (np.flatnonzero((ax >= lo[a]) & (ax <= hi[a])) for a, ax in enumerate(cv.axes))
    if not (len(zs) and len(ys) and len(xs)):
        return
    seeds = np.argwhere(fat[zs[0]: zs[-1] + 1, ys[0]: ys[-1] + 1: 3, xs[0]: xs[-1] + 1: 3])
    if not len(seeds):
        return
    with lent_stream(cv, rng):
        for _ in range(int(rng.integers(8, 20))):
            z, y, x = seeds[rng.integers(len(seeds))] * (1, 3, 3) + (zs[0], ys[0], xs[0])
            centre = np.asarray(cv.origin) + np.array([z, y, x]) * np.asarray(cv.spacing)
            shape = _blob(cv, centre, rng.uniform(8, 18, 3), wobble=0.25, tilt=40.0)
            if shape is None:
                continue
            sl, mask, coords = shape
            mask = mask & fat[sl]
            if not mask.any():
                continue
            depth = ndimage.distance_transform_edt(mask, sampling=cv.spacing)
            wall = depth < rng.uniform(1.5, 3.0)
            kind = rng.random()
            if kind < 0.5:  # collapsed: wall-dense, with the folds' fine texture
                inside = wall_hu + rng.normal(0, 10) + cv.texture(coords, 20.0, waves=6, wavelength=(4.0, 12.0))
            elif kind < 0.8:
                inside = np.full(mask.shape, rng.uniform(0, 30), np.float32)
            else:
                inside = np.full(mask.shape, rng.uniform(150, 350), np.float32)
            hu = np.where(wall, wall_hu + rng.normal(0, 8), inside).astype(np.float32)
            cv.paint(sl, mask, np.broadcast_to(hu, mask.shape).astype(np.float32), None)
        lower = pancreas[pancreas[:, 0] < np.quantile(pancreas[:, 0], 0.3)]
        root = lower.mean(0) + (rng.uniform(-10, -3), rng.uniform(-5, 5), 0.0)
        for _ in range(int(rng.integers(6, 16))):
            reach = np.array([-rng.uniform(30, 90), rng.uniform(-40, 10), rng.uniform(-60, 60)])
            path = _jittered([root, root + reach / 2, root + reach], rng, 4.0)
            shape = _tube(cv, path, rng.uniform(1.0, 2.5))
            if shape is not None:
                sl, mask, _ = shape
                region = cv.image[sl]
                region[mask & (labels[sl] == 0) & (region > -200) & (region < -30)] = vessel_hu + rng.normal(0, 15)


def _greater_curvature(stomach: np.ndarray, z: float, angle: float, clearance: float) -> np.ndarray | None:
    """The point ``clearance`` mm out from the stomach's surface at height ``z`` (mm), in the
    in-plane direction ``angle`` (degrees; 0: the patient's left, +x; 90: in front, -y)."""
    level = stomach[np.abs(stomach[:, 0] - z) < 4.0]
    if len(level) < 5:
        return None
    direction = np.array([-np.sin(np.radians(angle)), np.cos(np.radians(angle))])  # (y, x)
    reach = level[:, 1:] @ direction
    edge = level[reach >= np.quantile(reach, 0.98)].mean(0)
    return np.array([z, *(edge[1:] + clearance * direction)])


def gastric_colon(cv: _Canvas, labels: np.ndarray, wall_hu: float, rng: np.random.Generator) -> None:
    """The transverse colon along the stomach's greater curvature up to the splenic flexure beside
    it: a tube of 10-25 mm radius through the fat, its 1.5-3 mm wall around gas (a dependent layer
    of stool or fluid in some) or stool with gas pockets. It touches the stomach where the fat
    between them is thin, as the real colon does. Left out where the map has no stomach.

    Gas is what the stomach's look-alike needs: a fluid-filled colon and a descending limb down the
    left flank (this function at commit 1c2d7eb) put soft-tissue-dense tubes beside the spleen, and
    a model trained with them left more of a real spleen unlabelled (model card)."""
    from scipy import ndimage

    stomach = _points_mm(cv, labels, STOMACH)
    if len(stomach) < 200:
        return
    z_lo, z_hi = np.quantile(stomach[:, 0], [0.02, 0.98])
    radius = rng.uniform(10, 25)
    path = []
    for fraction, angle in ((0.1, rng.uniform(60, 100)), (0.35, rng.uniform(30, 70)), (0.65, rng.uniform(0, 40))):
        point = _greater_curvature(stomach, z_lo + fraction * (z_hi - z_lo), angle, radius + rng.uniform(-3, 4))
        if point is not None:
            path.append(point)
    if len(path) < 2:
        return
    right = path[0] + (rng.uniform(-20, 5), rng.uniform(-5, 15), -rng.uniform(50, 120))  # across to the patient's right
    path = _jittered([right, *path], rng, 4.0)
    shape = _tube(cv, path, radius * rng.uniform(0.8, 1.2, len(path)))
    if shape is None:
        return
    sl, mask, coords = shape
    region = cv.image[sl]
    mask = mask & (labels[sl] == 0) & (region > -200) & (region < -50)  # the fat, not muscle, bone or lung
    if mask.sum() < 50:
        return
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=cv.spacing)[1:-1, 1:-1, 1:-1]
    wall = depth < rng.uniform(1.5, 3.0)
    with lent_stream(cv, rng):
        if rng.random() < 0.8:  # gas-distended; in some a layer of stool or fluid lies at the back
            inside = rng.uniform(-1000, -880) + cv.texture(coords, 15.0, waves=3)
            if rng.random() < 0.4:
                y = np.broadcast_to(coords[1], mask.shape)
                level = np.quantile(y[mask], rng.uniform(0.6, 0.95))
                inside = np.where(y > level, rng.uniform(-20, 40), inside)
        else:  # stool with more gas pockets than the body's colon
            inside = stool_contents(cv, coords, rng, gas_above=(-0.4, 0.4))
    hu = np.where(wall, wall_hu + rng.normal(0, 8), np.broadcast_to(inside, mask.shape)).astype(np.float32)
    region[mask] = hu[mask]


def behind_the_liver(labels: np.ndarray) -> np.ndarray:
    """The voxels behind the liver (posterior to a liver voxel of the same axial column, ``labels``
    in LPS ``[z, y, x]``) on the patient's right of the aorta (of the IVC where the map has no aorta;
    of the liver's middle where it has neither); none where the map has no liver (pure).

    Why: that is the fat of the right upper quadrant's back, around the right kidney and adrenal
    (the right adrenal lies there in all 50 FLARE22 maps: 95-100 % of its voxels in 39 of them,
    32 % at least), which bowel and mesentery, lying in front of it, seldom enter."""
    liver = labels == LIVER
    if not liver.any():
        return np.zeros(labels.shape, bool)
    columns = (np.nonzero(labels == organ)[2] for organ in (AORTA, IVC))
    midline = next((x for x in columns if x.size), None)
    if midline is None:
        midline = np.nonzero(liver)[2]
    right = np.arange(labels.shape[2]) < np.median(midline)  # x grows to the patient's left
    return np.maximum.accumulate(liver, axis=1) & ~liver & right[None, None, :]


def soft_tissue_clutter(cv: _Canvas, labels: np.ndarray, rng: np.random.Generator, reach_mm: tuple[float, float] = (10.0, 30.0),
                        share: tuple[float, float] = (0.3, 0.8), adrenal_pad_mm: float = FAT_PAD_MM,
                        spare_behind_liver: bool = False) -> None:
    """Unlabelled soft tissue in the fat within ``reach_mm`` (drawn) of the organs: parcels of 8-30 mm
    (a smooth random field over a threshold) taking ``share`` (drawn) of that fat, their HU varying
    smoothly (SD 30 HU) about a level drawn from 0-60 HU: collapsed bowel, mesentery, muscle, an
    enhancing wall, some parcels left near fat. The kidneys and adrenals keep a fat pad of
    ``FAT_PAD_MM``: real ones lie in their own fat. ``adrenal_pad_mm`` wider than that keeps the
    adrenals that much clean fat: the perirenal space, which bowel and mesentery do not enter.
    Networks trained with the clutter label a right adrenal lying free in the fat background
    (held-out map ``FLARE22_Tr_0045``'s, a median 9 mm from any other organ, farther than in any
    training map), with the narrow pad or the wide one (model card, "the clutter recipe measured in
    full"). ``spare_behind_liver`` keeps the parcels out of ``behind_the_liver``, where that adrenal
    lies; trained with it, a network loses that adrenal all the same, and at most checkpoints that
    map's left adrenal too (22 mm from any organ; model card, "none behind the liver").

    Why: on the real scan with the fullest reference here (``python -m training.domain_gap``),
    34-62 % of the unlabelled body 4.5-9.5 mm outside the liver, spleen, pancreas, aorta, IVC,
    gallbladder and duodenum is soft tissue; in stage 9's phantoms a median of 7-17 % (the aorta's
    34 %): their organs float in fat, so an edge against fat can name an organ, which a real organ
    against bowel or muscle does not have."""
    from scipy import ndimage

    organs, own_fat = labels > 0, np.isin(labels, IN_THEIR_OWN_FAT)
    if not (organs & ~own_fat).any():
        return
    step = max(1, int(round(2.0 / cv.spacing[1])))  # distances on a grid of about 2 mm in-plane: seconds, not tens
    grid = (cv.spacing[0], cv.spacing[1] * step, cv.spacing[2] * step)

    def within(mask: np.ndarray, mm: float) -> np.ndarray:
        near = ndimage.distance_transform_edt(~mask[:, ::step, ::step], sampling=grid) <= mm
        return np.repeat(np.repeat(near, step, 1), step, 2)[:, :labels.shape[1], :labels.shape[2]]

    candidate = within(organs & ~own_fat, rng.uniform(*reach_mm)) & ~organs & (cv.image > -200) & (cv.image < -30)
    if own_fat.any():
        candidate &= ~within(own_fat, FAT_PAD_MM)
    adrenals = np.isin(labels, (RIGHT_ADRENAL, LEFT_ADRENAL))
    if adrenal_pad_mm > FAT_PAD_MM and adrenals.any():
        candidate &= ~within(adrenals, adrenal_pad_mm)
    if spare_behind_liver:
        candidate &= ~behind_the_liver(labels)
    if candidate.sum() < 100:
        return
    sl, coords = cv.box(candidate)
    with lent_stream(cv, rng):
        parcels = cv.texture(coords, 1.0, waves=8, wavelength=(8.0, 30.0))
        shade = cv.texture(coords, 1.0, waves=4, wavelength=(15.0, 50.0))
    inside = candidate[sl]
    mask = inside & (parcels > np.quantile(parcels[inside], 1 - rng.uniform(*share)))
    hu = rng.uniform(0, 60) + 30 * shade
    cv.image[sl][mask] = hu[mask]
