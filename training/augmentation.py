"""nnU-Net's default training augmentation, built from ``batchgeneratorsv2`` (the package nnU-Net v2 uses).

Two departures from nnU-Net's ``get_training_transforms``, both for this task's labels and grids:
no mirroring (right and left kidney and adrenal have their own labels, so a flipped patch would
teach the wrong side) and rotation about the z axis only (the fine grid is anisotropic, 3 x 1.5 x
1.5 mm, and scans are acquired axially, so a tilt out of the axial plane is not what the engine
meets). Areas a rotation or zoom-out brings in from outside the patch hold 0.0 and background, as
the engine's sliding window pads.

``batchgeneratorsv2`` draws from numpy's and torch's global generators: seed both (the recipe does,
per cycle) to make a run repeatable.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def nnunet_augmentation(patch: tuple[int, int, int], max_rotation_deg: float = 30.0,
                        p_scaling: float = 0.2, scaling: tuple[float, float] = (0.7, 1.4)) -> Augment:
    """``(image [z, y, x] float, labels [z, y, x] long) -> (image, labels)`` of the same shape.

    ``p_scaling`` and ``scaling`` are nnU-Net's zoom (probability, factor range; a factor above 1 shows
    a larger field of view, the organs smaller): the recipe's ``train.augment_scaling`` sets them.
    """
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    limit = np.deg2rad(max_rotation_deg)

    def axial_only(image: torch.Tensor, dim: int) -> float:
        # batchgeneratorsv2's first angle turns the plane of the last two axes (y, x): the axial plane.
        return float(np.random.uniform(-limit, limit)) if dim == 0 else 0.0

    transforms = ComposeTransforms([
        SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=0.2, rotation=axial_only, p_scaling=p_scaling, scaling=tuple(scaling),
                         p_synchronize_scaling_across_axes=1, border_mode_seg="constant", padding_value_seg=0),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True), apply_probability=0.1),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                              p_per_channel=0.5, benchmark=False), apply_probability=0.2),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)), synchronize_channels=False,
                                                          p_per_channel=1), apply_probability=0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True, synchronize_channels=False,
                                          p_per_channel=1), apply_probability=0.15),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False, synchronize_axes=True,
                                                       ignore_axes=None, allowed_channels=None, p_per_channel=0.5), apply_probability=0.25),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=1, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.1),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.3),
    ])

    def apply(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = transforms(image=image[None].float(), segmentation=labels[None].to(torch.int16))
        return out["image"][0], out["segmentation"][0].long()

    return apply
