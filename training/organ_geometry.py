"""How one organ lies in each real label map: how far from the other organs, how large, how thick.

Why: a held-out map's organ that no training map resembles is lost by a network that does well on
the rest (``FLARE22_Tr_0045``'s right adrenal, a median 9 mm from any other organ, where the training
maps' lie about 4 mm from one; model card, "the clutter recipe measured in full"). This prints, per
map, what sets such an organ apart, so a recipe's draws can be set against the maps they lack.
Per map, on its own grid (``read_label_map``): the median distance in mm from the organ's voxels to
the nearest voxel of any other organ, its volume in ml, and its thickness (twice the 95th
percentile of the in-organ distance to its surface); then the median, 90th percentile and range over
the training maps and over the held-out ones.
Usage: python -m training.organ_geometry [--organ 7]
"""

from __future__ import annotations

import argparse

import numpy as np

from app.geometry import bounding_box
from app.labels import FLARE_LABELS
from synthetic.label_maps import HOLD_OUT, label_map_files, read_label_map


def clearance_mm(labels: np.ndarray, organ: int, spacing: tuple[float, float, float]) -> float:
    """The median distance in mm from ``organ``'s voxels to the nearest voxel of another organ
    (inf where the map has no other organ; nan where it lacks ``organ``)."""
    from scipy import ndimage

    inside = labels == organ
    others = (labels != 0) & ~inside
    if not inside.any():
        return float("nan")
    if not others.any():
        return float("inf")
    return float(np.median(ndimage.distance_transform_edt(~others, sampling=spacing)[inside]))


def thickness_mm(labels: np.ndarray, organ: int, spacing: tuple[float, float, float]) -> float:
    """Twice the 95th percentile of the distance in mm from ``organ``'s voxels to its surface: the
    width of its thicker parts, not set by a thin tip (nan where the map lacks ``organ``)."""
    from scipy import ndimage

    box = bounding_box(labels == organ)
    if box is None:
        return float("nan")
    crop = np.pad(labels[box.slices] == organ, 1)  # background on every side, so the surface is found
    return float(2.0 * np.percentile(ndimage.distance_transform_edt(crop, sampling=spacing)[crop], 95))


def volume_ml(labels: np.ndarray, organ: int, spacing: tuple[float, float, float]) -> float:
    """``organ``'s volume in ml."""
    return float(np.count_nonzero(labels == organ) * np.prod(spacing) / 1000.0)


def describe(labels: np.ndarray, organ: int, spacing: tuple[float, float, float]) -> dict[str, float]:
    """``clearance_mm``, ``volume_ml`` and ``thickness_mm`` of ``organ`` in one map."""
    return {"clearance_mm": clearance_mm(labels, organ, spacing), "volume_ml": volume_ml(labels, organ, spacing),
            "thickness_mm": thickness_mm(labels, organ, spacing)}


def summary(values: list[float]) -> str:
    """Median, 90th percentile and range of the finite ``values``."""
    v = np.asarray([x for x in values if np.isfinite(x)])
    if not v.size:
        return "-"
    return f"median {np.median(v):.1f}, p90 {np.percentile(v, 90):.1f}, {v.min():.1f}-{v.max():.1f} (n={v.size})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organ", type=int, default=7, choices=range(1, 14), metavar="1-13", help="FLARE label (default 7, right adrenal)")
    args = ap.parse_args(argv)
    rows: dict[str, dict[str, float]] = {}
    print(f"{FLARE_LABELS[args.organ]} (label {args.organ}) per map, on the map's own grid")
    print(f"{'map':<26}{'set':<10}{'clearance mm':>14}{'volume ml':>11}{'thickness mm':>14}")
    for path in sorted(label_map_files() + label_map_files(held_out=True)):
        labels, spacing = read_label_map(path)
        rows[path.name] = row = describe(labels, args.organ, spacing)
        kind = "held out" if path.name in HOLD_OUT else "training"
        print(f"{path.name:<26}{kind:<10}{row['clearance_mm']:>14.1f}{row['volume_ml']:>11.2f}{row['thickness_mm']:>14.1f}")
    groups = {"training": lambda name: name not in HOLD_OUT, "held out": lambda name: name in HOLD_OUT, "all": lambda name: True}
    for kind, member in groups.items():
        chosen = [row for name, row in rows.items() if member(name)]
        for key in ("clearance_mm", "volume_ml", "thickness_mm"):
            print(f"{kind:<10}{key:<14}{summary([row[key] for row in chosen])}")


if __name__ == "__main__":
    main()
