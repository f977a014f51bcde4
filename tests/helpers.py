"""Test fixtures built by the tests themselves: tiny models and scans with known geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from app.labels import FLARE_LABELS
from app.convert.tensors import save_model
from app.unet import UNet3D, UNetConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
if not (SHARED / "images").is_dir():  # pragma: no cover - the data must be there
    raise RuntimeError(f"the real CT test data is missing: expected {SHARED} (../shared beside the repo)")
REAL_CASES = sorted(p for p in (SHARED / "images").glob("*_0000.nii.gz"))


def tiny_unet(num_classes: int = 15, seed: int = 0, fg_bias: float = 0.0, norm: str = "instance") -> UNet3D:
    """A 3-stage U-Net with random weights (and random stored statistics with ``norm="batch"``);
    ``fg_bias`` tilts it towards foreground labels."""
    torch.manual_seed(seed)
    cfg = UNetConfig(features=[4, 8, 16], strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)], num_classes=num_classes,
                     norm=norm)
    net = UNet3D(cfg).eval()
    with torch.no_grad():
        net.decoder.seg.bias[1:] += fg_bias
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.05, 0.5)
    return net


def make_weights(root: Path, seed: int = 0, coarse_size: tuple[int, int, int] = (16, 32, 32), fine_spacing=(4.0, 3.0, 3.0), fine_patch=(16, 64, 64),
                 fine_norm: str = "instance") -> Path:
    """A weights folder (coarse/ + fine/) with tiny random networks, all 14 FLARE labels."""
    labels = {"0": "background", **{str(i): n for i, n in FLARE_LABELS.items()}}
    intensity = {"clip": [-1000.0, 1000.0], "mean": 0.0, "std": 300.0}
    save_model(root / "coarse", tiny_unet(seed=seed, fg_bias=0.5), {"role": "coarse", "input": {"size": list(coarse_size)}, "intensity": intensity, "labels": labels})
    save_model(root / "fine", tiny_unet(seed=seed + 1, fg_bias=0.5, norm=fine_norm), {"role": "fine", "input": {"spacing": list(fine_spacing), "patch_size": list(fine_patch), "step": 0.5}, "intensity": intensity, "labels": labels})
    return root


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    """Write a numpy ``[z, y, x]`` (or any-D) array as an image with the given header."""
    img = sitk.GetImageFromArray(array)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        if direction is not None:
            img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def unprivileged() -> list[str]:
    """Command prefix that runs a program as an ordinary user: ``nobody`` when the tests run as root
    (as CI does), nothing otherwise. Permissions (read-only folders, unreadable files) hold only then."""
    import os

    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def open_tmpdir(prefix: str) -> Path:
    """A fresh folder under /tmp that an unprivileged user can enter (pytest's own are root-only)."""
    import os
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


class DieOnce:
    """A fine stage that kills its own process (SIGKILL, in the middle of the case) the first time
    any process meets ``case``, leaving its pid in ``marker``; then the real fine stage. For the
    cluster's fault-injection test: picklable, and importable on Ray's workers."""

    def __init__(self, marker: Path, case: str) -> None:
        self.marker, self.case = str(marker), case

    def __call__(self, model, crop, spacing, upsample, name, scales):
        import os
        import signal

        from app.fine import segment_crop_with_fallback

        if name == self.case:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return segment_crop_with_fallback(model, crop, spacing, upsample, name, scales)
