"""A weights folder turned into a runnable network on a device, with its intensity normalisation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .geometry import resampled_shape
from .sliding_window import sliding_window_logits
from .unet import UNet3D, UNetConfig
from .weights import ModelSpec, WeightsError


class MeanEnsemble(nn.Module):
    """Average of several networks' logits (nnU-Net's fold ensemble)."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)


@dataclass
class Model:
    spec: ModelSpec
    net: nn.Module
    device: torch.device
    dtype: torch.dtype
    lut: torch.Tensor  # output channel -> FLARE id, uint8 on device

    @property
    def num_classes(self) -> int:
        return len(self.spec.labels)

    def grid(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, int, int]:
        """The grid this model sees a volume on: its fixed size, or the volume at its spacing."""
        if self.spec.size is not None:
            return self.spec.size
        return resampled_shape(shape, spacing, self.spec.spacing)  # type: ignore[arg-type, return-value]

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Clip to the model's window, then z-score, in the model's dtype on its device.

        Always a new tensor: ``image`` is the scan both stages read (a float32 scan already has the
        model's dtype, and ``.to`` would hand back the same storage for the in-place ops to ruin).
        """
        x = image.to(device=self.device, dtype=self.dtype, copy=True)
        lo, hi = self.spec.clip
        return x.clamp_(lo, hi).sub_(self.spec.mean).div_(self.spec.std)

    def logits(self, image: torch.Tensor, patch: tuple[int, int, int] | None = None, accumulate_on: torch.device | None = None) -> torch.Tensor:
        """Sliding-window logits of a normalised ``[Z, Y, X]`` image (FP16 sums on CUDA)."""
        acc_dtype = torch.float16 if (accumulate_on or self.device).type == "cuda" and self.dtype == torch.float16 else torch.float32
        return sliding_window_logits(
            self.net,
            image,
            patch or self.spec.patch_size,
            self.num_classes,
            step=self.spec.step,
            accumulate_on=accumulate_on,
            accumulate_dtype=acc_dtype,
            mirror_axes=self.spec.mirror_axes,
        )

    def to(self, device: torch.device, half: bool) -> Model:
        dtype = torch.float16 if half and device.type == "cuda" else torch.float32
        return Model(self.spec, self.net.to(device=device, dtype=dtype), device, dtype, self.lut.to(device))


def build_network(spec: ModelSpec) -> nn.Module:
    from safetensors.torch import load_file

    cfg = UNetConfig.from_dict(spec.architecture)
    nets = []
    for name in spec.files:
        net = UNet3D(cfg)
        path = spec.folder / name
        if not os.access(path, os.R_OK):
            raise WeightsError(f"{path}: cannot be read (permission denied for this user)")
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: cannot read tensors ({e})") from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()
            raise WeightsError(f"{path}: tensors do not match config.json's architecture ({' '.join(first[:3])[:300]})") from None
        nets.append(net.eval())
    return nets[0] if len(nets) == 1 else MeanEnsemble(nets).eval()


def load_model(spec: ModelSpec, device: torch.device, half: bool = True) -> Model:
    """Build, load and place a model; FP16 on CUDA unless ``half`` is off, FP32 on the CPU."""
    net = build_network(spec)
    lut = torch.as_tensor(spec.lut)
    return Model(spec, net, torch.device("cpu"), torch.float32, lut).to(device, half)


def save_tensors(folder, net: torch.nn.Module, name: str = "model.safetensors") -> None:
    """One network's tensors as a safetensors file in a weights folder."""
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; a container's unprivileged user must read it


def save_model(folder, net: UNet3D, config: dict, name: str = "model.safetensors") -> None:
    """Write a weights folder: the network's tensors plus config.json (architecture filled in)."""
    from .weights import write_config

    save_tensors(folder, net, name)
    write_config(folder, {**config, "architecture": net.config.to_dict(), "files": [name]})
