"""The training recipe runs end to end and writes weights folders the engine loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.model import load_model
from app.weights import read_spec
from training.train import train_role

RECIPE = Path(__file__).resolve().parents[1] / "training" / "config.json"


def test_a_short_run_of_each_role_writes_loadable_weights(tmp_path):
    recipe = json.loads(RECIPE.read_text())
    for role in ("coarse", "fine"):
        cfg = recipe[role]
        cfg["phantoms"].update(size=96, inplane=[4.0, 4.0], thickness=[6.0, 6.0])
        cfg["train"].update(steps=2, pool=1, batch=1, checkpoint_every=2, refresh_every=1)
        cfg["train"]["patch_size"] = [16, 32, 32] if role == "fine" else [8, 16, 16]
        log = train_role(role, cfg, recipe, tmp_path, torch.device("cpu"))
        assert log["steps"] == 2 and log["phantoms_generated"] == 2
        spec = read_spec(tmp_path / role, role)
        assert len(spec.labels) == (2 if role == "coarse" else 15)
        load_model(spec, torch.device("cpu"))
        assert (tmp_path / "checkpoints" / f"{role}.step2" / "model.safetensors").is_file()
        assert json.loads((tmp_path / role / "training_log.json").read_text())["parameters"] > 0
