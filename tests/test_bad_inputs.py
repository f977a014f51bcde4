"""Every kind of unusual input a user may hand the CLI, in one folder run, run as an ordinary user.

Checked: the exit code, one clear line per bad file naming it and the reason, every good case
written with the input's exact geometry, and nothing else left in the output folder.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import app.nifti
from tests.helpers import REAL_CASES, make_weights, open_tmpdir, unprivileged, write_image

REPO = Path(__file__).resolve().parents[1]


def _body(shape=(16, 48, 48)) -> np.ndarray:
    """Air around a soft-tissue block: a tiny CT in Hounsfield units."""
    arr = np.full(shape, -1000, np.int16)
    z, y, x = shape
    arr[z // 4 : z - z // 4, y // 5 : y - y // 5, x // 5 : x - x // 5] = 40
    return arr


def _patched(folder: Path, name: str, array: np.ndarray, patch: dict[int, bytes], compress: bool = True) -> None:
    """Write a NIfTI with some header bytes overwritten (offset -> bytes), optionally gzipped."""
    tmp = folder / f".{name}.nii"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp))
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    for offset, value in patch.items():
        data[offset : offset + len(value)] = value
    if compress:
        (folder / f"{name}.nii.gz").write_bytes(gzip.compress(bytes(data)))
    else:
        (folder / f"{name}.nii").write_bytes(bytes(data))


def _nib(folder: Path, name: str, img) -> None:
    nib.save(img, str(folder / f"{name}.nii.gz"))


# file name -> expected outcome: "ok", "warn:<text in a warning naming the file>", "fail:<reason>";
# outputs of "ok"/"warn" cases are named by the file's case name.
KINDS: dict[str, str] = {
    "good_0000.nii.gz": "ok",
    "zero_bytes_0000.nii.gz": "fail:is empty (0 bytes)",
    "random_bytes_0000.nii.gz": "fail:is not a NIfTI file",
    "truncated_gz_0000.nii.gz": "fail:is truncated or corrupt",
    "truncated_nii_0000.nii": "fail:is truncated",
    "uncompressed_0000.nii": "ok",
    "gz_named_nii_0000.nii": "fail:is gzip-compressed but named .nii",
    "plain_named_gz_0000.nii.gz": "ok",
    "UPPER_0000.NII.GZ": "ok",
    "plain_name.nii.gz": "ok",
    "link_0000.nii.gz": "ok",
    "broken_link_0000.nii.gz": "fail:is a broken link",
    "a_folder_0000.nii.gz": "fail:is not a file",
    "unreadable_0000.nii.gz": "fail:permission denied",
    "flat_2d_0000.nii.gz": "fail:is a 2D image",
    "fourd_1_0000.nii.gz": "ok",
    "fourd_3_0000.nii.gz": "fail:is a 4D image with 3 volumes",
    "rgb_0000.nii.gz": "fail:has 3 values per voxel",
    "float32_0000.nii.gz": "ok",
    "float64_0000.nii.gz": "ok",
    "int32_0000.nii.gz": "ok",
    "uint8_0000.nii.gz": "warn:do not look like Hounsfield units",
    "uint16_0000.nii.gz": "warn:do not look like Hounsfield units",
    "scaled_uint16_0000.nii.gz": "ok",
    "nifti2_0000.nii.gz": "fail:is a NIfTI-2 file",
    "all_zeros_0000.nii.gz": "warn:do not look like Hounsfield units",
    "constant_air_0000.nii.gz": "warn:do not look like Hounsfield units",
    "nan_voxels_0000.nii.gz": "warn:NaN/infinite voxels set",
    "all_nan_0000.nii.gz": "fail:has no finite voxel values",
    "oblique_0000.nii.gz": "ok",
    "flipped_0000.nii.gz": "ok",
    "negative_spacing_0000.nii.gz": "fail:has voxel size -2.5 mm along z",
    "zero_spacing_0000.nii.gz": "fail:has voxel size 0 mm along y",
    "thick_10mm_0000.nii.gz": "warn:coarse spacing 10 mm",
    "upsampled_0000.nii.gz": "warn:repeats slices in runs of 2 (about 5 mm, not 2.5), rows in runs of 2",
    "cube_8_0000.nii.gz": "ok",
    "tiny_0000.nii.gz": "warn:only 4 voxels along one axis",
    "one_slice_0000.nii.gz": "warn:only 1 voxels along one axis",
    "huge_header_0000.nii.gz": "fail:is truncated or corrupt",
    "clash.nii.gz": "fail:clash.nii.gz and clash_0000.nii.gz would both be written as clash.nii.gz",
    "clash_0000.nii.gz": "fail:clash.nii.gz and clash_0000.nii.gz would both be written as clash.nii.gz",
    "with space_0000.nii.gz": "ok",
    "größe_0000.nii.gz": "ok",
    "real_ct_0000.nii.gz": "ok",
}


def _build(folder: Path) -> None:
    """One file per kind above, plus files that are not scans."""
    folder.mkdir(parents=True)
    body = _body()
    spacing = (0.8, 0.8, 2.5)
    write_image(folder / "good_0000.nii.gz", body, spacing=spacing)
    good = (folder / "good_0000.nii.gz").read_bytes()
    (folder / "zero_bytes_0000.nii.gz").write_bytes(b"")
    (folder / "random_bytes_0000.nii.gz").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    (folder / "truncated_gz_0000.nii.gz").write_bytes(good[: len(good) // 2])
    write_image(folder / "uncompressed_0000.nii", body, spacing=spacing)
    plain = (folder / "uncompressed_0000.nii").read_bytes()
    (folder / "truncated_nii_0000.nii").write_bytes(plain[: len(plain) - 1000])
    (folder / "gz_named_nii_0000.nii").write_bytes(good)
    (folder / "plain_named_gz_0000.nii.gz").write_bytes(plain)
    (folder / "UPPER_0000.NII.GZ").write_bytes(good)
    (folder / "plain_name.nii.gz").write_bytes(good)
    (folder / "link_0000.nii.gz").symlink_to(folder / "good_0000.nii.gz")
    (folder / "broken_link_0000.nii.gz").symlink_to(folder / "nowhere.nii.gz")
    (folder / "a_folder_0000.nii.gz").mkdir()
    (folder / "unreadable_0000.nii.gz").write_bytes(good)
    os.chmod(folder / "unreadable_0000.nii.gz", 0o000)
    write_image(folder / "flat_2d_0000.nii.gz", body[8])
    vol = sitk.GetImageFromArray(body)
    sitk.WriteImage(sitk.JoinSeries([vol]), str(folder / "fourd_1_0000.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([vol, vol, vol]), str(folder / "fourd_3_0000.nii.gz"))
    channel = sitk.GetImageFromArray((body + 1000).clip(0, 255).astype(np.uint8))
    sitk.WriteImage(sitk.Compose(channel, channel, channel), str(folder / "rgb_0000.nii.gz"))
    for name, dtype in (("float32", np.float32), ("float64", np.float64), ("int32", np.int32)):
        write_image(folder / f"{name}_0000.nii.gz", body.astype(dtype), spacing=spacing)
    write_image(folder / "uint8_0000.nii.gz", ((body + 1000) // 8).astype(np.uint8), spacing=spacing)
    write_image(folder / "uint16_0000.nii.gz", (body + 1024).astype(np.uint16), spacing=spacing)
    scaled = nib.Nifti1Image((body + 1024).astype(np.uint16).transpose(2, 1, 0), np.diag([0.8, 0.8, 2.5, 1.0]))
    scaled.header.set_slope_inter(1.0, -1024.0)
    _nib(folder, "scaled_uint16_0000", scaled)
    _nib(folder, "nifti2_0000", nib.Nifti2Image(body.transpose(2, 1, 0), np.diag([-0.8, -0.8, 2.5, 1.0])))
    write_image(folder / "all_zeros_0000.nii.gz", np.zeros_like(body), spacing=spacing)
    write_image(folder / "constant_air_0000.nii.gz", np.full_like(body, -1024), spacing=spacing)
    nan = body.astype(np.float32)
    nan[0, :5, :5] = np.nan
    write_image(folder / "nan_voxels_0000.nii.gz", nan, spacing=spacing)
    write_image(folder / "all_nan_0000.nii.gz", np.full(body.shape, np.nan, np.float32), spacing=spacing)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    write_image(folder / "oblique_0000.nii.gz", body, spacing=spacing, direction=(c, -s, 0, s, c, 0, 0, 0, 1), origin=(-20.0, 5.5, 100.0))
    write_image(folder / "flipped_0000.nii.gz", body, spacing=spacing, direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))
    _patched(folder, "negative_spacing_0000", body, {88: struct.pack("<f", -2.5)})
    _patched(folder, "zero_spacing_0000", body, {84: struct.pack("<f", 0.0)})
    write_image(folder / "thick_10mm_0000.nii.gz", body[::4], spacing=(0.8, 0.8, 10.0))
    thumbnail = body[::2, ::2, ::2] + np.random.default_rng(1).normal(0, 15, (8, 24, 24)).astype(np.int16)  # a scan has noise
    write_image(folder / "upsampled_0000.nii.gz", thumbnail.repeat(2, 0).repeat(2, 1).repeat(2, 2), spacing=spacing)
    write_image(folder / "cube_8_0000.nii.gz", _body((8, 8, 8)))
    write_image(folder / "tiny_0000.nii.gz", body[6:10, 20:26, 20:26])
    write_image(folder / "one_slice_0000.nii.gz", body[8:9], spacing=spacing)
    _patched(folder, "huge_header_0000", body, {42: struct.pack("<3h", 2000, 2000, 2000)})
    (folder / "clash.nii.gz").write_bytes(good)
    (folder / "clash_0000.nii.gz").write_bytes(good)
    (folder / "with space_0000.nii.gz").write_bytes(good)
    (folder / "größe_0000.nii.gz").write_bytes(good)
    shutil.copy(REAL_CASES[-1], folder / "real_ct_0000.nii.gz")
    # not scans: listed as skipped, or ignored when hidden
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".hidden_0000.nii.gz").write_bytes(good)
    (folder / "a_subfolder").mkdir()


def _output_name(name: str) -> str:
    from app.nifti import case_name

    return f"{case_name(Path(name))}.nii.gz"


def _cli(inp: Path, out: Path, weights: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*unprivileged(), sys.executable, "-m", "app", "predict", "-i", str(inp), "-o", str(out), "--weights", str(weights), "--device", "cpu", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def base():
    path = open_tmpdir("bad-inputs-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def weights(base):
    return make_weights(base / "weights")


@pytest.fixture(scope="module")
def probe(base, weights):
    """One CLI run over a folder holding every kind; the input folder's name has a space and an umlaut."""
    inp = base / "in put ü"
    _build(inp)
    assert sorted(p.name for p in inp.iterdir() if not p.name.startswith(".")) == sorted({*KINDS, "notes.txt", "a_subfolder"})
    os.chmod(inp, 0o555)  # the input folder is read-only
    out = base / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    proc = _cli(inp, out, weights, "--quiet")
    return proc, inp, out


def test_probe_run_exit_code_and_output_folder(probe):
    proc, _, out = probe
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    expected = {_output_name(n) for n, outcome in KINDS.items() if not outcome.startswith("fail")}
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temp files, nothing else
    failed = [ln for ln in proc.stderr.splitlines() if "FAILED " in ln]
    assert len(failed) == sum(o.startswith("fail") for o in KINDS.values())
    assert "skipping 1 file(s) that are not NIfTI: notes.txt" in proc.stderr
    assert ".hidden" not in proc.stderr and "a_subfolder" not in proc.stderr


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind(probe, name):
    proc, inp, out = probe
    kind, _, text = KINDS[name].partition(":")
    lines = proc.stderr.splitlines()
    mask = out / _output_name(name)
    if kind == "fail":
        assert not mask.exists() or name.startswith("clash")
        failed = [ln for ln in lines if f"FAILED {name}: " in ln]
        assert len(failed) == 1 and text in failed[0], (name, failed)
        assert any(f"ERROR {name}: " in ln and text in ln for ln in lines), name  # said when it happened, too
        return
    assert not [ln for ln in lines if f"FAILED {name}:" in ln], name
    assert mask.is_file(), name
    src = sitk.ReadImage(str(inp / name))
    if src.GetDimension() == 4:
        src = src[:, :, :, 0]
    got = sitk.ReadImage(str(mask))
    assert got.GetPixelID() == sitk.sitkUInt8
    assert got.GetSize() == src.GetSize() and got.GetSpacing() == src.GetSpacing(), name
    assert got.GetOrigin() == src.GetOrigin() and got.GetDirection() == src.GetDirection(), name
    warned = [ln for ln in lines if "WARNING" in ln and name in ln]
    if kind == "warn":
        assert any(text in ln for ln in warned), (name, warned)
    else:
        assert not [ln for ln in warned if "Hounsfield" in ln or "NaN" in ln], (name, warned)


def test_missing_output_folder_is_created(base, weights):
    inp = base / "one"
    write_image(inp / "a_0000.nii.gz", _body())
    (base / "made").mkdir()
    os.chmod(base / "made", 0o777)
    proc = _cli(inp, base / "made" / "here", weights)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in (base / "made" / "here").iterdir()] == ["a.nii.gz"]


@pytest.mark.parametrize("problem", ["a file", "read-only", "the input folder"])
def test_unusable_output_folder_stops_before_any_work(base, weights, problem):
    inp = base / f"single-{problem.replace(' ', '-')}"
    write_image(inp / "a_0000.nii.gz", _body())
    if problem == "a file":
        out = base / "blocker.txt"
        out.write_text("a file where the output folder should go")
        message = "is not writable"
    elif problem == "read-only":
        out = base / "read-only"
        out.mkdir()
        os.chmod(out, 0o555)
        message = "is not writable"
    else:
        out = inp
        message = "is the input folder"
    proc = _cli(inp, out, weights)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and message in errors[0] and str(out) in errors[0], errors
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in inp.iterdir()) == ["a_0000.nii.gz"]


def test_a_run_killed_while_writing_leaves_a_temp_file_the_next_run_removes(base, weights):
    """kill -9 in the middle of a write (the process kills itself inside write_atomically), then a new run."""
    inp, out = base / "killed-in", base / "killed-out"
    write_image(inp / "a_0000.nii.gz", _body())
    out.mkdir()
    os.chmod(out, 0o777)
    kill = "import os, signal, sys; from pathlib import Path; from app.nifti import write_atomically; " \
           "write_atomically(Path(sys.argv[1]), lambda tmp: (Path(tmp).write_bytes(b'half'), os.kill(os.getpid(), signal.SIGKILL)))"
    died = subprocess.run([*unprivileged(), sys.executable, "-c", kill, str(out / "a.nii.gz")], cwd=REPO, check=False)
    assert died.returncode == -9
    leftovers = [p.name for p in out.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".a.nii.gz.") and leftovers[0].endswith(".tmp")
    old = time.time() - 3600
    others = {
        ".b.nii.gz.elsewhere-7.k2j3h4x9.tmp.nii.gz": (old, False),  # another host's, an hour old: stale
        ".c.nii.gz.elsewhere-7.k2j3h4x9.tmp.nii.gz": (time.time(), True),  # another host's, being written now
        f".d.nii.gz.{app.nifti._HOST}-{os.getpid()}.k2j3h4x9.tmp.nii.gz": (old, True),  # a live process on this host
        ".e.nii.gz.k2j3h4x9.tmp.nii.gz": (old, False),  # an older version's unnamed temp file, an hour old
    }
    for name, (mtime, _) in others.items():
        (out / name).write_bytes(b"half")
        os.utime(out / name, (mtime, mtime))
    proc = _cli(inp, out, weights)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "removed 3 temporary file(s) left" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.nii.gz", *(n for n, (_, kept) in others.items() if kept)])
