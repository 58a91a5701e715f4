"""Chat formats, in one place for training, evaluation, `chat` and `serve`.

Two formats cover our models; the adapter picks the one the model's own tokenizer uses and checks
our rendering against its chat template (`tasks/adapters/model/chat_codec.py`).

Mistral (the `tiny` and 7B profiles):

    <s>[INST] {system}\\n\\n{user} [/INST] {assistant}</s>[INST] {user2} [/INST] {assistant2}</s>

The system text is folded into the first user turn: Mistral's own chat template drops the system
turn unless the last message is a user turn, so we never rely on it.

ChatML (SmolLM2, Qwen):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

The trainer sees a `prompt` (everything up to the point where the model starts answering) and a
`completion` (the last answer and the format's end-of-turn token); loss falls on completion
tokens only. Earlier assistant turns of a multi-turn sample are context, not targets.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tasks.domain.records import Message, Row

ChatFormatName = Literal["mistral", "chatml"]

BOS = "<s>"
EOS = "</s>"
INST_OPEN = "[INST]"
INST_CLOSE = "[/INST]"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


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


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation becomes the exact text a model is trained on and prompted with.

    `specials` are the strings that stand for single special tokens (encoded by id, never as text);
    `end_of_turn` closes every answer, and is where generation stops."""

    name: ChatFormatName
    specials: tuple[str, ...]
    end_of_turn: str
    _render_prompt: Callable[[Sequence[Message]], str]
    _render_answer: Callable[[str], str]

    def prompt(self, messages: Sequence[Message]) -> str:
        """The prompt for the model's next answer: a conversation that ends with a user turn.

        >>> MISTRAL.prompt([Message(role="system", content="Be terse."), Message(role="user", content="Why /24?")])
        '<s>[INST] Be terse.\\n\\nWhy /24? [/INST]'
        >>> CHATML.prompt([Message(role="system", content="Be terse."), Message(role="user", content="Why /24?")])
        '<|im_start|>system\\nBe terse.<|im_end|>\\n<|im_start|>user\\nWhy /24?<|im_end|>\\n<|im_start|>assistant\\n'
        """
        _check_alternation([m for m in messages if m.role != "system"], ends_with="user")
        return self._render_prompt(messages)

    def example(self, messages: Sequence[Message]) -> PromptCompletion:
        """Split a conversation ending with an assistant turn into the exact strings the trainer sees."""
        turns = [m for m in messages if m.role != "system"]
        _check_alternation(turns, ends_with="assistant")
        return PromptCompletion(prompt=self.prompt(list(messages)[:-1]),
                                completion=self._render_answer(messages[-1].content))

    def row(self, row: Row) -> PromptCompletion:
        return self.example(row.messages)

    def encode(self, text: str, encode: Encoder, special_ids: Mapping[str, int]) -> list[int]:
        """Token ids for a formatted string: each special becomes its id; the text between is encoded
        without special tokens (a tokenizer that also adds BOS would double it)."""
        ids: list[int] = []
        for piece in self._special_split.split(text):
            if piece in special_ids:
                ids.append(special_ids[piece])
            elif piece:
                ids.extend(encode(piece))
        return ids

    @property
    def _special_split(self) -> re.Pattern:
        return re.compile("(" + "|".join(re.escape(s) for s in self.specials) + ")")


def _mistral_prompt(messages: Sequence[Message]) -> str:
    text = BOS
    for message in fold_system(messages):
        if message.role == "user":
            text += f"{INST_OPEN} {message.content} {INST_CLOSE}"
        else:
            text += f" {message.content}{EOS}"
    return text


def _chatml_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _chatml_prompt(messages: Sequence[Message]) -> str:
    return "".join(_chatml_turn(m.role, m.content) for m in messages) + f"{IM_START}assistant\n"


MISTRAL = ChatFormat(name="mistral", specials=(BOS, EOS), end_of_turn=EOS, _render_prompt=_mistral_prompt,
                     _render_answer=lambda answer: f" {answer}{EOS}")
# The completion ends at <|im_end|>: the newline the template writes after it belongs to the next turn.
CHATML = ChatFormat(name="chatml", specials=(IM_START, IM_END), end_of_turn=IM_END, _render_prompt=_chatml_prompt,
                    _render_answer=lambda answer: f"{answer}{IM_END}")
CHAT_FORMATS: dict[str, ChatFormat] = {f.name: f for f in (MISTRAL, CHATML)}


def chat_format(name: str) -> ChatFormat:
    if name not in CHAT_FORMATS:
        raise FormatError(f"unknown chat format {name!r}: use one of {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[name]


Encoder = Callable[[str], list[int]]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    completion_mask: list[int]  # 1 where the loss applies (the answer and its end-of-turn token)

    @property
    def loss_tokens(self) -> int:
        return sum(self.completion_mask)


def tokenize_example(example: PromptCompletion, fmt: ChatFormat, encode: Encoder, special_ids: Mapping[str, int],
                     max_length: int | None = None) -> TokenizedExample | None:
    """Tokenize prompt+completion jointly and mark the completion. Returns None when the example
    is longer than `max_length`: cutting it would train on an answer without its end."""
    prompt_ids = fmt.encode(example.prompt, encode, special_ids)
    full_ids = fmt.encode(example.text, encode, special_ids)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # Both formats end the prompt with a special token or a newline, so the prompt's tokens
        # never merge with the answer's; a tokenizer that merges them would blur the loss mask.
        raise FormatError("prompt tokens are not a prefix of prompt+completion tokens")
    if max_length is not None and len(full_ids) > max_length:
        return None
    mask = [0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids))
    return TokenizedExample(input_ids=full_ids, completion_mask=mask)
