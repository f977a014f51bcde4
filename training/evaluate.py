"""Measure a weights folder through the full coarse-to-fine pipeline, for the model card.

Held-out phantoms (a seed the training never used) at scanner resolution, phantoms built around the
ten held-out FLARE22 label maps (real anatomy no training run has seen), and the labelled real
scans in ../shared/data/ct, are segmented with ``app.pipeline`` and scored with
``evaluation.metrics`` (FLARE23 rules). Real scans are scored only on the organs their labels
contain (their labels are partial or a model's output), so those numbers are not real-anatomy
accuracy claims.

    python -m training.evaluate --weights weights --out eval_out [--cases 4] [--anatomy 4] [--seed 424242] [--tta | --scales S...]

``--blocked`` adds the two TotalSegmentator examples as low-resolution copies (blocks of voxels
averaged and repeated, ``BLOCKED``), scored like the real scans: how a model copes with thumbnails
such as MSD_spleen_8, on real anatomy and real HU with full references.

``--cases 0 --anatomy 0`` scores the real scans alone (12.5 s for the shipped pair on the 2-core
development machine, 2026-12-02). To follow a training run, ``--checkpoints W/checkpoints/fine.*``
scores each folder that way as the fine model beside ``--weights``' coarse model, and writes a
table of per-scan means (``OUT/checkpoints.md``, ``.json``); with ``--anatomy N`` also on the
phantoms around N held-out maps, with the lowest organ of any one of them: a whole organ lost on one
map, which the real scans' partial references cannot show and a mean over ten hides.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from app.cli import TTA_SCALES
from app.pipeline import Options, predict_folder
from evaluation.metrics import ORGANS, score_folder
from synthetic.label_maps import anatomy_phantom, label_map_files
from synthetic.phantoms import generate, write
from synthetic.randomise import archive_copy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
# (scan, block along z in mm, in-plane in mm): 1-10 slices, 1-4 pixels a block (TS_example_sm: 3 mm
# voxels; TS_example_dicom: 2 x 0.98 x 0.98 mm); MSD_spleen_8 has 30 x 3.1 x 3.1 mm blocks
BLOCKED = (("TS_example_sm", 12.0, 3.0), ("TS_example_sm", 30.0, 3.0), ("TS_example_dicom", 2.0, 3.9),
           ("TS_example_dicom", 10.0, 3.9), ("TS_example_dicom", 20.0, 3.9))


def phantom_set(out: Path, n: int, seed: int) -> None:
    for i in range(n):
        fov, spacing = ("whole-body", (0.8, 5.0)) if i == n - 1 else ("abdomen", None)
        ph = generate([seed, i], fov=fov, spacing=spacing)
        name = f"heldout_s{seed}_{i:02d}"
        write(ph, out / "images" / f"{name}_0000.nii.gz", out / "labels" / f"{name}.nii.gz")


def anatomy_set(out: Path, n: int, seed: int) -> None:
    """Phantoms around the first ``n`` held-out label maps, each on its own random scanner grid."""
    for i, path in enumerate(label_map_files(held_out=True)[:n]):
        ph = anatomy_phantom(path, [seed, 100 + i])
        name = f"anatomy_{path.name.split('.')[0]}"
        write(ph, out / "images" / f"{name}_0000.nii.gz", out / "labels" / f"{name}.nii.gz")


def blocked_set(out: Path, seed: int) -> None:
    """``BLOCKED``: each scan's blocks repeated (``randomise.archive_copy``, nearest), its geometry and
    reference as they are."""
    import SimpleITK as sitk

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for i, (scan, z_mm, xy_mm) in enumerate(BLOCKED):
        image = sitk.ReadImage(str(SHARED / "images" / f"{scan}_0000.nii.gz"))
        array = archive_copy(sitk.GetArrayFromImage(image), image.GetSpacing()[::-1], np.random.default_rng([seed, i]),
                             ((z_mm, z_mm), (xy_mm, xy_mm)), nearest=1.0)
        copy = sitk.GetImageFromArray(array)
        copy.CopyInformation(image)
        name = f"{scan}_z{z_mm:g}mm_xy{xy_mm:g}mm"
        sitk.WriteImage(copy, str(out / "images" / f"{name}_0000.nii.gz"))
        shutil.copyfile(SHARED / "labels" / f"{scan}.nii.gz", out / "labels" / f"{name}.nii.gz")


def scored_set(folder: Path, masks: Path, opts: Options) -> dict:
    """Predict a generated set and score it: per-organ means and the organ mean."""
    predict_folder(folder / "images", masks, opts)
    scores = score_folder(masks, folder / "labels", "flare23", workers=2, progress=False)
    result = table(scores, [*ORGANS, "Lesion"])
    result["organ_mean"] = {k: float(np.mean([result[o][k] for o in ORGANS])) for k in ("dsc", "nsd")}
    result["per_case"] = {s.name: float(np.mean([s.dsc[o] for o in ORGANS])) for s in scores if not s.error}
    result["lowest"] = lowest_organ(scores)
    return result


def lowest_organ(scores) -> dict:
    """The lowest organ DSC of any one case, and where: a whole organ lost on one case hides in a
    mean over ten (runs that lost one held-out map's right adrenal still scored the ten at 0.92)."""
    rows = [(s.name, o, s.dsc[o]) for s in scores if not s.error for o in ORGANS if not np.isnan(s.dsc[o])]
    if not rows:
        raise ValueError("no organ of any case could be scored: " + "; ".join(f"{s.name} ({s.error or 'no organ in either mask'})" for s in scores))
    case, organ, dsc = min(rows, key=lambda row: row[2])
    return {"case": case, "organ": organ, "dsc": float(dsc)}


def real_scores(masks: Path, opts: Options, folder: Path = SHARED) -> dict:
    """The labelled real scans (or their copies in ``folder``, named ``<scan>_...``), each scored on
    the organs its (partial) reference holds."""
    predict_folder(folder / "images", masks, opts)
    present = {name: case["labels_present"] for name, case in json.loads((SHARED / "labels_source.json").read_text())["cases"].items()}
    real = {}
    for s in sorted(score_folder(masks, folder / "labels", "flare22", workers=2, progress=False), key=lambda s: s.name):
        organs = [ORGANS[i - 1] for i in present[next(k for k in present if s.name.startswith(k))]]
        real[s.name] = {o: {"dsc": round(s.dsc[o], 4), "nsd": round(s.nsd[o], 4)} for o in organs}
    return real


def checkpoint_names(checkpoints: list[Path]) -> list[str]:
    """A row name per fine-model folder: ``RUN.fine.seedS.stepN`` under a run's ``checkpoints``,
    ``W.fine`` for a weights folder's fine model, else the folder's name; two folders with one name
    are refused before anything runs, as their masks would share a folder."""
    names = [f"{ck.parent.parent.name}.{ck.name}" if ck.parent.name == "checkpoints"
             else f"{ck.parent.name}.{ck.name}" if ck.name == "fine" else ck.name for ck in checkpoints]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--checkpoints: several folders would be named {', '.join(twice)}; rename or link them apart")
    return names


def checkpoint_rows(coarse: Path, checkpoints: list[Path], out: Path, blocked: Path | None = None,
                    tta_scales: tuple[float, ...] = (1.0,), anatomy: Path | None = None) -> list[dict]:
    """Each fine-model folder (a run's checkpoints) with ``coarse`` through the pipeline on the real
    scans: per-scan mean DSC and the mean over every scored organ of all of them, to follow a run;
    with ``blocked`` (a ``blocked_set`` folder) also the mean over every organ of those copies; with
    ``anatomy`` (an ``anatomy_set`` folder) also their organ mean and lowest organ, which the real
    scans' partial references cannot show."""
    rows = []
    for ck, name in zip(checkpoints, checkpoint_names(checkpoints)):
        weights = out / "weights" / name
        weights.mkdir(parents=True)
        (weights / "coarse").symlink_to(coarse.resolve(), target_is_directory=True)
        (weights / "fine").symlink_to(ck.resolve(), target_is_directory=True)
        opts = Options(weights=weights, device="cpu", precision="fp32", progress=False, tta_scales=tta_scales)
        real = real_scores(out / "masks" / name, opts)
        dsc = {scan: [v["dsc"] for v in organs.values()] for scan, organs in real.items()}
        rows.append({"checkpoint": name, "fine_scales": list(tta_scales), **{scan: float(np.mean(v)) for scan, v in dsc.items()},
                     "organs": sum(len(v) for v in dsc.values()), "organ_mean": float(np.mean([d for v in dsc.values() for d in v]))})
        if blocked is not None:
            copies = [v["dsc"] for organs in real_scores(out / "blocked_masks" / name, opts, blocked).values() for v in organs.values()]
            rows[-1].update(blocked_organs=len(copies), blocked_mean=float(np.mean(copies)))
        if anatomy is not None:
            held = scored_set(anatomy, out / "anatomy_masks" / name, opts)
            rows[-1].update(anatomy_cases=len(held["per_case"]), anatomy_mean=held["organ_mean"]["dsc"], anatomy_lowest=held["lowest"])
    return rows


def table(scores, organs) -> dict:
    ok = [s for s in scores if not s.error]
    return {o: {"dsc": float(np.nanmean([s.dsc[o] for s in ok])), "nsd": float(np.nanmean([s.nsd[o] for s in ok]))} for o in organs}


def markdown(result: dict) -> str:
    """The model card's tables, straight from the measured figures."""
    sets = [k for k in ("phantoms", "anatomy") if k in result]
    head = {"phantoms": "phantoms", "anatomy": "real-anatomy phantoms (held-out maps)"}
    lines = []
    if sets:
        lines += ["| organ | " + " | ".join(f"{head[k]}: DSC / NSD" for k in sets) + " |", "|---" * (len(sets) + 1) + "|"]
        cell = {k: (lambda o, k=k: f"{result[k][o]['dsc']:.3f} / {result[k][o]['nsd']:.3f}") for k in sets}
        lines += [f"| {o} | " + " | ".join(cell[k](o) for k in sets) + " |" for o in [*ORGANS, "Lesion"]]
        lines += ["| **organ mean** | " + " | ".join(f"**{cell[k]('organ_mean')}**" for k in sets) + " |", ""]
    lines += ["| real scan | organ: DSC / NSD |", "|---|---|"]
    for name, organs in {**result["real"], **result.get("blocked", {})}.items():
        lines.append(f"| {name.split('.')[0]} | " + ", ".join(f"{o} {v['dsc']:.3f} / {v['nsd']:.3f}" for o, v in organs.items()) + " |")
    lines += ["", "| case | read | coarse | roi | fine | cleanup | write | total (s) | ROI share |", "|---|---|---|---|---|---|---|---|---|"]
    for t in result["timings"]:
        lines.append(f"| {t['case']} | " + " | ".join(f"{t[k]:.2f}" for k in ("read", "coarse", "roi", "fine", "cleanup", "write", "total")) + f" | {t.get('roi_fraction', 1.0):.2f} |")
    return "\n".join(lines) + "\n"


def checkpoint_markdown(rows: list[dict]) -> str:
    """``checkpoint_rows`` as a table: a row per checkpoint, a column per real scan."""
    scans = [k for k in rows[0] if k.endswith(".nii.gz")]
    blocked, held = "blocked_mean" in rows[0], "anatomy_mean" in rows[0]
    head = [*(s.split(".")[0] for s in scans), f"all {rows[0]['organs']} organs", *([f"blocked copies, {rows[0]['blocked_organs']} organs"] if blocked else []),
            *([f"held-out maps ({rows[0]['anatomy_cases']}): organ mean", "lowest organ there"] if held else [])]
    lines = ["| checkpoint | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for r in rows:
        cells = [r[s] for s in scans] + [r["organ_mean"]] + ([r["blocked_mean"]] if blocked else []) + ([r["anatomy_mean"]] if held else [])
        low = r.get("anatomy_lowest")
        lowest = [f"{low['organ']} {low['dsc']:.2f} ({low['case'].split('.')[0]})"] if held else []
        lines.append(f"| {r['checkpoint']} | " + " | ".join([*(f"{c:.3f}" for c in cells), *lowest]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=Path("weights"))
    ap.add_argument("--out", type=Path, default=Path("eval_out"))
    ap.add_argument("--cases", type=int, default=4, help="held-out geometric phantoms (0: none)")
    ap.add_argument("--anatomy", type=int, default=None,
                    help="phantoms around this many of the held-out label maps (0: none; default 4, with --checkpoints 0)")
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--blocked", action="store_true", help="also score low-resolution copies of the TotalSegmentator examples (BLOCKED)")
    ap.add_argument("--checkpoints", type=Path, nargs="+", default=None,
                    help="fine-model folders (e.g. W/checkpoints/fine.seed*.step*) to score on the real scans alone, each with --weights' coarse model")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--tta", action="store_true", help="test-time scale augmentation in the fine stage (the engine's --tta), also for --checkpoints")
    how.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                     help="the fine stage's passes read each crop at S times its spacing, their probabilities averaged "
                          "(--scales 1.1: one pass at 1.1; how far the weights hold when organs look a tenth larger)")
    args = ap.parse_args(argv)
    scales = tuple(args.scales) if args.scales else TTA_SCALES if args.tta else (1.0,)
    anatomy = args.anatomy if args.anatomy is not None else 0 if args.checkpoints else 4
    shutil.rmtree(args.out, ignore_errors=True)
    if args.blocked:
        blocked_set(args.out / "blocked", args.seed)
    if args.checkpoints:
        if anatomy:
            anatomy_set(args.out / "anatomy", anatomy, args.seed)
        rows = checkpoint_rows(args.weights / "coarse", args.checkpoints, args.out, args.out / "blocked" if args.blocked else None, scales,
                               args.out / "anatomy" if anatomy else None)
        (args.out / "checkpoints.json").write_text(json.dumps(rows, indent=1))
        (args.out / "checkpoints.md").write_text(text := checkpoint_markdown(rows))
        print(text, end="")
        return
    # FP32: the weights' own figures, the same on every CPU (the shipped fine model's default is BF16 where a CPU runs it natively)
    opts = Options(weights=args.weights, device="cpu", precision="fp32", timings=args.out / "timings.jsonl",
                   tta_scales=scales)
    result: dict = {"fine_scales": list(scales)}
    if args.cases:
        phantom_set(args.out / "phantoms", args.cases, args.seed)
        result["phantoms"] = scored_set(args.out / "phantoms", args.out / "phantom_masks", opts)
    if anatomy:
        anatomy_set(args.out / "anatomy", anatomy, args.seed)
        result["anatomy"] = scored_set(args.out / "anatomy", args.out / "anatomy_masks", opts)
    result["real"] = real = real_scores(args.out / "real_masks", opts)
    if args.blocked:
        result["blocked"] = real_scores(args.out / "blocked_masks", opts, args.out / "blocked")
    result["timings"] = [json.loads(line) for line in (args.out / "timings.jsonl").read_text().splitlines()]
    (args.out / "evaluation.json").write_text(json.dumps(result, indent=1))
    (args.out / "evaluation.md").write_text(markdown(result))
    for key in ("phantoms", "anatomy"):
        if key in result:
            print(key, json.dumps(result[key]["organ_mean"]), json.dumps(result[key]["per_case"]), "lowest", json.dumps(result[key]["lowest"]))
            for o in [*ORGANS, "Lesion"]:
                print(f"  {o:<12} DSC {result[key][o]['dsc']:.4f}  NSD {result[key][o]['nsd']:.4f}")
    for name, organs in {**real, **result.get("blocked", {})}.items():
        print(name, f"mean {np.mean([v['dsc'] for v in organs.values()]):.3f}", {o: v["dsc"] for o, v in organs.items()})


if __name__ == "__main__":
    main()
