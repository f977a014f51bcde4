"""Import an nnU-Net v2 trained model folder into this engine's weights format.

Reads ``dataset.json``, ``plans.json`` and ``fold_X/<checkpoint>``; rebuilds nnU-Net's own network
with ``dynamic-network-architectures`` (the package nnU-Net uses) to validate the checkpoint, maps
its tensors onto ``app.unet.UNet3D`` and checks both give the same logits. Spacing, patch size,
CT normalisation (clip to the foreground 0.5/99.5 percentiles, z-score with the stored mean/std),
label names (mapped to FLARE ids), the axis layout (as stored: nnU-Net never reorients) and the
resampling rules (B-spline orders, the separate-z rule: ``"resample"``, run by ``app.resample``) are
written to config.json. Anything else is a clear error naming the field.

nnunetv2 itself is never needed; ``dynamic-network-architectures`` only for importing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..labels import flare_id
from .tensors import save_tensors
from ..unet import UNet3D, UNetConfig
from ..weights import WeightsError, write_config

SUPPORTED_NETWORK = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
ANISOTROPY_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


class ImportErrorNnunet(WeightsError):
    """The nnU-Net folder uses something this importer does not support, or is inconsistent."""


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ImportErrorNnunet(f"{where}: missing field '{key}'")
    return d[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportErrorNnunet(f"{path}: not found (an nnU-Net v2 results folder has dataset.json and plans.json)") from None
    except json.JSONDecodeError as e:
        raise ImportErrorNnunet(f"{path}: not valid JSON ({e})") from None


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ImportErrorNnunet(f"{path}: checkpoint not found")
    # nnU-Net checkpoints pickle plain Python objects beside the tensors (as nnU-Net itself loads them)
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    for key in ("network_weights", "init_args", "trainer_name"):
        _need(ckpt, key, str(path))
    return ckpt


def check_configuration(plans: dict, name: str, where: str) -> dict:
    """The plans' configuration, after every check that it is a plain 3D CT PlainConvUNet."""
    configs = _need(plans, "configurations", where)
    if name not in configs:
        raise ImportErrorNnunet(f"{where}: configurations has no '{name}' (has {sorted(configs)})")
    cfg = dict(configs[name])
    while "inherits_from" in cfg:  # nnU-Net lets configurations inherit
        parent = dict(configs[cfg.pop("inherits_from")])
        cfg = {**parent, **cfg}
    w = f"{where}: configurations.{name}"
    if cfg.get("previous_stage") or "cascade" in name:
        raise ImportErrorNnunet(f"{w}.previous_stage: cascade configurations are not supported; import the full-resolution model")
    if len(_need(cfg, "patch_size", w)) != 3:
        raise ImportErrorNnunet(f"{w}.patch_size: a 2D configuration is not supported (3D only)")
    schemes = _need(cfg, "normalization_schemes", w)
    if list(schemes) != ["CTNormalization"]:
        raise ImportErrorNnunet(f"{w}.normalization_schemes: {schemes} is not supported (one CT channel with CTNormalization only)")
    if any(_need(cfg, "use_mask_for_norm", w)):
        raise ImportErrorNnunet(f"{w}.use_mask_for_norm: normalisation inside a mask is not supported")
    arch = _need(cfg, "architecture", w)
    if arch.get("network_class_name") != SUPPORTED_NETWORK:
        raise ImportErrorNnunet(f"{w}.architecture.network_class_name: {arch.get('network_class_name')!r} is not supported (only {SUPPORTED_NETWORK})")
    kw = _need(arch, "arch_kwargs", f"{w}.architecture")
    expect = {"conv_op": "torch.nn.modules.conv.Conv3d", "nonlin": "torch.nn.LeakyReLU", "dropout_op": None, "conv_bias": True}
    for key, value in expect.items():
        if kw.get(key) != value:
            raise ImportErrorNnunet(f"{w}.architecture.arch_kwargs.{key}: {kw.get(key)!r} is not supported (expected {value!r})")
    if kw.get("norm_op") not in NORM_OPS:
        raise ImportErrorNnunet(f"{w}.architecture.arch_kwargs.norm_op: {kw.get('norm_op')!r} is not supported (expected one of {sorted(NORM_OPS)})")
    norm_kw = kw.get("norm_op_kwargs") or {}
    if norm_kw.get("affine", True) is not True or float(norm_kw.get("eps", 1e-5)) != 1e-5:
        raise ImportErrorNnunet(f"{w}.architecture.arch_kwargs.norm_op_kwargs: {norm_kw} is not supported (affine, eps 1e-05)")
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
    if slope != 0.01:
        raise ImportErrorNnunet(f"{w}.architecture.arch_kwargs.nonlin_kwargs.negative_slope: {slope} is not supported (0.01)")
    return cfg


# nnU-Net's norm_op names -> UNetConfig.norm (a batch-norm network runs with its stored statistics, as in nnU-Net's inference)
NORM_OPS = {"torch.nn.modules.instancenorm.InstanceNorm3d": "instance", "torch.nn.modules.batchnorm.BatchNorm3d": "batch"}

RESAMPLING_FN = "resample_data_or_seg_to_shape"


def resampling(cfg: dict, where: str) -> dict:
    """The configuration's image and logits resampling as config.json's ``input.resample``.

    Only nnU-Net's default functions are reproduced; another (e.g. the torch resampler of the
    optional planners) is an error rather than masks that quietly differ from nnU-Net's.
    """
    out: dict[str, Any] = {"scheme": "nnunet"}
    thresholds = set()
    for kind, prefix in (("data", ""), ("probabilities", "logits_")):
        fn = cfg.get(f"resampling_fn_{kind}", RESAMPLING_FN)
        if fn != RESAMPLING_FN:
            raise ImportErrorNnunet(f"{where}.resampling_fn_{kind}: {fn!r} is not supported (only {RESAMPLING_FN})")
        kw = cfg.get(f"resampling_fn_{kind}_kwargs") or {}
        if kw.get("is_seg"):
            raise ImportErrorNnunet(f"{where}.resampling_fn_{kind}_kwargs.is_seg: true is not supported for {kind}")
        order, order_z = kw.get("order", 3 if kind == "data" else 1), kw.get("order_z", 0)
        for key, value in (("order", order), ("order_z", order_z)):
            if value not in (0, 1, 3):
                raise ImportErrorNnunet(f"{where}.resampling_fn_{kind}_kwargs.{key}: {value!r} is not supported (orders 0, 1, 3)")
        out[f"{prefix}order"], out[f"{prefix}order_z"] = int(order), int(order_z)
        force = kw.get("force_separate_z")
        if out.setdefault("force_separate_z", force) != force:
            raise ImportErrorNnunet(f"{where}: force_separate_z differs between data ({out['force_separate_z']}) and probabilities ({force})")
        thresholds.add(float(kw.get("separate_z_anisotropy_threshold", ANISOTROPY_THRESHOLD)))
    if len(thresholds) != 1:
        raise ImportErrorNnunet(f"{where}: separate_z_anisotropy_threshold differs between data and probabilities ({sorted(thresholds)})")
    out["anisotropy_threshold"] = thresholds.pop()
    return out


def unet_config(cfg: dict, num_classes: int) -> UNetConfig:
    kw = cfg["architecture"]["arch_kwargs"]
    n = int(kw["n_stages"])

    def per_stage(v: Any, count: int = n) -> list:  # nnU-Net allows one value for every stage
        return list(v) if isinstance(v, (list, tuple)) else [v] * count

    return UNetConfig.from_dict({  # from_dict turns scalar strides and kernels into triples
        "features": per_stage(kw["features_per_stage"]),
        "strides": per_stage(kw["strides"]),
        "kernel_sizes": per_stage(kw["kernel_sizes"]),
        "num_classes": num_classes,
        "in_channels": 1,
        "n_conv_per_stage": per_stage(kw["n_conv_per_stage"]),
        "n_conv_per_stage_decoder": per_stage(kw["n_conv_per_stage_decoder"], n - 1),
        "norm": NORM_OPS[kw["norm_op"]],
    })


def _plain_name(key: str) -> str:
    """A tensor name without the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) add."""
    return re.sub(r"^(module\.|_orig_mod\.)+", "", key)


def convert_state_dict(state: dict[str, torch.Tensor], n_decoder_stages: int) -> dict[str, torch.Tensor]:
    """nnU-Net PlainConvUNet tensor names -> UNet3D names (deep-supervision heads dropped)."""
    out = {}
    for key, value in state.items():
        key = _plain_name(key)
        if ".all_modules." in key or key.startswith("decoder.encoder."):
            continue  # aliases of the same tensors
        m = re.fullmatch(r"encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias|running_mean|running_var|num_batches_tracked)", key)
        if m:
            out[f"encoder.stages.{m[1]}.{m[2]}.{m[3]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(weight|bias|running_mean|running_var|num_batches_tracked)", key)
        if m:
            out[f"decoder.stages.{m[1]}.{m[2]}.{m[3]}.{m[4]}"] = value
            continue
        if re.fullmatch(r"decoder\.transpconvs\.\d+\.(weight|bias)", key):
            out[key] = value
            continue
        m = re.fullmatch(r"decoder\.seg_layers\.(\d+)\.(weight|bias)", key)
        if m:
            if int(m[1]) == n_decoder_stages - 1:
                out[f"decoder.seg.{m[2]}"] = value
            continue
        raise ImportErrorNnunet(f"checkpoint tensor {key!r} has no place in a PlainConvUNet")
    return out


def label_map(dataset: dict, where: str) -> dict[str, str]:
    """dataset.json labels (name -> value) as channel -> name; every name must have a FLARE id."""
    labels = _need(dataset, "labels", where)
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ImportErrorNnunet(f"{where}: labels: region-based training is not supported")
    by_value = {int(v): str(k) for k, v in labels.items()}
    if sorted(by_value) != list(range(len(by_value))) or by_value.get(0, "").lower() != "background":
        raise ImportErrorNnunet(f"{where}: labels must be background = 0 then consecutive values, got {labels}")
    unknown = [n for v, n in by_value.items() if v and flare_id(n) is None]
    if unknown:
        raise ImportErrorNnunet(f"{where}: labels {unknown} have no FLARE id; rename them in dataset.json (e.g. 'liver', 'kidney_right')")
    return {str(v): n for v, n in sorted(by_value.items())}


def _reference_logits(cfg: dict, num_classes: int, state: dict, x: torch.Tensor) -> torch.Tensor:
    """nnU-Net's own network (dynamic-network-architectures) on ``x``, to check the conversion."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        raise ImportErrorNnunet("importing needs dynamic-network-architectures (pip install --no-deps dynamic-network-architectures==0.4.4)") from None
    kw = dict(cfg["architecture"]["arch_kwargs"])
    norm_op = torch.nn.BatchNorm3d if NORM_OPS[kw["norm_op"]] == "batch" else torch.nn.InstanceNorm3d
    kw.update(conv_op=torch.nn.Conv3d, norm_op=norm_op, dropout_op=None, nonlin=torch.nn.LeakyReLU)
    net = PlainConvUNet(input_channels=1, num_classes=num_classes, deep_supervision=False, **kw)
    try:
        net.load_state_dict({_plain_name(k): v for k, v in state.items()})
    except RuntimeError as e:
        raise ImportErrorNnunet(f"checkpoint does not fit the plans' architecture ({str(e).splitlines()[0]})") from None
    with torch.inference_mode():
        return net.eval()(x)


def import_nnunet(model_dir: Path, folds: list[str], checkpoint: str, role: str, out: Path, configuration: str | None = None,
                  mirror: bool = False) -> dict:
    """Convert; returns the written config. Raises ImportErrorNnunet naming what is unsupported."""
    dataset = _read_json(model_dir / "dataset.json")
    plans = _read_json(model_dir / "plans.json")
    if len(_need(dataset, "channel_names", "dataset.json")) != 1:
        raise ImportErrorNnunet("dataset.json: channel_names: only single-channel CT models are supported")
    if list(plans.get("transpose_forward", [0, 1, 2])) != [0, 1, 2]:
        raise ImportErrorNnunet(f"plans.json: transpose_forward {plans['transpose_forward']} is not supported (only [0, 1, 2])")
    labels = label_map(dataset, "dataset.json")
    ckpts = [load_checkpoint(model_dir / f"fold_{f}" / checkpoint) for f in folds]
    config_name = configuration or ckpts[0]["init_args"]["configuration"]
    cfg = check_configuration(plans, config_name, "plans.json")
    props = _need(_need(plans, "foreground_intensity_properties_per_channel", "plans.json"), "0", "plans.json: foreground_intensity_properties_per_channel")
    ucfg = unet_config(cfg, len(labels))
    resample = resampling(cfg, f"plans.json: configurations.{config_name}")
    files = []
    for fold, ckpt in zip(folds, ckpts):
        state = convert_state_dict(ckpt["network_weights"], len(ucfg.features) - 1)
        net = UNet3D(ucfg).eval()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ImportErrorNnunet(f"fold_{fold}/{checkpoint}: tensors do not fit the plans ({str(e).splitlines()[0]})") from None
        x = torch.randn(1, 1, *cfg["patch_size"], generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ours = net(x)
        ref = _reference_logits(cfg, len(labels), ckpt["network_weights"], x)
        if not torch.allclose(ours, ref, atol=1e-4, rtol=1e-4):
            raise ImportErrorNnunet(f"fold_{fold}: converted network differs from nnU-Net's (max |diff| {float((ours - ref).abs().max()):.3g})")
        name = f"fold_{fold}.safetensors"
        save_tensors(out, net, name)
        files.append(name)
    mirror_axes = list(ckpts[0].get("inference_allowed_mirroring_axes") or []) if mirror else []
    config = {
        "role": role,
        "source": {"nnunet_model": str(model_dir), "configuration": config_name, "folds": folds, "checkpoint": checkpoint,
                   "trainer": ckpts[0]["trainer_name"], "plans": plans.get("plans_name"), "dataset": plans.get("dataset_name")},
        "architecture": ucfg.to_dict(),
        "input": {"spacing": [float(s) for s in cfg["spacing"]], "patch_size": [int(p) for p in cfg["patch_size"]], "step": 0.5,
                  "mirror_axes": [int(a) for a in mirror_axes], "orientation": "stored", "crop_nonzero": True, "resample": resample,
                  "blending": "nnunet"},
        "intensity": {"clip": [float(props["percentile_00_5"]), float(props["percentile_99_5"])], "mean": float(props["mean"]), "std": max(float(props["std"]), 1e-8)},
        "labels": labels,
        "files": files,
    }
    write_config(out, config)
    return config
