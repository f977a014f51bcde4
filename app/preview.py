"""A PNG per case to check a run by eye: axial, coronal and sagittal slices through the organs,
the mask over the scan, and a legend of the labels found (TotalSegmentator's ``--preview`` habit).

Views are drawn in the canonical LPS layout with radiological conventions (patient's right on
the image's left, anterior up in the axial view, superior up in the others) and square millimetres,
whatever the scan's orientation and voxel size. Pillow is imported only when a preview is asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .labels import FLARE_LABELS
from .nifti import write_atomically

WINDOW_HU = (-160.0, 240.0)  # abdominal soft-tissue window (level 40, width 400)
PANEL_PX = 320  # the longest side of the largest view, in pixels
ALPHA = 0.45
# One colour per FLARE label (index = label id), distinct on a grey background.
COLOURS = np.array(
    [
        (0, 0, 0), (220, 60, 60), (60, 140, 230), (60, 190, 90), (240, 200, 40), (230, 40, 200), (40, 210, 220),
        (250, 130, 20), (150, 90, 240), (120, 230, 60), (250, 110, 160), (180, 120, 60), (60, 90, 200), (90, 230, 180),
        (255, 255, 255),
    ],
    dtype=np.float32,
)


def views(ct: np.ndarray, mask: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """(name, CT slice, mask slice, index of the axis whose spacing runs down the rows) for the three views.

    ``ct`` and ``mask`` are canonical LPS ``[z, y, x]``; slices cross at the organs' centre of mass.
    """
    where = np.argwhere(mask > 0)
    centre = where.mean(axis=0).round().astype(int) if len(where) else np.array(mask.shape) // 2
    z, y, x = (int(c) for c in centre)
    return [
        ("axial", ct[z], mask[z], 1),  # rows anterior -> posterior, columns right -> left
        ("coronal", ct[::-1, y, :], mask[::-1, y, :], 0),  # rows superior -> inferior
        ("sagittal", ct[::-1, :, x], mask[::-1, :, x], 0),  # columns anterior -> posterior
    ]


def panel_sizes(chosen: list[tuple[str, np.ndarray, np.ndarray, int]], spacing: tuple[float, float, float]) -> list[tuple[int, int]]:
    """(width, height) in pixels of each view: its extent in millimetres, one scale for all views."""
    extents = []
    for name, sl, _, row_axis in chosen:
        col_axis = 1 if name == "sagittal" else 2
        extents.append((sl.shape[1] * spacing[col_axis], sl.shape[0] * spacing[row_axis]))
    px_per_mm = PANEL_PX / max(max(e) for e in extents)
    return [(max(1, round(w * px_per_mm)), max(1, round(h * px_per_mm))) for w, h in extents]


def _panel(ct: np.ndarray, mask: np.ndarray, size: tuple[int, int]):
    from PIL import Image

    lo, hi = WINDOW_HU
    grey = np.clip((ct.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    grey_img = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR)
    labels = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))
    rgb = np.repeat(np.asarray(grey_img, dtype=np.float32)[..., None], 3, axis=2)
    on = (labels > 0) & (labels < len(COLOURS))
    rgb[on] = (1 - ALPHA) * rgb[on] + ALPHA * COLOURS[labels[on]]
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def render(ct: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], title: str):
    """The preview as a PIL image: three views side by side, the legend underneath."""
    from PIL import Image, ImageDraw, ImageFont

    chosen = views(ct, mask)
    panels = [_panel(sl, m, size) for (_, sl, m, _), size in zip(chosen, panel_sizes(chosen, spacing))]

    font = ImageFont.load_default(size=14)
    found = [int(v) for v in np.unique(mask) if 0 < v < len(COLOURS)]
    pad, line = 8, 20
    legend_rows = max(1, (len(found) + 2) // 3)
    width = sum(p.width for p in panels) + pad * (len(panels) + 1)
    height = line + pad + max(p.height for p in panels) + pad + legend_rows * line + pad
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 3), title, fill=(235, 235, 235), font=font)
    left = pad
    for (name, *_), panel in zip(chosen, panels):
        canvas.paste(panel, (left, line + pad))
        draw.text((left + 4, line + pad + 2), name, fill=(255, 255, 0), font=font)
        left += panel.width + pad
    top = line + pad + max(p.height for p in panels) + pad
    column = (width - pad) // 3
    if not found:
        draw.text((pad, top), "no organ found", fill=(235, 235, 235), font=font)
    for i, label in enumerate(found):
        x, y = pad + (i % 3) * column, top + (i // 3) * line
        draw.rectangle((x, y + 3, x + 12, y + 15), fill=tuple(int(c) for c in COLOURS[label]))
        draw.text((x + 18, y), f"{label} {FLARE_LABELS.get(label, '')}", fill=(235, 235, 235), font=font)
    return canvas


def write_preview(ct: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], path: Path, title: str) -> None:
    """Render and write the PNG atomically."""
    image = render(ct, mask, spacing, title)
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
