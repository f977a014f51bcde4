"""The training recipe runs end to end and writes weights folders the engine loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.backend import Placement
from app.model import load_model

from app.weights import read_spec
from app.unet import UNet3D, UNetConfig
from training.recipe import load_recipe
from training.train import check_recipe, train_role

CPU = Placement("torch", "cpu", "fp32")

RECIPE = Path(__file__).resolve().parents[1] / "training" / "config.json"


def small_recipe(role: str, inplane: float = 4.0, thickness: float = 6.0, phantoms: dict | None = None,
                 train: dict | None = None) -> tuple[dict, dict]:
    """The base recipe, its ``role`` drawing 96-voxel phantoms at ``inplane`` x ``thickness`` mm with
    ``phantoms`` and ``train`` settings on top: a run a test can afford. Returns the recipe and that role's part."""
    recipe = load_recipe(RECIPE)
    cfg = recipe[role]
    cfg["phantoms"].update(size=96, inplane=[inplane, inplane], thickness=[thickness, thickness], **(phantoms or {}))
    cfg["train"].update(train or {})
    return recipe, cfg


def test_a_short_run_of_each_role_writes_loadable_weights(tmp_path):
    for role in ("coarse", "fine"):
        patch = [16, 32, 32] if role == "fine" else [8, 16, 16]
        recipe, cfg = small_recipe(role, train=dict(steps=2, pool=1, batch=1, checkpoint_every=2, refresh_every=1, patch_size=patch))
        log = train_role(role, cfg, recipe, tmp_path, torch.device("cpu"))
        assert log["steps"] == 2 and log["phantoms_generated"] == 2
        spec = read_spec(tmp_path / role, role)
        assert len(spec.labels) == (2 if role == "coarse" else 15)
        load_model(spec, CPU)
        assert (tmp_path / "checkpoints" / f"{role}.seed{log['seed']}.step2" / "model.safetensors").is_file()
        assert (tmp_path / "checkpoints" / f"{role}.cycle1" / "model.safetensors").is_file()
        assert json.loads((tmp_path / role / "training_log.json").read_text())["parameters"] > 0


def test_real_anatomy_phantoms_feed_the_recipe(tmp_path):
    """``phantoms.label_maps``: the share of training volumes built from real FLARE22 organ maps."""
    from training.train import training_volume

    recipe, cfg = small_recipe("fine", inplane=2.0, thickness=5.0, phantoms=dict(label_maps=1.0))
    image, labels = training_volume([7, 1], "fine", cfg, recipe["intensity"])
    assert set(np.unique(labels.numpy())) >= set(range(1, 14))  # every FLARE organ of a real map, not a drawn one
    assert image.shape == labels.shape and float(image.std()) > 0.1


def test_mirrored_bodies_swap_sides_and_keep_every_other_draw():
    """``phantoms.mirror``: that share of volumes has left and right swapped with the organs' names
    kept (the liver on the left); the rest, and every draw before it, are the volumes without it."""
    from training.train import training_volume

    recipe, cfg = small_recipe("fine", inplane=2.0, thickness=5.0, phantoms=dict(label_maps=1.0))
    plain = training_volume([7, 1], "fine", cfg, recipe["intensity"])
    cfg["phantoms"]["mirror"] = 1.0
    flipped = training_volume([7, 1], "fine", cfg, recipe["intensity"])
    assert all(torch.equal(a.flip(-1), b) for a, b in zip(plain, flipped))
    width = plain[1].shape[-1]
    liver = [float(np.argwhere(v[1].numpy() == 1)[:, 2].mean()) / width for v in (plain, flipped)]
    assert liver[0] < 0.5 < liver[1]  # LPS x grows to the patient's left: the liver moved there
    cfg["phantoms"]["mirror"] = 0.0
    assert all(torch.equal(a, b) for a, b in zip(plain, training_volume([7, 1], "fine", cfg, recipe["intensity"])))


def test_warm_restart_cycles_resume_to_the_same_tensors(tmp_path):
    """A finished cycle's checkpoint stands in for re-running it: resumed and uninterrupted runs agree."""
    import shutil

    from safetensors.torch import load_file

    recipe, cfg = small_recipe("fine", train=dict(steps=[2, 3], pool=1, batch=1, checkpoint_every=100, refresh_every=1))
    cfg["train"]["patch_size"] = [16, 32, 32]
    full = train_role("fine", cfg, recipe, tmp_path / "full", torch.device("cpu"))
    assert full["steps"] == 5 and [c["steps"] for c in full["cycles"]] == [2, 3]
    assert full["cycles"][1]["seed"] != full["cycles"][0]["seed"]
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "fine.cycle1", tmp_path / "resumed" / "checkpoints" / "fine.cycle1")
    resumed = train_role("fine", cfg, recipe, tmp_path / "resumed", torch.device("cpu"), resume=True)
    assert "resumed_from" in resumed["cycles"][0] and "resumed_from" not in resumed["cycles"][1]
    a = load_file(tmp_path / "full" / "fine" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "fine" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cycle1 = load_file(tmp_path / "full" / "checkpoints" / "fine.cycle1" / "model.safetensors")
    assert not all(torch.equal(a[k], cycle1[k]) for k in a)  # the second cycle did train


def test_deep_supervision_heads_train_and_are_not_shipped(tmp_path):
    from app.convert.tensors import save_model
    from app.unet import UNet3D, UNetConfig
    from training.train import DeepSupervision, dice_ce_loss

    torch.manual_seed(0)
    cfg = UNetConfig(features=[4, 8, 16, 16], strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)], num_classes=3)
    net = UNet3D(cfg)
    ds = DeepSupervision(net, 5)
    assert ds.levels == 2 and ds.strides == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert abs(sum(ds.weights) - 1) < 1e-9 and ds.weights[0] > ds.weights[1] > ds.weights[2]
    x, y = torch.randn(1, 1, 8, 16, 16), torch.randint(0, 3, (1, 8, 16, 16))
    loss = ds.loss(net, x, y)
    loss.backward()
    assert torch.isfinite(loss) and all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in ds.heads)
    assert torch.allclose(DeepSupervision(net, 0).loss(net, x, y), dice_ce_loss(net(x), y))  # no heads: the plain loss
    save_model(tmp_path / "m", net, {"role": "fine", "input": {"spacing": [1.0, 1.0, 1.0], "patch_size": [8, 16, 16]}, "intensity": {"clip": [0.0, 1.0], "mean": 0.0, "std": 1.0}, "labels": {"0": "background", "1": "liver", "2": "right kidney"}})
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "m" / "model.safetensors")) == set(net.state_dict())


def test_init_starts_from_a_trained_folder_and_records_it(tmp_path):
    """``--init``: fine-tuning starts from the given weights (at lr 0 they come out unchanged)."""
    import hashlib

    from safetensors.torch import load_file

    recipe, cfg = small_recipe("coarse", train=dict(steps=1, pool=1, batch=1, checkpoint_every=100, refresh_every=1, patch_size=[8, 16, 16]))
    train_role("coarse", cfg, recipe, tmp_path / "a", torch.device("cpu"))
    cfg["train"]["lr"] = 0.0
    log = train_role("coarse", cfg, recipe, tmp_path / "b", torch.device("cpu"), init=tmp_path / "a")
    a = load_file(tmp_path / "a" / "coarse" / "model.safetensors")
    b = load_file(tmp_path / "b" / "coarse" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    digest = hashlib.sha256((tmp_path / "a" / "coarse" / "model.safetensors").read_bytes()).hexdigest()
    assert log["initialised_from"]["sha256"] == digest


def test_stored_statistics_are_instance_norm_s_on_their_patch_and_fixed_elsewhere():
    """One calibration patch: every layer then normalises it exactly as instance norm did; on
    another input the statistics stay those stored (the output no longer follows the input's own)."""
    from training.norm_statistics import with_stored_statistics

    torch.manual_seed(0)
    net = UNet3D(UNetConfig(features=[4, 8, 16], strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)], kernel_sizes=[(3, 3, 3)] * 3, num_classes=3)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = 3 * torch.randn(1, 1, 16, 24, 24) + 1
    stored = with_stored_statistics(net, [x]).eval()
    assert stored.config.norm == "batch" and net.config.norm == "instance"
    with torch.no_grad():
        assert torch.allclose(stored(x), net(x), atol=1e-4)
        y = torch.randn(1, 1, 16, 24, 24)
        assert not torch.allclose(stored(y), net(y), atol=1e-2)
        stored.train()  # training normalises with the stored statistics too
        assert torch.allclose(stored(x), net(x), atol=1e-4)


def test_init_from_instance_norm_weights_into_a_stored_statistics_recipe(tmp_path):
    """``--init`` with an instance-norm folder and ``norm: batch`` in the recipe: the statistics come
    from patches before fine-tuning, are recorded, and the written folder loads in the engine."""
    from app.backend import build_network

    recipe, cfg = small_recipe("coarse", train=dict(steps=1, pool=1, batch=1, checkpoint_every=100, refresh_every=1, patch_size=[8, 16, 16]))
    train_role("coarse", cfg, recipe, tmp_path / "a", torch.device("cpu"))
    cfg["architecture"]["norm"] = "batch"
    cfg["train"].update(lr=0.0, norm_statistics={"volumes": 1, "patches": 2})
    log = train_role("coarse", cfg, recipe, tmp_path / "b", torch.device("cpu"), init=tmp_path / "a")
    assert log["initialised_from"]["norm_statistics"] == {"volumes": 1, "patches": 2}
    spec = read_spec(tmp_path / "b" / "coarse", "coarse")
    assert spec.architecture["norm"] == "batch"
    net = build_network(spec)
    means = [m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert means and all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in means)


def test_slabs_and_padding_match_what_the_engine_sees():
    """``phantoms.slab`` cuts a short z-range (partial scans); ``train.pad_value`` 0.0 pads patches as
    the engine's sliding window does, not with the volume's minimum."""
    from app.sliding_window import pad_to
    from training.train import PatchSampler, training_volume

    recipe, cfg = small_recipe("coarse", phantoms=dict(slab=[1.0, 36.0, 36.0]))
    image, labels = training_volume([3, 0], "coarse", cfg, recipe["intensity"])
    assert image.shape[0] == 6 and labels.shape == image.shape  # 36 mm at the coarse model's 6 mm
    sampler = PatchSampler((16, 8, 8), 0.0, np.random.default_rng(0), pad_value=0.0)
    sampler.add(image, labels)
    patch, _ = sampler.sample()
    engine, _ = pad_to(image[None, None], (16, *image.shape[1:]))
    padded = [bool((z == 0).all()) for z in patch]
    assert sum(padded) == 10 and float(image.min()) < -1  # ten slices past the slab hold 0, not the minimum
    assert sum(bool((z == 0).all()) for z in engine[0, 0]) == 10  # as the engine pads the same slab


def test_nnunet_augmentation_turns_only_the_axial_plane_and_never_mirrors():
    """Rotation about z only: a z-invariant label map stays z-invariant; no mirroring: a right-side
    organ stays on its side."""
    from training.augmentation import nnunet_augmentation

    aug = nnunet_augmentation((8, 32, 32))
    image = torch.randn(8, 32, 32)
    labels = torch.zeros(8, 32, 32, dtype=torch.long)
    labels[:, 4:12, 20:28] = 2  # the same box in every slice, right of the centre column
    np.random.seed(0)
    torch.manual_seed(0)
    moved = 0
    for _ in range(40):
        img, lab = aug(image, labels)
        assert img.shape == image.shape and lab.shape == labels.shape and lab.dtype == torch.long
        assert set(lab.unique().tolist()) <= {0, 2}
        filled = [z for z in range(8) if (lab[z] == 2).any()]
        assert filled and all(torch.equal(lab[z], lab[filled[0]]) for z in filled)  # no tilt out of the axial plane
        assert np.argwhere(lab[filled[0]].numpy() == 2)[:, 1].mean() > 15.5  # never mirrored to the other side
        moved += not torch.equal(lab, labels)
    assert moved >= 5  # rotations and zooms did happen (p 0.2 each)


def test_prefetch_gives_results_in_order_and_raises_a_worker_s_error():
    import functools
    import operator

    from training.prefetch import Prefetch

    for workers in (0, 2):
        with Prefetch(functools.partial(pow, 2), workers, ahead=3) as powers:
            assert [next(powers) for _ in range(6)] == [1, 2, 4, 8, 16, 32]
    with Prefetch(functools.partial(operator.truediv, 1.0), 1) as inverse, pytest.raises(ZeroDivisionError):
        next(inverse)  # 1 / 0: the worker's error, at the case that raised it


def test_phantoms_generated_ahead_in_workers_train_the_same_tensors(tmp_path):
    """``--workers``: phantoms made in other processes are the ones made in the training process, in
    the same order, and every draw of the training process stays where it was (augmentation too)."""
    from safetensors.torch import load_file

    recipe, cfg = small_recipe("fine", inplane=2.0, thickness=5.0, phantoms=dict(label_maps=0.5), train=dict(steps=4, pool=2, batch=1, checkpoint_every=100, refresh_every=2, patch_size=[16, 32, 32], augment="nnunet"))
    logs = {n: train_role("fine", cfg, recipe, tmp_path / str(n), torch.device("cpu"), workers=n) for n in (0, 2)}
    assert logs[0]["phantoms_generated"] == logs[2]["phantoms_generated"] == 3
    assert [logs[n]["phantom_workers"] for n in (0, 2)] == [0, 2]
    a, b = (load_file(tmp_path / str(n) / "fine" / "model.safetensors") for n in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patches_cut_ahead_are_each_phantom_s_own_whoever_cuts_them():
    """``phantom_patches``: a phantom's augmented patches depend on its index alone, not on what
    was drawn before it in the same process (a worker cuts many phantoms in any order)."""
    from training.train import phantom_patches

    recipe, cfg = small_recipe("fine", inplane=2.0, thickness=5.0, train=dict(patch_size=[16, 32, 32], augment="nnunet", patches_per_phantom=3))
    first = phantom_patches(5, "fine", cfg, recipe["intensity"], 1)
    phantom_patches(5, "fine", cfg, recipe["intensity"], 0)
    np.random.seed(123)
    states = np.random.get_state()[1].copy(), torch.get_rng_state()
    again = phantom_patches(5, "fine", cfg, recipe["intensity"], 1)
    assert np.array_equal(np.random.get_state()[1], states[0]) and torch.equal(torch.get_rng_state(), states[1])  # the caller's draws untouched
    other = phantom_patches(5, "fine", cfg, recipe["intensity"], 2)
    images, labels = first
    assert images.shape == labels.shape == (3, 16, 32, 32) and images.dtype == np.float32 and labels.dtype == np.uint8
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
    assert not np.array_equal(images, other[0])
    assert labels.max() > 0 and not np.array_equal(images[0], images[1])


def test_patches_cut_ahead_in_workers_train_the_same_tensors(tmp_path):
    """``train.patches_per_phantom``: patches come from a buffer filled by the phantom stream, each
    used once, and the weights do not depend on the number of workers that cut them."""
    from safetensors.torch import load_file

    recipe, cfg = small_recipe("fine", inplane=2.0, thickness=5.0, phantoms=dict(label_maps=0.5), train=dict(
        steps=4, batch=2, checkpoint_every=100, patch_size=[16, 32, 32], augment="nnunet", patches_per_phantom=3, patch_buffer=4))
    logs = {n: train_role("fine", cfg, recipe, tmp_path / str(n), torch.device("cpu"), workers=n) for n in (0, 2)}
    assert logs[0]["phantoms_generated"] == logs[2]["phantoms_generated"] == 4  # 4 in the buffer + 8 drawn = 12 patches
    a, b = (load_file(tmp_path / str(n) / "fine" / "model.safetensors") for n in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="patch_buffer of at least the batch"):
        check_recipe({**recipe, "fine": {**cfg, "train": {**cfg["train"], "patch_buffer": 1}}})


def test_the_recipe_sets_how_often_and_how_far_the_augmentation_zooms():
    """``train.augment_scaling`` reaches nnU-Net's zoom: at p 1 and a factor of 2 every patch shows its
    organ an eighth of the size (2 per axis, z too); nnU-Net's p of 0.2 would leave most as they
    were. A misspelt key is refused at the start rather than silently training with the defaults."""
    from training.train import spatial_augmentation

    labels = torch.zeros(8, 32, 32, dtype=torch.long)
    labels[:, 10:22, 10:22] = 3
    np.random.seed(0)
    torch.manual_seed(0)
    zoomed = spatial_augmentation({"augment": "nnunet", "augment_scaling": {"p": 1, "range": [2, 2]}}, (8, 32, 32))
    sizes = [int((zoomed(torch.randn(8, 32, 32), labels)[1] == 3).sum()) for _ in range(10)]
    assert all(abs(n - int((labels == 3).sum()) / 8) <= 20 for n in sizes), sizes
    recipe, _ = small_recipe("fine", train=dict(augment="nnunet", augment_scaling={"probability": 0.5}))
    with pytest.raises(ValueError, match="probability"):
        check_recipe(recipe)  # before any phantom is made


def test_the_recipe_with_nnunet_augmentation_is_repeatable(tmp_path):
    from safetensors.torch import load_file

    recipe, cfg = small_recipe("coarse", train=dict(steps=3, pool=1, batch=1, checkpoint_every=100, refresh_every=10, patch_size=[8, 16, 16], augment="nnunet"))
    for run in ("a", "b"):
        train_role("coarse", cfg, recipe, tmp_path / run, torch.device("cpu"))
    a = load_file(tmp_path / "a" / "coarse" / "model.safetensors")
    b = load_file(tmp_path / "b" / "coarse" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_recipe_names_only_known_phantom_settings_and_a_misspelt_one_is_refused(tmp_path):
    """A misspelt chance ("vessel") would be read as 0: the run would train without what its config
    asks for, silently; the recipe refuses it at start."""
    from training.train import check_recipe, main

    configs = sorted(RECIPE.parent.glob("config*.json"))
    assert len(configs) >= 7
    for path in configs:
        check_recipe(load_recipe(path))
    recipe = load_recipe(RECIPE.parent / "config_anatomy_vessels.json")
    recipe["fine"]["phantoms"]["vessel"] = recipe["fine"]["phantoms"].pop("vessels")
    (tmp_path / "typo.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match="'vessel'"):
        main(["--config", str(tmp_path / "typo.json"), "--out", str(tmp_path / "w"), "--role", "fine", "--steps", "1"])
    assert not (tmp_path / "w").exists()


def test_evaluate_scores_the_real_scans_alone_on_the_organs_each_reference_has(tmp_path, capsys):
    """``--cases 0 --anatomy 0``: the real scans only (how a run's checkpoints are followed), each
    scored on the organs its partial reference holds, in the JSON, the tables and the printout."""
    from evaluation.metrics import ORGANS
    import SimpleITK as sitk

    from app.upsampled import repeated_planes
    from training.evaluate import BLOCKED, SHARED, main

    weights = Path(__file__).resolve().parents[1] / "weights"
    main(["--weights", str(weights), "--out", str(tmp_path / "eval"), "--cases", "0", "--anatomy", "0", "--blocked"])
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert "phantoms" not in result and "anatomy" not in result and len(result["timings"]) == 3 + len(BLOCKED)
    present = json.loads((SHARED / "labels_source.json").read_text())["cases"]
    assert sorted(result["real"]) == sorted(f"{name}.nii.gz" for name in present)
    for name, scores in result["real"].items():
        assert list(scores) == [ORGANS[i - 1] for i in present[name.split(".")[0]]["labels_present"]]
    assert (tmp_path / "eval" / "evaluation.md").read_text().startswith("| real scan |")
    assert "TS_example_sm.nii.gz mean " in capsys.readouterr().out
    # --blocked: the TS examples as low-resolution copies, blocks as BLOCKED says, scored on the same organs
    assert list(result["blocked"]) == sorted(f"{scan}_z{z:g}mm_xy{xy:g}mm.nii.gz" for scan, z, xy in BLOCKED)
    for name, scores in result["blocked"].items():
        scan = name.rsplit("_z", 1)[0]
        assert list(scores) == [ORGANS[i - 1] for i in present[scan]["labels_present"]]
        image = sitk.ReadImage(str(tmp_path / "eval" / "blocked" / "images" / name.replace(".nii.gz", "_0000.nii.gz")))
        source = sitk.ReadImage(str(SHARED / "images" / f"{scan}_0000.nii.gz"))
        assert (image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (source.GetSpacing(), source.GetOrigin(), source.GetDirection())
        _, z, xy = next(b for b in BLOCKED if name.startswith(f"{b[0]}_z{b[1]:g}mm_xy{b[2]:g}mm"))
        runs = {axis: round(mm / step) for axis, (mm, step) in enumerate(zip((z, xy, xy), source.GetSpacing()[::-1])) if round(mm / step) > 1}
        assert repeated_planes(sitk.GetArrayFromImage(image)) == runs


def test_warmup_ramps_the_poly_schedule_and_zero_warmup_is_the_poly_schedule():
    from training.train import schedule_factor

    def poly(s: int) -> float:  # a cycle of 100 steps, by step
        return schedule_factor(s / 100, s)

    def warm(s: int) -> float:
        return schedule_factor(s / 100, s, 10)

    assert [poly(s) for s in range(100)] == [(1 - s / 100) ** 0.9 for s in range(100)]
    assert warm(0) == poly(0) / 10 and warm(4) == poly(4) / 2
    assert all(warm(s) < warm(s + 1) for s in range(9)) and all(warm(s) == poly(s) for s in range(9, 100))


def test_a_time_budget_anneals_over_the_time_left():
    from training.train import schedule_factor

    assert schedule_factor(0.0, 0) == 1.0 and schedule_factor(0.5, 7) == 0.5**0.9
    assert schedule_factor(1.0, 99) == 0.0 and schedule_factor(1.2, 99) == 0.0  # a late clock reading never gives a negative rate
    assert schedule_factor(0.25, 4, warmup=10) == 0.75**0.9 / 2


class TickingClock:
    """A clock that moves ``tick`` seconds at each reading: a run's length then depends on how often it reads it."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_minutes_replace_the_step_count_and_are_shared_by_the_cycles(tmp_path):
    recipe, cfg = small_recipe("fine", train=dict(steps=[1000, 3000], pool=1, batch=1, checkpoint_every=10, refresh_every=5))
    cfg["train"]["patch_size"] = [16, 32, 32]
    log = train_role("fine", cfg, recipe, tmp_path, torch.device("cpu"), minutes=1.0, clock=TickingClock(1.0))
    first, second = (c["steps"] for c in log["cycles"])
    # 15 s and 45 s of a clock read about once a step: far fewer steps than the recipe's 1000 and 3000
    assert 5 <= first < 15 and 3 * first - 6 <= second < 45, (first, second)
    assert [c["minutes"] for c in log["cycles"]] == [0.25, 0.75] and log["minutes"] == 1.0 and log["steps"] == first + second
    assert (tmp_path / "checkpoints" / f"fine.seed{log['cycles'][1]['seed']}.step20" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "fine" / "training_log.json").read_text())["minutes"] == 1.0
    with pytest.raises(RuntimeError, match="no time left to train"):  # the pool alone spent the budget
        train_role("fine", cfg, recipe, tmp_path / "late", torch.device("cpu"), minutes=1.0, clock=TickingClock(100.0))


def test_head_fit_trains_the_heads_alone_and_leaves_the_network_as_it_was():
    from training.train import DeepSupervision, fit_heads

    torch.manual_seed(0)
    cfg = UNetConfig(features=[4, 8, 16, 16], strides=[(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)], kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)], num_classes=3)
    net = UNet3D(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = DeepSupervision(net, 2)
    heads = [h.weight.detach().clone() for h in ds.heads]
    x, y = torch.randn(1, 1, 8, 16, 16), torch.randint(0, 3, (1, 8, 16, 16))
    log = fit_heads(net, ds, lambda: (x, y), {"steps": 30, "lr": 0.01})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(not torch.equal(a, h.weight) for a, h in zip(heads, ds.heads))
    assert log["steps"] == 30 and log["final_loss"] < log["first_loss"]


def test_a_recipe_with_head_fit_and_warmup_runs_and_records_both(tmp_path):
    recipe, cfg = small_recipe("fine", train=dict(steps=2, pool=1, batch=1, checkpoint_every=100, refresh_every=1, patch_size=[16, 32, 32], head_fit={"steps": 3, "lr": 0.01}, warmup=2))
    log = train_role("fine", cfg, recipe, tmp_path, torch.device("cpu"))
    cycle = log["cycles"][0]
    assert cycle["head_fit"]["steps"] == 3 and cycle["warmup"] == 2
    load_model(read_spec(tmp_path / "fine", "fine"), CPU)


def test_checkpoint_rows_are_named_apart_or_refused():
    """Two weights folders' fine models are rows ``w7.fine`` and ``w8.fine`` (by the folder's name alone
    both would be ``fine``, and the second's masks would land in the first's folder); a true clash is
    refused before anything runs."""
    from training.evaluate import checkpoint_names

    assert checkpoint_names([Path("/r/run/checkpoints/fine.seed1.step100"), Path("/t/w7/fine"), Path("/t/w8/fine"), Path("/t/avg")]) == [
        "run.fine.seed1.step100", "w7.fine", "w8.fine", "avg"]
    with pytest.raises(ValueError, match="w7.fine"):
        checkpoint_names([Path("/a/w7/fine"), Path("/b/w7/fine")])


def test_evaluate_runs_the_fine_stage_at_the_scales_asked(tmp_path, monkeypatch):
    """``--scales 1.1`` (one pass at 1.1, how the weights' scale fragility is measured) and ``--tta``
    reach the engine's options, for --checkpoints too, and are recorded; asking for both is refused."""
    import training.evaluate as ev
    from app.cli import TTA_SCALES

    seen = []

    def real_scores(masks, opts, folder=None):
        seen.append(opts.tta_scales)
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "timings.jsonl").write_text("")
        return {"TS_example_sm.nii.gz": {"Liver": {"dsc": 0.9, "nsd": 0.8}}}

    monkeypatch.setattr(ev, "real_scores", real_scores)
    for flags, scales in ((["--scales", "1.1"], (1.1,)), (["--tta"], TTA_SCALES), ([], (1.0,))):
        ev.main(["--out", str(tmp_path / "out"), "--cases", "0", "--anatomy", "0", *flags])
        assert seen[-1] == scales
        assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["fine_scales"] == list(scales)
    (tmp_path / "ck" / "fine").mkdir(parents=True)
    ev.main(["--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ck" / "fine"), "--scales", "0.9", "1.1"])
    assert seen[-1] == (0.9, 1.1)
    assert json.loads((tmp_path / "out" / "checkpoints.json").read_text())[0]["fine_scales"] == [0.9, 1.1]
    with pytest.raises(SystemExit):
        ev.main(["--out", str(tmp_path / "out"), "--tta", "--scales", "1.1"])


def test_evaluate_scores_each_checkpoint_as_the_fine_model(tmp_path, capsys):
    """``--checkpoints``: every folder is scored as the fine model beside --weights' coarse model (a
    random fine network scores far below the shipped one: the checkpoint, not weights/fine, ran)."""
    import shutil

    from tests.helpers import make_weights
    from training.evaluate import main

    weights = Path(__file__).resolve().parents[1] / "weights"
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copytree(weights / "fine", run / "fine.seed1.step100")
    shutil.copytree(make_weights(tmp_path / "random") / "fine", run / "fine.seed1.step200")
    main(["--weights", str(weights), "--out", str(tmp_path / "eval"), "--checkpoints", str(run / "fine.seed1.step100"), str(run / "fine.seed1.step200")])
    rows = json.loads((tmp_path / "eval" / "checkpoints.json").read_text())
    assert [r["checkpoint"] for r in rows] == ["run.fine.seed1.step100", "run.fine.seed1.step200"]
    shipped, random = rows
    assert shipped["organs"] == 20 and shipped["TS_example_sm.nii.gz"] > 0.6
    assert random["organ_mean"] < shipped["organ_mean"] - 0.3
    assert "| run.fine.seed1.step100 |" in capsys.readouterr().out


def test_lowest_organ_finds_the_one_organ_a_mean_hides():
    """Ten cases at 0.93 with one organ of one case at 0.04: the mean stays high, the lowest says where."""
    from types import SimpleNamespace

    from evaluation.metrics import ORGANS
    from training.evaluate import lowest_organ

    cases = [SimpleNamespace(name=f"c{i}.nii.gz", error=None, dsc={o: 0.93 for o in ORGANS}) for i in range(10)]
    cases[8].dsc["RAG"] = 0.04
    cases[3].dsc["LAG"] = float("nan")  # an organ neither mask has
    cases.append(SimpleNamespace(name="broken.nii.gz", error="unreadable", dsc={o: 0.0 for o in ORGANS}))
    assert lowest_organ(cases) == {"case": "c8.nii.gz", "organ": "RAG", "dsc": 0.04}
    with pytest.raises(ValueError, match=r"broken.nii.gz \(unreadable\)"):
        lowest_organ(cases[-1:])  # a set where nothing scored says which cases and why


def test_checkpoints_with_anatomy_are_scored_on_the_held_out_maps_too(tmp_path, monkeypatch):
    """``--checkpoints ... --anatomy N``: each folder also on the phantoms around N held-out maps,
    once generated; the table gains their organ mean and lowest organ. Without --anatomy, none."""
    import training.evaluate as ev

    made, scored = [], []
    monkeypatch.setattr(ev, "real_scores", lambda masks, opts, folder=None: {"TS_example_sm.nii.gz": {"Liver": {"dsc": 0.9, "nsd": 0.8}}})
    monkeypatch.setattr(ev, "anatomy_set", lambda out, n, seed: made.append((out, n)))

    def scored_set(folder, masks, opts):
        scored.append((folder, masks.name, opts.weights.name))
        return {"organ_mean": {"dsc": 0.93, "nsd": 0.96}, "per_case": {f"c{i}": 0.93 for i in range(3)},
                "lowest": {"case": "anatomy_FLARE22_Tr_0045.nii.gz", "organ": "RAG", "dsc": 0.04}}

    monkeypatch.setattr(ev, "scored_set", scored_set)
    for step in (100, 200):
        (tmp_path / "run" / "checkpoints" / f"fine.seed1.step{step}").mkdir(parents=True)
    folders = [str(p) for p in sorted((tmp_path / "run" / "checkpoints").iterdir())]
    ev.main(["--out", str(tmp_path / "out"), "--checkpoints", *folders, "--anatomy", "3"])
    assert made == [(tmp_path / "out" / "anatomy", 3)]
    assert [s[1:] for s in scored] == [("run.fine.seed1.step100",) * 2, ("run.fine.seed1.step200",) * 2]
    rows = json.loads((tmp_path / "out" / "checkpoints.json").read_text())
    assert rows[0]["anatomy_mean"] == 0.93 and rows[0]["anatomy_lowest"]["organ"] == "RAG" and rows[0]["anatomy_cases"] == 3
    table = (tmp_path / "out" / "checkpoints.md").read_text()
    assert "held-out maps (3): organ mean | lowest organ there |" in table and "| 0.930 | RAG 0.04 (anatomy_FLARE22_Tr_0045) |" in table
    made.clear(), scored.clear()
    ev.main(["--out", str(tmp_path / "out"), "--checkpoints", *folders])
    assert not made and not scored and "held-out" not in (tmp_path / "out" / "checkpoints.md").read_text()
