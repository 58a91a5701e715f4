"""A tokenizer bound to its chat format: the one object that turns conversations into token ids for
training, evaluation, `chat` and `serve`, so all four see the same bytes.

The format is read off the tokenizer (a ChatML template names `<|im_start|>`; the tiny and Mistral
tokenizers are Mistral-formatted) and, for ChatML, checked against the model's own chat template:
a tokenizer whose template renders differently from ours is refused rather than trained on."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasks.domain.errors import ConfigError
from tasks.domain.formatting import CHATML, IM_START, MISTRAL, ChatFormat, PromptCompletion, TokenizedExample, tokenize_example
from tasks.domain.records import Message

_PROBE = [Message(role="system", content="Be terse."), Message(role="user", content="Why split a /16 into /24s?"),
          Message(role="assistant", content="1. Isolation: one blast radius per subnet.")]


@dataclass(frozen=True)
class ChatCodec:
    fmt: ChatFormat
    tokenizer: object
    special_ids: dict[str, int]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tokenize(self, example: PromptCompletion, max_length: int | None = None) -> TokenizedExample | None:
        return tokenize_example(example, self.fmt, self.encode_text, self.special_ids, max_length)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return self.fmt.encode(self.fmt.prompt(messages), self.encode_text, self.special_ids)

    @property
    def stop_id(self) -> int:
        """Generation ends at the format's end-of-turn token."""
        return self.special_ids[self.fmt.end_of_turn]


def _template_renders(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _verify_chatml(tokenizer) -> None:
    """Our ChatML strings must equal the model's own template, prompt and full conversation."""
    example = CHATML.example(_PROBE)
    theirs_prompt = _template_renders(tokenizer, _PROBE[:-1], True)
    theirs_full = _template_renders(tokenizer, _PROBE, False)
    if example.prompt != theirs_prompt or not theirs_full.startswith(example.text):
        raise ConfigError("the tokenizer's ChatML chat template renders differently from ours: "
                          f"{theirs_full!r} vs {example.text!r}")


def detect_format(tokenizer) -> ChatFormat:
    template = getattr(tokenizer, "chat_template", None) or ""
    return CHATML if IM_START in template else MISTRAL


def chat_codec(tokenizer, expected: str | None = None) -> ChatCodec:
    """The tokenizer with its chat format. `expected` (a profile's `chat_format`) must agree."""
    fmt = detect_format(tokenizer)
    if expected is not None and expected != fmt.name:
        raise ConfigError(f"the profile says chat_format {expected!r} but the model's tokenizer is {fmt.name!r}")
    if fmt is CHATML:
        _verify_chatml(tokenizer)
    special_ids = {}
    for token in fmt.specials:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ConfigError(f"the tokenizer has no {token!r} token, which the {fmt.name} format needs")
        special_ids[token] = token_id
    return ChatCodec(fmt=fmt, tokenizer=tokenizer, special_ids=special_ids)
