"""Mistral instruction format, in one place for training and inference.

    <s>[INST] {system}\\n\\n{user} [/INST] {assistant}</s>[INST] {user2} [/INST] {assistant2}</s>

The system text is folded into the first user turn: Mistral's own chat template drops the system
turn unless the last message is a user turn, so we never rely on it. The trainer sees a `prompt`
(everything up to and including the last `[/INST]`) and a `completion` (the last answer and
`</s>`); loss falls on completion tokens only. Earlier assistant turns of a multi-turn sample are
context, not targets.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tasks.domain.records import Message, Row

BOS = "<s>"
EOS = "</s>"
INST_OPEN = "[INST]"
INST_CLOSE = "[/INST]"
_SPECIAL_SPLIT = re.compile(f"({re.escape(BOS)}|{re.escape(EOS)})")


class FormatError(ValueError):
    pass


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """Drop system turns and put their text, plus a blank line, before the first user turn."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    if system and turns and turns[0].role == "user":
        turns[0] = Message(role="user", content=f"{system}\n\n{turns[0].content}")
    return turns


def _check_alternation(turns: Sequence[Message], *, ends_with: str) -> None:
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    roles = [m.role for m in turns]
    if not turns or roles != expected[: len(roles)] or roles[-1] != ends_with:
        raise FormatError(f"turns must alternate user/assistant and end with {ends_with}, got {roles}")


def format_prompt(messages: Sequence[Message]) -> str:
    """The prompt for the model's next answer: a conversation that ends with a user turn.

    >>> format_prompt([Message(role="system", content="Be terse."), Message(role="user", content="Why /24?")])
    '<s>[INST] Be terse.\\n\\nWhy /24? [/INST]'
    """
    turns = fold_system(messages)
    _check_alternation(turns, ends_with="user")
    text = BOS
    for message in turns:
        if message.role == "user":
            text += f"{INST_OPEN} {message.content} {INST_CLOSE}"
        else:
            text += f" {message.content}{EOS}"
    return text


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def format_example(messages: Sequence[Message]) -> PromptCompletion:
    """Split a conversation ending with an assistant turn into the exact strings the trainer sees."""
    turns = fold_system(messages)
    _check_alternation(turns, ends_with="assistant")
    *context, answer = turns
    return PromptCompletion(prompt=format_prompt(context), completion=f" {answer.content}{EOS}")


def format_row(row: Row) -> PromptCompletion:
    return format_example(row.messages)


Encoder = Callable[[str], list[int]]


def encode_with_specials(text: str, encode: Encoder, bos_id: int, eos_id: int) -> list[int]:
    """Token ids for a formatted string: `<s>`/`</s>` become their ids; the text between is encoded
    without special tokens (a tokenizer that also adds BOS would double it)."""
    ids: list[int] = []
    for piece in _SPECIAL_SPLIT.split(text):
        if piece == BOS:
            ids.append(bos_id)
        elif piece == EOS:
            ids.append(eos_id)
        elif piece:
            ids.extend(encode(piece))
    return ids


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    completion_mask: list[int]  # 1 where the loss applies (the answer and its </s>)

    @property
    def loss_tokens(self) -> int:
        return sum(self.completion_mask)


def tokenize_example(example: PromptCompletion, encode: Encoder, bos_id: int, eos_id: int,
                     max_length: int | None = None) -> TokenizedExample | None:
    """Tokenize prompt+completion jointly and mark the completion. Returns None when the example
    is longer than `max_length`: cutting it would train on an answer without its end."""
    prompt_ids = encode_with_specials(example.prompt, encode, bos_id, eos_id)
    full_ids = encode_with_specials(example.text, encode, bos_id, eos_id)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # [/INST] is a single token, so the prompt's tokens never merge with the answer's.
        raise FormatError("prompt tokens are not a prefix of prompt+completion tokens")
    if max_length is not None and len(full_ids) > max_length:
        return None
    mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
    return TokenizedExample(input_ids=full_ids, completion_mask=mask)
