"""End to end on the real scans in ../shared/data/ct and on broken inputs, on the CPU."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import app.fine
import app.nifti
import app.pipeline
from app.geometry import Box
from app.backend import Backend, Placement, TorchBackend
from app.model import Model, load_model
from app.pipeline import STAGES, Options, SetupError, Stages, predict_folder
from app.weights import read_spec
from tests.helpers import REAL_CASES, make_weights, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_weights(tmp_path_factory.mktemp("weights"))


def _opts(weights, **kw):
    return Options(weights=weights, device="cpu", **kw)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "app", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def real_run(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    timings = out / "timings.jsonl"
    proc = _run_cli("predict", "-i", REAL_CASES[0].parent, "-o", out, "--weights", weights, "--device", "cpu", "--timings", timings)
    return proc, out, timings


def test_real_scans_keep_their_geometry_exactly(real_run):
    proc, out, _ = real_run
    assert proc.returncode == 0, proc.stderr
    assert len(REAL_CASES) == 3
    for scan in REAL_CASES:
        mask_path = out / scan.name.replace("_0000.nii.gz", ".nii.gz")
        img, mask = sitk.ReadImage(str(scan)), sitk.ReadImage(str(mask_path))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert mask.GetSize() == img.GetSize()
        assert mask.GetSpacing() == img.GetSpacing()
        assert mask.GetOrigin() == img.GetOrigin()
        assert mask.GetDirection() == img.GetDirection()
        arr = sitk.GetArrayViewFromImage(mask)
        labels = set(np.unique(arr)) - {0}
        assert labels and labels <= set(range(1, 15)), labels
        for organ in labels - {14}:  # one component per organ after cleanup
            assert cc3d.connected_components(arr == organ, connectivity=26, return_N=True)[1] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_timings_are_logged_and_written(real_run):
    proc, _, timings = real_run
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    assert [r["case"] for r in rows] == [p.name for p in REAL_CASES]
    for r in rows:
        assert all(r[s] >= 0 for s in (*STAGES, "total"))
        assert abs(r["total"] - sum(r[s] for s in STAGES)) < 1e-3
        assert r["device"] == "cpu"
    assert proc.stderr.count("read ") >= 3 and "total" in proc.stderr


def test_scan_dtype_does_not_change_the_mask(weights, tmp_path):
    """The same real scan stored as int16, float32, float64 and with NaN voxels gets the same mask."""
    src = sitk.ReadImage(str(REAL_CASES[-1]))  # TS_example_sm, int16 HU
    inp = tmp_path / "in"
    inp.mkdir()
    for name, pixel in (("i16", sitk.sitkInt16), ("f32", sitk.sitkFloat32), ("f64", sitk.sitkFloat64)):
        sitk.WriteImage(sitk.Cast(src, pixel), str(inp / f"{name}_0000.nii.gz"))
    arr = sitk.GetArrayFromImage(src).astype(np.float32)
    nan = np.zeros(arr.shape, bool)
    nan[:, :4, :4] = True  # a corner of air: NaN becomes the scan minimum there, and both clip to the models' -1000
    assert (arr[nan] <= -1000).all() and arr.min() <= -1000
    arr[nan] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(src)
    sitk.WriteImage(img, str(inp / "nan_0000.nii.gz"))
    results = predict_folder(inp, tmp_path / "out", _opts(weights))
    assert all(r.ok for r in results)
    masks = {r.name[:-12]: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{r.name[:-12]}.nii.gz"))) for r in results}
    assert masks["i16"].any()
    for name in ("f32", "f64"):
        assert np.array_equal(masks[name], masks["i16"]), name
    assert np.array_equal(masks["nan"][~nan], masks["i16"][~nan])


def _reoriented(img: sitk.Image, code: str) -> sitk.Image:
    return sitk.DICOMOrient(img, code)


def test_orientation_does_not_change_the_anatomy(weights, tmp_path):
    """The same scan as LPS, RAS, one axis flipped and axes permuted: same labels in space."""
    src = sitk.ReadImage(str(REAL_CASES[-1]))  # TS_example_sm: small, 12 organs
    codes = ["LPS", "RAS", "LPI", "SLP", "AIR"]
    inp = tmp_path / "in"
    inp.mkdir()
    for code in codes:
        variant = _reoriented(src, code)
        sitk.WriteImage(variant, str(inp / f"case{code}_0000.nii.gz"))
    out = tmp_path / "out"
    results = predict_folder(inp, out, _opts(weights))
    assert all(r.ok for r in results)
    ref = sitk.ReadImage(str(out / "caseLPS.nii.gz"))
    ref_arr = sitk.GetArrayFromImage(ref)
    assert len(np.unique(ref_arr)) > 2
    for code in codes[1:]:
        other = sitk.ReadImage(str(out / f"case{code}.nii.gz"))
        assert other.GetDirection() != ref.GetDirection()
        same_frame = sitk.Resample(other, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        assert np.array_equal(sitk.GetArrayFromImage(same_frame), ref_arr), code


def test_roi_crop_is_pasted_back_in_place(weights, tmp_path):
    """With a coarse mask in one corner, only that box (plus margin) is segmented."""
    arr = np.full((40, 64, 64), -1000, np.int16)
    arr[5:15, 10:20, 30:50] = 60
    inp = tmp_path / "in"
    write_image(inp / "box_0000.nii.gz", arr, spacing=(1.0, 1.0, 2.0))
    seen = {}

    def fake_coarse(model, image, spacing):
        coarse = np.zeros((10, 16, 16), np.uint8)
        coarse[2:4, 4:6, 7:12] = 1  # 20 coarse voxels of 128 mm^3: 2.6 mL, an organ rather than a speck
        return coarse

    real_segment = Stages.default().segment_crop

    def spy(model, crop, spacing, upsample, case, scales):
        seen["shape"] = tuple(crop.shape)
        return real_segment(model, crop, spacing, upsample, case, scales)

    # roi_grow=0: the untrained test model labels voxels on the crop's faces too (growth: the next test)
    results = predict_folder(inp, tmp_path / "out", _opts(weights, margin_mm=4.0, roi_grow=0), Stages(coarse_labels=fake_coarse, segment_crop=spy))
    assert results[0].ok
    # coarse box z 8..16, y 16..24, x 28..48 on the full grid; the 4 mm margin is 2 slices of
    # 2 mm along z and 4 voxels of 1 mm in-plane
    expected = Box((6, 12, 24), (18, 28, 52))
    assert results[0].info["roi_box"] == [list(expected.start), list(expected.stop)]
    assert seen["shape"] == expected.shape
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "box.nii.gz")))
    outside = np.ones(mask.shape, bool)
    outside[expected.slices] = False
    assert not mask[outside].any()


def test_an_organ_cut_by_the_coarse_box_is_segmented_whole(weights, tmp_path, caplog):
    """A coarse model that saw part of an organ gives a box that cuts it; the fine model's organ then
    stops flat at the crop's face. The engine grows the box on those faces and segments again."""
    arr = np.full((40, 64, 64), -1000, np.int16)
    arr[5:30, 10:50, 12:52] = 60  # the organ: 25 x 40 x 40 voxels of 1 x 1 x 2 mm
    write_image(tmp_path / "in" / "cut_0000.nii.gz", arr, spacing=(2.0, 1.0, 1.0))

    def fake_coarse(model, image, spacing):
        coarse = np.zeros((10, 16, 16), np.uint8)
        coarse[2:4, 4:8, 4:8] = 1  # a corner of it: full-grid box z 8..16, y 16..32, x 16..32
        return coarse

    def by_intensity(model, crop, spacing, upsample, case, scales):  # a fine model that finds the organ wherever it sees it
        import torch

        return torch.from_numpy((crop > 0).astype(np.uint8))

    stages = Stages(coarse_labels=fake_coarse, segment_crop=by_intensity)
    with caplog.at_level(logging.INFO, logger="app"):
        results = predict_folder(tmp_path / "in", tmp_path / "grown", _opts(weights, margin_mm=2.0), stages)
    assert results[0].ok and results[0].info["roi_grown"] >= 1
    assert "segmenting a grown ROI" in caplog.text
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "grown" / "cut.nii.gz")))
    assert np.array_equal(mask, (arr > 0).astype(np.uint8))
    results = predict_folder(tmp_path / "in", tmp_path / "kept", _opts(weights, margin_mm=2.0, roi_grow=0), stages)
    cut = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "kept" / "cut.nii.gz")))
    assert results[0].info["roi_grown"] == 0 and 0 < cut.sum() < 0.2 * mask.sum()  # what the coarse box alone gives


def test_coarse_finding_nothing_falls_back_to_the_whole_scan(weights, tmp_path, caplog):
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.full((12, 40, 40), -1000, np.int16))
    stages = replace(Stages.default(), coarse_labels=lambda m, i, s: np.zeros((4, 4, 4), np.uint8))
    with caplog.at_level(logging.INFO, logger="app"):
        results = predict_folder(tmp_path / "in", tmp_path / "out", _opts(weights), stages)
    assert results[0].ok and results[0].info["roi_fraction"] == 1.0
    assert "coarse model found no organ; segmenting the whole scan" in caplog.text


def test_empty_input_folder_and_unwritable_output(weights, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run_cli("predict", "-i", tmp_path / "empty", "-o", tmp_path / "o", "--weights", weights, "--device", "cpu")
    assert proc.returncode == 2
    assert "no NIfTI scans" in proc.stderr and str(tmp_path / "empty") in proc.stderr
    assert "Traceback" not in proc.stderr
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.zeros((8, 8, 8), np.int16))
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    proc = _run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "blocker" / "out", "--weights", weights, "--device", "cpu")
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weights_is_a_clear_error_at_start(tmp_path):
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.zeros((8, 8, 8), np.int16))
    with pytest.raises(SetupError, match="weights folder not found"):
        predict_folder(tmp_path / "in", tmp_path / "out", Options(weights=tmp_path / "nowhere", device="cpu"))


def test_a_failed_write_leaves_no_partial_file(weights, tmp_path, monkeypatch):
    arr = np.full((8, 32, 32), -1000, np.int16)
    write_image(tmp_path / "in" / "a_0000.nii.gz", arr)
    write_image(tmp_path / "in" / "b_0000.nii.gz", arr)
    real_write = sitk.WriteImage

    def flaky(image, path, *a, **kw):
        if "a.nii.gz" in str(path):
            Path(path).write_bytes(b"half a file")
            raise RuntimeError("disk full")
        return real_write(image, path, *a, **kw)

    monkeypatch.setattr(sitk, "WriteImage", flaky)
    results = predict_folder(tmp_path / "in", tmp_path / "out", _opts(weights))
    assert [r.ok for r in results] == [False, True]
    assert "disk full" in results[0].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.nii.gz"]


class _FakeGpu(Backend):
    """A device that runs out of memory on its first ``failures`` tiles, then works; its fallback is the CPU."""

    def __init__(self, spec, failures: int) -> None:
        super().__init__(Placement("torch", "cpu", "fp32"))
        self.spec, self.failures, self.calls = spec, failures, 0
        self.torch = TorchBackend(spec, self.placement)

    def __call__(self, tile):
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.torch(tile)

    def fallback(self):
        self.fell_back = TorchBackend(self.spec, Placement("torch", "cpu", "fp32"))
        return self.fell_back


def test_out_of_memory_retries_smaller_tiles_then_the_fallback(weights, caplog):
    spec = read_spec(weights / "fine", "fine")
    crop = np.full((8, 64, 64), -1000, np.int16)
    crop[2:6, 16:48, 16:48] = 40
    reference = app.fine.segment_crop(load_model(spec, Placement("torch", "cpu", "fp32")), crop, (4.0, 3.0, 3.0))
    gpu = _FakeGpu(spec, failures=1)
    with caplog.at_level(logging.WARNING, logger="app"):
        labels = app.fine.segment_crop_with_fallback(Model(spec, gpu, torch.as_tensor(spec.lut)), crop, (4.0, 3.0, 3.0), "logits", "a")
    assert "retrying with smaller tiles [8, 32, 32]" in caplog.text  # half the (16, 64, 64) patch, a multiple of the stride
    assert labels.shape == reference.shape and gpu.calls > 1 and not hasattr(gpu, "fell_back")
    gpu = _FakeGpu(spec, failures=10**6)
    with caplog.at_level(logging.WARNING, logger="app"):
        labels = app.fine.segment_crop_with_fallback(Model(spec, gpu, torch.as_tensor(spec.lut)), crop, (4.0, 3.0, 3.0), "logits", "a")
    assert "still out of memory; running the fine stage on torch on cpu, fp32" in caplog.text
    assert torch.equal(labels, reference)  # the fallback runs the full tiles: the same labels


def test_an_error_that_is_not_out_of_memory_is_not_retried(weights):
    spec = read_spec(weights / "fine", "fine")

    class Broken(_FakeGpu):
        def __call__(self, tile):
            raise ValueError("a bug, not a full device")

    with pytest.raises(ValueError, match="a bug"):
        app.fine.segment_crop_with_fallback(Model(spec, Broken(spec, 0), torch.as_tensor(spec.lut)), np.zeros((8, 64, 64), np.int16), (4.0, 3.0, 3.0), "logits", "a")


def test_whole_crop_tiling_keeps_the_geometry(weights, tmp_path):
    shutil.copy(REAL_CASES[-1], tmp_path / "x_0000.nii.gz")
    results = predict_folder(tmp_path, tmp_path / "out", _opts(weights, tiling="whole"))
    assert results[0].ok
    mask = sitk.ReadImage(str(tmp_path / "out" / "x.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(REAL_CASES[-1])).GetSize()
    assert len(np.unique(sitk.GetArrayFromImage(mask))) > 1


def test_one_pass_pads_an_input_thinner_than_a_patch_as_the_tiles_do(tmp_path):
    """A slab thinner than the patch: one pass pads it to a patch, as the sliding window (and the
    training patches) pad it, so a stored-statistics model gives the tiled logits exactly there
    (padding only to the network's stride computes something the model never saw)."""
    spec = read_spec(make_weights(tmp_path / "w", fine_norm="batch") / "fine", "fine")
    image = torch.randn(6, 40, 52, generator=torch.Generator().manual_seed(0))  # patch (16, 64, 64)
    out = {t: load_model(replace(spec, tiling=t), Placement("torch", "cpu", "fp32")).logits(image) for t in ("whole", "sliding")}
    assert torch.allclose(out["whole"], out["sliding"], atol=1e-5)


def test_an_input_above_the_one_pass_limit_runs_as_large_tiles(tmp_path):
    """One pass's memory grows with the input: above ``whole_max_voxels`` the model runs tiles of
    at most that, with the one pass's labels."""
    spec = read_spec(make_weights(tmp_path / "w", fine_norm="batch") / "fine", "fine")
    image = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 40, 160, 200, generator=torch.Generator().manual_seed(0)), 3, 1, 1)[0, 0] * 3
    one = load_model(replace(spec, tiling="whole"), Placement("torch", "cpu", "fp32")).logits(image)
    model = load_model(replace(spec, tiling="whole", whole_max_voxels=image.numel() // 2), Placement("torch", "cpu", "fp32"))
    seen = []
    run = model.backend.__call__

    class Spy(type(model.backend)):
        def __call__(self, tile):
            seen.append(tile.numel())
            return run(tile)

    model.backend.__class__ = Spy
    tiled = model.logits(image)
    assert 1 < len(seen) <= 4 and max(seen) <= image.numel() // 2  # a few large tiles, not the model's 16 x 64 x 64
    # a random 15-class network ties often: measured 0.9936 of voxels (a tiling bug: far below)
    assert (tiled.argmax(0) == one.argmax(0)).float().mean() >= 0.99


def test_shards_cover_every_case_exactly_once(weights, tmp_path):
    scan = np.full((8, 32, 32), -1000, np.int16)
    scan[2:6, 8:24, 8:24] = 40
    names = [f"c{i}" for i in range(7)]
    for name in names:
        write_image(tmp_path / "in" / f"{name}_0000.nii.gz", scan)
    written = []
    for k in range(3):
        out = tmp_path / f"out{k}"
        proc = _run_cli("predict", "-i", tmp_path / "in", "-o", out, "--weights", weights, "--device", "cpu", "--shard", f"{k}/3", "--quiet")
        assert proc.returncode == 0, proc.stderr
        written += sorted(p.name for p in out.iterdir())
    assert sorted(written) == sorted(f"{n}.nii.gz" for n in names)  # each case once, in one shard
    bad = _run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "o", "--shard", "3/3")
    assert bad.returncode == 2 and "K must be in 0..N-1" in bad.stderr


def test_no_roi_and_label_upsampling_modes(weights, tmp_path):
    shutil.copy(REAL_CASES[-1], tmp_path / "x_0000.nii.gz")
    a = predict_folder(tmp_path, tmp_path / "a", _opts(weights, use_roi=False, upsample="labels", keep_largest=()))
    assert a[0].ok and a[0].info["roi_fraction"] == 1.0
    predict_folder(tmp_path, tmp_path / "b", _opts(weights, use_roi=False, upsample="logits", keep_largest=()))
    ma = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "x.nii.gz")))
    mb = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "x.nii.gz")))
    assert ma.shape == mb.shape and (ma == mb).mean() > 0.8
