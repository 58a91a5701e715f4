"""Export (issue 18): a registered version merged, written as GGUF (f16, q8_0) and an Ollama
Modelfile; every form read back and checked before anything is kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.domain.export_spec import JINJA_TEMPLATES, OLLAMA_TEMPLATES, modelfile, parse_formats, template_matches
from tasks.domain.formatting import CHATML, MISTRAL
from tasks.domain.records import Message

from conftest import NO_FLOORS, tiny_run


def stem_of(record: dict) -> str:
    return f"{record['registered_model']}-v{record['model_version']}"


def test_formats_bring_what_they_are_written_from_and_refuse_unknown_ones():
    assert parse_formats("gguf") == ["merged", "gguf"]
    assert parse_formats("ollama,merged") == ["merged", "gguf", "ollama"]
    with pytest.raises(ValueError, match="onnx"):
        parse_formats("merged,onnx")


@pytest.mark.parametrize("fmt", [MISTRAL, CHATML])
def test_chat_templates_render_the_prompt_the_model_was_trained_on(fmt, tiny_base):
    from transformers import AutoTokenizer

    system, question = "Be terse and exact.", "Why split a /16 VPC into /24 subnets?"
    assert template_matches(fmt, system, question)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    tokenizer.chat_template = JINJA_TEMPLATES[fmt.name]
    turns = [Message(role="system", content=system), Message(role="user", content=question),
             Message(role="assistant", content="1. Isolation: one blast radius."),
             Message(role="user", content="And the cost?")]
    rendered = tokenizer.apply_chat_template([m.model_dump() for m in turns], tokenize=False, add_generation_prompt=True)
    assert rendered == fmt.prompt(turns)  # multi-turn too: Mistral folds the system text into the first turn only
    text = modelfile("m-q8_0.gguf", fmt, system, 96)
    assert text.startswith("FROM ./m-q8_0.gguf\n") and f'SYSTEM """{system}"""' in text
    assert OLLAMA_TEMPLATES[fmt.name] in text and f'PARAMETER stop "{fmt.end_of_turn}"' in text


def test_a_changed_top_word_counts_only_where_the_reference_was_not_tied():
    import torch

    from tasks.adapters.model.gguf_export import decided_top1_changed

    reference = [torch.tensor([[5.0, 1.0, 0.0], [2.0, 1.9999, 0.0], [0.0, 3.0, 1.0], [1.0, 4.0, 0.0]])]
    other = [torch.tensor([[1.0, 5.0, 0.0], [1.9999, 2.0, 0.0], [0.0, 3.0, 1.0], [1.0, 4.0, 0.0]])]
    assert decided_top1_changed(reference, other, tie=0.01) == pytest.approx(1 / 3), "the tie at row 2 is not counted"
    assert decided_top1_changed(reference, other, tie=0.0) == pytest.approx(2 / 4)


@pytest.mark.parametrize(("pre_tokenizer", "normalizer", "prefixes"), [
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}, None, False),  # Mistral v0.3, tiny
    ({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}, None, True),
    (None, {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]}, True),  # Llama 2's
])
def test_llama_cpp_prefixes_a_space_only_where_the_tokenizer_would(pre_tokenizer, normalizer, prefixes):
    """llama.cpp's add_space_prefix puts a space after every special token; a `first` Metaspace
    never does inside a chat prompt, which begins with one ("[INST] You" read as "▁", "▁You")."""
    from tasks.adapters.model.gguf_export import _prefixes_every_text

    assert _prefixes_every_text({"pre_tokenizer": pre_tokenizer, "normalizer": normalizer}) is prefixes


def test_gguf_export_refuses_other_architectures_in_one_line():
    from transformers import GPT2Config

    from tasks.adapters.model.gguf_export import ExportError, gguf_architecture

    with pytest.raises(ExportError, match="supports LlamaForCausalLM, MistralForCausalLM models, not GPT2LMHeadModel"):
        gguf_architecture(GPT2Config(architectures=["GPT2LMHeadModel"]))


@pytest.mark.slow
@pytest.mark.integration
def test_export_writes_checks_and_records_each_form_and_keeps_nothing_when_a_check_fails(prefect_harness, rslm_home):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain
    from tasks.adapters.data.dataset_store import file_sha256
    from tasks.adapters.model.gguf_export import ExportError, read_back_gguf
    from tasks.adapters.ops.config_files import load_pipeline_config, resolve_run
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.tracking.runs import Tracking
    from tasks.domain.config import ExportBounds, LlamaCppBounds
    from tasks.stages.export import export_version

    # a random tiny model's near-tied logits flip their top word under any rounding: looser bounds for it
    loose = {"merged": ExportBounds(max_logit_gap=1e-3, max_top1_changed=0.0, min_style_agreement=1.0),
             "f16": ExportBounds(max_logit_gap=0.05, max_top1_changed=0.05, min_style_agreement=0.5),
             "q8_0": ExportBounds(max_logit_gap=0.5, max_top1_changed=0.2, min_style_agreement=0.5)}
    # llama.cpp (installed by make test: export.verify_with auto reads every GGUF with it too): the
    # shipped NMSE bounds, the same near-tie allowance for top words and answers
    loose_llama = {"f16": LlamaCppBounds(max_nmse=1e-4, max_top1_changed=0.05, min_answers_equal=0.5),
                   "q8_0": LlamaCppBounds(max_nmse=1e-2)}
    # export.on_promotion: the new champion is exported by the nightly run itself
    record = nightly_retrain(overrides=tiny_run(6, **NO_FLOORS, **{
        "export.on_promotion": True, "export.verify_questions": 2,
        "export.bounds": {k: b.model_dump() for k, b in loose.items()},
        "export.llama_cpp": {k: b.model_dump() for k, b in loose_llama.items()}}))
    assert "champion" in record["aliases"] and record["export"]["formats"] == ["merged", "gguf", "ollama"]
    assert (Path(record["export"]["out_dir"]) / "Modelfile").is_file()
    uri = f"models:/{record['registered_model']}/{record['model_version']}"
    spec = resolve_run(load_pipeline_config(overrides=tiny_run(6)))
    tracking = Tracking.configured()
    client = MlflowClient(tracking_uri=record["mlflow_tracking_uri"], registry_uri=record["mlflow_tracking_uri"])

    # a bound no rounding meets: the export fails, names the check, and leaves nothing behind
    strict = spec.config.export.model_copy(update={"verify_questions": 2, "bounds": {
        **spec.config.export.bounds, "f16": ExportBounds(max_logit_gap=0.0, max_top1_changed=0.0, min_style_agreement=1.0)},
        "llama_cpp": {**loose_llama, "f16": LlamaCppBounds(max_nmse=0.0)}})
    target = rslm_home / "exports" / "strict"
    before = client.get_model_version(record["registered_model"], record["model_version"]).tags
    with pytest.raises(ExportError, match=r"gguf f16: max \|logit difference\|") as failure:
        export_version(spec, uri, ["merged", "gguf", "ollama"], target, paths(), tracking, strict)
    assert "FAIL llama.cpp f16: logits NMSE" in str(failure.value), "llama.cpp's reading is checked too"
    assert not target.exists() and not list(target.parent.glob(".strict*"))
    assert client.get_model_version(record["registered_model"], record["model_version"]).tags == before

    settings = spec.config.export.model_copy(update={"verify_questions": 3, "bounds": loose, "llama_cpp": loose_llama})
    report = export_version(spec, uri, ["merged", "gguf", "ollama"], None, paths(), tracking, settings)
    out = rslm_home / "exports" / f"{record['registered_model']}-v{record['model_version']}"
    assert report.out_dir == str(out) and all(c.passed for c in report.checks), [c.line() for c in report.checks]
    assert {c.name for c in report.checks} >= {"merged: chat template", "merged: max |logit difference|",
                                              "gguf q8_0: prompt tokens", "gguf f16: held-out style verdicts",
                                              "ollama: template", "llama.cpp f16: loads cleanly", "llama.cpp f16: token ids",
                                              "llama.cpp f16: top-1 changed", "llama.cpp q8_0: logits NMSE",
                                              "llama.cpp f16: greedy chat answers"}
    # llama.cpp, with its own tokenizer and kernels, computes what base + adapter does: f16 closer than q8_0
    f16, q8 = report.llama_cpp["f16"], report.llama_cpp["q8_0"]
    assert 0 < f16["nmse"] < q8["nmse"] < 1e-2 and f16["answers_equal"] >= 2 and f16["questions"] == 3
    assert report.summary.startswith("In llama.cpp: ") and f"{stem_of(record)}-f16.gguf" in report.summary
    merged = out / "merged"
    assert not (merged / "adapter_config.json").exists()  # plain transformers, no peft
    assert AutoModelForCausalLM.from_pretrained(str(merged)).config.architectures == ["MistralForCausalLM"]
    with safe_open(str(merged / "model.safetensors"), "pt") as weights:
        assert not any("lora" in key for key in weights.keys())
    stem = f"{record['registered_model']}-v{record['model_version']}"
    for quant in ("f16", "q8_0"):
        model, tokenizer = read_back_gguf(out / f"{stem}-{quant}.gguf")  # the independent reader
        assert model.config.num_hidden_layers == 2 and tokenizer.convert_tokens_to_ids("</s>") == 2
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{stem}-f16.gguf\n"), "the file that answers as trained"
    assert (out / f"{stem}-q8_0.gguf").stat().st_size < (out / f"{stem}-f16.gguf").stat().st_size
    manifest = json.loads((out / "export_manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed[f"{stem}-f16.gguf"] == file_sha256(str(out / f"{stem}-f16.gguf"))
    assert len(manifest["answers"]) == 3 and {"gguf q8_0", "llama.cpp f16", "llama.cpp q8_0"} <= set(manifest["answers"][0])
    assert manifest["llama_cpp"]["f16"]["nmse"] == f16["nmse"] and manifest["summary"] == report.summary

    tags = client.get_model_version(record["registered_model"], record["model_version"]).tags
    assert tags["export.formats"] == "merged,gguf,ollama"
    assert tags[f"export.sha256.{stem}-q8_0.gguf"] == listed[f"{stem}-q8_0.gguf"]
    logged = {a.path for a in client.list_artifacts(record["mlflow_run_id"], "export")}
    assert {"export/manifest.json", "export/Modelfile", "export/answers.json"} <= logged

    # the CLI: the merged form alone, under the configured bounds
    result = CliRunner().invoke(cli, ["export", "--model", uri, "--format", "merged", "--out", str(rslm_home / "m")])
    assert result.exit_code == 0, result.output
    assert "ok   merged: max |logit difference|" in result.output and (rslm_home / "m" / "merged" / "config.json").exists()

    # serving the merged export: the system prompt it was exported with, no peft
    from tasks.adapters.model.gguf_export import load_merged

    served = load_merged(rslm_home / "m" / "merged", "cpu")
    assert served.system_prompt == spec.framework.system_prompt and not hasattr(served.model, "peft_config")
    first = report.answers[0]
    length = spec.evaluation.settings.max_new_tokens
    assert served.reply([first["question"]], max_new_tokens=length) == [first["merged"]["answer"]]
