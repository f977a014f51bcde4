"""U-Net architecture parameters: a pure dataclass, so checking a weights folder needs no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Triple = tuple[int, int, int]

# "batch" normalises with per-channel statistics stored in the weights, the same for every input:
# a voxel's output then does not depend on how far the input extends, so one pass over a whole crop
# computes what tiles would away from their faces, while instance norm's statistics follow the
# input's extent (benchmarks/README.md, "Fine-stage tiling").
NORMS = ("instance", "batch")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture parameters, stored as ``architecture`` in a weights folder's config.json."""

    features: Sequence[int]
    strides: Sequence[Triple]
    kernel_sizes: Sequence[Triple]
    num_classes: int
    in_channels: int = 1
    n_conv_per_stage: Sequence[int] = field(default=())
    n_conv_per_stage_decoder: Sequence[int] = field(default=())
    norm: str = "instance"  # "instance": statistics of each input (nnU-Net's default); "batch": stored ones

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        n = len(self.features)
        if n < 2 or len(self.strides) != n or len(self.kernel_sizes) != n:
            raise ValueError("features, strides and kernel_sizes need one entry per stage (at least 2 stages)")
        if not self.n_conv_per_stage:
            object.__setattr__(self, "n_conv_per_stage", [2] * n)
        if not self.n_conv_per_stage_decoder:
            object.__setattr__(self, "n_conv_per_stage_decoder", [2] * (n - 1))
        if len(self.n_conv_per_stage) != n or len(self.n_conv_per_stage_decoder) != n - 1:
            raise ValueError("n_conv_per_stage needs one entry per stage, n_conv_per_stage_decoder one fewer")

    @property
    def divisor(self) -> Triple:
        """Input sizes must be multiples of this (product of strides) for skip shapes to match."""
        out = [1, 1, 1]
        for s in self.strides:
            out = [a * _triple(s)[i] for i, a in enumerate(out)]
        return tuple(out)  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        keys = {"features", "strides", "kernel_sizes", "num_classes", "in_channels", "n_conv_per_stage", "n_conv_per_stage_decoder", "norm"}
        unknown = set(d) - keys - {"name"}
        if unknown:
            raise ValueError(f"unknown architecture fields: {sorted(unknown)}")
        missing = {"features", "strides", "kernel_sizes", "num_classes"} - set(d)
        if missing:
            raise ValueError(f"architecture is missing {sorted(missing)}")
        return cls(
            features=[int(f) for f in d["features"]],
            strides=[_triple(s) for s in d["strides"]],
            kernel_sizes=[_triple(k) for k in d["kernel_sizes"]],
            num_classes=int(d["num_classes"]),
            in_channels=int(d.get("in_channels", 1)),
            n_conv_per_stage=[int(n) for n in d.get("n_conv_per_stage", [])],
            n_conv_per_stage_decoder=[int(n) for n in d.get("n_conv_per_stage_decoder", [])],
            norm=str(d.get("norm", "instance")),
        )

    def to_dict(self) -> dict:
        return {
            "name": "unet3d",
            "features": list(self.features),
            "strides": [list(_triple(s)) for s in self.strides],
            "kernel_sizes": [list(_triple(k)) for k in self.kernel_sizes],
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "n_conv_per_stage": list(self.n_conv_per_stage),
            "n_conv_per_stage_decoder": list(self.n_conv_per_stage_decoder),
            "norm": self.norm,
        }


def _triple(v: int | Sequence[int]) -> Triple:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {list(v)}")
    return t  # type: ignore[return-value]
