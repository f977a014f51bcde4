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
Usage: python -m training.domain_gap [--recipes training/config_anatomy_colon_gas.json ...]
       [--phantoms 12] [--cases TS_example_sm]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.labels import FLARE_LABELS
from app.nifti import read_scan
from synthetic.label_maps import anatomy_chances, anatomy_phantom, label_map_files
from training.evaluate import SHARED
from training.recipe import load_recipe

SOFT_HU = (-30.0, 200.0)


def on_grid(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], mm: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``labels`` (z, y, x) on a grid of ``mm``: the image blurred where it is finer
    (as a scanner's coarser voxels average it) and interpolated linearly, the labels nearest."""
    from scipy import ndimage

    sigma = [0.42 * mm / s - 0.3 if s < mm else 0.0 for s in spacing]
    factors = [s / mm for s in spacing]
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma)
    return ndimage.zoom(smooth, factors, order=1), ndimage.zoom(labels, factors, order=0)


def soft_tissue_around(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
                       band_mm: tuple[float, float] = (4.5, 9.5)) -> dict[int, float]:
    """Per organ present: the share of soft tissue among the unlabelled body voxels ``band_mm``
    outside it (pure; organs with fewer than five such voxels left out)."""
    from scipy import ndimage

    out = {}
    unlabelled_body = (labels == 0) & (image > -500)
    for organ in (int(k) for k in np.unique(labels) if 0 < k < 14):
        distance = ndimage.distance_transform_edt(labels != organ, sampling=spacing)
        values = image[(distance > band_mm[0]) & (distance <= band_mm[1]) & unlabelled_body]
        if values.size >= 5:
            out[organ] = float(np.mean((values >= SOFT_HU[0]) & (values < SOFT_HU[1])))
    return out


def recipe_phantoms(recipe: Path, count: int, seed: int = 7) -> list[dict[int, float]]:
    """``soft_tissue_around`` on the 3 mm grid for ``count`` real-anatomy phantoms drawn with the
    fine recipe's options and spacings from the training maps (seeds ``[seed, i]``)."""
    cfg = load_recipe(recipe)["fine"]["phantoms"]
    maps = label_map_files()
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        path = maps[int(rng.integers(len(maps)))]
        ph = anatomy_phantom(path, [seed, i], inplane=float(rng.uniform(*cfg["inplane"])),
                             thickness=float(rng.uniform(*cfg["thickness"])), **anatomy_chances(cfg))
        out.append(soft_tissue_around(*on_grid(ph.image, ph.labels, ph.spacing), (3.0, 3.0, 3.0)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", type=Path, nargs="+", default=[Path("training/config_anatomy_colon_gas.json")])
    ap.add_argument("--phantoms", type=int, default=12, help="phantoms per recipe")
    ap.add_argument("--cases", nargs="+", default=["TS_example_sm"], help="real cases in ../shared/data/ct")
    args = ap.parse_args(argv)
    real = {}
    for case in args.cases:
        image, spacing, _ = read_scan(SHARED / "images" / f"{case}_0000.nii.gz").layout("LPS")
        labels, _, _ = read_scan(SHARED / "labels" / f"{case}.nii.gz").layout("LPS")
        real[case] = soft_tissue_around(*on_grid(image, labels, spacing), (3.0, 3.0, 3.0))
    drawn = {recipe.stem: recipe_phantoms(recipe, args.phantoms) for recipe in args.recipes}
    print(f"soft tissue ({SOFT_HU[0]:.0f}..{SOFT_HU[1]:.0f} HU) among unlabelled body voxels 4.5-9.5 mm outside each organ, 3 mm grid;"
          f" phantoms: {args.phantoms} per recipe, p10 / median / p90")
    print(f"{'organ':<24}" + "".join(f"{case:>16}" for case in real) + "".join(f"{name:>36}" for name in drawn))
    for organ, name in FLARE_LABELS.items():
        if organ > 13:
            continue
        cells = [f"{real[case][organ]:>16.2f}" if organ in real[case] else f"{'-':>16}" for case in real]
        for shares in drawn.values():
            values = [s[organ] for s in shares if organ in s]
            cells.append(" ".join(f"{v:.2f}" for v in np.percentile(values, [10, 50, 90])).rjust(36) if values else f"{'-':>36}")
        print(f"{name:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
