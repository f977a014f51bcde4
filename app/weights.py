"""Weights folders: ``config.json`` (architecture, input geometry, intensities, labels) + safetensors.

A folder is one model (``weights/coarse``, ``weights/fine``); replacing the folder brings your
own model. Every inconsistency is reported as a one-line ``WeightsError`` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .architecture import UNetConfig
from .labels import flare_id
from .orientation import STORED, code_direction

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
FOREGROUND = "foreground"  # a coarse model may be binary: background / all organs
FOREGROUND_ID = 255
TILINGS = ("sliding", "whole")
BLENDINGS = ("fp32", "nnunet")  # as app.sliding_window.BLENDINGS (this module stays torch-free)
CPU_PRECISIONS = ("fp32", "bf16")  # bf16: only where OpenVINO runs it natively (app.backend.choose)
WHOLE_MAX_VOXELS = 6_000_000  # tiling "whole": larger inputs run as large tiles (one pass's memory grows with the input; benchmarks/README.md)


class WeightsError(Exception):
    """A weights folder that cannot be used (missing, malformed or inconsistent)."""


@dataclass(frozen=True)
class OnnxExport:
    """An ONNX graph of the folder's network (``python -m app export-onnx``) and what it came from."""

    file: str
    sources: dict[str, str]  # tensor file -> sha256 at export time: a mismatch means the graph is stale


RESAMPLE_SCHEMES = ("trilinear", "nnunet")


@dataclass(frozen=True)
class Resampling:
    """How a volume reaches the model's grid and its logits come back.

    ``trilinear`` (our models); ``nnunet``: nnU-Net v2's ``resample_data_or_seg_to_shape`` rules,
    which imported models were trained under: the image by B-splines of ``order``, the logits of
    ``logits_order``, and where one axis's spacing exceeds the finest by more than
    ``anisotropy_threshold`` (or ``force_separate_z``) that axis apart with ``order_z`` / ``logits_order_z``.
    """

    scheme: str = "trilinear"
    order: int = 3
    order_z: int = 0
    logits_order: int = 1
    logits_order_z: int = 0
    force_separate_z: bool | None = None
    anisotropy_threshold: float = 3.0


def parse_resampling(value: Any, path: Path) -> Resampling:
    """``input.resample``: "trilinear", "nnunet" (nnU-Net's defaults) or an object of Resampling's fields."""
    if isinstance(value, str):
        value = {"scheme": value}
    if not isinstance(value, dict):
        raise _fail(path, f"input.resample must be one of {list(RESAMPLE_SCHEMES)} or an object, got {value!r}")
    unknown = sorted(set(value) - set(Resampling.__dataclass_fields__))
    if unknown:
        raise _fail(path, f"input.resample: unknown fields {unknown}")
    try:
        how = Resampling(**value)
    except TypeError as e:
        raise _fail(path, f"input.resample: {e}") from None
    if how.scheme not in RESAMPLE_SCHEMES:
        raise _fail(path, f"input.resample.scheme must be one of {list(RESAMPLE_SCHEMES)}, got {how.scheme!r}")
    for key in ("order", "order_z", "logits_order", "logits_order_z"):
        if getattr(how, key) not in (0, 1, 3) or isinstance(getattr(how, key), bool):
            raise _fail(path, f"input.resample.{key} must be a spline order 0, 1 or 3, got {getattr(how, key)!r}")
    if how.force_separate_z not in (None, True, False):
        raise _fail(path, f"input.resample.force_separate_z must be null, true or false, got {how.force_separate_z!r}")
    if not isinstance(how.anisotropy_threshold, (int, float)) or how.anisotropy_threshold <= 0:
        raise _fail(path, f"input.resample.anisotropy_threshold must be a positive number, got {how.anisotropy_threshold!r}")
    return how


@dataclass(frozen=True)
class ModelSpec:
    """Everything in config.json, validated. Spacings and sizes are canonical ``[z, y, x]``."""

    folder: Path
    role: str
    architecture: dict[str, Any]
    spacing: tuple[float, float, float] | None
    size: tuple[int, int, int] | None
    patch_size: tuple[int, int, int]
    step: float
    tiling: str  # "sliding" (nnU-Net's Gaussian-weighted tiles) or "whole" (one pass over the crop when it fits)
    whole_max_voxels: int  # the largest input run in one pass; larger ones are tiled
    blending: str  # tile sums: "fp32" (ours), or "nnunet" (nnU-Net's FP16 arithmetic, for its exact masks)
    cpu_precision: str  # what --precision auto runs on a CPU with native BF16: "fp32", or "bf16" where measured to keep the masks
    mirror_axes: tuple[int, ...]
    orientation: str  # "LPS" (canonical, default), another code such as "RAS", or "stored"
    resampling: Resampling  # how volumes reach the model's grid and logits come back
    crop_nonzero: bool  # nnU-Net crops to the box of non-zero voxels before predicting
    clip: tuple[float, float]
    mean: float
    std: float
    labels: dict[int, str]
    files: tuple[str, ...]
    raw: dict[str, Any]
    onnx: dict[str, OnnxExport] = field(default_factory=dict)  # precision (fp32, fp16) -> export

    @property
    def lut(self) -> np.ndarray:
        """Model output channel -> FLARE label id (a coarse model's 'foreground' -> 255)."""
        out = np.zeros(max(self.labels) + 1, dtype=np.uint8)
        for ch, name in self.labels.items():
            out[ch] = FOREGROUND_ID if name == FOREGROUND else (flare_id(name) or 0)
        return out


def _fail(path: Path, msg: str) -> WeightsError:
    return WeightsError(f"{path}: {msg}")


def _triple(value: Any, path: Path, key: str, kind: type) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _fail(path, f"'{key}' must be a list of 3 numbers [z, y, x], got {value!r}")
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"'{key}' must hold numbers, got {value!r}") from e
    if any(v <= 0 for v in out):
        raise _fail(path, f"'{key}' must be positive, got {value!r}")
    return out


def read_spec(folder: str | Path, role: str | None = None) -> ModelSpec:
    """Parse and check a weights folder without touching torch (fast, for start-up checks)."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise WeightsError(f"{folder}: weights folder not found")
    if not cfg_path.is_file():
        raise _fail(cfg_path, "missing (every weights folder needs a config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise _fail(cfg_path, f"not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise _fail(cfg_path, "top level must be a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(cfg_path, f"format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for key in ("architecture", "input", "intensity", "labels"):
        if not isinstance(raw.get(key), dict):
            raise _fail(cfg_path, f"'{key}' must be an object")
    arch = raw["architecture"]
    if arch.get("name", "unet3d") != "unet3d":
        raise _fail(cfg_path, f"architecture.name {arch.get('name')!r} is not supported (only 'unet3d')")
    try:
        ucfg = UNetConfig.from_dict(arch)
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(cfg_path, f"architecture: {e}") from e

    inp = raw["input"]
    spacing = _triple(inp["spacing"], cfg_path, "input.spacing", float) if inp.get("spacing") is not None else None
    size = _triple(inp["size"], cfg_path, "input.size", int) if inp.get("size") is not None else None
    if (spacing is None) == (size is None):
        raise _fail(cfg_path, "input needs exactly one of 'spacing' (mm) or 'size' (voxels)")
    patch = _triple(inp.get("patch_size", size), cfg_path, "input.patch_size", int)
    div = ucfg.divisor
    if any(p % d for p, d in zip(patch, div)):
        raise _fail(cfg_path, f"input.patch_size {list(patch)} is not divisible by the network's total stride {list(div)}")
    step = float(inp.get("step", 0.5))
    if not 0 < step <= 1:
        raise _fail(cfg_path, f"input.step must be in (0, 1], got {step}")
    tiling = str(inp.get("tiling", "sliding"))
    if tiling not in TILINGS:
        raise _fail(cfg_path, f"input.tiling must be one of {list(TILINGS)}, got {tiling!r}")
    whole_max = int(inp.get("whole_max_voxels", WHOLE_MAX_VOXELS))
    if whole_max <= 0:
        raise _fail(cfg_path, f"input.whole_max_voxels must be positive, got {whole_max}")
    blending = str(inp.get("blending", "fp32"))
    if blending not in BLENDINGS:
        raise _fail(cfg_path, f"input.blending must be one of {list(BLENDINGS)}, got {blending!r}")
    cpu_precision = str(inp.get("cpu_precision", "fp32"))
    if cpu_precision not in CPU_PRECISIONS:
        raise _fail(cfg_path, f"input.cpu_precision must be one of {list(CPU_PRECISIONS)}, got {cpu_precision!r}")
    mirror = tuple(int(a) for a in inp.get("mirror_axes", []))
    if any(a not in (0, 1, 2) for a in mirror):
        raise _fail(cfg_path, f"input.mirror_axes must be axes 0-2, got {list(mirror)}")

    orientation = str(inp.get("orientation", "LPS"))
    if orientation != STORED:
        try:
            code_direction(orientation)
        except ValueError as e:
            raise _fail(cfg_path, f"input.orientation: {e}, or 'stored'") from None

    resampling = parse_resampling(inp.get("resample", "trilinear"), cfg_path)

    inten = raw["intensity"]
    try:
        clip = (float(inten["clip"][0]), float(inten["clip"][1]))
        mean, std = float(inten["mean"]), float(inten["std"])
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise _fail(cfg_path, "intensity needs 'clip' [low, high], 'mean' and 'std'") from e
    if clip[0] >= clip[1] or std <= 0:
        raise _fail(cfg_path, f"intensity clip must rise and std be positive, got clip={list(clip)} std={std}")

    try:
        labels = {int(k): str(v) for k, v in raw["labels"].items()}
    except ValueError as e:
        raise _fail(cfg_path, "labels keys must be output channel numbers") from e
    if sorted(labels) != list(range(ucfg.num_classes)):
        raise _fail(cfg_path, f"labels must name channels 0..{ucfg.num_classes - 1} (architecture.num_classes), got {sorted(labels)}")
    unknown = [n for c, n in labels.items() if c > 0 and flare_id(n) is None and not (n == FOREGROUND and raw.get("role", role) == "coarse")]
    if unknown:
        raise _fail(cfg_path, f"label names with no FLARE id: {unknown}")

    files = raw.get("files", ["model.safetensors"])
    if isinstance(files, str):
        files = [files]
    missing = [f for f in files if not (folder / f).is_file()]
    if not files or missing:
        raise _fail(folder, f"tensor files missing: {missing or files}")
    file_role = raw.get("role")
    if role is not None and file_role is not None and file_role != role:
        raise _fail(cfg_path, f"role is {file_role!r} but this folder is used as the {role} model")

    onnx = {}
    for precision, entry in (raw.get("onnx") or {}).items():
        try:
            onnx[str(precision)] = OnnxExport(file=str(entry["file"]), sources={str(k): str(v) for k, v in entry["sources"].items()})
        except (KeyError, TypeError, AttributeError):
            raise _fail(cfg_path, f"onnx.{precision} needs 'file' and 'sources' (tensor file -> sha256)") from None

    return ModelSpec(
        folder=folder,
        role=str(file_role or role or ""),
        architecture=arch,
        spacing=spacing,
        size=size,
        patch_size=patch,
        step=step,
        tiling=tiling,
        whole_max_voxels=whole_max,
        blending=blending,
        cpu_precision=cpu_precision,
        mirror_axes=mirror,
        orientation=orientation,
        resampling=resampling,
        crop_nonzero=bool(inp.get("crop_nonzero", False)),
        clip=clip,
        mean=mean,
        std=std,
        labels=labels,
        files=tuple(files),
        raw=raw,
        onnx=onnx,
    )


def write_config(folder: str | Path, config: dict[str, Any]) -> Path:
    """Write a config.json (used by training, the nnU-Net importer and tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=1) + "\n")
    return path
