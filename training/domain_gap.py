"""What surrounds each organ: real scans against the training phantoms of one or more recipes.

For each organ, the share of soft tissue (-30..200 HU) among the unlabelled body voxels (above
-500 HU) 4.5-9.5 mm outside it, on a common 3 mm grid (the phantoms blurred and resampled to it,
as the real reference here is stored), for the real scans and for phantoms drawn as a recipe's
fine-model training draws its real-anatomy phantoms (its options, spacings and training maps).
A network learns what an organ's edge looks like from what lies beyond it: where the phantoms
put fat and the real scans soft tissue, an edge against fat names organs in training that real
scans do not show.

Only references that label (almost) every FLARE organ measure this: where a reference leaves
organs out, they count as surroundings. Default: TS_example_sm (12 of the 13).
``--measure mix`` gives, instead, the shares of five classes (gas, gas mixed with stool or tissue,
fat, soft tissue, bone or contrast) among the unlabelled voxels of the body (the bowel's gas counted).
Usage: python -m training.domain_gap [--recipes training/config_anatomy_colon_gas.json ...]
       [--phantoms 12] [--cases TS_example_sm] [--measure soft|mix]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.labels import FLARE_LABELS
from app.nifti import read_scan
from synthetic.label_maps import anatomy_chances, anatomy_phantom, label_map_files
from training.evaluate import SHARED
from training.recipe import load_recipe

SOFT_HU = (-30.0, 200.0)
BAND_MM = (4.5, 9.5)  # how far outside an organ its surroundings are read
# gas; gas mixed with stool or tissue (and partial volume); fat; soft tissue; bone or contrast
MIX_HU = {"gas": (-np.inf, -400.0), "mixed": (-400.0, -150.0), "fat": (-150.0, -30.0), "soft": (-30.0, 200.0), "dense": (200.0, np.inf)}


def on_grid(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``labels`` (z, y, x) on a grid of ``mm``: the image blurred where it is finer
    (as a scanner's coarser voxels average it) and interpolated linearly, the labels nearest."""
    from scipy import ndimage

    sigma = [0.42 * mm / s - 0.3 if s < mm else 0.0 for s in spacing]
    factors = [s / mm for s in spacing]
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    return ndimage.zoom(smooth, factors, order=1), ndimage.zoom(labels, factors, order=0)


def _bands(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], counted: np.ndarray,
           band_mm: tuple[float, float]):
    """Per organ present: the ``image`` values of the ``counted`` voxels ``band_mm`` outside it."""
    from scipy import ndimage

    for organ in (int(k) for k in np.unique(labels) if 0 < k < 14):
        distance = ndimage.distance_transform_edt(labels != organ, sampling=spacing)
        yield organ, image[(distance > band_mm[0]) & (distance <= band_mm[1]) & counted]


def soft_tissue_around(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
                       band_mm: tuple[float, float] = BAND_MM) -> dict[int, float]:
    """Per organ present: the share of soft tissue among the unlabelled body voxels ``band_mm``
    outside it (pure; organs with fewer than five such voxels left out)."""
    unlabelled_body = (labels == 0) & (image > -500)
    return {organ: float(np.mean((values >= SOFT_HU[0]) & (values < SOFT_HU[1])))
            for organ, values in _bands(image, labels, spacing, unlabelled_body, band_mm) if values.size >= 5}


def body_mask(image: np.ndarray) -> np.ndarray:
    """Voxels above -500 HU with the holes of each axial slice filled: the body with the gas in its
    bowel and lungs (and whatever else lies above -500 HU, such as the table, where it touches)."""
    from scipy import ndimage

    above = image > -500
    return np.stack([ndimage.binary_fill_holes(s) for s in above])


def tissue_mix_around(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
                      band_mm: tuple[float, float] = BAND_MM) -> dict[int, dict[str, float]]:
    """Per organ present: the shares of ``MIX_HU``'s classes among the unlabelled voxels of the body
    (``body_mask``, so bowel gas counts) ``band_mm`` outside it (pure; fewer than five left out).
    Why: soft tissue is one class; what a network may take for an organ's neighbour (gas, stool,
    contrast, bone) shows in the others."""
    counted = (labels == 0) & body_mask(image)
    return {organ: {name: float(np.mean((values >= lo) & (values < hi))) for name, (lo, hi) in MIX_HU.items()}
            for organ, values in _bands(image, labels, spacing, counted, band_mm) if values.size >= 5}


def recipe_phantoms(recipe: Path, count: int, seed: int = 7, measure: Callable[..., dict] = soft_tissue_around) -> list[dict]:
    """``measure`` on the 3 mm grid for ``count`` real-anatomy phantoms drawn with the fine recipe's
    options and spacings from the training maps (seeds ``[seed, i]``)."""
    cfg = load_recipe(recipe)["fine"]["phantoms"]
    maps = label_map_files()
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        path = maps[int(rng.integers(len(maps)))]
        ph = anatomy_phantom(path, [seed, i], inplane=float(rng.uniform(*cfg["inplane"])),
                             thickness=float(rng.uniform(*cfg["thickness"])), **anatomy_chances(cfg))
        out.append(measure(*on_grid(ph.image, ph.labels, ph.spacing), (3.0, 3.0, 3.0)))
    return out


def _organs() -> list[tuple[int, str]]:
    """The 13 FLARE organs (the lesion label has no anatomy to compare)."""
    return [(organ, name) for organ, name in FLARE_LABELS.items() if organ <= 13]


def _print_soft(real: dict, drawn: dict, count: int) -> None:
    print(f"soft tissue ({SOFT_HU[0]:.0f}..{SOFT_HU[1]:.0f} HU) among unlabelled body voxels {BAND_MM[0]}-{BAND_MM[1]} mm outside each organ, 3 mm grid;"
          f" phantoms: {count} per recipe, p10 / median / p90")
    print(f"{'organ':<24}" + "".join(f"{case:>16}" for case in real) + "".join(f"{name:>36}" for name in drawn))
    for organ, name in _organs():
        cells = [f"{real[case][organ]:>16.2f}" if organ in real[case] else f"{'-':>16}" for case in real]
        for shares in drawn.values():
            values = [s[organ] for s in shares if organ in s]
            cells.append(" ".join(f"{v:.2f}" for v in np.percentile(values, [10, 50, 90])).rjust(36) if values else f"{'-':>36}")
        print(f"{name:<24}" + "".join(cells))


def _print_mix(real: dict, drawn: dict, count: int) -> None:
    classes = " / ".join(f"{k} {lo:.0f}..{hi:.0f}" for k, (lo, hi) in MIX_HU.items())
    print(f"shares of {classes} HU among unlabelled voxels of the body {BAND_MM[0]}-{BAND_MM[1]} mm outside each organ,"
          f" 3 mm grid; phantoms: median of {count} per recipe")
    print(f"{'organ':<24}" + "".join(f"{name:>32}" for name in [*real, *drawn]))
    for organ, name in _organs():
        cells = []
        for case in real:
            mix = real[case].get(organ)
            cells.append(("/".join(f"{mix[k]:.2f}" for k in MIX_HU) if mix else "-").rjust(32))
        for mixes in drawn.values():
            present = [m[organ] for m in mixes if organ in m]
            cells.append(("/".join(f"{np.median([m[k] for m in present]):.2f}" for k in MIX_HU) if present else "-").rjust(32))
        print(f"{name:<24}" + "".join(cells))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", type=Path, nargs="+", default=[Path("training/config_anatomy_colon_gas.json")])
    ap.add_argument("--phantoms", type=int, default=12, help="phantoms per recipe")
    ap.add_argument("--cases", nargs="+", default=["TS_example_sm"], help="real cases in ../shared/data/ct")
    ap.add_argument("--measure", choices=["soft", "mix"], default="soft",
                    help="soft: the soft-tissue share (p10/median/p90); mix: the shares of every MIX_HU class (medians)")
    args = ap.parse_args(argv)
    measure, show = {"soft": (soft_tissue_around, _print_soft), "mix": (tissue_mix_around, _print_mix)}[args.measure]
    real = {}
    for case in args.cases:
        image, spacing, _ = read_scan(SHARED / "images" / f"{case}_0000.nii.gz").layout("LPS")
        labels, _, _ = read_scan(SHARED / "labels" / f"{case}.nii.gz").layout("LPS")
        real[case] = measure(*on_grid(image, labels, spacing), (3.0, 3.0, 3.0))
    drawn = {recipe.stem: recipe_phantoms(recipe, args.phantoms, measure=measure) for recipe in args.recipes}
    show(real, drawn, args.phantoms)


if __name__ == "__main__":
    main()
