"""Train the demonstration coarse and fine networks on synthetic phantoms.

Phantoms are generated at scanner-like resolution and brought to each model's spacing with the
engine's own resampling (trilinear images, nearest labels), so the networks see what the engine
feeds them. Seeds are fixed in the config: the same config, package versions and thread count
reproduce the shipped tensors.

    python -m training.train --config training/config.json --out weights [--role coarse|fine|both] [--device cpu|cuda] [--resume] [--init WEIGHTS] [--workers N] [--minutes M]

``--resume`` loads the warm-restart cycles already finished in ``OUT/checkpoints/`` (a cycle depends
only on the weights it starts from and its seed, so this equals re-running them). ``--workers N``
generates the phantoms ahead in N processes (``training.prefetch``): the same phantoms in the same
order, so the same tensors, with the GPU fed while they are made; a recipe with
``train.patches_per_phantom`` has them cut and augment the patches too (``phantom_patches``). ``--minutes M`` gives each role
M minutes of wall time instead of its step count (split among its cycles as their step counts
are): the poly schedule then runs over the time left after the phantom pool and head fit, and the cycle stops
when it is spent, annealed, for a machine held for a fixed window. Its step count then depends on
the machine's speed, so its tensors are not repeatable.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from app.geometry import bounding_box, expand_box_mm, resampled_shape
from app.labels import FLARE_LABELS
from app.convert.tensors import save_model
from app.model import normalized
from app.resample import resize_image, resize_labels
from app.unet import UNet3D, UNetConfig, count_macs, count_parameters
from synthetic.label_maps import ANATOMY_OPTIONS, anatomy_chances, anatomy_phantom, label_map_files
from synthetic.phantoms import generate
from training.prefetch import Prefetch
from training.recipe import load_recipe

LABEL_NAMES = {"0": "background", **{str(i): n for i, n in FLARE_LABELS.items()}}
BINARY_NAMES = {"0": "background", "1": "foreground"}  # a coarse model only has to find the organs


# What a role's "phantoms" may hold; training_volume reads these and no other.
PHANTOM_KEYS = frozenset({"fovs", "inplane", "thickness", "size", "label_maps", "slab", "roi_margin_mm", "mirror", *ANATOMY_OPTIONS})
AUGMENT_SCALING = {"p": "p_scaling", "range": "scaling"}  # train.augment_scaling's keys -> nnunet_augmentation's arguments


def check_recipe(recipe: dict) -> None:
    """Refuse a phantom setting the recipe does not know: a misspelt chance would be read as 0 and
    the run would train on other data than its config says, with nothing to show it."""
    for role in ("coarse", "fine"):
        unknown = set(recipe[role]["phantoms"]) - PHANTOM_KEYS
        if unknown:
            raise ValueError(f"{role}.phantoms: unknown setting(s) {sorted(unknown)}; known: {sorted(PHANTOM_KEYS)}")
        tr = recipe[role]["train"]
        if tr.get("patches_per_phantom") and not int(tr.get("patch_buffer", 0)) >= int(tr["batch"]):
            raise ValueError(f"{role}.train: patches_per_phantom needs a patch_buffer of at least the batch ({tr['batch']}), not {tr.get('patch_buffer')}")
        unknown = set(tr.get("augment_scaling") or {}) - set(AUGMENT_SCALING)
        if unknown:
            raise ValueError(f"{role}.train.augment_scaling: unknown setting(s) {sorted(unknown)}; known: {sorted(AUGMENT_SCALING)}")


def label_names(cfg: dict) -> dict[str, str]:
    return BINARY_NAMES if cfg.get("binary") else LABEL_NAMES


def normalise(image: torch.Tensor, intensity: dict) -> torch.Tensor:
    return normalized(image, tuple(intensity["clip"]), intensity["mean"], intensity["std"])


def training_volume(seed: list[int], role: str, cfg: dict, intensity: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One phantom at the model's spacing: the whole scan (coarse) or an ROI-like crop (fine)."""
    rng = np.random.default_rng(seed)
    ph_cfg = cfg["phantoms"]
    fov = str(rng.choice(ph_cfg["fovs"]))
    spacing = (float(rng.uniform(*ph_cfg["inplane"])), float(rng.uniform(*ph_cfg["thickness"])))
    share = float(ph_cfg.get("label_maps", 0.0))  # real FLARE22 anatomy in a synthetic body, this share of the time
    if share and rng.random() < share:
        maps = label_map_files()  # the ten held-out maps never appear here
        ph = anatomy_phantom(maps[int(rng.integers(len(maps)))], seed, inplane=spacing[0], thickness=spacing[1], **anatomy_chances(ph_cfg))
    else:
        ph = generate(seed, fov=fov, spacing=spacing, size=ph_cfg["size"])
    image, labels = torch.from_numpy(ph.image), torch.from_numpy(ph.labels)
    slab = ph_cfg.get("slab")  # [share, min mm, max mm]: a short z-range, as in a partial scan
    if slab and rng.random() < slab[0]:
        n = max(1, min(image.shape[0], int(round(rng.uniform(slab[1], slab[2]) / ph.spacing[0]))))
        z0 = int(rng.integers(0, image.shape[0] - n + 1))
        image, labels = image[z0: z0 + n], labels[z0: z0 + n]
    if role == "fine":  # crop like the engine's ROI stage: organ box plus a random margin
        box = bounding_box(labels.numpy() > 0)
        if box is not None:
            box = expand_box_mm(box, ph.spacing, float(rng.uniform(*ph_cfg["roi_margin_mm"])), tuple(labels.shape))
            image, labels = image[box.slices], labels[box.slices]
    if cfg.get("binary"):
        labels = (labels > 0).to(torch.uint8)
    target = resampled_shape(tuple(image.shape), ph.spacing, tuple(cfg["input"]["spacing"]))
    image, labels = resize_image(normalise(image, intensity), target), resize_labels(labels, target)  # type: ignore[arg-type]
    mirror = float(ph_cfg.get("mirror", 0.0))  # drawn last, so a recipe without it keeps every other draw
    return mirrored(image, labels) if mirror and rng.random() < mirror else (image, labels)


def mirrored(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The body with its left and right swapped, every organ keeping its name (``phantoms.mirror``).

    Public scans come with headers that swap left and right; in such a file the liver lies on the
    left. A model trained on mirrored bodies too must tell organs apart by what they look like and
    what lies beside them, not by their side: the kidney beside the liver stays the right kidney,
    as a reader names it in a mirrored image.
    """
    return image.flip(-1), labels.flip(-1)


class PatchSampler:
    """Random patches from a pool of volumes, a share centred on a random present class."""

    def __init__(self, patch: tuple[int, int, int], fg_fraction: float, rng: np.random.Generator, pad_value: float | None = None) -> None:
        # pad_value: what a patch reaching past the volume holds; None: the volume's minimum (the
        # stage-1 recipe, config.json); 0.0 is what the engine's sliding window (and nnU-Net) pads with.
        self.patch, self.fg, self.rng, self.pad_value = patch, fg_fraction, rng, pad_value
        self.pool: list[tuple[torch.Tensor, torch.Tensor, dict[int, np.ndarray]]] = []

    def add(self, image: torch.Tensor, labels: torch.Tensor, slot: int | None = None) -> None:
        lab = labels.numpy()
        where = {}
        for c in np.unique(lab):
            if c:
                idx = np.argwhere(lab == c)
                where[int(c)] = idx[self.rng.choice(len(idx), min(len(idx), 500), replace=False)]
        item = (image, labels, where)
        if slot is None:
            self.pool.append(item)
        else:
            self.pool[slot] = item

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels, where = self.pool[self.rng.integers(len(self.pool))]
        shape = np.array(image.shape)
        p = np.array(self.patch)
        if where and self.rng.random() < self.fg:
            cls = self.rng.choice(sorted(where))
            centre = where[cls][self.rng.integers(len(where[cls]))]
            start = centre - p // 2 + self.rng.integers(-p // 4, p // 4 + 1)
        else:
            start = np.array([self.rng.integers(min(0, n - q), max(0, n - q) + 1) for n, q in zip(shape, p)])
        start = np.clip(start, np.minimum(0, shape - p), np.maximum(0, shape - p))
        out_img = torch.full(tuple(p), float(image.min()) if self.pad_value is None else self.pad_value, dtype=torch.float32)
        out_lab = torch.zeros(tuple(p), dtype=torch.long)
        src = tuple(slice(max(0, s), min(n, s + q)) for s, n, q in zip(start, shape, p))
        dst = tuple(slice(a.start - s, a.stop - s) for a, s in zip(src, start))
        out_img[dst] = image[src]
        out_lab[dst] = labels[src].long()
        return out_img, out_lab


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Intensity jitter only: no flips, left and right organs have different labels."""
    x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.15, 0.15))
    if rng.random() < 0.3:
        x = x + torch.randn_like(x) * float(rng.uniform(0.02, 0.12))
    return x


def spatial_augmentation(tr: dict, patch: tuple[int, ...]) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """nnU-Net's spatial and intensity augmentation (training/augmentation.py) where ``train.augment``
    asks for it, else None; ``train.augment_scaling`` (``{"p": P, "range": [LO, HI]}``; nnU-Net's values,
    ``nnunet_augmentation``'s defaults, where absent) sets how often and how far it zooms."""
    if tr.get("augment") != "nnunet":
        return None
    from training.augmentation import nnunet_augmentation

    zoom = {AUGMENT_SCALING[k]: v for k, v in (tr.get("augment_scaling") or {}).items()}  # check_recipe refused other keys
    return nnunet_augmentation(patch, **zoom)  # type: ignore[arg-type]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes (nnU-Net's default pairing)."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice[1:].mean())


class DeepSupervision(torch.nn.Module):
    """1x1 heads on the coarser decoder stages (train-time only, as in nnU-Net), and their loss.

    They give the deeper decoder stages a direct gradient (nnU-Net's default; not measured
    separately here); the heads are dropped on save, so the shipped network is the plain U-Net.
    """

    def __init__(self, net: UNet3D, levels: int) -> None:
        super().__init__()
        cfg = net.config
        self.levels = min(levels, len(cfg.features) - 2)
        self.heads = torch.nn.ModuleList(torch.nn.Conv3d(cfg.features[k], cfg.num_classes, 1) for k in range(1, self.levels + 1))
        strides, self.strides = (1, 1, 1), []
        for s in cfg.strides[: self.levels + 1]:
            strides = tuple(a * b for a, b in zip(strides, s))
            self.strides.append(strides)
        w = np.array([0.5**k for k in range(self.levels + 1)])
        self.weights = (w / w.sum()).tolist()

    def loss(self, net: UNet3D, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = net.decoder_features(x)[::-1]  # finest first
        total = self.weights[0] * dice_ce_loss(net.decoder.seg(feats[0]), y)
        for term in self.head_terms(feats, y):
            total = total + term
        return total

    def head_terms(self, feats: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """Each head's weighted loss, from decoder features finest first."""
        terms = []
        for k in range(1, self.levels + 1):
            sz, sy, sx = self.strides[k]
            terms.append(self.weights[k] * dice_ce_loss(self.heads[k - 1](feats[k]), y[:, ::sz, ::sy, ::sx]))
        return terms


def schedule_factor(done: float, step: int, warmup: int = 0) -> float:
    """The learning-rate factor at ``step`` with a fraction ``done`` of the cycle spent: poly decay
    over the cycle, its first ``warmup`` steps ramped linearly up from lr/warmup.

    A fresh AdamW moves every weight by about lr in its first steps, whatever the gradient's size;
    from trained weights that is a jolt the ramp avoids.
    """
    poly = max(0.0, 1 - done) ** 0.9
    return poly * min(1.0, (step + 1) / warmup) if warmup else poly


def fit_heads(net: UNet3D, ds: DeepSupervision, draw: Callable[[], tuple[torch.Tensor, torch.Tensor]], spec: dict) -> dict:
    """Fit fresh deep-supervision heads to the network's decoder features, the network frozen.

    The heads are not shipped, so a cycle that starts from trained weights starts with random heads:
    their loss is several times the trained head's (on the shipped fine model: 4.1 and 7.3 against
    0.56), and in the first steps most of the gradient into the decoder then serves to fit them.
    ``train.head_fit`` = ``{"steps": n, "lr": a}`` fits them first with their own AdamW, on batches
    from ``draw`` (the cycle's own patches and augmentation).
    """
    opt = torch.optim.AdamW(ds.heads.parameters(), lr=float(spec["lr"]), weight_decay=3e-5)
    losses = []
    for _ in range(int(spec["steps"])):
        x, y = draw()
        with torch.no_grad():
            feats = net.decoder_features(x)[::-1]
        loss = sum(ds.head_terms(feats, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    print(f"heads fitted: loss {first:.3f} -> {last:.3f} in {len(losses)} steps", flush=True)
    return {"steps": len(losses), "lr": float(spec["lr"]), "first_loss": round(first, 4), "final_loss": round(last, 4)}


def cycle_lengths(tr: dict) -> list[int]:
    """``steps`` is one cycle's length or a list of warm-restart cycles (SGDR-style)."""
    steps = tr["steps"]
    return [int(steps)] if isinstance(steps, int) else [int(s) for s in steps]


def train_cycle(net: UNet3D, role: str, cfg: dict, recipe: dict, config: dict, seed: int, steps: int, out: Path, device: torch.device,
                workers: int = 0, seconds: float | None = None, clock: Callable[[], float] = time.monotonic) -> dict:
    """One cycle: fresh optimiser, poly learning rate over ``steps``, fresh phantom pool from ``seed``.

    A cycle depends only on the weights it starts from and its seed, so a finished cycle's
    checkpoint can stand in for re-running it. ``workers``: processes that generate its phantoms ahead.
    ``seconds``: run for this much wall time (by ``clock``) from the cycle's start instead of
    ``steps`` steps, the poly schedule over the time left once the pool is made and the heads fitted.
    """
    make = phantom_patches if cfg["train"].get("patches_per_phantom") else volume_arrays
    volumes = Prefetch(functools.partial(make, seed, role, cfg, recipe["intensity"]), workers, initializer=_generation_worker)
    try:
        return _train_cycle(net, role, cfg, config, seed, steps, out, device, volumes, seconds, clock)
    finally:
        volumes.close()


def _train_cycle(net: UNet3D, role: str, cfg: dict, config: dict, seed: int, steps: int, out: Path, device: torch.device,
                 volumes: Prefetch[tuple[np.ndarray, np.ndarray]], seconds: float | None, clock: Callable[[], float]) -> dict:
    """``train_cycle``'s body; ``volumes`` gives the cycle's phantoms, ``[seed, 0]``, ``[seed, 1]``, ... in order
    (with ``train.patches_per_phantom``, each one's patches, ``phantom_patches``)."""
    def next_volume() -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = next(volumes)
        return torch.from_numpy(image), torch.from_numpy(labels)

    rng = np.random.default_rng(seed)
    tr = cfg["train"]
    patch = tuple(tr.get("patch_size", cfg["input"]["patch_size"]))
    ds = DeepSupervision(net, tr.get("deep_supervision", 0)).to(device)
    opt = torch.optim.AdamW([*net.parameters(), *ds.parameters()], lr=tr["lr"], weight_decay=3e-5)
    warmup = int(tr.get("warmup", 0))
    t0 = clock()
    if tr.get("patches_per_phantom"):  # patches cut and augmented ahead (``phantom_patches``), each used once
        stream = PatchStream(volumes, int(tr["patch_buffer"]), rng)
        print(f"[{role}] seed {seed}: {len(stream.buffer)} patches from {stream.taken} phantoms in {clock() - t0:.0f} s", flush=True)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            batch = [stream.sample() for _ in range(tr["batch"])]
            return torch.stack([b[0] for b in batch])[:, None].to(device), torch.stack([b[1] for b in batch]).to(device)

        def refresh(step: int) -> None:
            pass

        def generated() -> int:
            return stream.taken
    else:
        sampler = PatchSampler(patch, tr["foreground_fraction"], rng, tr.get("pad_value"))  # type: ignore[arg-type]
        nnunet_aug = spatial_augmentation(tr, patch)
        if nnunet_aug is not None:
            np.random.seed(seed % 2**32)  # batchgeneratorsv2 draws from numpy's global generator (torch's is seeded per cycle)
        cases = [0]  # phantoms taken so far
        for _ in range(tr["pool"]):
            sampler.add(*next_volume())
            cases[0] += 1
        print(f"[{role}] seed {seed}: pool of {tr['pool']} phantoms in {clock() - t0:.0f} s", flush=True)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            batch = [sampler.sample() for _ in range(tr["batch"])]
            if nnunet_aug is not None:
                batch = [nnunet_aug(*b) for b in batch]
            x = torch.stack([augment(b[0], rng) for b in batch])[:, None].to(device)
            return x, torch.stack([b[1] for b in batch]).to(device)

        def refresh(step: int) -> None:
            if step and step % tr["refresh_every"] == 0:
                sampler.add(*next_volume(), slot=cases[0] % tr["pool"])
                cases[0] += 1

        def generated() -> int:
            return cases[0]

    head_log = fit_heads(net, ds, draw, tr["head_fit"]) if tr.get("head_fit") and ds.levels else None
    losses: list[float] = []
    t_train = clock()
    left = None if seconds is None else t0 + seconds - t_train
    if left is not None and left <= 0:
        raise RuntimeError(f"[{role}] the phantom pool took {t_train - t0:.0f} s of the cycle's {seconds:.0f} s: no time left to train")
    step = 0
    while (done := step / steps if left is None else (clock() - t_train) / left) < 1:
        for group in opt.param_groups:
            group["lr"] = tr["lr"] * schedule_factor(done, step, warmup)
        refresh(step)
        x, y = draw()
        net.train()
        loss = ds.loss(net, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 25 == 1 or step == steps:
            of = f"/{steps}" if left is None else f" ({100 * done:.0f} % of {seconds / 60:g} min)"
            print(f"[{role}] step {step}{of} loss {np.mean(losses[-25:]):.3f} ({clock() - t_train:.0f} s)", flush=True)
        if step % tr.get("checkpoint_every", 100) == 0:  # a usable folder even if the run is cut short
            save_model(out / "checkpoints" / f"{role}.seed{seed}.step{step}", net, config)
    if left is not None:
        print(f"[{role}] time spent: {step} steps, loss {np.mean(losses[-25:]):.3f} ({clock() - t_train:.0f} s)", flush=True)
    return {
        "seed": seed,
        "steps": step,
        **({"minutes": round(seconds / 60, 3)} if seconds is not None else {}),
        "phantoms_generated": generated(),
        "seconds": round(clock() - t0, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "deep_supervision_levels": ds.levels,
        **({"head_fit": head_log} if head_log else {}),
        **({"warmup": int(tr["warmup"])} if tr.get("warmup") else {}),
    }


def stored_statistics_start(net: UNet3D, role: str, cfg: dict, recipe: dict, seed: int, amount: dict, device: torch.device) -> UNet3D:
    """The instance-norm ``net`` with norm statistics from ``amount["patches"]`` inference-size
    patches of ``amount["volumes"]`` phantoms drawn from ``seed`` (see training/norm_statistics.py)."""
    from training.norm_statistics import with_stored_statistics

    rng = np.random.default_rng(seed)
    sampler = PatchSampler(tuple(cfg["input"]["patch_size"]), cfg["train"]["foreground_fraction"], rng, cfg["train"].get("pad_value"))  # type: ignore[arg-type]
    for k in range(int(amount["volumes"])):
        sampler.add(*training_volume([seed, k], role, cfg, recipe["intensity"]))
    patches = (sampler.sample()[0][None, None].to(device) for _ in range(int(amount["patches"])))
    return with_stored_statistics(net, patches)


def volume_arrays(seed: int, role: str, cfg: dict, intensity: dict, case: int) -> tuple[np.ndarray, np.ndarray]:
    """``training_volume([seed, case], ...)`` as arrays, which a worker process hands back cheaply."""
    image, labels = training_volume([seed, case], role, cfg, intensity)
    return image.numpy(), labels.numpy()


def phantom_patches(seed: int, role: str, cfg: dict, intensity: dict, case: int) -> tuple[np.ndarray, np.ndarray]:
    """Phantom ``[seed, case]`` cut into ``train.patches_per_phantom`` training patches, augmented as
    the pool's patches are (nnU-Net's transforms where the recipe has them, then the intensity
    jitter): ``[K, z, y, x]`` float32 images and uint8 labels.

    All the work a patch needs before the network, as one pure function of its index, so that
    workers can do it: a GPU step takes milliseconds, augmenting a patch in the training process
    a large part of a second (training/README.md). Its own generators, seeded from ``[seed, case]``,
    make the patches independent of which process cuts them.
    """
    tr = cfg["train"]
    patch = tuple(tr.get("patch_size", cfg["input"]["patch_size"]))
    rng = np.random.default_rng([seed, case, 1])
    sampler = PatchSampler(patch, tr["foreground_fraction"], rng, tr.get("pad_value"))  # type: ignore[arg-type]
    sampler.add(*training_volume([seed, case], role, cfg, intensity))
    nnunet_aug = spatial_augmentation(tr, patch)
    images, labels = [], []
    # batchgeneratorsv2 and the noise draw from numpy's and torch's global generators: seeded here,
    # and the caller's states put back, so the training process's own draws stay where they were
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(int(rng.integers(2**32)))
        torch.manual_seed(int(rng.integers(2**63)))
        try:
            for _ in range(int(tr["patches_per_phantom"])):
                x, y = sampler.sample()
                if nnunet_aug is not None:
                    x, y = nnunet_aug(x, y)
                images.append(augment(x, rng).numpy().astype(np.float32))
                labels.append(y.numpy().astype(np.uint8))
        finally:
            np.random.set_state(numpy_state)
    return np.stack(images), np.stack(labels)


class PatchStream:
    """Patches cut ahead from a stream of phantoms (``phantom_patches``), drawn at random from a
    buffer of ``size`` and each used once: the pool's mixing of phantoms within a batch without
    its cost in the training process."""

    def __init__(self, phantoms: Prefetch[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator) -> None:
        self.phantoms, self.rng, self.taken = phantoms, rng, 0
        self.fresh: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.buffer = [self._next() for _ in range(size)]

    def _next(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.fresh:
            images, labels = next(self.phantoms)
            self.fresh.extend(zip(images, labels))
            self.taken += 1
        return self.fresh.popleft()

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(self.rng.integers(len(self.buffer)))
        (image, labels), self.buffer[k] = self.buffer[k], self._next()
        return torch.from_numpy(image), torch.from_numpy(labels).long()


def _generation_worker() -> None:
    """A phantom worker computes with one thread: the machine's cores are shared among the workers."""
    torch.set_num_threads(1)


def train_role(role: str, cfg: dict, recipe: dict, out: Path, device: torch.device, resume: bool = False, init: Path | None = None,
               workers: int = 0, minutes: float | None = None, clock: Callable[[], float] = time.monotonic) -> dict:
    """Every cycle of one role; with ``resume``, cycles whose checkpoint exists in ``out`` are loaded.

    ``init``: a weights folder (``init/<role>/model.safetensors``) to start from instead of random
    weights, for fine-tuning a trained pair on new data; ``workers``: see ``train_cycle``;
    ``minutes``: the role's wall time by ``clock``, each cycle's share in proportion to its step count.
    """
    import hashlib

    from safetensors.torch import load_file

    base = recipe["seed"] + (0 if role == "coarse" else 1000)
    torch.manual_seed(base)
    tr = cfg["train"]
    ucfg = UNetConfig.from_dict({**cfg["architecture"], "num_classes": len(label_names(cfg))})
    net = UNet3D(ucfg).to(device)
    print(f"[{role}] {count_parameters(net) / 1e6:.2f} M parameters", flush=True)
    start = None
    if init is not None:
        tensors = init / role / "model.safetensors"
        start = {"folder": str(init / role), "sha256": hashlib.sha256(tensors.read_bytes()).hexdigest()}
        init_norm = UNetConfig.from_dict(json.loads((init / role / "config.json").read_text())["architecture"]).norm
        if init_norm == ucfg.norm:
            net.load_state_dict(load_file(str(tensors), device=str(device)))
        else:  # an instance-norm network gets stored statistics from patches, then fine-tuning adapts it
            start["norm_statistics"] = tr.get("norm_statistics", {"volumes": 8, "patches": 32})
            instance = UNet3D(replace(ucfg, norm=init_norm)).to(device)
            instance.load_state_dict(load_file(str(tensors), device=str(device)))
            net = stored_statistics_start(instance, role, cfg, recipe, base - 1, start["norm_statistics"], device)
        print(f"[{role}] starting from {tensors}", flush=True)
    config = {"role": role, "input": cfg["input"], "intensity": recipe["intensity"], "labels": label_names(cfg)}
    cycles = []
    lengths = cycle_lengths(tr)
    for k, steps in enumerate(lengths):
        seed = base + 10 * k  # cycle 0 keeps the single-cycle recipe's seed
        done = out / "checkpoints" / f"{role}.cycle{k + 1}"
        if resume and (done / "model.safetensors").exists():
            net.load_state_dict(load_file(str(done / "model.safetensors"), device=str(device)))
            log = json.loads((done / "cycle_log.json").read_text()) if (done / "cycle_log.json").exists() else {"seed": seed, "steps": steps}
            cycles.append({**log, "resumed_from": done.relative_to(out).as_posix()})
            print(f"[{role}] cycle {k + 1} loaded from {done}", flush=True)
            continue
        if k:  # cycle 0 draws from the stream seeded before the network was built
            torch.manual_seed(seed)
        seconds = None if minutes is None else 60 * minutes * steps / sum(lengths)
        log = train_cycle(net, role, cfg, recipe, config, seed, steps, out, device, workers, seconds, clock)
        save_model(done, net, config)
        (done / "cycle_log.json").write_text(json.dumps(log, indent=1) + "\n")
        cycles.append(log)
    net.eval().cpu()
    save_model(out / role, net, config)
    patch = tuple(tr.get("patch_size", cfg["input"]["patch_size"]))
    summary = {
        "role": role,
        "steps": sum(c["steps"] for c in cycles),
        "cycles": cycles,
        "batch": tr["batch"],
        "patch_size": list(patch),
        "phantoms_generated": sum(c.get("phantoms_generated", 0) for c in cycles),
        "seconds": round(sum(c.get("seconds", 0.0) for c in cycles), 1),
        "final_loss": cycles[-1].get("final_loss"),
        "parameters": count_parameters(net),
        "inference_patch_size": cfg["input"]["patch_size"],
        "gmac_per_inference_patch": round(count_macs(net, tuple(cfg["input"]["patch_size"])) / 1e9, 2),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "phantom_workers": workers,  # the times depend on it, the tensors do not
        **({"minutes": minutes} if minutes is not None else {}),  # the step count then depends on the machine
        "seed": base,
        **({"initialised_from": start} if start else {}),
    }
    (out / role / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path(__file__).with_name("config.json"))
    ap.add_argument("--out", type=Path, default=Path("weights"))
    ap.add_argument("--role", choices=("coarse", "fine", "both"), default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="override the step count with one cycle (for quick checks)")
    ap.add_argument("--resume", action="store_true", help="load the cycles already finished in OUT/checkpoints instead of re-running them")
    ap.add_argument("--init", type=Path, default=None, help="start from the weights in INIT/<role>/ (fine-tuning) instead of random ones")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes that generate phantoms ahead (default 0: in this process); the same tensors either way")
    ap.add_argument("--minutes", type=float, default=None,
                    help="train each role for this much wall time, the poly schedule over it, instead of the recipe's step count")
    args = ap.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        ap.error(f"--minutes must be positive, not {args.minutes:g}")
    recipe = load_recipe(args.config)
    check_recipe(recipe)
    for role in ("coarse", "fine") if args.role == "both" else (args.role,):
        cfg = recipe[role]
        if args.steps:
            cfg["train"]["steps"] = args.steps
        print(json.dumps(train_role(role, cfg, recipe, args.out, torch.device(args.device), args.resume, args.init, args.workers, args.minutes)), flush=True)


if __name__ == "__main__":
    main()
