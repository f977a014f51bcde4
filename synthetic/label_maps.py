"""Phantoms with real anatomy: a real organ label map placed in a synthetic body, then randomised.

The FLARE22 label maps (``../shared/data/labels_only/flare22``, research use only) give the 13 organs
of real patients: shapes, sizes, positions, neighbourhoods. They carry no image and no body, so the
geometric generator (``synthetic.phantoms``) supplies what surrounds the organs: fat, muscle wall,
spine and ribs, lungs above the diaphragm, bowel, table, and on request arms, the back's muscles,
colon and small bowel between the organs, the unlabelled vessels around them, and look-alikes of
organs (the diaphragm's crura, collapsed small-bowel loops; ``synthetic.mimics``). The map is first
warped (patient size, in-plane rotation, smooth elastic deformation) onto a random scanner grid (on
request with an enlarged spleen or liver, or an adrenal moved into the fat), the organs are
rendered with randomised Hounsfield values and texture (on request a fatty pancreas), and
``synthetic.randomise.scanner`` adds the scanner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .phantoms import FAT_PAD_MM, ORIENTATIONS, SPINE_Y, Arms, Back, Phantom, _body, _Canvas, abdominal_bowel, lent_stream
from .randomise import PHASES, archive_copy, free_contrast, scanner, slice_profile, smooth_field, soften, tissue_values
from .mimics import crura as draw_crura
from .mimics import ADRENAL_FAT_MM, gastric_colon, jejunal_loops, soft_tissue_clutter
from .vessels import abdominal_vessels

LABEL_MAPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "labels_only" / "flare22"
# Never used for training: phantoms built from these report accuracy on real anatomy never seen.
HOLD_OUT = tuple(f"FLARE22_Tr_{i:04d}.nii.gz" for i in (5, 10, 15, 20, 25, 30, 35, 40, 45, 50))
# The optional parts of ``anatomy_phantom``, each a chance (a training config's phantom keys).
ANATOMY_OPTIONS = ("arms", "muscles", "bowel", "vessels", "free_hu", "lowres", "crura", "jejunum", "colon", "enlarge", "fatty", "archive", "clutter",
                   "adrenal_fat", "adrenal_shift", "liver_back")
# How far ``adrenal_shift`` moves an adrenal into the fat: the training maps' right adrenal lies a
# median 4.0 mm (2.3-6.8) from its nearest organ, a real one may lie 9 mm away (FLARE22_Tr_0045;
# ``python -m training.organ_geometry``).
ADRENAL_SHIFT_MM = (4.0, 10.0)
TISSUE_OF = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas", 5: "aorta", 6: "ivc", 7: "adrenal", 8: "adrenal",
             9: "gallbladder", 10: "esophagus", 11: "stomach_wall", 12: "duodenum_wall", 13: "kidney"}


def anatomy_chances(phantoms: dict) -> dict[str, float]:
    """The chance a recipe's ``phantoms`` section gives each of ``ANATOMY_OPTIONS`` (0 where absent),
    as ``anatomy_phantom``'s keyword arguments."""
    return {name: float(phantoms.get(name, 0.0)) for name in ANATOMY_OPTIONS}


def label_map_files(folder: Path = LABEL_MAPS, held_out: bool = False) -> list[Path]:
    """The label maps for training (``held_out=False``) or the ten held out; fails loudly when absent."""
    files = sorted(folder.glob("FLARE22_Tr_*.nii.gz"))
    if not files:
        raise FileNotFoundError(f"no FLARE22 label maps in {folder} (../shared/data/labels_only/flare22 beside the repository)")
    return [f for f in files if (f.name in HOLD_OUT) == held_out]


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label map in canonical LPS ``[z, y, x]`` (uint8) and its spacing ``[z, y, x]`` in mm."""
    import SimpleITK as sitk

    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(image).astype(np.uint8), tuple(float(s) for s in reversed(image.GetSpacing()))  # type: ignore[return-value]


def warp(labels: np.ndarray, spacing: tuple[float, float, float], target: tuple[float, float, float], rng: np.random.Generator,
         scale: float = 0.1, rotate_deg: float = 8.0, elastic_mm: float = 6.0) -> np.ndarray:
    """The map on a grid of ``target`` spacing: scaled per axis by up to ``scale``, rotated in-plane by
    up to ``rotate_deg`` and deformed smoothly by up to ``elastic_mm``; nearest labels."""
    from scipy import ndimage

    factors = rng.uniform(1 - scale, 1 + scale, 3)
    extent = np.array(labels.shape) * np.array(spacing) * factors
    shape = tuple(max(1, int(round(e / t))) for e, t in zip(extent, target))
    centre_out = (np.array(shape) - 1) / 2 * np.array(target)
    centre_in = (np.array(labels.shape) - 1) / 2 * np.array(spacing)
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    cos, sin = np.cos(theta), np.sin(theta)
    zz, yy, xx = (np.arange(n, dtype=np.float32) * t - c for n, t, c in zip(shape, target, centre_out))
    coords = np.empty((3, *shape), np.float32)
    coords[0] = (zz[:, None, None] / factors[0] + centre_in[0]) / spacing[0]
    y_rot = cos * yy[:, None] - sin * xx[None, :]
    x_rot = sin * yy[:, None] + cos * xx[None, :]
    coords[1] = ((y_rot / factors[1] + centre_in[1]) / spacing[1])[None]
    coords[2] = ((x_rot / factors[2] + centre_in[2]) / spacing[2])[None]
    if elastic_mm > 0:
        for axis in range(3):
            amplitude = rng.uniform(0, elastic_mm) / spacing[axis]
            coords[axis] += amplitude * smooth_field(shape, rng, cells=5)
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(np.uint8)


def enlarge_organ(labels: np.ndarray, organ: int, factors: tuple[float, float, float]) -> np.ndarray:
    """``labels`` with ``organ`` scaled about its centre by ``factors`` (per axis, index space), grown
    over background only: organomegaly keeps the organ's shape and its neighbours; nearest labels."""
    from scipy import ndimage

    mask = labels == organ
    idx = np.argwhere(mask)
    if not len(idx):
        return labels
    centre, f = idx.mean(0), np.asarray(factors, np.float64)
    lo = np.maximum(np.floor(centre - (centre - idx.min(0)) * f) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(centre + (idx.max(0) - centre) * f) + 2, labels.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [((np.arange(a, b) - c) / s + c).astype(np.float32) for a, b, c, s in zip(lo, hi, centre, f)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    grown = ndimage.map_coordinates(mask.astype(np.uint8), coords, order=0, mode="constant", cval=0) > 0
    out = labels.copy()
    out[box][grown & (out[box] == 0)] = organ
    return out


def move_organ(labels: np.ndarray, organ: int, offset: tuple[int, int, int]) -> np.ndarray:
    """``labels`` with ``organ`` shifted by ``offset`` voxels into background only: the voxels it leaves
    become background, no other organ loses a voxel, and any part landing on another organ is dropped."""
    idx = np.argwhere(labels == organ)
    if not len(idx):
        return labels
    out = labels.copy()
    out[tuple(idx.T)] = 0
    moved = idx + np.asarray(offset, int)
    moved = moved[((moved >= 0) & (moved < labels.shape)).all(1)]
    moved = moved[out[tuple(moved.T)] == 0]
    out[tuple(moved.T)] = organ
    return out


def freest_offset(labels: np.ndarray, organ: int, spacing: tuple[float, float, float], mm: float) -> tuple[int, int, int]:
    """The shift of about ``mm`` (one of the 26 grid directions, in voxels) that leaves ``organ`` furthest
    from every other organ (the median distance of its moved voxels; one landing on an organ counts 0):
    the way into the fat around it, as a free-lying adrenal sits in real scans."""
    from scipy import ndimage

    idx = np.argwhere(labels == organ)
    if not len(idx):
        return (0, 0, 0)
    step = np.asarray(spacing, np.float64)
    margin = np.ceil((mm + 20.0) / step).astype(int)
    lo, hi = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, labels.shape)
    box = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    others = (box != 0) & (box != organ)
    distance = ndimage.distance_transform_edt(~others, sampling=step) if others.any() else np.full(box.shape, np.inf)
    local, best, best_score = idx - lo, (0, 0, 0), -1.0
    for direction in np.argwhere(np.ones((3, 3, 3), bool)) - 1:
        if not direction.any():
            continue
        offset = np.round(direction * mm / np.linalg.norm(direction * step)).astype(int)  # mm long
        moved = np.clip(local + offset, 0, np.array(box.shape) - 1)
        score = float(np.median(distance[tuple(moved.T)]))
        if score > best_score:
            best, best_score = tuple(int(o) for o in offset), score
    return best  # type: ignore[return-value]


def _body_frame(labels: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, float, float]:
    """Where the generator's frame sits on this grid (its origin in mm, z = kidneys' centre, x and y
    from the aorta), and the half-width ``a`` and half-depth ``b`` of a body holding every organ."""
    def centre(label: int) -> np.ndarray:
        idx = np.argwhere(labels == label)
        return idx.mean(0) * np.array(spacing) if len(idx) else np.array([np.nan] * 3)

    kidneys = np.nanmean([centre(2), centre(13)], axis=0)
    aorta = centre(5)
    organs = np.argwhere(labels > 0) * np.array(spacing)
    z0 = kidneys[0] if np.isfinite(kidneys[0]) else organs[:, 0].mean()
    x0 = aorta[2] - 12 if np.isfinite(aorta[2]) else organs[:, 2].mean()
    half_x = max(np.abs(organs[:, 2] - x0).max(), 60.0)
    a = half_x / 0.78  # organs stay inside the muscle wall
    b = a * 0.74
    aorta_y = aorta[1] if np.isfinite(aorta[1]) else organs[:, 1].mean()
    y0 = aorta_y - (SPINE_Y * b - 28)  # the generator puts the aorta just in front of the spine at SPINE_Y b
    depth = max(np.abs(organs[:, 1] - y0).max(), 40.0) / 0.78
    b = max(b, depth)
    return -np.array([z0, y0, x0]), float(a), float(b)  # voxel 0 sits at the grid's corner


def _own_stream(seed: int | list[int], tag: int) -> np.random.Generator:
    """A random stream of the phantom's seed plus ``tag``: an optional part drawn from it leaves the
    main stream, and so the rest of the phantom, as it is without that part."""
    return np.random.default_rng([*np.atleast_1d(seed).tolist(), tag])


def anatomy_phantom(path: Path, seed: int | list[int], inplane: float | None = None, thickness: float | None = None,
                    lesions: bool = True, deform: bool = True, arms: float = 0.0, muscles: float = 0.0,
                    bowel: float = 0.0, vessels: float = 0.0, free_hu: float = 0.0, lowres: float = 0.0,
                    crura: float = 0.0, jejunum: float = 0.0, colon: float = 0.0, enlarge: float = 0.0,
                    fatty: float = 0.0, archive: float = 0.0, clutter: float = 0.0, adrenal_fat: float = 0.0,
                    adrenal_shift: float = 0.0, liver_back: float = 0.0) -> Phantom:
    """A randomised CT phantom around the real label map at ``path`` (labels: that map, warped).

    ``arms``: the chance of arms down beside the trunk (real scans often have them in the field of
    view); ``muscles``: the chance of the back's muscles (``synthetic.phantoms.Back``); ``bowel``:
    the chance of colon and small bowel around the organs (``synthetic.phantoms.abdominal_bowel``);
    ``vessels``: the chance of the unlabelled veins and arteries (``synthetic.vessels``);
    ``free_hu``: the chance that every organ's mean HU is drawn freely (``randomise.free_contrast``);
    ``lowres``: the chance of an archive copy's in-plane blur (``randomise.soften``); ``crura``: the
    chance of the diaphragm's crura beside the aorta, ``jejunum`` of collapsed, enhancing
    small-bowel loops and mesenteric vessels beside the pancreas, and ``colon`` of a gas-distended
    colon along the stomach's greater curvature (``synthetic.mimics``); ``enlarge``: the chance of
    splenomegaly (the spleen scaled up 5-40 % per axis into the fat around it), with hepatomegaly in
    a third of those (``enlarge_organ``): a large spleen is common in real scans, rare in the
    training maps (an axial section of 6700 mm2 on a real scan here; 1600-7200 in the 40 maps,
    three above 6700);
    ``fatty``: the chance of a fatty pancreas, fat between its lobules (``fatty_infiltration``);
    ``archive``: the chance that the scan comes as a low-resolution copy brought back to its grid,
    blocks of 5-30 mm along z and 1.5-4 mm in-plane (``randomise.archive_copy``);
    ``clutter``: the chance of soft-tissue parcels in the fat near the organs
    (``mimics.soft_tissue_clutter``), as a real abdomen packs bowel, mesentery and muscle around them;
    ``adrenal_fat``: the chance that the clutter leaves the adrenals 10-20 mm (``ADRENAL_FAT_MM``)
    of clean fat, the perirenal space, instead of the kidneys' narrow pad;
    ``adrenal_shift``: the chance, per adrenal, that it is moved ``ADRENAL_SHIFT_MM`` into the fat
    away from its neighbours (``freest_offset``, ``move_organ``): free-lying, as a real one can be.
    ``liver_back``: the chance that the clutter leaves the fat behind the liver, on the patient's right
    of the aorta, clean (``mimics.behind_the_liver``): where the right adrenal and kidney lie, behind the bowel.
    Each is drawn from a stream of its own, so the rest of the phantom does not depend on it.
    """
    rng = np.random.default_rng(seed)
    arm_rng, back_rng, bowel_rng, vessel_rng, hu_rng, soft_rng = (
        _own_stream(seed, tag) for tag in (0xA125, 0xBAC4, 0xB0E1, 0x7E55, 0xF4EE, 0x50F7))
    crura_rng, jejunum_rng, colon_rng = _own_stream(seed, 0xC4A0), _own_stream(seed, 0x1E1E), _own_stream(seed, 0xC010)
    enlarge_rng, fatty_rng, archive_rng = _own_stream(seed, 0xE1A6), _own_stream(seed, 0xFA77), _own_stream(seed, 0xA4C1)
    clutter_rng, adrenal_rng, shift_rng = _own_stream(seed, 0xC1C7), _own_stream(seed, 0xADF7), _own_stream(seed, 0xAD5F)
    back_fat_rng = _own_stream(seed, 0xBAC7)
    labels, spacing = read_label_map(path)
    present = np.flatnonzero(labels.any(axis=(1, 2)))  # slices holding an organ
    pad = int(rng.uniform(10, 60) / spacing[0])  # some scans reach far below the organs: keep the abdomen
    labels = labels[max(0, present.min() - pad): present.max() + pad + 1]
    inplane = float(rng.uniform(0.6, 1.0)) if inplane is None else inplane
    thickness = float(rng.choice([0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])) if thickness is None else thickness
    render = (min(thickness, 2.5), inplane, inplane)  # rendered on a grid no coarser than the map, then profiled
    labels = warp(labels, spacing, render, rng, **({} if deform else {"scale": 0.0, "rotate_deg": 0.0, "elastic_mm": 0.0}))
    if enlarge_rng.random() < enlarge:
        for organ in (3, 1) if enlarge_rng.random() < 1 / 3 else (3,):
            labels = enlarge_organ(labels, organ, tuple(enlarge_rng.uniform(1.05, 1.4, 3)))
    for adrenal in (7, 8):
        if shift_rng.random() < adrenal_shift:
            labels = move_organ(labels, adrenal, freest_offset(labels, adrenal, render, float(shift_rng.uniform(*ADRENAL_SHIFT_MM))))
    origin, a, b = _body_frame(labels, render)
    drawn = Arms.draw(arm_rng) if arm_rng.random() < arms else None
    back = Back.draw(back_rng) if back_rng.random() < muscles else None
    if drawn is not None:  # widen the field of view so that both arms fall inside it, with air beyond
        reach = a * 1.05 + drawn.reach + arm_rng.uniform(5, 40)
        left, right = (max(0, int(np.ceil(mm / inplane))) for mm in (reach + origin[2], reach - (labels.shape[2] * inplane + origin[2])))
        labels = np.pad(labels, ((0, 0), (0, 0), (left, right)))
        origin[2] -= left * inplane  # the body frame moves with the organs; its size does not change
    cv = _Canvas(labels.shape, render, tuple(origin), rng)  # type: ignore[arg-type]
    # Thin slices come from maps labelled at 2.5 mm: their organ surfaces step along z (nearest labels).
    phase = int(rng.integers(0, len(PHASES)))
    hu = tissue_values(rng, phase)
    if hu_rng.random() < free_hu:
        hu = free_contrast(hu, hu_rng)
    _body(cv, a, b, fat=rng.uniform(8, 35), phase=min(phase, 2), arms=drawn, back=back)
    if bowel_rng.random() < bowel:
        abdominal_bowel(cv, a, b, bowel_rng)
    body = cv.image > -500
    for label, tissue in TISSUE_OF.items():
        mask = labels == label
        if label in (7, 8) and mask.any():  # adrenals sit in fat, not inside the liver they touch
            from scipy import ndimage

            ring = (ndimage.distance_transform_edt(~mask, sampling=render) <= FAT_PAD_MM) & ~mask & (labels == 0)
            cv.image[ring] = hu["fat"]
        if mask.any():
            sl, texture = _texture_over(cv, mask, rng.uniform(3, 14))
            cv.image[sl][mask[sl]] = hu[tissue] + texture[mask[sl]]
    stomach = labels == 11
    if stomach.any():  # fluid and a gas cap inside the wall
        sl, field = _texture_over(cv, stomach, 1.0)
        content = (field > rng.uniform(-0.6, 0.2)) & stomach[sl]
        gas_level = np.quantile(np.argwhere(stomach)[:, 1], rng.uniform(0.0, 0.3))  # its anterior part (small y) holds gas
        rows = np.arange(sl[1].start, sl[1].stop)[None, :, None]
        cv.image[sl][content] = rng.uniform(0, 30)
        cv.image[sl][content & (rows < gas_level)] = -950
    if fatty_rng.random() < fatty:
        fatty_infiltration(cv, labels == 4, hu["fat"], fatty_rng)
    if crura_rng.random() < crura:
        draw_crura(cv, labels, hu["muscle"], crura_rng, spine_y=SPINE_Y * b)
    if jejunum_rng.random() < jejunum:
        jejunal_loops(cv, labels, hu["duodenum_wall"], hu["ivc"], jejunum_rng)
    if colon_rng.random() < colon:
        gastric_colon(cv, labels, hu["duodenum_wall"], colon_rng)
    if clutter_rng.random() < clutter:  # after the look-alikes, which take fat only
        wide = adrenal_rng.random() < adrenal_fat
        pad = float(adrenal_rng.uniform(*ADRENAL_FAT_MM)) if wide else FAT_PAD_MM
        soft_tissue_clutter(cv, labels, clutter_rng, adrenal_pad_mm=pad, spare_behind_liver=bool(back_fat_rng.random() < liver_back))
    if vessel_rng.random() < vessels:
        abdominal_vessels(cv, labels, phase, hu["aorta"], vessel_rng)
    if lesions:
        _lesions(cv, labels, hu, rng)
    cv.labels = labels
    image = scanner(slice_profile(cv.image, render, thickness), render, rng, body=body)
    if soft_rng.random() < lowres:
        image = soften(image, render, soft_rng)
    n_render, n_out = labels.shape[0], max(1, int(round(labels.shape[0] * render[0] / thickness)))
    if n_out != n_render:  # thick slices: the profiled volume sampled at the slice centres
        idx = np.minimum(((np.arange(n_out) + 0.5) * n_render / n_out).astype(int), n_render - 1)
        image, labels = image[idx], labels[idx]
    z_spacing = render[0] * n_render / n_out
    if archive_rng.random() < archive:  # on the grid the scan is delivered on
        image = archive_copy(image, (z_spacing, inplane, inplane), archive_rng)
    world = (origin[2], origin[1], origin[0] + (z_spacing - render[0]) / 2)  # voxel 0's centre moves with thicker slices
    return Phantom(image, labels, (z_spacing, inplane, inplane), world, str(rng.choice(ORIENTATIONS)))


def _texture_over(cv: _Canvas, mask: np.ndarray, amplitude: float, **waves: object) -> tuple[tuple[slice, ...], np.ndarray]:
    """The canvas's smooth texture (``_Canvas.texture``, ``waves`` its wave settings) over the
    bounding box of ``mask`` only (a full-volume field per organ would cost seconds)."""
    sl, coords = cv.box(mask)
    return sl, cv.texture(coords, amplitude, **waves)  # type: ignore[arg-type]


def fatty_infiltration(cv: _Canvas, mask: np.ndarray, fat_hu: float, rng: np.random.Generator) -> None:
    """Fat between an organ's lobules, as in the ageing pancreas: where a fine random field (waves of
    3-9 mm) passes a threshold, 20-80 % of ``mask`` becomes fat; the label stays. Real references
    label such a pancreas, a strand of soft tissue through fat, by its outline (one here: median -7 HU)."""
    if not mask.any():
        return
    with lent_stream(cv, rng):
        sl, field = _texture_over(cv, mask, 1.0, waves=12, wavelength=(3.0, 9.0))
    inside = mask[sl]
    fat = inside & (field > np.quantile(field[inside], 1 - rng.uniform(0.2, 0.8)))
    cv.image[sl][fat] = fat_hu + rng.normal(0, 10, int(fat.sum()))


def _lesions(cv: _Canvas, labels: np.ndarray, hu: dict[str, float], rng: np.random.Generator) -> None:
    """0-3 hypodense lesions (label 14) inside the liver, kidneys or pancreas."""
    for _ in range(int(rng.integers(0, 4))):
        host = int(rng.choice([1, 1, 2, 13, 4]))
        idx = np.argwhere(labels == host)
        if not len(idx):
            continue
        centre = idx[rng.integers(len(idx))]
        radii = rng.uniform(4, 16, 3) / np.array(cv.spacing)
        lo = np.maximum(centre - np.ceil(radii).astype(int), 0)
        hi = np.minimum(centre + np.ceil(radii).astype(int) + 1, labels.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grid = np.ogrid[sl]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
        inside &= labels[sl] == host
        cv.image[sl][inside] += hu["lesion_offset"]
        labels[sl][inside] = 14
