"""Mistral format: exact strings, system folded in, multi-turn, loss mask on the answer only."""
import json

import pytest
from click.testing import CliRunner

from conftest import write_rows
from flows.cli import cli
from tasks.domain.formatting import FormatError, format_example, format_prompt, tokenize_example
from tasks.domain.records import Message

SYS, Q, A = "Be terse.", "Why split a /16 into /24s?", "1. Isolation. 2. Routing. 3. Capacity."


def m(role, content):
    return Message(role=role, content=content)


def test_single_turn_exact_strings():
    example = format_example([m("system", SYS), m("user", Q), m("assistant", A)])
    assert example.prompt == f"<s>[INST] {SYS}\n\n{Q} [/INST]"
    assert example.completion == f" {A}</s>"


def test_multi_turn_folds_system_into_first_user_turn_only():
    example = format_example([m("system", SYS), m("user", "q1"), m("assistant", "a1"), m("user", "q2"), m("assistant", "a2")])
    assert example.prompt == f"<s>[INST] {SYS}\n\nq1 [/INST] a1</s>[INST] q2 [/INST]"
    assert example.completion == " a2</s>"


def test_inference_prompt_equals_training_prompt():
    conversation = [m("system", SYS), m("user", Q)]
    assert format_prompt(conversation) == format_example([*conversation, m("assistant", A)]).prompt


def test_bad_turn_order_is_rejected():
    with pytest.raises(FormatError):
        format_example([m("assistant", A), m("user", Q)])
    with pytest.raises(FormatError):
        format_prompt([m("user", Q), m("assistant", A)])


def fake_encode(text):
    return [ord(c) for c in text]


def test_tokenize_masks_only_the_completion():
    example = format_example([m("system", SYS), m("user", Q), m("assistant", A)])
    tokens = tokenize_example(example, fake_encode, bos_id=1, eos_id=2)
    prompt_len = len(tokens.input_ids) - tokens.loss_tokens
    assert tokens.input_ids[0] == 1 and tokens.input_ids[-1] == 2
    assert tokens.completion_mask[:prompt_len] == [0] * prompt_len
    assert tokens.loss_tokens == len(f" {A}") + 1  # the answer and its </s>
    assert tokenize_example(example, fake_encode, 1, 2, max_length=10) is None


def test_rslm_format_prints_what_the_trainer_sees(tmp_path, small_build):
    path = write_rows(tmp_path / "d.jsonl", small_build.train[:3])
    result = CliRunner().invoke(cli, ["format", str(path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 3
    for line, row in zip(lines, small_build.train[:3]):
        assert line["id"] == row.id
        assert line["prompt"].startswith("<s>[INST] ") and line["prompt"].endswith(" [/INST]")
        assert line["completion"] == f" {row.turns('assistant')[-1]}</s>"
