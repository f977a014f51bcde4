"""FLARE label order and name matching, shared by the engine, importers and evaluation."""

from __future__ import annotations

FLARE_LABELS: dict[int, str] = {
    1: "liver",
    2: "right kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior vena cava",
    7: "right adrenal gland",
    8: "left adrenal gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left kidney",
    14: "lesion",
}

ORGANS: tuple[int, ...] = tuple(range(1, 14))  # the 13 organs (14, lesion, comes several per scan)
LESION = 14

# The organisers' evaluation scripts' column names, by FLARE id.
SHORT_NAMES: dict[int, str] = {
    1: "Liver", 2: "RK", 3: "Spleen", 4: "Pancreas", 5: "Aorta", 6: "IVC", 7: "RAG", 8: "LAG",
    9: "Gallbladder", 10: "Esophagus", 11: "Stomach", 12: "Duodenum", 13: "LK", 14: "Lesion",
}

# Other spellings seen in model label maps (nnU-Net dataset.json files, TotalSegmentator, MSD).
_ALIASES: dict[str, int] = {
    "background": 0,
    "right_kidney": 2,
    "kidney_right": 2,
    "rk": 2,
    "ivc": 6,
    "inferior_vena_cava": 6,
    "postcava": 6,
    "right_adrenal": 7,
    "right_adrenal_gland": 7,
    "adrenal_gland_right": 7,
    "rag": 7,
    "left_adrenal": 8,
    "left_adrenal_gland": 8,
    "adrenal_gland_left": 8,
    "lag": 8,
    "gall_bladder": 9,
    "oesophagus": 10,
    "left_kidney": 13,
    "kidney_left": 13,
    "lk": 13,
    "tumor": 14,
    "tumour": 14,
    "lesions": 14,
}


def _key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


_BY_NAME: dict[str, int] = {_key(n): i for i, n in FLARE_LABELS.items()}
_BY_NAME.update({_key(n): i for n, i in _ALIASES.items()})


def flare_id(name: str) -> int | None:
    """FLARE id for a label name in any common spelling, or None if unknown."""
    return _BY_NAME.get(_key(name))
