"""A plain 3D U-Net (conv-norm-LeakyReLU blocks, strided-conv downsampling, transposed-conv up).

Layer layout and parameter names follow nnU-Net's PlainConvUNet closely enough that an
nnU-Net v2 checkpoint maps onto it by renaming keys; anisotropic kernels and strides are
allowed per stage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .architecture import Triple, UNetConfig, _triple

__all__ = ["StoredStatsNorm", "UNet3D", "UNetConfig", "count_macs", "count_parameters"]


class StoredStatsNorm(nn.BatchNorm3d):
    """Batch norm that always normalises with its stored statistics, in training too: the
    statistics are set once (``training/norm_statistics.py``) and only the affine part learns,
    so training computes exactly what inference does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return StoredStatsNorm(channels, eps=1e-5)
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1), norm: str = "instance") -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel))
        self.norm = _norm(norm, cout)
        self.nonlin = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


def _stack(n: int, cin: int, cout: int, kernel: Triple, stride: Triple, norm: str) -> nn.Sequential:
    return nn.Sequential(ConvBlock(cin, cout, kernel, stride, norm), *[ConvBlock(cout, cout, kernel, norm=norm) for _ in range(n - 1)])


class _Encoder(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        stages, cin = [], cfg.in_channels
        for f, s, k, n in zip(cfg.features, cfg.strides, cfg.kernel_sizes, cfg.n_conv_per_stage):
            stages.append(_stack(n, cin, f, _triple(k), _triple(s), cfg.norm))
            cin = f
        self.stages = nn.ModuleList(stages)


class _Decoder(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        feats = list(cfg.features)
        ups, stages = [], []
        for i, s in enumerate(range(len(feats) - 1, 0, -1)):
            stride = _triple(cfg.strides[s])
            ups.append(nn.ConvTranspose3d(feats[s], feats[s - 1], stride, stride=stride))
            stages.append(_stack(cfg.n_conv_per_stage_decoder[i], 2 * feats[s - 1], feats[s - 1], _triple(cfg.kernel_sizes[s - 1]), (1, 1, 1), cfg.norm))
        self.transpconvs = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)
        self.seg = nn.Conv3d(feats[0], cfg.num_classes, 1)


class UNet3D(nn.Module):
    """Input ``[B, C, Z, Y, X]`` with sizes divisible by ``config.divisor`` -> logits ``[B, K, Z, Y, X]``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        finest = deque(self._decode(x), maxlen=1)[0]  # coarser stages are freed as decoding goes on
        return self.decoder.seg(finest)

    def decoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each decoder stage's output, coarsest first; training attaches deep-supervision heads here."""
        return list(self._decode(x))

    def _decode(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        skips = []
        for stage in self.encoder.stages:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.decoder.transpconvs, self.decoder.stages):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            yield x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: UNet3D, patch: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass over one patch (convolutions only)."""
    total = 0

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        w = mod.weight
        if isinstance(mod, nn.ConvTranspose3d):
            total += _inp[0].numel() * w.shape[1] * w[0, 0].numel()
        else:
            total += out.numel() * w[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, model.config.in_channels, *patch))
    finally:
        for h in handles:
            h.remove()
    return total
