"""The shipped frameworks are rich enough and their numbers are right."""
import math

import pytest

from tasks.adapters.ops.config_files import load_framework
from tasks.domain.framework import Pattern

from conftest import REPO, write_rows


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
    # the patterns added when the framework grew (issue 30): 4 principles and 6 patterns -> 5 and 16
    for lift in slot_values(physics, "lift-power", "l"):
        assert lift["j"] == round(lift["kg"] * 9.81 * lift["h"]) and lift["w"] == round(lift["kg"] * 9.81 * lift["h"] / lift["s"])
    for k in slot_values(physics, "kettle-time", "k"):
        assert k["kj"] == round(k["kg"] * 4186 * k["dt"] / 1000, 1) and k["s"] == round(k["kj"] * 1000 / k["w"])
    for i in slot_values(physics, "impulse-stop", "i"):
        assert i["n"] == pytest.approx(i["kg"] * i["v"] / i["s"])
    for r in slot_values(physics, "recoil", "r"):
        assert r["back"] == pytest.approx(r["small"] * r["v"] / r["big"], abs=0.005)
    for d in slot_values(physics, "water-pressure", "d"):
        assert d["kpa"] == pytest.approx(9.81 * d["m"], abs=0.05)
    for gas in slot_values(physics, "gas-heating", "g"):
        assert gas["after"] == round(gas["kpa"] * gas["hot"] / gas["cold"])
    for c in slot_values(physics, "heat-pump-cop", "c"):
        assert c["cop"] == round(c["hot"] / (c["hot"] - c["cold"]), 1)
    for w in slot_values(physics, "wire-loss", "w"):
        assert w["a"] == w["kw"] * 1000 / w["v"] and w["loss"] == pytest.approx(w["a"] ** 2 * w["ohm"])
    for sound in slot_values(physics, "sound-wavelength", "s"):
        assert sound["m"] == pytest.approx(343 / sound["hz"], rel=0.01)
    for h in slot_values(physics, "string-harmonic", "h"):
        assert h["hz"] == round(h["v"] / (2 * h["m"]))


@pytest.fixture(scope="module")
def finance():
    return load_framework(REPO / "configs/frameworks/finance.yaml")


@pytest.fixture(scope="module")
def cs():
    return load_framework(REPO / "configs/frameworks/cs.yaml")


@pytest.mark.parametrize("name", ["finance", "cs"])
def test_new_domains_are_complete_and_build_1500_valid_samples(name, tmp_path):
    from tasks.adapters.ops.config_files import load_heldout
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.config import EvaluationConfig, ValidationConfig
    from tasks.domain.expansion import build_dataset
    from tasks.stages.build_dataset import validate_files

    framework = load_framework(REPO / f"configs/frameworks/{name}.yaml")
    assert framework.domain == name and len(framework.layers) == 4 and len(framework.principles) >= 6
    patterns = [p for _, block in framework.blocks() for p in block.patterns]
    assert all(len(p.questions) >= 2 for p in patterns), "every pattern has paraphrases"
    build = build_dataset(OfflineBlueprintGenerator().generate(framework), seed=13, eval_fraction=0.1, max_samples=0)
    assert len(build.train) + len(build.eval) >= 1500
    assert set(build.counts) == set(framework.final_principle_ids())
    files = [write_rows(tmp_path / "train.jsonl", build.train), write_rows(tmp_path / "eval.jsonl", build.eval)]
    heldout = load_heldout(EvaluationConfig(heldout_dir=str(REPO / "configs/probes/heldout")), name)
    assert heldout is not None and len(heldout.questions) >= 20
    report = validate_files([str(f) for f in files], framework, ValidationConfig(), tmp_path / "gx", heldout)
    assert report.success, report.summary()


def test_finance_numbers(finance):
    for g in slot_values(finance, "grow-savings", "g"):
        fv = g["p"] * (1 + g["r"] / 100) ** g["n"]
        simple = g["p"] + round(g["p"] * g["r"] * g["n"] / 100)
        assert (g["fv"], g["gain"], g["simple"]) == (round(fv), round(fv) - g["p"], simple), g
        assert 0 < g["r"] < 100  # the answer prints the growth factor as 1.{r:02d}
    for p in slot_values(finance, "npv-verdict", "p"):
        pv = p["cf"] * (1 - (1 + p["r"] / 100) ** -p["n"]) / (p["r"] / 100)
        assert p["pv"] == round(pv) and p["npv"] == round(pv - p["cost"]), p
        assert p["verdict"] == ("accept" if p["npv"] > 0 else "reject"), p
    verdicts = {p["verdict"] for p in slot_values(finance, "npv-verdict", "p")}
    assert verdicts == {"accept", "reject"}, "both decisions are taught"
    for b in slot_values(finance, "break-even-units", "b"):
        assert b["margin"] == b["price"] - b["var"] > 0 and b["units"] == math.ceil(b["fixed"] / b["margin"]), b
    for f in slot_values(finance, "real-return-why", "f"):
        assert f["real"] == pytest.approx(100 * ((1 + f["nom"] / 100) / (1 + f["inf"] / 100) - 1), abs=0.05), f
    for d in slot_values(finance, "diversify", "d"):
        assert d["pvol"] == pytest.approx(d["vol"] / math.sqrt(d["n"]), abs=0.05), d
    for r in slot_values(finance, "runway-months-left", "r"):
        assert r["months"] == r["cash"] // r["burn"], r
    for c in slot_values(finance, "coverage-ratio", "c"):
        assert c["cover"] == pytest.approx(c["ebit"] / c["interest"], abs=0.05), c
        assert c["verdict"] == ("weak" if c["cover"] < 2 else "adequate" if c["cover"] < 5 else "strong"), c
    for loan in slot_values(finance, "monthly-payment", "l"):
        r, n = loan["rate"] / 1200, loan["years"] * 12
        payment = loan["p"] * r / (1 - (1 + r) ** -n)
        assert loan["pay"] == round(payment) and loan["interest"] == round(payment * n - loan["p"]), loan
    for e in slot_values(finance, "fee-cost", "e"):
        net, gross = (e["start"] * (1 + rate / 100) ** e["years"] for rate in (e["gross"] - e["fee"], e["gross"]))
        assert (e["net"], e["nofee"], e["lost"]) == (round(net), round(gross), round(gross) - round(net)), e
    # the patterns added when the framework grew (issue 30): 10 patterns -> 16
    for d in slot_values(finance, "doubling-time", "d"):
        assert d["years"] == round(72 / d["r"], 1) and d["exact"] == round(math.log(2) / math.log(1 + d["r"] / 100), 1), d
    for e in slot_values(finance, "effective-annual-rate", "e"):
        assert e["ear"] == round(100 * ((1 + e["apr"] / 1200) ** 12 - 1), 2), e
    for m in slot_values(finance, "gross-margin", "m"):
        profit = m["price"] - m["cost"]
        assert m["margin"] == round(100 * profit / m["price"]) and m["markup"] == round(100 * profit / m["cost"]), m
    for y in slot_values(finance, "payback-period", "y"):
        assert y["years"] == round(y["cost"] / y["save"], 1), y
    for loss in slot_values(finance, "loss-recovery", "l"):
        assert loss["gain"] == round(100 * loss["loss"] / (100 - loss["loss"])), loss
    for v in slot_values(finance, "inventory-days", "v"):
        assert v["turns"] == v["cogs"] / v["inv"] and v["days"] == round(365 / v["turns"]), v


def test_cs_numbers(cs):
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    for a in slot_values(cs, "address-limit", "a"):
        number, unit = a["size"].split()
        assert int(number) * 1024 ** units.index(unit) == 2 ** a["bits"] and int(number) < 1024, a
    for m in slot_values(cs, "array-footprint", "m"):
        width = {"int8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4, "float64": 8, "complex128": 16}[m["type"]]
        assert m["b"] == width and m["bytes"] == m["n"] * width, m
        assert m["mib"] == pytest.approx(m["bytes"] / 2 ** 20, abs=0.05), m
    for s in slot_values(cs, "search-steps", "s"):
        assert s["steps"] == s["n"].bit_length(), s  # floor(log2 n) + 1, exact in integers
    for o in slot_values(cs, "sort-choice", "o"):
        assert o["nlogn"] == round(o["n"] * math.log2(o["n"])) and o["n2"] == o["n"] ** 2 // 2, o
        assert o["ratio"] == round(o["n2"] / (o["n"] * math.log2(o["n"]))), o
    for c in slot_values(cs, "average-latency", "c"):
        hits, misses = c["h"] * c["c"], (100 - c["h"]) * c["m"]
        assert c["miss"] == pytest.approx(100 - c["h"]) and c["eat"] == pytest.approx((hits + misses) / 100, abs=0.051), c
        assert c["share"] == round(100 * misses / (hits + misses)) and c["gain"] == pytest.approx((c["m"] - c["c"]) / 100), c
    for t in slot_values(cs, "index-depth", "t"):
        assert t["f"] ** t["depth"] >= t["n"] > t["f"] ** (t["depth"] - 1), t  # the fewest levels that reach n
    # the patterns added when the framework grew (issue 30): 9 patterns -> 15
    for pairs in [*slot_values(cs, "nested-loop-pairs", "p"), *slot_values(cs, "graph-max-edges", "g")]:
        assert pairs["pairs"] == pairs["n"] * (pairs["n"] - 1) // 2, pairs
    fib = [0, 1]
    while len(fib) < 60:
        fib.append(fib[-1] + fib[-2])
    for m in slot_values(cs, "memo-calls", "m"):
        assert m["calls"] == 2 * fib[m["n"] + 1] - 1 and m["evals"] == m["n"] + 1, m
    for q in slot_values(cs, "pipeline-latency", "q"):
        assert q["total"] == (q["stages"] + q["items"] - 1) * q["ns"] and q["serial"] == q["stages"] * q["items"] * q["ns"], q
    for little in slot_values(cs, "littles-law-inflight", "l"):
        assert little["inflight"] == round(little["rps"] * little["s"]), little
    for b in slot_values(cs, "base64-size", "b"):
        assert b["chars"] == 4 * math.ceil(b["bytes"] / 3), b
    for a in slot_values(cs, "speedup-limit", "a"):
        p = a["p"] / 100
        assert a["s"] == pytest.approx(1 / ((1 - p) + p / a["n"]), abs=0.05), a
        assert a["cap"] == pytest.approx(1 / (1 - p), abs=0.05) and a["s"] < a["cap"], a
    for w in slot_values(cs, "copy-time", "w"):
        assert w["gbit"] == w["gb"] * 8 and w["secs"] == round(w["gbit"] / w["link"]), w


def test_pattern_rejects_a_slot_missing_from_a_question():
    with pytest.raises(ValueError, match="would repeat with different answers"):
        Pattern(id="p", questions=["Why {a}?", "Why not?"], answer="{a}", slots={"a": ["x", "y"]})


def test_pattern_rejects_unknown_placeholder_and_missing_field():
    with pytest.raises(ValueError, match="no slot values"):
        Pattern(id="p", questions=["Why {a}?"], answer="{b}", slots={"a": ["x"]})
    with pytest.raises(ValueError, match="lacks"):
        Pattern(id="p", questions=["Why {a.x}?"], answer="{a.y}", slots={"a": [{"x": 1}]})


@pytest.mark.parametrize("name", ["devops", "physics", "cs", "finance"])
def test_every_reference_answer_counts_as_structured_and_numbers_right(name):
    """The shape and number checks must call the framework's own answers right: a sentence ending
    in a number ("... leaves 59. 3. Headroom") or a closing parenthesis ("(2 + 1) = 2.0") once
    read as list markers and failed 320 of them."""
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import expand_blueprint
    from tasks.domain.metrics import check_numbers, is_degenerate, is_structured

    framework = load_framework(REPO / f"configs/frameworks/{name}.yaml")
    for row in expand_blueprint(OfflineBlueprintGenerator().generate(framework)):
        for answer in row.turns("assistant"):
            assert is_structured(answer) and not is_degenerate(answer), answer
            assert check_numbers(row.turns("user")[0], answer, answer).right, answer


def test_a_false_effect_must_name_the_subject_and_nothing_else(devops_framework):
    data = devops_framework.model_dump()
    for effect in ("the cache makes every read free.", "{subject} halves {cost}."):
        with pytest.raises(ValueError, match="false effect .* placeholder"):
            type(devops_framework).model_validate({**data, "false_effects": [effect]})


@pytest.mark.parametrize("name", ["devops", "physics", "cs", "finance"])
def test_false_effects_are_worded_apart_from_the_step_probes(name):
    """The reward model's invented-effect negatives come from the framework; the out-of-framework
    probe figure only means something if no planted step reuses their words (any 4-word run)."""
    import yaml

    from tasks.domain.contamination import ngrams

    effects = load_framework(REPO / f"configs/frameworks/{name}.yaml").false_effects
    probes = yaml.safe_load((REPO / f"configs/probes/steps/{name}.yaml").read_text())["answers"]
    planted = [a["steps"][a["wrong_step"]] for a in probes if a["wrong_step"] is not None]
    assert len(effects) >= 10
    shared = {(effect, step) for effect in effects for step in planted
              if ngrams(effect.replace("{subject}", ""), 4) & ngrams(step.partition(": ")[2], 4)}
    assert not shared, shared
