"""Reading and checking CT scans, and writing masks atomically with the input's geometry."""

from __future__ import annotations

import gzip
import os
import re
import socket
import struct
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .orientation import Orientation, orientation_from_direction
from .upsampled import describe, repeated_planes

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

    def layout(self, target: str = "LPS", copy: bool = True) -> tuple[np.ndarray, tuple[float, float, float], Orientation]:
        """(array, spacing in mm, orientation) in a model's layout; permutations and flips only.

        ``copy=False`` gives a view of the stored voxels (negative strides where flipped): the
        engine reads from it only what each stage needs instead of copying the scan.
        """
        orientation = orientation_from_direction(np.array(self.geometry.direction), target)
        array = orientation.to_canonical(self.stored)
        if copy:
            array = np.ascontiguousarray(array)
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
    """(NIfTI scans, other files) in a folder, sorted; hidden files are ignored.

    Every NIfTI-named entry counts as a scan, a broken link or an unreadable file too, so that
    reading it reports why it cannot be segmented instead of dropping it without a word.
    """
    scans, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if is_nifti(p):
            scans.append(p)
        elif p.is_file():
            others.append(p)
    return scans, others


def output_collisions(scans: list[Path]) -> dict[Path, str]:
    """Scans whose masks would land on the same file (``X.nii.gz`` and ``X_0000.nii.gz``), with the reason.

    Neither is segmented: which one should win is the user's call, and a silent overwrite is not.
    """
    by_output: dict[str, list[Path]] = defaultdict(list)
    for p in scans:
        by_output[f"{case_name(p)}.nii.gz"].append(p)
    reasons = {}
    for out, group in by_output.items():
        if len(group) > 1:
            names = " and ".join(p.name for p in group)
            for p in group:
                reasons[p] = f"{names} would both be written as {out}; rename one of them"
    return reasons


def _one_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = [ln for ln in lines if "description:" in ln.lower() or "error" in ln.lower()]
    text = (detail or lines or [type(err).__name__])[-1]
    return re.sub(r"^.*?[Dd]escription:\s*", "", text)[:300]


@dataclass(frozen=True)
class RawHeader:
    """The few NIfTI-1/2 header fields needed to check a file before trusting ITK's reading."""

    version: int  # 1 or 2 (NIfTI-1 or NIfTI-2)
    endian: str
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: tuple[float, ...]  # voxel size per dimension, as stored (ITK reads 0 as 1 mm, without a word)

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) * self.bitpix // 8


_FLOAT_TYPES = {16: "f4", 64: "f8"}


def is_gzip(path: Path) -> bool:
    """By the file's first bytes, not its name (an uncompressed file named .nii.gz reads fine in ITK)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


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
            pixdim = struct.unpack(endian + "8f", head[76:108])
            vox = int(struct.unpack(endian + "f", head[108:112])[0])
            version = 1
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            vox = struct.unpack(endian + "q", head[168:176])[0]
            version = 2
            break
    else:
        return None
    n = max(1, min(int(dim[0]), 7))
    dims, pix = tuple(int(d) for d in dim[1 : n + 1]), tuple(float(v) for v in pixdim[1 : n + 1])
    return RawHeader(version, endian, dims, int(datatype), int(bitpix), max(vox, 348), pix)


def check_spacing(header: RawHeader) -> None:
    """Refuse a voxel size of 0 or below: ITK silently reads 0 as 1 mm and a negative one as a flip
    that other readers (which follow the sform) do not make, so any mask would be at the wrong scale."""
    for axis, size in zip("xyz", header.pixdim[:3]):
        if not np.isfinite(size) or size <= 0:
            raise ScanError(f"has voxel size {size:g} mm along {axis} in its header (pixdim); the scale of the scan is unknown")


def check_readable(path: Path) -> None:
    """Say why a scan cannot be opened: a broken link, a vanished file, or no permission."""
    if path.is_symlink() and not path.exists():
        raise ScanError(f"is a broken link (it points to {os.readlink(path)}, which does not exist)")
    if not path.exists():
        raise ScanError("no longer exists (removed while the run was going?)")
    if not path.is_file():
        raise ScanError("is not a file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise ScanError("cannot be opened: permission denied") from None
    except OSError as e:
        raise ScanError(f"cannot be opened ({e.strerror or e})") from None


def check_complete(path: Path, header: RawHeader) -> None:
    """Catch truncated files, which ITK reads without complaint (the missing part comes out as zeros).

    For .nii.gz the gzip trailer stores the uncompressed size (mod 2**32): cheap, no decompression.
    """
    expected = header.vox_offset + header.data_bytes
    if is_gzip(path):
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

    check_readable(path)
    header = read_raw_header(path)
    if header is None:
        raise ScanError("is empty (0 bytes)" if path.stat().st_size == 0 else "is not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if is_gzip(path) and not path.name.lower().endswith(".gz"):
        raise ScanError("is gzip-compressed but named .nii; rename it to .nii.gz")
    if header.version == 2:
        raise ScanError("is a NIfTI-2 file, which ITK (the reader used here) does not open; save it as NIfTI-1 (e.g. nibabel.Nifti1Image)")
    check_complete(path, header)
    check_spacing(header)

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")  # the name's case or a missing .gz must not make ITK guess
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
    nonfinite = _nonfinite(path, header, array.shape)
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
    if runs := repeated_planes(array):
        warnings.append(describe(runs, tuple(geo.spacing[::-1])))
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
    write_atomically(path, lambda tmp: sitk.WriteImage(image, tmp, useCompression=True), suffix=".tmp.nii.gz")


def write_atomically(path: Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """``write(tmp)`` into a hidden temp file beside ``path``, then rename: a reader never sees half a file.

    The temp name carries host and process id, so ``remove_stale_temps`` can tell a killed run's
    leftover from a file another live run is writing.
    """
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
# .NAME.HOST-PID.RANDOM.tmp[.nii.gz]: who wrote a temp file, so a later run can tell a dead writer's leftover
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp(\.nii\.gz)?$")
STALE_TEMP_S = 600.0  # a temp file is written within seconds; one untouched this long has no writer left


def _temp_prefix(name: str) -> str:
    return f".{name}.{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(folder: Path, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Delete temp files that a killed run left in ``folder``; return what was removed.

    A temp file of a process on this host is stale once that process is gone; one from another
    host (or a container before this one, or an older version's unnamed one) once it is
    ``max_age_s`` old. A live writer's file is
    never touched, so runs sharing an output folder (shards) do not disturb each other.
    """
    removed = []
    now = time.time()
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if not (m or (p.name.startswith(".") and p.name.endswith(".tmp.nii.gz"))) or not p.is_file():
            continue
        if m and m["host"] == _HOST:
            stale = int(m["pid"]) != os.getpid() and not _alive(int(m["pid"]))
        else:
            stale = now - p.stat().st_mtime > max_age_s
        if stale:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_writable(folder: Path) -> None:
    """Fail early, before any work, when the output folder cannot take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=_temp_prefix("write-test"), suffix=".tmp"):
            pass
    except OSError as e:
        raise ScanError(f"output folder {folder} is not writable ({e.strerror or e})") from None
