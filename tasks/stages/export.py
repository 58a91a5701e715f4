"""Stage: a registered chat-model version -> a merged model, GGUF files and an Ollama Modelfile ->
each read back and checked against base + adapter -> published whole, logged to the version's run
(`export/`) and tagged on the version (issue 18).

Every form answers the same held-out questions greedily and is scored on the same token sequences
as base + adapter. One failed check fails the export: nothing is published or tagged, and the
staging directory is removed."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.adapters.data.dataset_store import file_sha256
from tasks.adapters.model.base_models import runtime
from tasks.adapters.model.chat_codec import chat_codec
from tasks.adapters.model.gguf_export import (
    ExportError,
    decided_top1_changed,
    logit_gap,
    merge_adapter,
    read_back_gguf,
    sequence_logits,
    write_gguf,
)
from tasks.adapters.model.inference import Generator, load_generator
from tasks.adapters.model.llama_cpp_reader import llama_cpp_installed, nmse, read_with_llama_cpp
from tasks.adapters.ops.atomic_files import publish_directory, staging_dir
from tasks.adapters.ops.settings import Paths
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import ExportBounds, ExportConfig, LlamaCppBounds
from tasks.domain.devices import weights_precision
from tasks.domain.evaluation import heldout_style
from tasks.domain.export_spec import ExportCheck, ExportFormat, failed, modelfile, template_matches, within
from tasks.domain.framework import Framework
from tasks.domain.records import question_turns
from tasks.domain.run_spec import RunSpec

MERGED_DIR = "merged"
MODELFILE = "Modelfile"
MANIFEST = "export_manifest.json"
FALLBACK_QUESTION = "Why does this design choice matter? Give your reasons."  # a domain with no held-out questions
# Questions whose prompts readers most often tokenize differently: accents, CJK and emoji (byte
# fallback), runs of spaces, tabs and blank lines, a leading space, a special token's text inside.
TOKENIZER_PROBES = ("naïve café: 東京 → 🚀 ≤ 5 µs?", "two  spaces,\ttab,\n\nblank line,   trailing ", " leading space",
                    "Why does </s> or <|im_end|> end a turn?")


@dataclass
class ExportedFile:
    path: str      # relative to the export directory
    bytes: int
    sha256: str


@dataclass
class ExportReport:
    model_uri: str
    name: str
    version: str
    out_dir: str
    formats: list[str]
    files: list[ExportedFile]
    checks: list[ExportCheck]
    answers: list[dict] = field(default_factory=list)  # per question: each form's answer and style
    seconds: float = 0.0
    ollama_command: str | None = None
    llama_cpp: dict[str, dict] = field(default_factory=dict)  # per GGUF type: what llama.cpp measured
    summary: str = ""  # which file answers like the trained model, and how closely


    def to_dict(self) -> dict:
        return {**asdict(self), "checks": [c.model_dump() for c in self.checks]}


@dataclass
class _Form:
    """One way of running the model (base + adapter, merged, a GGUF) and what it gave."""

    label: str
    generator: Generator
    answers: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens per answer, its end-of-turn token included

    def release(self) -> None:
        """Drop the model (its answers and tokenizer stay) and give its memory back."""
        import gc

        self.generator.model = None
        gc.collect()


def _answers(form: _Form, questions: list[str], max_new_tokens: int) -> list[str]:
    replies = form.generator.replies([form.generator.conversation(q) for q in questions], max_new_tokens=max_new_tokens)
    form.answers, form.lengths = [text for text, _ in replies], [length for _, length in replies]
    return form.answers


def _compare(form: _Form, reference: _Form, ours: list[list[int]], sequences, ref_logits, questions: list[str],
             bounds: ExportBounds, framework: Framework) -> list[ExportCheck]:
    """The form's tokenization of the questions' prompts against `ours` (base + adapter's), its
    logits on the reference's token sequences, and its held-out style verdicts."""
    checks = []
    theirs = [form.generator.prompt_ids(form.generator.conversation(q)) for q in questions]
    checks.append(ExportCheck(name=f"{form.label}: prompt tokens", passed=ours == theirs,
                              detail="same ids as training" if ours == theirs else "its tokenizer encodes prompts differently"))
    gap, changed = logit_gap(ref_logits, sequence_logits(form.generator.model, sequences))
    checks.append(within(f"{form.label}: max |logit difference|", gap, bounds.max_logit_gap))
    checks.append(within(f"{form.label}: top-1 changed", changed, bounds.max_top1_changed, "share of positions"))
    same = [heldout_style(q, a, framework.style) == heldout_style(q, b, framework.style)
            for q, a, b in zip(questions, form.answers, reference.answers, strict=True)]
    agreement = sum(same) / len(same)
    checks.append(ExportCheck(name=f"{form.label}: held-out style verdicts", passed=agreement >= bounds.min_style_agreement,
                              value=agreement, bound=bounds.min_style_agreement, detail="share equal to base + adapter"))
    return checks


def _llama_cpp_checks(path: Path, quant: str, reference: _Form, prompts: list[list[int]], sequences, ref_logits,
                      questions: list[str], bounds: LlamaCppBounds, max_new_tokens: int) -> tuple[list[ExportCheck], dict]:
    """The GGUF as llama.cpp reads it (issue 32): a clean load, the same token ids as training's
    tokenizer, logits against base + adapter's, and greedy answers through the file's own chat
    template; with what it measured, for the report."""
    gen = reference.generator
    conversations = [gen.conversation(q) for q in questions]
    # what llama.cpp tokenizes in a chat: the prompt its template renders, special tokens and all
    probes = [gen.conversation(q) for q in TOKENIZER_PROBES]
    texts = [gen.codec.fmt.prompt(c) for c in conversations + probes]
    expected = prompts + [gen.prompt_ids(c) for c in probes]
    reading = read_with_llama_cpp(path, texts, sequences, [[m.model_dump() for m in c] for c in conversations], max_new_tokens)
    label = f"llama.cpp {quant}"
    checks = [ExportCheck(name=f"{label}: loads cleanly", passed=not reading.suspect_lines,
                          detail=reading.suspect_lines[0] if reading.suspect_lines else "no tokenizer or end-of-turn warning")]
    differs = [t for t, ours, theirs in zip(texts, expected, reading.token_ids, strict=True) if ours != theirs]
    detail = f"differ on {differs[0][:60]!r}" if differs else f"same as training's on {len(texts)} texts"
    checks.append(ExportCheck(name=f"{label}: token ids", passed=not differs, detail=detail))
    error = nmse(ref_logits, reading.logits)
    checks.append(within(f"{label}: logits NMSE", error, bounds.max_nmse))
    changed = decided_top1_changed(ref_logits, reading.logits, bounds.top1_tie)
    if bounds.max_top1_changed is not None:
        checks.append(within(f"{label}: top-1 changed", changed, bounds.max_top1_changed,
                             f"share of positions whose reference top two are {bounds.top1_tie:g}+ apart"))
    # the same text, and a stop where base + adapter stopped (an answer that used every token may have either)
    same = [text == ours and (length == max_new_tokens or (reason == "stop") == (length < max_new_tokens))
            for text, reason, ours, length in zip(reading.answers, reading.finish_reasons, reference.answers,
                                                   reference.lengths, strict=True)]
    share = sum(same) / len(same)
    checks.append(ExportCheck(name=f"{label}: greedy chat answers", passed=share >= bounds.min_answers_equal, value=share,
                              bound=bounds.min_answers_equal, detail=f"{sum(same)} of {len(same)} as base + adapter's"))
    measured = {"nmse": error, "top1_changed": changed, "answers_equal": sum(same), "questions": len(same),
                "stopped": reading.finish_reasons.count("stop"), "answers": reading.answers}
    return checks, measured


def _closest(llama_cpp: dict[str, dict], stem: str, modelfile_gguf: str | None) -> str:
    """One sentence for the report: which GGUF answers like base + adapter in llama.cpp, how closely."""
    if not llama_cpp:
        return "not read by llama.cpp (llama-cpp-python is not installed; export.verify_with)"
    ranked = sorted(llama_cpp.items(), key=lambda kv: (-kv[1]["answers_equal"], kv[1]["nmse"]))
    parts = [f"{stem}-{quant}.gguf {m['answers_equal']} of {m['questions']} greedy answers equal to base + adapter's, "
             f"logits NMSE {m['nmse']:.1e}" for quant, m in ranked]
    line = "In llama.cpp: " + "; ".join(parts) + "."
    if modelfile_gguf and modelfile_gguf != ranked[0][0]:
        line += f" The Modelfile points at {modelfile_gguf}, not the closest ({ranked[0][0]})."
    return line


def _template_check(merged_dir: Path, system_prompt: str, question: str) -> ExportCheck:
    """The merged tokenizer's chat template renders exactly the prompt the model was trained on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    codec = chat_codec(tokenizer)
    turns = question_turns(system_prompt, question)
    theirs = tokenizer.apply_chat_template([m.model_dump() for m in turns], tokenize=False, add_generation_prompt=True)
    ours = codec.fmt.prompt(turns)
    detail = "renders the trained prompt" if theirs == ours else f"renders {theirs[:80]!r}, trained on {ours[:80]!r}"
    return ExportCheck(name="merged: chat template", passed=theirs == ours, detail=detail)


def _source_pre_tokenizer(spec: RunSpec, base: str) -> str | None:
    """llama.cpp's pre-tokenizer name for a base converted from a packaged GGUF (SmolLM2), read
    from that file; None for other bases."""
    from tasks.adapters.model.base_models import base_provenance, packaged_gguf
    from tasks.adapters.model.gguf_export import gguf_text_field

    packaged = spec.profile.packaged
    if packaged is None or base_provenance(base).get("package") != packaged.package:
        return None
    return gguf_text_field(packaged_gguf(packaged), "tokenizer.ggml.pre")


def _files(root: Path) -> list[ExportedFile]:
    return [ExportedFile(str(p.relative_to(root)), p.stat().st_size, file_sha256(str(p)))
            for p in sorted(root.rglob("*")) if p.is_file()]


def export_version(spec: RunSpec, model_uri: str, formats: list[ExportFormat], out_dir: Path | None, paths: Paths,
                   tracking: Tracking, settings: ExportConfig | None = None) -> ExportReport:
    """Write and check every asked-for form of a registered version; publish them whole into
    `out_dir` (default `<RSLM home>/exports/<name>-v<version>`); record them on the version."""
    settings = settings or spec.config.export
    framework, registry = spec.framework, tracking.registry
    info = registry.resolve(model_uri, with_run=True)
    target = out_dir or paths.exports / f"{info.name}-v{info.version}"
    base, adapter, system_prompt = registry.base_and_adapter(model_uri, paths.registry_cache)
    heldout = spec.evaluation.heldout
    questions = [q.question for q in heldout.questions][:settings.verify_questions] if heldout else [FALLBACK_QUESTION]
    max_new = spec.evaluation.settings.max_new_tokens
    verify_llama = settings.verify_with == "llama.cpp" or (settings.verify_with == "auto" and llama_cpp_installed())
    if verify_llama and not llama_cpp_installed():
        raise ExportError("export.verify_with is llama.cpp, but llama-cpp-python is not installed "
                          "(make test builds and installs it; or set export.verify_with: auto)")
    started = time.perf_counter()
    device, precision = runtime(settings.device, "auto")
    precision = weights_precision(device, precision)  # CPU: fp32 (exact merges); GPU or Mac: half, so a 7B fits
    merged_bounds = settings.bounds["merged"] if precision == "fp32" else settings.bounds.get("merged_half",
                                                                                              settings.bounds["merged"])
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        reference = _Form("base + adapter", load_generator(base, adapter, system_prompt, device=device, precision=precision))
        _answers(reference, questions, max_new)
        # what every form is scored on: each question's prompt and base + adapter's answer to it
        prompts = [reference.generator.prompt_ids(reference.generator.conversation(q)) for q in questions]
        sequences = [ids + reference.generator.codec.encode_text(" " + a)
                     for ids, a in zip(prompts, reference.answers, strict=True)]
        ref_logits = sequence_logits(reference.generator.model, sequences)
        reference.release()  # one model in memory at a time: a 7B one is ~14 GB in half precision
        merged_dir = merge_adapter(base, adapter, staging / MERGED_DIR, max_new,
                                   {"model_uri": info.uri, "run_id": info.run_id, "system_prompt": system_prompt},
                                   device, precision)
        checks = [_template_check(merged_dir, system_prompt, questions[0])]
        merged = _Form("merged", load_generator(merged_dir, None, system_prompt, device=device, precision=precision))
        _answers(merged, questions, max_new)
        checks += _compare(merged, reference, prompts, sequences, ref_logits, questions, merged_bounds, framework)
        merged.release()
        forms = [reference, merged]
        llama_cpp: dict[str, dict] = {}
        stem = f"{info.name}-v{info.version}"
        if "gguf" in formats:
            pre_tokenizer = _source_pre_tokenizer(spec, base)
            for quant in settings.gguf_types:
                path = write_gguf(merged_dir, staging / f"{stem}-{quant}.gguf", quant, stem, pre_tokenizer)
                model, tokenizer = read_back_gguf(path, device, precision)
                form = _Form(f"gguf {quant}", Generator(model=model, codec=chat_codec(tokenizer), device=device,
                                                         system_prompt=system_prompt))
                del model
                _answers(form, questions, max_new)
                checks += _compare(form, reference, prompts, sequences, ref_logits, questions, settings.bounds[quant], framework)
                form.release()
                forms.append(form)
                if verify_llama:
                    llama_checks, llama_cpp[quant] = _llama_cpp_checks(path, quant, reference, prompts, sequences, ref_logits,
                                                                       questions, settings.llama_cpp[quant], max_new)
                    checks += llama_checks
        command = None
        if "ollama" in formats:
            fmt = reference.generator.codec.fmt
            text = modelfile(f"{stem}-{settings.ollama_gguf}.gguf", fmt, system_prompt, max_new)
            (staging / MODELFILE).write_text(text)
            matches = template_matches(fmt, system_prompt, questions[0])
            checks.append(ExportCheck(name="ollama: template", passed=matches,
                                      detail="renders the trained prompt" if matches else "renders a different prompt"))
            command = f"ollama create {info.name} -f {target / MODELFILE}"
        problems = failed(checks)
        if problems:
            raise ExportError(f"export of {model_uri} failed {len(problems)} check(s), nothing kept: "
                              + "; ".join(c.line() for c in problems))
        labelled = [(f.label, f.answers) for f in forms] + [(f"llama.cpp {q}", m["answers"]) for q, m in llama_cpp.items()]
        answers = [{"question": q, **{label: {"answer": said[i], "style": heldout_style(q, said[i], framework.style)}
                                      for label, said in labelled}} for i, q in enumerate(questions)]
        report = ExportReport(model_uri=model_uri, name=info.name, version=info.version, out_dir=str(target),
                              formats=list(formats), files=_files(staging), checks=checks, answers=answers,
                              seconds=time.perf_counter() - started, ollama_command=command, llama_cpp=llama_cpp,
                              summary=_closest(llama_cpp, stem, settings.ollama_gguf if "ollama" in formats else None))
        (staging / MANIFEST).write_text(json.dumps(report.to_dict(), indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_directory(staging, target)
    _record(tracking, info, target, report, settings)
    return report


def _record(tracking: Tracking, info, target: Path, report: ExportReport, settings: ExportConfig) -> None:
    """The manifest (files, sha256, checks, answers), the Modelfile and the small files to the
    version's run under `export/`; what was exported as tags on the version."""
    with tracking.resume(info.run_id) as run:
        run.log_dict(report.to_dict(), "export/manifest.json")
        for f in report.files:
            small = f.bytes < 2**20
            if small or settings.log_weights:
                run.log_file(target / f.path, "/".join(["export", *Path(f.path).parent.parts]))
        run.log_table(pd.DataFrame([{"question": a["question"], **{k: v["answer"] for k, v in a.items() if k != "question"}}
                                    for a in report.answers]), "export/answers.json")
    tags = {"export.formats": ",".join(report.formats), "export.dir": str(target)}
    tags |= {f"export.sha256.{Path(f.path).name}": f.sha256 for f in report.files if f.path.endswith(".gguf")}
    tracking.registry.set_version_tags(info.name, info.version, tags)
