"""Average the weights of several trained fine (or coarse) models into one weights folder.

Weight averaging (checkpoints of one run, as in SWA, or models fine-tuned from one start) is a
cheap way to trade one checkpoint's luck for a mean; the model card records what it gave here.
Only networks of one architecture with the same stored norm statistics are averaged: the stored
statistics were set once from patches and are not learned, so networks that hold different ones
normalise differently and their affine weights do not mix.

    python -m training.average --out DIR FOLDER [FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

__all__ = ["average_folders", "average_tensors"]

STORED = ("running_mean", "running_var", "num_batches_tracked")


def average_tensors(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean (in float64, stored in each tensor's dtype) of ``states``; the stored
    norm statistics must be equal in all of them and are kept as they are."""
    if not states:
        raise ValueError("nothing to average")
    keys = states[0].keys()
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != keys:
            raise ValueError(f"{name}: its tensors are not {names[0]}'s (another architecture)")
    mean = {}
    for key in keys:
        tensors = [s[key] for s in states]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"{key}: shapes differ ({', '.join(f'{n} {tuple(t.shape)}' for n, t in zip(names, tensors))})")
        if key.endswith(STORED):
            for t, name in zip(tensors[1:], names[1:]):
                if not torch.equal(t, tensors[0]):
                    raise ValueError(f"{name}: its stored norm statistics ({key}) differ from {names[0]}'s; such networks do not average")
            mean[key] = tensors[0].clone()
        else:
            mean[key] = (sum(t.double() for t in tensors) / len(tensors)).to(tensors[0].dtype)
    return mean


def average_folders(folders: list[Path], out: Path) -> dict:
    """Write ``out`` (model.safetensors + config.json) with the mean of ``folders``' networks; the
    config is the first folder's, without its ONNX exports (they belong to other tensors)."""
    from safetensors.torch import load_file

    from app.convert.tensors import save_tensors
    from app.weights import read_spec, write_config

    configs = [json.loads((f / "config.json").read_text()) for f in folders]
    for f, c in zip(folders[1:], configs[1:]):
        if c.get("architecture") != configs[0].get("architecture") or c.get("labels") != configs[0].get("labels"):
            raise ValueError(f"{f}: its architecture or labels are not {folders[0]}'s")
    names = [str(f) for f in folders]
    states = [load_file(str(f / read_spec(f).files[0])) for f in folders]
    mean = average_tensors(states, names)
    save_tensors(out, mean)
    config = {k: v for k, v in configs[0].items() if k != "onnx"}
    write_config(out, {**config, "files": ["model.safetensors"], "averaged_from": names})
    return {"out": str(out), "averaged_from": names, "tensors": len(mean)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("folders", type=Path, nargs="+", help="weights folders (model.safetensors + config.json) of one architecture")
    args = ap.parse_args(argv)
    print(json.dumps(average_folders(args.folders, args.out)))


if __name__ == "__main__":
    main()
