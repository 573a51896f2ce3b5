"""The compared methods as patches over a base config (the paper's settings for each).

A method changes only what makes it that method: the objective (what is meta-learned), the
masker, and the inner learning-rate policy. The base config keeps the rest (data, backbone,
sampler, inner lr and steps, schedule). Objective options of the base are kept when the method
uses the base's own objective; otherwise the method's paper settings apply (MAML family: AdamW
1e-3; Meta-ticket: the ``metaticket`` defaults, SGD lr 10 with warmup and cosine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAML_OBJECTIVE = {"name": "maml", "options": {"optimizer": "adamw", "lr": 0.001}}
METATICKET_OBJECTIVE = {"name": "metaticket", "options": {}}
INNER_FIELDS = ("lr", "steps", "test_steps", "first_order")  # options every sgd policy shares

# method -> (objective, inner policy, IteRand on top of the Meta-ticket masker)
METHODS: dict[str, tuple[dict[str, Any], str, bool]] = {
    "maml": (MAML_OBJECTIVE, "sgd", False),
    "anil": (MAML_OBJECTIVE, "anil", False),
    "boil": (MAML_OBJECTIVE, "boil", False),
    "metaticket": (METATICKET_OBJECTIVE, "sgd", False),
    "metaticket_boil": (METATICKET_OBJECTIVE, "boil", False),
    "metaticket_iterand": (METATICKET_OBJECTIVE, "sgd", True),
    "maml_frozen_head": (MAML_OBJECTIVE, "sgd", False),
    "metaticket_learned_head": (METATICKET_OBJECTIVE, "sgd", False),
}
# objective options that make a method what it is, kept over the base's (the Figure 2 2x2:
# is the classifier meta-learned or frozen at its random initialisation?)
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "maml_frozen_head": {"learn_head": False},
    "metaticket_learned_head": {"learn_head": True},
}


def method_patch(
    method: str, base: Mapping[str, Any], iterand_period: int | None = None
) -> dict[str, Any]:
    """The config patch that turns ``base`` into a run of ``method``.

    ``iterand_period`` (IteRand only): re-randomise every this many iterations; default: 1/30 of
    the run, the paper's 30 events (every 1000 of 30000 iterations).
    """
    objective, policy, iterand = METHODS[method]
    base_objective = base.get("objective") or {}
    if base_objective.get("name") == objective["name"]:
        objective = {"name": objective["name"], "options": base_objective.get("options") or {}}
    if method in METHOD_OPTIONS:
        objective = {
            "name": objective["name"],
            "options": {**objective["options"], **METHOD_OPTIONS[method]},
        }
    inner_options = (base.get("inner") or {}).get("options") or {}
    patch: dict[str, Any] = {
        "objective": objective,
        "inner": {
            "name": policy,
            "options": {k: v for k, v in inner_options.items() if k in INNER_FIELDS},
        },
        "masker": None,  # the objective's own masker: dense for MAML, metaticket for Meta-ticket
    }
    base_masker = base.get("masker") or {}
    masker_options = (
        base_masker.get("options") or {} if base_masker.get("name") == "metaticket" else {}
    )
    if objective["name"] == "metaticket" and masker_options:
        patch["masker"] = {"name": "metaticket", "options": masker_options}
    if iterand:
        iterations = (base.get("train") or {}).get("iterations", 30000)
        period = iterand_period or max(1, iterations // 30)
        patch["masker"] = {
            "name": "iterand",
            "options": {
                "base": {"name": "metaticket", "options": masker_options},
                "period": period,
                "rate": 1.0,
            },
        }
    return patch
