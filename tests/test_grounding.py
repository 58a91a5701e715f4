"""Framework-grounded answering (issue 30 part 5): the principles a question is asked with, the
rows trained on them, and a grounded model asked the same way in evaluation, chat and serve."""
from __future__ import annotations

import json

from tasks.domain.grounding import HEADER, Grounding, framework_grounding, framework_passages, grounded_rows, recorded_grounding

from conftest import tiny_run


def test_passages_are_the_frameworks_upper_layers(devops_framework):
    passages = framework_passages(devops_framework)
    finals = devops_framework.principles
    assert passages[0] == f"{finals[0].title}: {finals[0].statement}"
    assert finals[0].explanatory[0].core_logic[0].statement in passages
    assert len(passages) == len(set(passages)) >= len(finals) * 3
    assert framework_grounding(devops_framework, 0) is None  # closed-book


def test_a_question_gets_the_principles_that_share_its_words_and_none_that_do_not(devops_framework):
    grounding = framework_grounding(devops_framework, 2)
    prompt = "You are terse."
    routed = grounding.system_turn(prompt, "Why use a NAT gateway for private subnets?")
    lines = routed.splitlines()
    assert lines[:2] == [prompt, HEADER] and len(lines) == 4
    # the best match first: both passages name private subnets, the first twice over ("private subnets")
    assert "Data tiers sit in private subnets" in lines[2] and "Subnets are the unit of routing" in lines[3]
    # a question that shares no content word with the framework is asked closed-book, not padded
    assert grounding.system_turn(prompt, "Why rotate TLS certificates automatically?") == prompt
    # the question's opening verb is not a topic: "use" must not pull in "Pay for what you use"
    assert not any("Pay for what you use" in line for line in lines)


def test_grounded_rows_change_only_the_system_turn(small_build, devops_framework):
    grounding = framework_grounding(devops_framework, 2)
    rows = small_build.train[:40]
    grounded = grounded_rows(rows, devops_framework.system_prompt, grounding)
    assert [r.id for r in grounded] == [r.id for r in rows]
    for before, after in zip(rows, grounded, strict=True):
        assert after.messages[1:] == before.messages[1:] and after.metadata == before.metadata
        assert after.messages[0].content == grounding.system_turn(devops_framework.system_prompt, before.turns("user")[0])
    assert sum(HEADER in r.messages[0].content for r in grounded) >= 30  # framework questions find their principles


def test_recorded_grounding_round_trips_through_a_model_config():
    grounding = Grounding(passages=("Caches trade memory for latency.",), k=1)
    config = json.loads(json.dumps({"system_prompt": "x", "grounding": grounding.model_dump(mode="json")}))
    assert recorded_grounding(config) == grounding and recorded_grounding({"system_prompt": "x"}) is None


def test_a_grounded_run_trains_on_grounded_rows_and_its_model_is_asked_the_same_way(prefect_harness, rslm_home):
    from click.testing import CliRunner

    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain
    from tasks.adapters.data.dataset_store import read_rows
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.tracking.runs import Tracking

    record = nightly_retrain(overrides=tiny_run(4, **{"dataset.grounding_passages": 2}))
    assert record["status"] == "succeeded", record
    for path in (record["dataset_path"], record["eval_dataset_path"]):  # both splits: evaluation asks as training did
        rows = [row for _, row in read_rows(path)]
        assert sum(HEADER in row.messages[0].content for row in rows) > len(rows) // 2, path

    model_uri = f"models:/{record['registered_model']}/{record['model_version']}"
    generator = Tracking.configured().registry.load_generator(model_uri, paths().registry_cache)
    assert generator.grounding is not None and generator.grounding.k == 2
    question = "Why use a NAT gateway for private subnets?"
    assert HEADER in generator.conversation(question)[0].content
    assert generator.conversation("Why rotate TLS certificates automatically?")[0].content == generator.system_prompt
    assert "heldout/choice_accuracy" in record["evaluation"]["metrics"]
    out = CliRunner().invoke(cli, ["chat", question, "--model", model_uri, "--max-new-tokens", "8"])
    assert out.exit_code == 0, out.output


def test_refinement_asks_its_models_as_the_registered_model_is_asked(tiny_base):
    """DPO's SFT parent is measured on the held-out questions, and the gate compares those figures
    with the refined version's, which evaluation asks grounded: the parent must be asked grounded
    too (it was asked closed-book before)."""
    from flows.resolution import resolve_pipeline
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.stages.refine import refine_generator

    grounded = resolve_pipeline(load_pipeline_config(overrides={"profile": "tiny", "dataset.grounding_passages": 2}))
    generator = refine_generator(grounded, str(tiny_base), None)
    assert generator.grounding == grounded.grounding and generator.grounding.k == 2
    assert HEADER in generator.conversation("Why use a NAT gateway for private subnets?")[0].content
    closed_book = resolve_pipeline(load_pipeline_config(overrides={"profile": "tiny"}))
    assert refine_generator(closed_book, str(tiny_base), None).grounding is None
