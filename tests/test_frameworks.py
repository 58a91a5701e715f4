"""The shipped frameworks are rich enough and their numbers are right."""
import math

import pytest

from tasks.adapters.ops.config_files import load_framework
from tasks.domain.framework import Pattern

from conftest import REPO


def slot_values(framework, pattern_id, slot):
    for _, block in framework.blocks():
        for pattern in block.patterns:
            if pattern.id == pattern_id:
                return pattern.slots[slot]
    raise KeyError(pattern_id)


def test_devops_is_rich(devops_framework):
    ids = devops_framework.final_principle_ids()
    assert len(ids) >= 8
    for topic in ["network", "artifacts", "delivery", "observability", "infrastructure", "privilege", "redundancy", "cost"]:
        assert any(topic in i for i in ids), topic
    assert devops_framework.combinations() >= 3000
    assert devops_framework.style.max_answer_words <= 60


def test_devops_cidr_arithmetic(devops_framework):
    for split in slot_values(devops_framework, "split-vpc", "split"):
        assert split["vpc"].endswith(f"/{split['prefix']}")
        assert split["count"] == 2 ** (split["subnet"] - split["prefix"])
        assert split["hosts"] == 2 ** (32 - split["subnet"]) - 5  # AWS reserves five addresses
    for fit in slot_values(devops_framework, "subnet-size", "fit"):
        usable = 2 ** (32 - fit["prefix"]) - 5
        assert fit["usable"] == usable >= fit["need"] and fit["total"] == 2 ** fit["bits"]
        assert 2 ** (32 - fit["prefix"] - 1) - 5 < fit["need"], "the smallest prefix that fits"


def test_physics_is_a_four_layer_curriculum_with_correct_numbers():
    physics = load_framework(REPO / "configs/frameworks/physics.yaml")
    assert physics.layers == ["classical", "modern", "theoretical", "applied/interdisciplinary"]
    for drop in slot_values(physics, "free-fall", "drop"):
        assert drop["v"] == pytest.approx(math.sqrt(2 * 9.81 * drop["h"]), abs=0.05)
    for c in slot_values(physics, "inelastic-carts", "c"):
        assert c["v"] == pytest.approx(c["m1"] * c["v1"] / (c["m1"] + c["m2"]), abs=0.01)
    for t in slot_values(physics, "carnot-limit", "t"):
        assert t["eff"] == round(100 * (1 - t["cold"] / t["hot"]))
    for r in slot_values(physics, "heater-power", "r"):
        assert r["i"] == pytest.approx(r["v"] / r["ohm"], abs=0.01) and r["w"] == round(r["v"] ** 2 / r["ohm"])
    for light in slot_values(physics, "photon-energy", "l"):
        assert light["ev"] == pytest.approx(1239.84 / light["nm"], abs=0.01)


def test_pattern_rejects_a_slot_missing_from_a_question():
    with pytest.raises(ValueError, match="would repeat with different answers"):
        Pattern(id="p", questions=["Why {a}?", "Why not?"], answer="{a}", slots={"a": ["x", "y"]})


def test_pattern_rejects_unknown_placeholder_and_missing_field():
    with pytest.raises(ValueError, match="no slot values"):
        Pattern(id="p", questions=["Why {a}?"], answer="{b}", slots={"a": ["x"]})
    with pytest.raises(ValueError, match="lacks"):
        Pattern(id="p", questions=["Why {a.x}?"], answer="{a.y}", slots={"a": [{"x": 1}]})
