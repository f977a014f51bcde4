"""Instance norm -> stored statistics, so that a trained network can run over a whole crop at once.

Instance norm normalises each layer by the statistics of the input at hand, so a network trained
on patches computes something else on a larger input (benchmarks/README.md, "Fine-stage tiling").
Here each norm layer gets fixed per-channel statistics instead: the mean, over typical training
patches, of the per-patch mean and variance that instance norm used. The affine part is kept, and
fine-tuning (``training.train --init``) then adapts the network to the fixed statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from app.unet import UNet3D, UNetConfig

__all__ = ["patch_statistics", "with_stored_statistics"]


@torch.inference_mode()
def patch_statistics(net: UNet3D, patches: Iterable[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per norm layer (by module name): the mean over ``patches`` (``[1, C, Z, Y, X]``) of the
    per-channel mean and (biased) variance of the layer's input, as instance norm computed them."""
    layers = {name: m for name, m in net.named_modules() if isinstance(m, nn.InstanceNorm3d)}
    if not layers:
        raise ValueError("the network has no instance-norm layers")
    sums: dict[str, list[torch.Tensor]] = {}
    count = 0

    def hook(name: str):
        def record(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inp[0].double()
            mean, var = x.mean((0, 2, 3, 4)), x.var((0, 2, 3, 4), unbiased=False)
            if name in sums:
                sums[name][0] += mean
                sums[name][1] += var
            else:
                sums[name] = [mean, var]

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = net.training
    try:
        net.eval()
        for x in patches:
            net(x)
            count += 1
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if not count:
        raise ValueError("no patches")
    return {name: (s[0] / count, s[1] / count) for name, s in sums.items()}


def with_stored_statistics(net: UNet3D, patches: Iterable[torch.Tensor]) -> UNet3D:
    """A copy of an instance-norm ``net`` with ``norm: "batch"``: the same convolutions and affine
    parameters, each norm layer's statistics from ``patch_statistics``."""
    stats = patch_statistics(net, patches)
    out = UNet3D(UNetConfig.from_dict({**net.config.to_dict(), "norm": "batch"}))
    state = net.state_dict()
    for name, (mean, var) in stats.items():
        state[f"{name}.running_mean"] = mean.float()
        state[f"{name}.running_var"] = var.float()
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    out.load_state_dict(state)
    return out.to(next(net.parameters()).device)
