"""Chat formats: exact strings (Mistral with the system folded in, ChatML), multi-turn, the loss
mask on the answer only, and `rslm format` printing what the trainer sees."""
import json

import pytest
from click.testing import CliRunner

from flows.cli import cli
from tasks.domain.formatting import CHATML, MISTRAL, FormatError, chat_format, tokenize_example
from tasks.domain.records import Message

from conftest import write_rows

SYS, Q, A = "Be terse.", "Why split a /16 into /24s?", "1. Isolation. 2. Routing. 3. Capacity."


def m(role, content):
    return Message(role=role, content=content)


def test_mistral_single_turn_exact_strings():
    example = MISTRAL.example([m("system", SYS), m("user", Q), m("assistant", A)])
    assert example.prompt == f"<s>[INST] {SYS}\n\n{Q} [/INST]"
    assert example.completion == f" {A}</s>"


def test_mistral_multi_turn_folds_system_into_first_user_turn_only():
    example = MISTRAL.example([m("system", SYS), m("user", "q1"), m("assistant", "a1"), m("user", "q2"), m("assistant", "a2")])
    assert example.prompt == f"<s>[INST] {SYS}\n\nq1 [/INST] a1</s>[INST] q2 [/INST]"
    assert example.completion == " a2</s>"


def test_chatml_keeps_the_system_turn_and_ends_answers_with_im_end():
    example = CHATML.example([m("system", SYS), m("user", "q1"), m("assistant", "a1"), m("user", "q2"), m("assistant", "a2")])
    assert example.prompt == (f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n"
                              "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n")
    assert example.completion == "a2<|im_end|>"


@pytest.mark.parametrize("fmt", [MISTRAL, CHATML], ids=lambda f: f.name)
def test_inference_prompt_equals_training_prompt(fmt):
    conversation = [m("system", SYS), m("user", Q)]
    assert fmt.prompt(conversation) == fmt.example([*conversation, m("assistant", A)]).prompt


@pytest.mark.parametrize("fmt", [MISTRAL, CHATML], ids=lambda f: f.name)
def test_bad_turn_order_is_rejected(fmt):
    with pytest.raises(FormatError):
        fmt.example([m("assistant", A), m("user", Q)])
    with pytest.raises(FormatError):
        fmt.prompt([m("user", Q), m("assistant", A)])
    with pytest.raises(FormatError, match="unknown chat format"):
        chat_format("alpaca")


def fake_encode(text):
    return [ord(c) for c in text]


@pytest.mark.parametrize("fmt, specials", [(MISTRAL, {"<s>": 1, "</s>": 2}), (CHATML, {"<|im_start|>": 1, "<|im_end|>": 2})],
                         ids=["mistral", "chatml"])
def test_tokenize_masks_only_the_completion_and_its_end_of_turn(fmt, specials):
    example = fmt.example([m("system", SYS), m("user", Q), m("assistant", A)])
    tokens = tokenize_example(example, fmt, fake_encode, specials)
    prompt_len = len(tokens.input_ids) - tokens.loss_tokens
    assert tokens.input_ids[0] == 1 and tokens.input_ids[-1] == 2, "specials are single ids, not their characters"
    assert tokens.completion_mask[:prompt_len] == [0] * prompt_len
    answer_chars = len(example.completion) - len(fmt.end_of_turn)
    assert tokens.loss_tokens == answer_chars + 1  # the answer and its end-of-turn token
    assert tokenize_example(example, fmt, fake_encode, specials, max_length=10) is None


@pytest.mark.parametrize("name, opens, closes, ends", [
    ("mistral", "<s>[INST] ", " [/INST]", "</s>"),
    ("chatml", "<|im_start|>system\n", "<|im_start|>assistant\n", "<|im_end|>")])
def test_rslm_format_prints_what_the_trainer_sees(tmp_path, small_build, name, opens, closes, ends):
    path = write_rows(tmp_path / "d.jsonl", small_build.train[:3])
    result = CliRunner().invoke(cli, ["format", str(path), "--chat-format", name])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 3
    for line, row in zip(lines, small_build.train[:3], strict=True):
        assert line["id"] == row.id
        assert line["prompt"].startswith(opens) and line["prompt"].endswith(closes)
        assert line["completion"].strip() == f"{row.turns('assistant')[-1]}{ends}"


def test_rslm_format_defaults_to_the_configured_profiles_format(tmp_path, small_build):
    path = write_rows(tmp_path / "d.jsonl", small_build.train[:1])
    result = CliRunner().invoke(cli, ["format", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["prompt"].startswith("<|im_start|>system\n"), "SmolLM2 (ChatML) is the default"
