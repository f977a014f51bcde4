"""Reading and checking CT scans, and writing masks atomically with the input's geometry."""

from __future__ import annotations

import gzip
import os
import re
import struct
import tempfile
import zlib
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
    """A scan as stored, with its header; ``layout`` views it in the axis order a model expects."""

    path: Path
    stored: np.ndarray  # the file's own numpy order [k, j, i], int16 or float32
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)

    def layout(self, target: str = "LPS") -> tuple[np.ndarray, tuple[float, float, float], Orientation]:
        """(array, spacing in mm, orientation) in a model's layout; permutations and flips only."""
        orientation = orientation_from_direction(np.array(self.geometry.direction), target)
        array = np.ascontiguousarray(orientation.to_canonical(self.stored))
        spacing = orientation.spacing_to_canonical(tuple(reversed(self.geometry.spacing)))  # type: ignore[arg-type]
        return array, spacing, orientation


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


@dataclass(frozen=True)
class RawHeader:
    """The few NIfTI-1/2 header fields needed to check a file before trusting ITK's reading."""

    endian: str
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) * self.bitpix // 8


_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_raw_header(path: Path) -> RawHeader | None:
    """Parse the NIfTI header directly; None if this is not a NIfTI-1/2 file."""
    try:
        with _open(path) as f:
            head = f.read(544)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            vox = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            vox = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    n = max(1, min(int(dim[0]), 7))
    return RawHeader(endian, tuple(int(d) for d in dim[1 : n + 1]), int(datatype), int(bitpix), max(vox, 348))


def check_complete(path: Path, header: RawHeader) -> None:
    """Catch truncated files, which ITK reads without complaint (the missing part comes out as zeros).

    For .nii.gz the gzip trailer stores the uncompressed size (mod 2**32): cheap, no decompression.
    """
    expected = header.vox_offset + header.data_bytes
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if isize != expected % 2**32:
            raise ScanError(f"is truncated or corrupt (its gzip stream does not end with the {expected} bytes the header describes)")
    elif path.stat().st_size < expected:
        raise ScanError(f"is truncated ({path.stat().st_size} bytes, the header needs {expected})")


def _nonfinite(path: Path, header: RawHeader, shape: tuple[int, ...]) -> np.ndarray | None:
    """Where a float file holds NaN/inf (ITK turns them into 0, which is water, not air)."""
    code = _FLOAT_TYPES.get(header.datatype)
    if code is None:
        return None
    with _open(path) as f:
        f.seek(header.vox_offset)
        data = np.frombuffer(f.read(header.data_bytes), dtype=header.endian + code)
    bad = ~np.isfinite(data)
    return bad.reshape(shape) if bad.any() and bad.size == int(np.prod(shape)) else None


def read_scan(path: Path) -> Scan:
    """Read a CT scan and check it (truncation, dimensions, NaNs, Hounsfield range)."""
    import SimpleITK as sitk

    header = read_raw_header(path)
    if header is not None:
        check_complete(path, header)

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
    nonfinite = _nonfinite(path, header, array.shape) if header is not None else None
    if nonfinite is not None:
        array[nonfinite] = np.nan

    warnings = _check_values(array, geometry)
    return Scan(path=path, stored=array, geometry=geometry, warnings=warnings)


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
