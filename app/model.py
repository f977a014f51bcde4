"""A weights folder turned into a runnable model: its backend, its grid and its intensity window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .architecture import UNetConfig
from .backend import Backend, Placement, make_backend
from .geometry import resampled_shape
from .resample import labels_from_logits, resize_sampled, to_model_grid
from .sliding_window import large_tiles, sliding_window_logits, whole_logits
from .weights import ModelSpec


def normalized(image: torch.Tensor, clip: tuple[float, float], mean: float, std: float,
               device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Clip to a window, then z-score; always into a new tensor.

    ``image`` is the scan that both stages read: a float32 scan already has the model's dtype, and
    ``.to`` alone would hand back the same storage for the in-place ops to ruin.
    """
    x = image.to(device=device or image.device, dtype=dtype, copy=True)
    return x.clamp_(clip[0], clip[1]).sub_(mean).div_(std)


@dataclass
class Model:
    spec: ModelSpec
    backend: Backend
    lut: torch.Tensor  # output channel -> FLARE id, uint8 on the backend's device

    @property
    def placement(self) -> Placement:
        return self.backend.placement

    @property
    def device(self) -> torch.device:
        return self.placement.torch_device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.tensor_dtype

    @property
    def num_classes(self) -> int:
        return len(self.spec.labels)

    def grid(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, int, int]:
        """The grid this model sees a volume on: its fixed size, or the volume at its spacing."""
        if self.spec.size is not None:
            return self.spec.size
        return resampled_shape(shape, spacing, self.spec.spacing)  # type: ignore[arg-type, return-value]

    def grid_spacing(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[float, float, float]:
        """The spacing of ``grid(shape, spacing)``: the model's own, or the volume's extent over a fixed size."""
        if self.spec.spacing is not None:
            return self.spec.spacing  # type: ignore[return-value]
        return tuple(s * n / g for s, n, g in zip(spacing, shape, self.grid(shape, spacing)))  # type: ignore[return-value]

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """The model's intensity window, in its tensor dtype on its device (a new tensor)."""
        return normalized(image, self.spec.clip, self.spec.mean, self.spec.std, self.device, self.dtype)

    def on_grid(self, image: np.ndarray, spacing: tuple[float, float, float]) -> tuple[torch.Tensor, tuple[float, float, float]]:
        """A raw-HU ``[Z, Y, X]`` volume (a numpy array of any strides: the scan's flipped view, a
        crop) normalised, then resampled onto the model's grid by the model's rule (nnU-Net's order
        also: normalise first), on the model's device; with the grid's spacing."""
        grid = self.grid(tuple(image.shape), spacing)
        grid_spacing = self.grid_spacing(tuple(image.shape), spacing)
        how = self.spec.resampling
        if how.scheme == "trilinear":
            return resize_sampled(image, grid, self.normalize), grid_spacing  # type: ignore[return-value]
        x = normalized(torch.from_numpy(np.ascontiguousarray(image)), self.spec.clip, self.spec.mean, self.spec.std, self.device)  # float32 for the splines
        return to_model_grid(x, grid, spacing, grid_spacing, how).to(self.dtype), grid_spacing  # type: ignore[return-value]

    def labels_back(self, logits: torch.Tensor, shape: tuple[int, int, int], grid_spacing: tuple[float, ...], spacing: tuple[float, ...]) -> torch.Tensor:
        """uint8 output channels of the model's logits brought back to a volume's ``shape`` by its rule."""
        return labels_from_logits(logits, shape, grid_spacing, spacing, self.spec.resampling)

    def logits(self, image: torch.Tensor, patch: tuple[int, int, int] | None = None, accumulate_on: torch.device | None = None) -> torch.Tensor:
        """Logits of a normalised ``[Z, Y, X]`` image: where the model's tiling is ``whole``, one pass
        over it, or over an input larger than ``whole_max_voxels`` a few large tiles of at most that,
        overlapping by half a training patch (one pass's memory grows with the input: about 0.46 GiB
        per million voxels for the shipped fine model in FP32); else the model's
        Gaussian-weighted tiles (FP16 sums where the tensors are FP16 on CUDA). An explicit
        ``patch`` (the coarse model's grid, the out-of-memory retry) always tiles."""
        acc_dtype = torch.float16 if (accumulate_on or self.device).type == "cuda" and self.dtype == torch.float16 else torch.float32
        if patch is None and self.spec.tiling == "whole":
            divisor = UNetConfig.from_dict(self.spec.architecture).divisor
            if image.numel() <= self.spec.whole_max_voxels:
                # an input smaller than a patch is padded to one, as the tiles (and the training patches) pad it
                return whole_logits(self.backend, image, divisor, self.spec.patch_size, acc_dtype).to(accumulate_on or self.device)
            overlap = tuple(p // 2 for p in self.spec.patch_size)
            tile, steps, importance = large_tiles(image.shape, divisor, self.spec.patch_size, overlap, self.spec.whole_max_voxels)
            return sliding_window_logits(self.backend, image, tile, self.num_classes, step=steps, accumulate_on=accumulate_on,
                                         accumulate_dtype=acc_dtype, importance=importance)
        return sliding_window_logits(
            self.backend,
            image,
            patch or self.spec.patch_size,
            self.num_classes,
            step=self.spec.step,
            accumulate_on=accumulate_on,
            accumulate_dtype=acc_dtype,
            mirror_axes=self.spec.mirror_axes,
            blending=self.spec.blending,
        )

    def on(self, backend: Backend) -> Model:
        """The same model on another backend (the out-of-memory fallback)."""
        return Model(self.spec, backend, self.lut.to(backend.placement.torch_device))


def load_model(spec: ModelSpec, placement: Placement, chosen_by_auto: bool = False) -> Model:
    """Build a weights folder's model for a placement (``backend.choose`` decides it)."""
    backend = make_backend(spec, placement, chosen_by_auto)
    return Model(spec, backend, torch.as_tensor(spec.lut).to(backend.placement.torch_device))
