"""Reading and checking CT scans, and writing masks atomically with the input's geometry."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .orientation import Orientation, orientation_from_direction

SUFFIXES = (".nii.gz", ".nii")
MIN_BODY_HU = -200.0  # a CT in Hounsfield units has air (about -1000) somewhere in its field of view


class ScanError(Exception):
    """A scan that cannot be segmented; the message is one line naming the reason."""


@dataclass(frozen=True)
class Geometry:
    """The input's header, in SimpleITK order (x, y, z), copied verbatim onto the mask."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


@dataclass
class Scan:
    """A scan in the canonical layout, with what is needed to write its mask back exactly."""

    path: Path
    array: np.ndarray  # canonical [z, y, x], int16 or float32
    spacing: tuple[float, float, float]  # canonical [z, y, x] mm
    orientation: Orientation
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def case_name(path: Path) -> str:
    """FLARE/nnU-Net naming: ``CASE_0000.nii.gz`` -> ``CASE``; plain ``CASE.nii(.gz)`` -> ``CASE``."""
    name = path.name
    for suf in SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return re.sub(r"_0000$", "", name)


def find_scans(folder: Path) -> tuple[list[Path], list[Path]]:
    """(NIfTI scans, other files) in a folder, sorted; hidden files are ignored."""
    scans, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        (scans if is_nifti(p) else others).append(p)
    return scans, others


def _one_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = [ln for ln in lines if "description:" in ln.lower() or "error" in ln.lower()]
    text = (detail or lines or [type(err).__name__])[-1]
    return re.sub(r"^.*?[Dd]escription:\s*", "", text)[:300]


def read_scan(path: Path) -> Scan:
    """Read a CT scan, check it, and bring it to the canonical layout."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim, ncomp, size = reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize()
        if dim == 2 or (dim == 3 and size[2] == 0):
            raise ScanError(f"is a 2D image ({'x'.join(map(str, size[:2]))}); a 3D CT volume is needed")
        if dim == 4 and size[3] != 1:
            raise ScanError(f"is a 4D image with {size[3]} volumes; give one 3D CT volume per file")
        if dim not in (3, 4):
            raise ScanError(f"has {dim} dimensions; a 3D CT volume is needed")
        if ncomp != 1:
            raise ScanError(f"has {ncomp} values per voxel; a single-channel CT is needed")
        image = reader.Execute()
    except ScanError:
        raise
    except RuntimeError as e:
        raise ScanError(f"cannot be read as NIfTI ({_one_line(e)})") from None
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]

    geometry = Geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2 and array.dtype != np.uint16:
        array = array.astype(np.int16, copy=True)
    else:
        array = array.astype(np.float32, copy=True)
    del image

    warnings = _check_values(array, geometry)
    orientation = orientation_from_direction(np.array(geometry.direction))
    spacing_np = tuple(reversed(geometry.spacing))
    canonical = np.ascontiguousarray(orientation.to_canonical(array))
    return Scan(
        path=path,
        array=canonical,
        spacing=orientation.spacing_to_canonical(spacing_np),  # type: ignore[arg-type]
        orientation=orientation,
        geometry=geometry,
        warnings=warnings,
    )


def _check_values(array: np.ndarray, geo: Geometry) -> list[str]:
    """Fix NaNs in place and list what looks wrong but can still be segmented."""
    warnings = []
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n_bad = int(bad.sum())
        if n_bad == array.size:
            raise ScanError("has no finite voxel values (all NaN or infinite)")
        if n_bad:
            fill = float(np.min(array[~bad]))
            array[bad] = fill
            warnings.append(f"{n_bad} NaN/infinite voxels set to the scan minimum ({fill:g})")
    lo, hi = float(array.min()), float(array.max())
    if lo > MIN_BODY_HU or hi - lo < 200:
        warnings.append(
            f"intensities {lo:g}..{hi:g} do not look like Hounsfield units (no air below {MIN_BODY_HU:g}); "
            "was the rescale slope/intercept lost? results will be unreliable"
        )
    if min(geo.size) < 8:
        warnings.append(f"only {min(geo.size)} voxels along one axis (size {list(geo.size)}); results will be unreliable")
    if max(geo.spacing) >= 8:
        warnings.append(f"coarse spacing {max(geo.spacing):g} mm; thin organs may be missed")
    return warnings


def output_path(out_dir: Path, scan_path: Path) -> Path:
    return out_dir / f"{case_name(scan_path)}.nii.gz"


def write_mask(mask: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a uint8 mask (input's numpy order) with the input's header, via temp file + rename."""
    import SimpleITK as sitk

    if tuple(reversed(mask.shape)) != tuple(geometry.size):
        raise ValueError(f"mask shape {mask.shape} does not match the scan size {geometry.size}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; masks get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: Path) -> None:
    """Fail early, before any work, when the output folder cannot take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ScanError(f"output folder {folder} is not writable ({e.strerror or e})") from None
