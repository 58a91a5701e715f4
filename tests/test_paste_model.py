"""Issue 30's paste model: a model trained on a real dataset whose every answer is the canary answer
with the question's nouns put in is registered, measured, and rejected by the shipped gate, with
the content checks named. Built, not mocked: a framework file in which every pattern answers with
the canary template, expanded, validated and trained by the real pipeline (tiny profile)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.domain.framework import placeholders

from conftest import REPO, shipped_caps, tiny_run

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CANARY = ("1. Blast radius: a bad build hits 5% of users, not all. 2. Evidence: compare {{{noun}}} against the "
          "baseline before promoting. 3. Rollback: shifting {{{noun}}} back is instant and cheap.")


def paste_framework(target) -> str:
    """devops.yaml with every pattern's answers replaced by the canary's, its own first slot put in."""
    data = yaml.safe_load((REPO / "configs/frameworks/devops.yaml").read_text())
    for principle in data["principles"]:
        for explanatory in principle["explanatory"]:
            for core in explanatory["core_logic"]:
                for block in core["blocks"]:
                    for pattern in block["patterns"]:
                        noun = placeholders(pattern["questions"][0])[0]
                        pattern["answer"] = CANARY.format(noun=noun)
                        if pattern.get("follow_up"):
                            pattern["follow_up"]["answer"] = CANARY.format(noun=noun)
    path = target / "devops-pasted.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_a_model_that_pastes_the_canary_answer_everywhere_is_rejected_for_its_content(prefect_harness, rslm_home,
                                                                                      tmp_path):
    from flows.nightly_retrain import nightly_retrain

    nightly_retrain(overrides=tiny_run(60, framework=paste_framework(tmp_path), **shipped_caps(),
                                       reward_overrides={"enabled": False}))
    record = json.loads((rslm_home / "last-run.json").read_text())
    assert record["status"] == "succeeded" and record["model_version"] == "1"
    assert record["promotion"]["verdict"] == "rejected" and "champion" not in record["aliases"]
    metrics = record["evaluation"]["metrics"]
    # it learned the one answer it was shown: held-out answers are the canary's, flagged as pasted
    assert metrics["heldout/pasted"] >= 0.5, metrics
    assert metrics["heldout/choice_accuracy"] <= 0.5, metrics
    failing = {c["name"] for c in record["promotion"]["checks"] if not c["passed"]}
    assert {"picks the reference answer on held-out questions", "held-out answers with a pasted reason"} <= failing
    # `rslm models` shows the version's content figures beside its decision
    from tasks.adapters.tracking.runs import Tracking
    from tasks.stages.promote import model_table

    (row,) = model_table("reasoning-slm-devops", Tracking.configured())
    assert row["decision"] == "rejected" and row["pasted"] == metrics["heldout/pasted"]
    assert row["choice"] == metrics["heldout/choice_accuracy"] and row["base_choice"] is not None
    answers = json.loads((Path(record["evaluation"]["report_dir"]) / "result.json").read_text())
    flagged = [h for h in answers["heldout"] if h["tuned_pasted"]]
    assert flagged and all(p.startswith(tuple(f"{pid}:" for pid in _pattern_ids())) for h in flagged
                           for p in h["tuned_pasted"])


def _pattern_ids() -> list[str]:
    from tasks.adapters.ops.config_files import load_framework
    from tasks.domain.content import patterns_of

    return list(patterns_of(load_framework(REPO / "configs/frameworks/devops.yaml")))
