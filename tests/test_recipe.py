"""Training recipes built on a base: what a stage changes, applied to the stage it builds on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.recipe import load_recipe

TRAINING = Path(__file__).resolve().parents[1] / "training"


def _write(folder: Path, name: str, recipe: dict) -> Path:
    (folder / name).write_text(json.dumps(recipe))
    return folder / name


def test_changes_merge_into_nested_settings_replace_lists_and_null_removes(tmp_path):
    base = {"seed": 1, "fine": {"train": {"lr": 0.001, "steps": [600, 300], "warmup": 50}, "phantoms": {"crura": 0.6}}}
    _write(tmp_path, "base.json", base)
    child = _write(tmp_path, "child.json", {"base": "base.json", "seed": 2,
                                            "fine": {"train": {"lr": 0.0005, "steps": [200], "warmup": None}, "phantoms": {"colon": 0.6}}})
    assert load_recipe(child) == {"seed": 2, "fine": {"train": {"lr": 0.0005, "steps": [200]}, "phantoms": {"crura": 0.6, "colon": 0.6}}}
    assert json.loads((tmp_path / "base.json").read_text()) == base  # the base file is read, never changed


def test_a_base_may_have_a_base_of_its_own_named_relative_to_its_folder(tmp_path):
    (tmp_path / "older").mkdir()
    _write(tmp_path / "older", "root.json", {"seed": 1, "lr": 0.1, "batch": 2})
    _write(tmp_path / "older", "mid.json", {"base": "root.json", "lr": 0.05})
    leaf = _write(tmp_path, "leaf.json", {"base": "older/mid.json", "seed": 3})
    assert load_recipe(leaf) == {"seed": 3, "lr": 0.05, "batch": 2}


def test_a_loop_of_bases_is_refused_naming_the_files(tmp_path):
    _write(tmp_path, "a.json", {"base": "b.json", "seed": 1})
    _write(tmp_path, "b.json", {"base": "a.json", "seed": 2})
    with pytest.raises(ValueError, match=r"loop \(a.json -> b.json -> a.json\)"):
        load_recipe(tmp_path / "a.json")


def test_a_base_that_names_no_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names a recipe file"):
        load_recipe(_write(tmp_path, "a.json", {"base": 3}))
    with pytest.raises(FileNotFoundError):
        load_recipe(_write(tmp_path, "b.json", {"base": "missing.json"}))


def test_every_shipped_stage_resolves_to_a_complete_recipe():
    """Each stage file is its base plus a few changes; resolved, each holds both roles' four parts
    and a seed, as the training expects (a base naming the wrong file would drop or add a part)."""
    for path in sorted(TRAINING.glob("config*.json")):
        recipe = load_recipe(path)
        assert "base" not in recipe and isinstance(recipe["seed"], int), path.name
        for role in ("coarse", "fine"):
            assert {"architecture", "input", "phantoms", "train"} <= set(recipe[role]), (path.name, role)


def test_the_shipped_stage_is_stage_8s_second_run_plus_the_colon():
    """What the model card says stage 9 changed is what its file holds."""
    stage8 = load_recipe(TRAINING / "config_anatomy_headfit_cycle2.json")
    stage9 = load_recipe(TRAINING / "config_anatomy_colon_gas.json")
    assert stage9["fine"]["phantoms"] == {**stage8["fine"]["phantoms"], "colon": 0.6}
    assert stage9["fine"]["train"] == stage8["fine"]["train"] and stage9["coarse"] == stage8["coarse"]
    assert (stage9["seed"], stage8["seed"]) == (20261209, 20261205)
