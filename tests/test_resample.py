import numpy as np
import torch

from app.resample import argmax_resized, resize_image, resize_labels


def test_nearest_labels_are_exact_for_integer_factors():
    lab = torch.randint(0, 14, (4, 5, 6), dtype=torch.uint8)
    up = resize_labels(lab, (8, 10, 18))
    assert up.dtype == torch.uint8
    assert torch.equal(up, lab.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(3, 2))
    assert torch.equal(resize_labels(up, (4, 5, 6)), lab)


def test_argmax_resized_matches_full_interpolation():
    logits = torch.randn(5, 6, 7, 8)
    shape = (11, 9, 17)
    full = torch.nn.functional.interpolate(logits[None], size=shape, mode="trilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(argmax_resized(logits, shape).long(), full)


def test_resize_image_keeps_constant_and_shape():
    img = torch.full((3, 4, 5), 7.0)
    out = resize_image(img, (6, 8, 2))
    assert out.shape == (6, 8, 2)
    assert np.allclose(out.numpy(), 7.0)
