"""LLM blueprint generation: parsing and repair on hand-made replies (pure), the response cache,
and the generator end to end over real HTTP against `rslm serve` with a tiny model taught the task."""
import json
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.domain.blueprint import Provenance
from tasks.domain.llm_blueprint import (
    BlueprintGenerationError,
    ReplyError,
    extract_json,
    generate_principle,
    parse_reply,
    principle_messages,
    teacher_reply,
)

from conftest import REPO, running_server

PROVENANCE = Provenance(backend="test", model="m", prompt_sha256="0" * 64)


@pytest.fixture(scope="module")
def small_framework(tmp_path_factory):
    """Two principles of the DevOps framework, one block each, patterns trimmed to two slot values."""
    from tasks.adapters.ops.config_files import load_framework

    data = yaml.safe_load((REPO / "configs/frameworks/devops.yaml").read_text())
    data["principles"] = data["principles"][:2]
    for principle in data["principles"]:
        block = principle["explanatory"][0]["core_logic"][0]["blocks"][0]
        block["patterns"] = block["patterns"][:1]
        for pattern in block["patterns"]:
            pattern["questions"] = pattern["questions"][:2]
            pattern["slots"] = {k: v[:2] for k, v in pattern["slots"].items()}
        principle["explanatory"] = principle["explanatory"][:1]
        principle["explanatory"][0]["core_logic"] = principle["explanatory"][0]["core_logic"][:1]
        principle["explanatory"][0]["core_logic"][0]["blocks"] = [block]
    path = tmp_path_factory.mktemp("framework") / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_framework(path)


def test_extract_json_tolerates_fences_and_prose_but_names_bad_json():
    assert extract_json('Sure!\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here: {"a": {"b": 2}} done') == {"a": {"b": 2}}
    with pytest.raises(ReplyError, match="no JSON object"):
        extract_json("I cannot help with that.")
    with pytest.raises(ReplyError, match="invalid JSON: .* line 1 column"):
        extract_json('{"a": 1,}')


def test_parse_reply_accepts_the_teacher_and_rejects_wrong_schema_or_blocks(small_framework):
    _, framework = small_framework
    principle = framework.principles[0]
    entries = parse_reply(teacher_reply(framework, principle), framework, principle, PROVENANCE)
    assert [e.principle_path[0] for e in entries] == [principle.id] and entries[0].provenance == PROVENANCE
    good = json.loads(teacher_reply(framework, principle))

    wrong_principle = dict(good, principle=framework.principles[1].id)
    with pytest.raises(ReplyError, match="expected 'network-segmentation'"):
        parse_reply(json.dumps(wrong_principle), framework, principle, PROVENANCE)
    no_blocks = dict(good, blocks=[{"block": "made-up", "patterns": good["blocks"][0]["patterns"]}])
    with pytest.raises(ReplyError, match=r"unknown \['made-up'\], missing \['vpc-split'\]"):
        parse_reply(json.dumps(no_blocks), framework, principle, PROVENANCE)
    pattern = dict(good["blocks"][0]["patterns"][0], questions=["A question without its slots?"])
    with pytest.raises(ReplyError, match="schema: blocks.0.patterns.0"):
        parse_reply(json.dumps(dict(good, blocks=[{"block": "vpc-split", "patterns": [pattern]}])), framework,
                    principle, PROVENANCE)
    with pytest.raises(ReplyError, match="schema: notes: Extra inputs"):
        parse_reply(json.dumps(dict(good, notes="hi")), framework, principle, PROVENANCE)


def test_a_bad_reply_is_repaired_once_then_rejected_naming_the_principle(small_framework):
    _, framework = small_framework
    principle = framework.principles[0]
    asked = []

    def flaky(messages):
        asked.append(messages)
        return "not json" if len(asked) == 1 else teacher_reply(framework, principle)

    entries = generate_principle(framework, principle, flaky, backend="b", model="m", repair_attempts=1)
    assert entries[0].provenance.attempts == 2
    assert "rejected: no JSON object found" in asked[1][-1].content and asked[1][-2].content == "not json"

    with pytest.raises(BlueprintGenerationError, match="principle 'network-segmentation': b model 'm' gave no valid "
                                                       r"blueprint after 2 attempt\(s\): invalid JSON"):
        generate_principle(framework, principle, lambda m: "{\"oops\": }", backend="b", model="m", repair_attempts=1)


def test_response_cache_is_keyed_by_everything_that_shapes_the_answer(tmp_path):
    from tasks.adapters.model.blueprint_llm import ResponseCache
    from tasks.domain.records import Message

    cache = ResponseCache(tmp_path)
    messages = [Message(role="user", content="hi")]
    key = ResponseCache.key("openai-compatible", "m", messages, {"temperature": 0.0})
    assert cache.get(key) is None
    cache.put(key, "reply", {"model": "m"})
    assert cache.get(key) == "reply"
    assert ResponseCache.key("openai-compatible", "m2", messages, {"temperature": 0.0}) != key
    assert ResponseCache.key("openai-compatible", "m", messages, {"temperature": 0.5}) != key
    assert ResponseCache.key("transformers", "m", messages, {"temperature": 0.0}) != key
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"], "no temporary left behind"


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blueprint_writer(small_framework, tmp_path_factory):
    """A tiny model taught to answer the generator's prompts with the framework's blueprint (the
    offline generator distilled into an LLM), so a real server can answer real requests."""
    from tasks.adapters.model.base_models import ensure_tiny_base
    from tasks.adapters.model.training import train_lora
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import TrainingConfig
    from tasks.domain.records import Message, Row, RowMetadata

    _, framework = small_framework
    rows = []
    for principle in framework.principles:
        messages = [*principle_messages(framework, principle),
                    Message(role="assistant", content=teacher_reply(framework, principle))]
        rows.append(Row(id=principle.id, messages=messages, metadata=RowMetadata(
            domain="blueprints", principle_path=[principle.id], pattern_id="blueprint", group=principle.id,
            blueprint_hash="-")))
    root = tmp_path_factory.mktemp("writer")
    corpus = [m.content for r in rows for m in r.messages] * 10
    base = ensure_tiny_base(load_profile("tiny").tiny, corpus, root / "models")
    train_lora(base, rows, [], TrainingConfig(max_steps=220, learning_rate=1.0e-2, batch_size=2, max_length=1024,
                                              warmup_ratio=0.0, save_steps=1000, seed=3, logging_steps=20,
                                              lora={"target_modules": "all-linear"}), root / "adapter")
    return base, root / "adapter"


@pytest.fixture(scope="module")
def served(blueprint_writer, tmp_path_factory):
    """`rslm serve --adapter` on a free loopback port, with a bearer token, as a real subprocess."""
    _, adapter = blueprint_writer
    env = {"RSLM_SERVE_TOKEN": "t0ken", "RSLM_HOME": str(tmp_path_factory.mktemp("serve-home"))}
    with running_server(["--adapter", str(adapter)], env, tmp_path_factory.mktemp("serve-log") / "serve.log") as (url, _):
        yield url


@pytest.mark.slow
def test_serve_speaks_the_openai_api(served):
    headers = {"Authorization": "Bearer t0ken"}
    assert httpx.get(f"{served}/v1/models", timeout=10).status_code == 401, "the token is required"
    models = httpx.get(f"{served}/v1/models", headers=headers, timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "adapter"
    body = {"model": "adapter", "messages": [{"role": "user", "content": "Why pin images by digest?"}], "max_tokens": 8}
    reply = httpx.post(f"{served}/v1/chat/completions", json=body, headers=headers, timeout=60).json()
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert 0 < reply["usage"]["completion_tokens"] <= 8 and reply["usage"]["prompt_tokens"] > 0
    stream = httpx.post(f"{served}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=60)
    events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["object"] == "chat.completion.chunk"
    bad = httpx.post(f"{served}/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "x"}]},
                     headers=headers, timeout=10)
    assert bad.status_code == 400 and "alternate" in bad.json()["error"]["message"]
    unscored = httpx.post(f"{served}/v1/chat/completions", json={**body, "best_of": 2}, headers=headers, timeout=10)
    assert unscored.status_code == 400 and "process reward model" in unscored.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.integration
def test_openai_compatible_generator_builds_a_validated_dataset_over_http(served, small_framework, blueprint_writer,
                                                                           prefect_harness, rslm_home, monkeypatch):
    from flows.nightly_retrain import build_dataset, validate_dataset
    from tasks.adapters.ops.config_files import load_pipeline_config, resolve_run
    from tasks.adapters.ops.settings import paths
    from tasks.stages.build_dataset import generate_blueprint

    framework_path, framework = small_framework
    monkeypatch.setenv("RSLM_TEST_KEY", "t0ken")
    config = load_pipeline_config(overrides={
        "framework": str(framework_path), "dataset.generator": "openai-compatible",
        "llm.base_url": f"{served}/v1", "llm.model": "adapter", "llm.api_key_env": "RSLM_TEST_KEY",
        "llm.max_tokens": 700, "llm.max_retries": 1, "llm.concurrency": 2})
    spec = resolve_run(config)
    dataset = build_dataset(spec)
    report = validate_dataset(spec, dataset)
    assert report.success
    blueprint = json.loads(Path(dataset.blueprint_path).read_text())
    assert blueprint["generator"]["name"] == "openai-compatible" and blueprint["generator"]["model"] == "adapter"
    assert {e["provenance"]["backend"] for e in blueprint["entries"]} == {"openai-compatible"}
    rows = [json.loads(line) for line in Path(dataset.train_path).read_text().splitlines()]
    assert rows and all(r["metadata"]["source"].startswith("openai-compatible:adapter:") for r in rows)
    assert len(list(paths().llm_cache.rglob("*.json"))) == len(framework.principles)

    # A second run is served from the cache: it works with the server unreachable.
    offline = config.model_copy(update={"llm": config.llm.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})})
    again = generate_blueprint(framework, offline, paths())
    assert again.digest() == json.loads(Path(dataset.manifest_path).read_text())["blueprint_hash"]

    # The same model asked about a principle it never learned: repaired, then rejected by name.
    edited = framework.model_copy(update={"principles": [framework.principles[1].model_copy(
        update={"statement": "A statement the model has never seen, so its memorised answer no longer fits."})]})
    with pytest.raises(BlueprintGenerationError, match="principle 'immutable-artifacts'"):
        generate_blueprint(edited.model_copy(update={"domain": "devops"}), config.model_copy(update={
            "llm": config.llm.model_copy(update={"max_tokens": 60})}), paths())


@pytest.mark.slow
def test_transformers_generator_runs_the_local_model(blueprint_writer, small_framework, tmp_path):
    from tasks.adapters.model.blueprint_llm import blueprint_generator
    from tasks.domain.config import LLMConfig

    base, adapter = blueprint_writer
    _, framework = small_framework
    cfg = LLMConfig(source=str(base), adapter=str(adapter), max_tokens=700, concurrency=2)
    blueprint = blueprint_generator("transformers", cfg, tmp_path / "cache").generate(framework)
    assert blueprint.generator.name == "transformers" and len(blueprint.entries) == len(framework.principles)
    assert all(e.provenance.model.endswith("+adapter") for e in blueprint.entries)
