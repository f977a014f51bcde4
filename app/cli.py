"""Command line: ``python -m app predict -i IN -o OUT`` (imports stay lazy for a fast start)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from .labels import ORGANS

log = logging.getLogger("app")

# --tta: the fine stage's passes, organs seen at these multiples of their size (weights/MODEL_CARD.md,
# "Test-time scale augmentation", has what they measured)
TTA_SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)


def _labels_arg(text: str) -> tuple[int, ...] | None:
    """'organs' (1-13), 'all', 'none' or a comma list such as '1,2,3'."""
    if text == "all":
        return None
    if text == "none":
        return ()
    if text == "organs":
        return ORGANS
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected organs, all, none or a list like 1,2,3; got {text!r}") from None


def _shard_arg(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N, e.g. 0/8 or $SLURM_ARRAY_TASK_ID/8."""
    try:
        k, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4; got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"shard {text}: K must be in 0..N-1")
    return k, n


def _predict_options(p: argparse.ArgumentParser) -> None:
    """The options of ``predict``, which ``cluster`` takes too."""
    p.add_argument("-i", "--input", required=True, type=Path, help="folder of CT scans (*_0000.nii.gz or *.nii.gz)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the uint8 masks")
    p.add_argument("--weights", type=Path, default=None, help="folder holding coarse/ and fine/ (default: the shipped weights/)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                   help="engine for the networks (default auto: the fastest measured for the device)")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="auto: FP16 on CUDA; on the CPU BF16 where OpenVINO runs it natively (avx512_bf16, AMX), else FP32; fp32: the same masks on every CPU")
    p.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    p.add_argument("--timings", type=Path, default=None, help="append per-case stage timings here as JSON lines")
    p.add_argument("--margin-mm", type=float, default=20.0, help="safety margin around the coarse ROI (default 20 mm)")
    p.add_argument("--roi-gap-mm", type=float, default=60.0,
                   help="coarse blobs farther than this from the main organ cluster are left out of the ROI (default 60 mm; inf keeps all)")
    p.add_argument("--roi-grow", type=int, default=2, metavar="N",
                   help="grow the ROI and segment again where organs reach its faces, at most N times (default 2; 0: never)")
    p.add_argument("--tiling", choices=("model", "sliding", "whole"), default="model",
                   help="fine stage: the model's setting (default), nnU-Net's overlapping tiles, or one pass over the crop")
    p.add_argument("--tta", dest="tta_scales", action="store_const", const=TTA_SCALES, default=(1.0,),
                   help=f"test-time scale augmentation: the fine model also sees the crop with organs {', '.join(f'{s:g}' for s in TTA_SCALES if s != 1)} "
                        f"times their size, {len(TTA_SCALES)} passes averaged (5-6x the fine stage's time on the shipped model)")
    p.add_argument("--upsample", choices=("logits", "labels"), default="logits", help="how fine predictions return to the scan grid")
    p.add_argument("--keep-largest", type=_labels_arg, default=ORGANS, metavar="LABELS",
                   help="labels reduced to their largest connected component: organs (default, 1-13), all, none, or 1,2,3")
    p.add_argument("--no-roi", action="store_true", help="skip the coarse model; run the fine model over the whole scan")
    p.add_argument("--laterality", choices=("anatomy", "header"), default="anatomy",
                   help="where the spleen or stomach lies right of the liver as the header reads it: segment the scan mirrored and keep "
                        "that if it shows a normal body, naming organs by anatomy (anatomy, default), or keep the header's sides (header)")
    p.add_argument("--preview", nargs="?", type=Path, const=True, default=None, metavar="DIR",
                   help="also write CASE.png (three views, mask over the scan, legend) beside each mask, or into DIR")
    p.add_argument("--shard", type=_shard_arg, default=None, metavar="K/N",
                   help="segment only shard K of N (K from 0) of the sorted cases: for Slurm job arrays and Kubernetes Indexed Jobs")
    p.add_argument("--skip-existing", action="store_true", help="resume an interrupted run: leave out the cases whose mask is already written")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines or bar (the per-case summary line stays)")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Abdominal CT organ segmentation (FLARE labels).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="segment every NIfTI scan in a folder")
    _predict_options(p)
    c = sub.add_parser("cluster", help="segment a folder on Ray workers (local, or a Ray cluster): models loaded once per worker")
    _predict_options(c)
    c.add_argument("--address", default=None, help="join this Ray cluster (auto, or ray://HOST:PORT); default: start a local Ray")
    c.add_argument("--workers", type=int, default=2, help="Ray workers, each one process holding the models (default 2)")
    c.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU cores Ray reserves per worker (default 1)")
    c.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0; 1 gives each worker a GPU of its own)")
    c.add_argument("--retries", type=int, default=2, help="times a case is retried when its worker dies (default 2)")
    c.add_argument("--summary", type=Path, default=None, help="summary CSV, one row per case (default OUT/cluster_summary.csv)")

    imp = sub.add_parser("import-nnunet", help="convert an nnU-Net v2 results folder into a weights folder")
    imp.add_argument("--model", required=True, type=Path, help="folder with dataset.json, plans.json and fold_X/")
    imp.add_argument("--fold", nargs="+", default=["all"], help="all, or one or more of 0..4 (several are ensembled)")
    imp.add_argument("--checkpoint", default="checkpoint_final.pth")
    imp.add_argument("--role", choices=("coarse", "fine"), default="fine")
    imp.add_argument("--configuration", default=None, help="plans configuration (default: the one the checkpoint was trained with)")
    imp.add_argument("--mirror", action="store_true", help="keep nnU-Net's test-time mirroring (slower)")
    imp.add_argument("--out", required=True, type=Path, help="weights folder to write, e.g. weights/fine")

    exp = sub.add_parser("export-onnx", help="write ONNX graphs (FP32, FP16) beside each model's tensors, for --backend onnxruntime/openvino")
    exp.add_argument("--weights", type=Path, default=None, help="a weights folder (coarse/ and fine/) or one model folder (default: the shipped weights/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.command in ("predict", "cluster"):
        return _predict(args)
    if args.command in ("import-nnunet", "export-onnx"):
        if importlib.util.find_spec("app.convert") is None:  # the challenge image holds the runtime only
            log.error("%s is an authoring tool (app/convert/), which this installation leaves out; run it from the repository", args.command)
            return 2
        return _import(args) if args.command == "import-nnunet" else _export(args)
    return 2


def _cluster(args: argparse.Namespace, options: object) -> list:
    if importlib.util.find_spec("ray") is None:
        from .pipeline import SetupError

        raise SetupError("cluster needs Ray, which this installation leaves out: pip install -r requirements-cluster.txt")
    from .cluster import ClusterOptions, run_cluster

    cluster = ClusterOptions(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             gpus_per_worker=args.gpus_per_worker, retries=args.retries, summary=args.summary)
    return run_cluster(args.input, args.output, options, cluster)  # type: ignore[arg-type]


def _export(args: argparse.Namespace) -> int:
    from .convert.export_onnx import export_onnx, model_folders
    from .pipeline import DEFAULT_WEIGHTS
    from .weights import WeightsError

    weights = args.weights or DEFAULT_WEIGHTS
    folders = model_folders(weights)
    if not folders:
        log.error("%s: no config.json, and no coarse/ or fine/ folder holding one", weights)
        return 2
    try:
        for folder in folders:
            entries = export_onnx(folder)
            log.info("wrote %s", ", ".join(str(folder / e["file"]) for e in entries.values()))
    except WeightsError as e:
        log.error("%s", e)
        return 2
    return 0


def _import(args: argparse.Namespace) -> int:
    from .convert.nnunet_import import import_nnunet
    from .weights import WeightsError

    try:
        cfg = import_nnunet(args.model, [str(f) for f in args.fold], args.checkpoint, args.role, args.out, args.configuration, args.mirror)
    except WeightsError as e:
        log.error("%s", e)
        return 2
    log.info("wrote %s: %s, spacing %s, patch %s, %d labels, %d fold(s)", args.out, cfg["source"]["configuration"],
             cfg["input"]["spacing"], cfg["input"]["patch_size"], len(cfg["labels"]), len(cfg["files"]))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .pipeline import DEFAULT_WEIGHTS, Options, SetupError, predict_folder

    options = Options(
        weights=args.weights or DEFAULT_WEIGHTS,
        device=args.device,
        precision=args.precision,
        margin_mm=args.margin_mm,
        roi_gap_mm=args.roi_gap_mm,
        roi_grow=args.roi_grow,
        upsample=args.upsample,
        tta_scales=args.tta_scales,
        keep_largest=args.keep_largest,
        backend=args.backend,
        tiling=args.tiling,
        use_roi=not args.no_roi,
        laterality=args.laterality,
        timings=args.timings,
        progress=not args.quiet,
        shard=args.shard,
        skip_existing=args.skip_existing,
        preview=args.output if args.preview is True else args.preview,
    )
    try:
        if args.command == "cluster":
            results = _cluster(args, options)
        else:
            results = predict_folder(args.input, args.output, options)
    except SetupError as e:
        log.error("%s", e)
        return 2
    return 0 if all(r.ok for r in results) else 1
