"""What an export is made of, as plain data (issue 18): the formats, the GGUF types, the chat
templates each chat tool reads (a Jinja template for transformers and llama.cpp, a Go template for
Ollama), the Ollama Modelfile, and the checks an export must pass before anything is kept.

The templates are ours, written from the chat formats in `formatting.py`, and checked against
them: a template that renders a different prompt than the one the model was trained and evaluated
on is the most common reason an exported model answers worse (LLaMA-Factory #6020)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from tasks.domain.formatting import BOS, EOS, IM_END, IM_START, INST_CLOSE, INST_OPEN, ChatFormat
from tasks.domain.frozen import Frozen
from tasks.domain.records import Message, question_turns

ExportFormat = Literal["merged", "gguf", "ollama"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("merged", "gguf", "ollama")
GgufType = Literal["f16", "q8_0"]
GGUF_TYPES: tuple[GgufType, ...] = ("f16", "q8_0")
GGUF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}  # llama.cpp reads both as llama


def parse_formats(text: str) -> list[ExportFormat]:
    """`merged,gguf,ollama` -> the formats to write, in dependency order (gguf needs the merged
    model, ollama the GGUF), with what each needs added.

    >>> parse_formats("ollama")
    ['merged', 'gguf', 'ollama']
    >>> parse_formats("merged")
    ['merged']
    """
    asked = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(EXPORT_FORMATS))
    if unknown or not asked:
        raise ValueError(f"--format {text!r}: use a comma-separated subset of {','.join(EXPORT_FORMATS)}")
    if "ollama" in asked:
        asked.add("gguf")
    asked.add("merged")  # every other format is written from the merged model
    return [f for f in EXPORT_FORMATS if f in asked]


# Jinja chat templates (Hugging Face tokenizer_config.json, GGUF tokenizer.chat_template), equal to
# our formats: Mistral folds the system text into the first user turn, as training did.
JINJA_TEMPLATES: dict[str, str] = {
    "mistral": (
        "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content')"
        " | join('\\n\\n') -%}"
        "{{- bos_token -}}"
        "{%- for message in messages | rejectattr('role', 'equalto', 'system') -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- '" + INST_OPEN + " ' + (system + '\\n\\n' if loop.first and system else '') + message['content']"
        " + ' " + INST_CLOSE + "' -}}"
        "{%- else -%}{{- ' ' + message['content'] + eos_token -}}{%- endif -%}"
        "{%- endfor -%}"),
    "chatml": (
        "{%- for message in messages -%}"
        "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '" + IM_START + "assistant\\n' -}}{%- endif -%}"),
}

# Ollama's Go templates (the prompt is the template rendered up to {{ .Response }}). Mistral's BOS
# is not in the text: llama.cpp adds it, as the GGUF's tokenizer.ggml.add_bos_token says.
OLLAMA_TEMPLATES: dict[str, str] = {
    "mistral": INST_OPEN + " {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} " + INST_CLOSE
               + "{{ .Response }}" + EOS,  # the answer starts with the space training put after [/INST]
    "chatml": ("{{ if .System }}" + IM_START + "system\n{{ .System }}" + IM_END + "\n{{ end }}"
               "{{ if .Prompt }}" + IM_START + "user\n{{ .Prompt }}" + IM_END + "\n{{ end }}"
               + IM_START + "assistant\n{{ .Response }}" + IM_END + "\n"),
}
STOP_STRINGS: dict[str, tuple[str, ...]] = {"mistral": (EOS, INST_OPEN), "chatml": (IM_END, IM_START)}


def adds_bos(fmt: ChatFormat) -> bool:
    """Whether the runtime must add BOS before the rendered template (Mistral's prompt starts with it)."""
    return fmt.prompt([Message(role="user", content="x")]).startswith(BOS)


def render_ollama_prompt(template: str, system: str, prompt: str) -> str:
    """The prompt Ollama builds from a legacy (System/Prompt/Response) template: the text before
    `{{ .Response }}`, its `if` blocks kept when their variable is set. Enough of Go's template
    language for the templates above, so a test and the export can check them against our format.

    >>> render_ollama_prompt(OLLAMA_TEMPLATES["mistral"], "", "Why?")
    '[INST] Why? [/INST]'
    """
    head = template.split("{{ .Response }}")[0]
    values = {"System": system, "Prompt": prompt}

    def block(match: re.Match) -> str:
        return match.group(2) if values[match.group(1)] else ""

    head = re.sub(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", block, head, flags=re.DOTALL)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], head)


def template_matches(fmt: ChatFormat, system: str, question: str) -> bool:
    """Ollama's prompt for (system, question), with the BOS its runtime adds, equals ours."""
    ours = fmt.prompt(question_turns(system, question))
    theirs = (BOS if adds_bos(fmt) else "") + render_ollama_prompt(OLLAMA_TEMPLATES[fmt.name], system, question)
    return ours == theirs


def _quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(gguf_file: str, fmt: ChatFormat, system_prompt: str, max_new_tokens: int) -> str:
    """An Ollama Modelfile: the GGUF beside it, our template, the framework's system prompt, the
    format's stop strings, and greedy decoding (what the model was evaluated with)."""
    lines = [f"FROM ./{gguf_file}", f"TEMPLATE {_quoted(OLLAMA_TEMPLATES[fmt.name])}", f"SYSTEM {_quoted(system_prompt)}"]
    lines += [f'PARAMETER stop "{stop}"' for stop in STOP_STRINGS[fmt.name]]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_predict {max_new_tokens}"]
    return "\n".join(lines) + "\n"


class ExportCheck(Frozen):
    """One verification of an exported artifact: what was compared, the measured value and its bound."""

    name: str
    passed: bool
    value: float | None = None
    bound: float | None = None
    detail: str = ""

    def line(self) -> str:
        measured = f" {self.value:.3g} (bound {self.bound:g})" if self.value is not None and self.bound is not None else ""
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}:{measured} {self.detail}".rstrip()


def within(name: str, value: float, bound: float, detail: str = "") -> ExportCheck:
    return ExportCheck(name=name, passed=value <= bound, value=value, bound=bound, detail=detail)


def failed(checks: Sequence[ExportCheck]) -> list[ExportCheck]:
    return [c for c in checks if not c.passed]

