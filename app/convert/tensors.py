"""Write a weights folder: a network's tensors as safetensors, plus its config.json."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..nifti import write_atomically
from ..unet import UNet3D
from ..weights import write_config


def save_tensors(folder: str | Path, net: torch.nn.Module | Mapping[str, torch.Tensor], name: str = "model.safetensors") -> None:
    """One network's tensors (or a state dict) as a safetensors file, readable by everyone the umask allows."""
    from safetensors.torch import save_file

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = net.state_dict() if isinstance(net, torch.nn.Module) else net
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    # atomically, and with the umask's permissions: safetensors alone writes 0600, which a container's unprivileged user cannot read
    write_atomically(path, lambda tmp: save_file(tensors, tmp))


def save_model(folder: str | Path, net: UNet3D, config: dict, name: str = "model.safetensors") -> None:
    """Write a weights folder: the network's tensors plus config.json (architecture filled in)."""
    save_tensors(folder, net, name)
    write_config(folder, {**config, "architecture": net.config.to_dict(), "files": [name]})
