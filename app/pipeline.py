"""The orchestrator: read -> coarse -> ROI -> fine -> cleanup -> write, per case in a folder."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .geometry import Box, bounding_box, cut_faces, grow_faces, intersect
from .labels import ORGANS
from .laterality import LIVER, SPLEEN, STOMACH, liver_right_of_body, organs_right_of_liver
from .nifti import Scan, ScanError, check_writable, find_scans, output_collisions, output_path, read_scan, remove_stale_temps, write_mask
from .orientation import Orientation, left_right_axis, patient_left_steps
from .progress import Progress, seconds_since_process_start
from .weights import ModelSpec, WeightsError, read_spec

log = logging.getLogger("app")

STAGES = ("read", "coarse", "roi", "fine", "cleanup", "write")
CUT_AREA_MM2 = 100.0  # organ area on an ROI face that says the face cuts through an organ (not a stray voxel)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class SetupError(Exception):
    """A problem that stops the whole run before any case (no inputs, bad weights, unwritable output)."""


@dataclass
class Options:
    weights: Path = DEFAULT_WEIGHTS
    device: str = "auto"
    precision: str = "auto"  # auto (FP16 on CUDA; on the CPU the fine model's cpu_precision where it runs natively, else FP32) | fp32 | fp16 | bf16
    margin_mm: float = 20.0
    roi_gap_mm: float = 60.0  # coarse blobs farther than this from the main organ cluster stay out of the ROI
    roi_grow: int = 2  # times the ROI may grow where the fine model's organs reach its faces (0: never)
    upsample: str = "logits"
    keep_largest: tuple[int, ...] | None = ORGANS  # None: every label
    use_roi: bool = True
    backend: str = "auto"  # auto | torch | onnxruntime | openvino (app.backend decides what auto means)
    tiling: str = "model"  # the fine model's own setting (config.json input.tiling), or sliding | whole
    timings: Path | None = None
    progress: bool = True  # case i of N, stage and time left on stderr (off: --quiet)
    preview: Path | None = None  # folder for one PNG per case (mask over the scan), or None
    shard: tuple[int, int] | None = None  # (k, n): only the sorted cases i with i % n == k (Slurm arrays, Indexed Jobs)
    skip_existing: bool = False  # resume: cases whose mask is already in the output folder are not run again
    laterality: str = "anatomy"  # anatomy: where organs lie mirrored to the header, segment the scan mirrored | header: keep the header's sides
    tta_scales: tuple[float, ...] = (1.0,)  # fine-stage passes, organs seen this many times their size, averaged (--tta: cli.TTA_SCALES)


@dataclass
class Segmentation:
    """One pass of the models over a scan: the mask in its stored layout, the ROI in the fine
    model's layout, how often it grew, the labels the fine model found, and organs lying right of
    the liver (``laterality.organs_right_of_liver``)."""

    mask: np.ndarray
    box: Box | None
    grown: int
    found: list[int]
    right_of_liver: dict[str, float]
    roi_fraction: float
    liver_right_mm: float | None = None  # the liver's centre right of the body's (laterality.liver_right_of_body), when asked


MIN_LIVER_RIGHT_MM = 30.0  # the real scans here: 71-76 mm as read, 63 mm for MSD_spleen_8 mirrored; 20 mm for TS_example_sm mirrored


def normal_body(seg: Segmentation) -> bool:
    """A pass that shows a normal body: liver right of the body's midline, no spleen or stomach right
    of the liver, and at least one of them found. Only such a pass on the mirrored scan replaces the
    first one."""
    return (not seg.right_of_liver and LIVER in seg.found and bool({SPLEEN, STOMACH} & set(seg.found))
            and seg.liver_right_mm is not None and seg.liver_right_mm >= MIN_LIVER_RIGHT_MM)


def _listed(right_of_liver: dict[str, float]) -> str:
    return ", ".join(f"{n} {d:.0f} mm" for n, d in right_of_liver.items())


@dataclass
class CaseResult:
    name: str
    ok: bool
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    info: dict[str, object] = field(default_factory=dict)


def _no_report(stage: str) -> None:
    return None


class Stopwatch:
    """Per-stage wall times; ``sync`` waits for the device before each reading so times are real."""

    def __init__(self, sync: Callable[[], None], on_stage: Callable[[str], None] = _no_report) -> None:
        self.sync = sync
        self.on_stage = on_stage
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.on_stage(name)
        t0 = time.perf_counter()
        yield
        self.sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


@dataclass(frozen=True)
class Stages:
    """The stage functions an ``Engine`` calls. Tests hand in their own; the defaults are imported
    only when the engine starts, so that torch loads while the first scan is being read."""

    coarse_labels: Callable
    segment_crop: Callable

    @classmethod
    def default(cls) -> Stages:
        from .coarse import coarse_labels
        from .fine import segment_crop_with_fallback

        return cls(coarse_labels=coarse_labels, segment_crop=segment_crop_with_fallback)


def _timed_read(path: Path) -> tuple[Scan, float]:
    t0 = time.perf_counter()
    scan = read_scan(path)
    return scan, time.perf_counter() - t0


def load_specs(options: Options) -> tuple[ModelSpec | None, ModelSpec]:
    """Check the weights folder before any heavy import, so mistakes surface in a second."""
    fine = read_spec(options.weights / "fine", "fine")
    coarse = read_spec(options.weights / "coarse", "coarse") if options.use_roi else None
    return coarse, fine


@dataclass
class Plan:
    """What a run will do, decided before any model loads."""

    scans: list[Path]  # this run's cases (its shard), sorted
    done: dict[Path, CaseResult]  # cases settled without running: name collisions, masks already there
    todo: list[Path]
    coarse: ModelSpec | None
    fine: ModelSpec


def plan_run(in_dir: Path, out_dir: Path, options: Options) -> Plan:
    """Every check that can fail a whole run, in a second: folders, weights, name collisions; then
    the shard, and with ``skip_existing`` the cases whose mask is already written (a temp file left
    by an interrupted write is not a mask: it is removed here when its writer is gone)."""
    if not in_dir.is_dir():
        raise SetupError(f"input folder {in_dir} does not exist")
    if out_dir.resolve() == in_dir.resolve():
        raise SetupError(f"output folder {out_dir} is the input folder: its masks would be read as scans by the next run; choose another output folder")
    scans, others = find_scans(in_dir)
    if others:
        log.warning("skipping %d file(s) that are not NIfTI: %s", len(others), ", ".join(p.name for p in others))
    if not scans:
        raise SetupError(f"no NIfTI scans (*.nii.gz, *.nii) in {in_dir}")
    try:
        check_writable(out_dir)
        coarse_spec, fine_spec = load_specs(options)
        if tuple(options.tta_scales) != (1.0,) and fine_spec.spacing is None:
            raise SetupError(f"{fine_spec.folder}: test-time scale augmentation needs a fine model with an input spacing, not a fixed input size")
        if options.preview is not None:
            check_writable(options.preview)
    except (ScanError, WeightsError) as e:
        raise SetupError(str(e)) from None
    removed = remove_stale_temps(out_dir)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", len(removed), out_dir)

    clashes = output_collisions(scans)  # over every case, so that shards cannot write one mask twice
    if options.shard is not None:
        scans = shard_of(scans, *options.shard)
        log.info("shard %d of %d: %d case(s)", options.shard[0], options.shard[1], len(scans))
    done = {p: failed(p.name, clashes[p]) for p in scans if p in clashes}
    if options.skip_existing:
        present = [p for p in scans if p not in done and output_path(out_dir, p).is_file()]
        done.update({p: CaseResult(p.name, ok=True, info={"skipped": "mask already written"}) for p in present})
        if present:
            log.info("skipping %d case(s) whose mask is already in %s", len(present), out_dir)
    return Plan(scans, done, [p for p in scans if p not in done], coarse_spec, fine_spec)


def predict_folder(in_dir: Path, out_dir: Path, options: Options, stages: Stages | None = None) -> list[CaseResult]:
    """Segment every scan in ``in_dir`` into ``out_dir``; one bad scan never stops the others."""
    plan = plan_run(in_dir, out_dir, options)
    results, todo = dict(plan.done), plan.todo
    if todo:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader") as reader, Progress(len(todo), options.progress) as progress:
            pending: Future = reader.submit(_timed_read, todo[0])  # overlaps reading with model loading
            engine = Engine(plan.coarse, plan.fine, options, stages)
            for i, path in enumerate(todo):
                current = pending
                if i + 1 < len(todo):
                    pending = reader.submit(_timed_read, todo[i + 1])
                progress.start_case(i + 1, path.name)
                results[path] = engine.run_case(path, current, out_dir, progress.stage)
                progress.end_case()
    ordered = [results[p] for p in plan.scans]
    log_summary(ordered)
    return ordered


def shard_of(cases: list[Path], k: int, n: int) -> list[Path]:
    """Shard ``k`` of ``n`` (from 0) of a sorted case list: every n-th case from the k-th, so that
    shards get cases of every size and together hold each case exactly once."""
    if not 0 <= k < n:
        raise SetupError(f"shard {k}/{n}: k must be in 0..{n - 1}")
    return sorted(cases)[k::n]


def failed(name: str, reason: str) -> CaseResult:
    log.error("%s: %s", name, reason)
    return CaseResult(name, ok=False, error=reason)


def log_summary(results: list[CaseResult]) -> None:
    bad = [r for r in results if not r.ok]
    skipped = sum(1 for r in results if r.ok and "skipped" in r.info)
    already = f" ({skipped} already there)" if skipped else ""
    log.info("%d of %d case(s) segmented%s", len(results) - len(bad), len(results), already)
    for r in bad:
        log.error("FAILED %s: %s", r.name, r.error)


class Engine:
    """Models loaded once, applied case by case."""

    def __init__(self, coarse_spec: ModelSpec | None, fine_spec: ModelSpec, options: Options, stages: Stages | None = None) -> None:
        from .backend import choose, coarse_placement, pick_device
        from .model import load_model

        self.options = options
        self.stages = stages or Stages.default()
        try:
            placement = choose(options.backend, pick_device(options.device), options.precision, fine_spec.cpu_precision)
            if options.tiling != "model":
                fine_spec = replace(fine_spec, tiling=options.tiling)
            auto = options.backend == "auto"
            self.coarse = load_model(coarse_spec, coarse_placement(placement), auto) if coarse_spec else None
            self.fine = load_model(fine_spec, placement, auto)
        except WeightsError as e:  # BackendError is one too
            raise SetupError(str(e)) from None
        self.device = self.fine.device
        self.startup_s: float | None = seconds_since_process_start()  # reported with the first case
        log.info("models ready: %s, %.2f s after the process started", self.fine.placement, self.startup_s)
        if tuple(options.tta_scales) != (1.0,):
            log.info("test-time scale augmentation: the fine model sees each crop with organs %s times their size, the passes averaged",
                     ", ".join(f"{s:g}" for s in options.tta_scales))

    def run_case(self, path: Path, scan_future: Future, out_dir: Path, on_stage: Callable[[str], None] = _no_report) -> CaseResult:
        name = path.name
        on_stage("read")
        try:
            scan, read_s = scan_future.result()
        except ScanError as e:
            return failed(name, str(e))
        except Exception as e:  # noqa: BLE001 - any reader failure is this case's failure only
            return failed(name, f"cannot be read ({type(e).__name__}: {e})")
        for w in scan.warnings:
            log.warning("%s: %s", name, w)
        try:
            result = self._segment(scan, out_dir, on_stage)
        except Exception as e:  # noqa: BLE001 - one bad scan never stops the others
            log.debug("traceback for %s", name, exc_info=True)
            return failed(name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        result.timings = {"read": read_s, **result.timings}
        result.timings["total"] = sum(result.timings[s] for s in STAGES)
        shown = (*STAGES, "total")
        if self.startup_s is not None:  # process start to models ready, once per process
            result.timings, shown = {"startup": self.startup_s, **result.timings}, ("startup", *shown)
            self.startup_s = None
        log.info("%s: %s", name, ", ".join(f"{s} {result.timings[s]:.2f} s" for s in shown))
        if self.options.timings:
            with open(self.options.timings, "a") as f:
                f.write(json.dumps({"case": name, **{k: round(v, 4) for k, v in result.timings.items()}, **result.info}) + "\n")
        return result

    def _segment(self, scan: Scan, out_dir: Path, on_stage: Callable[[str], None] = _no_report) -> CaseResult:
        opts, name = self.options, scan.path.name
        watch = Stopwatch(sync=self.fine.backend.sync, on_stage=on_stage)
        seg = self._labels(scan, name, watch)
        right_of_liver, mirrored = seg.right_of_liver, False
        if right_of_liver and opts.laterality == "anatomy":  # the header may swap left and right: try the scan mirrored
            axis = left_right_axis(scan.geometry.direction)
            log.info("%s: %s to the patient's right of the liver; segmenting the scan mirrored left-right", name, _listed(right_of_liver))
            other = self._labels(replace(scan, stored=np.flip(scan.stored, axis)), name, watch, side=True)
            if normal_body(other):
                seg, mirrored = replace(other, mask=np.flip(other.mask, axis), box=None), True
        if not seg.found:
            log.warning("%s: the fine model found no organ; writing an empty mask", name)
        if mirrored:
            log.warning("%s: %s to the patient's right of the liver as the header reads it, and a normal body when mirrored: the header "
                        "seems to swap left and right; organs are named as the mirrored scan shows them (its right kidney and adrenal "
                        "lie on the header's left); check the header (--laterality header keeps its sides)", name, _listed(right_of_liver))
        elif right_of_liver:
            log.warning("%s: %s to the patient's right of the liver: the header may swap left and right; organs are named "
                        "where a normal body has them, so this mask may name them wrongly", name, _listed(right_of_liver))
        with watch.stage("write"):
            out_path = output_path(out_dir, scan.path)
            write_mask(seg.mask, scan.geometry, out_path)
            if opts.preview is not None:
                _write_preview(scan, seg.mask, opts.preview / out_path.name.replace(".nii.gz", ".png"))
        info = {"device": str(self.device), "backend": str(self.fine.placement),
                "roi_box": [list(seg.box.start), list(seg.box.stop)] if seg.box is not None else None,  # None: found on the mirrored scan
                "roi_fraction": seg.roi_fraction,
                "roi_grown": seg.grown, "labels": seg.found, "right_of_liver": right_of_liver, "mirrored": mirrored}
        return CaseResult(name, ok=True, timings=watch.times, info=info)

    def _labels(self, scan: Scan, name: str, watch: Stopwatch, side: bool = False) -> Segmentation:
        """Coarse model -> ROI -> fine model (the ROI grown where organs reach its faces) ->
        cleanup: the mask in the scan's stored layout, and what was found on the way (with ``side``,
        where the liver lies in the body too)."""
        opts = self.options
        with watch.stage("coarse"):
            view, spacing, layout = scan.layout(self.fine.spec.orientation, copy=False)  # each stage copies what it reads
            box: Box | None = None
            if self.coarse is not None:
                box = self._coarse_box(scan, view, spacing, layout)
                if box is None:
                    log.warning("%s: the coarse model found no organ; segmenting the whole scan", name)
        shape = tuple(view.shape)
        with watch.stage("roi"):
            limit = Box.full(shape)  # what the fine model may see
            nonzero = bounding_box(view != 0) if self.fine.spec.crop_nonzero else None
            if nonzero is not None:  # nnU-Net predicts only inside the box of non-zero voxels
                limit = nonzero
            box = limit if box is None or intersect(box, limit).is_empty else intersect(box, limit)
        labels_np, found = self._segment_box(view, box, spacing, name, watch)
        grown = 0
        while grown < opts.roi_grow and (faces := cut_faces(labels_np, box, limit, spacing, CUT_AREA_MM2)):
            grown += 1  # the coarse box cut an organ: segment again in a box grown on those faces
            box = grow_faces(box, faces, tuple(max(int(np.ceil(opts.margin_mm / s)), n // 2) for s, n in zip(spacing, box.shape)), limit)
            log.info("%s: organs reach %d face(s) of the ROI; segmenting a grown ROI (%d of at most %d)", name, len(faces), grown, opts.roi_grow)
            labels_np, found = self._segment_box(view, box, spacing, name, watch)
        with watch.stage("cleanup"):
            left_mm = patient_left_steps(scan.geometry.direction, layout, spacing)
            right_of_liver = organs_right_of_liver(labels_np, left_mm)
            mask = np.zeros(shape, dtype=np.uint8)
            mask[box.slices] = labels_np
            liver_side = liver_right_of_body(mask, view, left_mm) if side else None
            mask = layout.from_canonical(mask)
        return Segmentation(mask, box, grown, found, right_of_liver, round(float(np.prod(box.shape)) / float(np.prod(shape)), 4), liver_side)

    def _segment_box(self, view: np.ndarray, box: Box, spacing: tuple[float, float, float], name: str, watch: Stopwatch) -> tuple[np.ndarray, list[int]]:
        """The fine model's labels in ``box`` after the cleanup, and the labels it found before it."""
        from .cleanup import keep_largest_components

        opts = self.options
        with watch.stage("roi"):
            crop = np.ascontiguousarray(view[box.slices])
        with watch.stage("fine"):
            labels = self.stages.segment_crop(self.fine, crop, spacing, opts.upsample, name, scales=opts.tta_scales)
            del crop
            # the labels found: the cleanup keeps a piece of every one (torch counts uint8 in one
            # pass; numpy's unique sorted the crop, 0.2 s)
            found = [int(v) for v in labels.reshape(-1).bincount().nonzero().flatten().tolist() if v]
            labels_np = labels.cpu().numpy()
        with watch.stage("cleanup"):
            if opts.keep_largest is None or opts.keep_largest:
                labels_np = keep_largest_components(labels_np, opts.keep_largest)
        return labels_np, found

    def _coarse_box(self, scan: Scan, view: np.ndarray, spacing: tuple[float, float, float], layout: Orientation) -> Box | None:
        """ROI in the fine model's layout; the coarse model sees the scan in its own layout."""
        from .coarse import roi_box

        coarse_labels = self.stages.coarse_labels
        assert self.coarse is not None
        if self.coarse.spec.orientation == self.fine.spec.orientation:
            return roi_box(coarse_labels(self.coarse, view, spacing), tuple(view.shape), spacing, self.options.margin_mm, self.options.roi_gap_mm)
        c_view, c_spacing, c_layout = scan.layout(self.coarse.spec.orientation, copy=False)
        c_box = roi_box(coarse_labels(self.coarse, c_view, c_spacing), c_view.shape, c_spacing, self.options.margin_mm, self.options.roi_gap_mm)
        if c_box is None:
            return None
        return layout.box_to_canonical(c_layout.box_from_canonical(c_box, c_view.shape), scan.stored.shape)


def _write_preview(scan: Scan, mask: np.ndarray, path: Path) -> None:
    """The preview PNG of a case, drawn in the canonical LPS layout whatever the model's layout."""
    from .preview import write_preview

    ct, spacing, layout = scan.layout("LPS")
    write_preview(ct, np.ascontiguousarray(layout.to_canonical(mask)), spacing, path, scan.path.name)
