"""Training recipes: JSON files, each complete or a ``"base"`` recipe plus what it changes.

A stage that differs from the one before by a seed and a learning rate says so in a few lines
instead of repeating some 250, so what a stage changed is what its file holds. The changes are a
JSON Merge Patch (RFC 7386, the ``json-merge-patch`` package): objects merge key by key, any
other value (a number, a list) replaces the base's, and ``null`` removes the key.

    {"base": "config_anatomy_colon_gas.json", "seed": 20261215, "fine": {"train": {"lr": 0.000125}}}
"""

from __future__ import annotations

import json
from pathlib import Path

import json_merge_patch


def load_recipe(path: Path) -> dict:
    """The complete recipe at ``path``: its ``"base"`` (a path relative to its folder) loaded first,
    recursively, and this file's changes applied to it."""
    return _load(Path(path), ())


def _load(path: Path, seen: tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(p.name for p in (*seen, resolved))
        raise ValueError(f"{path}: recipe bases form a loop ({chain})")
    changes = json.loads(path.read_text())
    if not isinstance(changes, dict):
        raise ValueError(f"{path}: a recipe is a JSON object")
    base = changes.pop("base", None)
    if base is None:
        return changes
    if not isinstance(base, str):
        raise ValueError(f"{path}: \"base\" names a recipe file, got {base!r}")
    return json_merge_patch.merge(_load(path.parent / base, (*seen, resolved)), changes)
