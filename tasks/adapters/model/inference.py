"""Load base + adapter and answer prompts, formatted by the same chat codec as training."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.model.base_models import adapter_tokenizer, load_base_model, runtime, with_adapter
from tasks.adapters.model.chat_codec import ChatCodec, chat_codec
from tasks.domain.config import EvaluationConfig
from tasks.domain.evaluation import context
from tasks.domain.grounding import Grounding
from tasks.domain.records import Message, Row, question_turns

DEFAULT_MAX_NEW_TOKENS = 96  # terse answers: 60 words fit comfortably


@dataclass
class Generator:
    model: object
    codec: ChatCodec
    device: str
    system_prompt: str
    grounding: Grounding | None = None  # a grounded model is asked with its question's principles too

    @property
    def tokenizer(self):
        return self.codec.tokenizer

    def system_turn(self, question: str) -> str:
        """The system turn this model is asked `question` under."""
        return self.grounding.system_turn(self.system_prompt, question) if self.grounding else self.system_prompt

    def conversation(self, question: str) -> list[Message]:
        return question_turns(self.system_turn(question), question)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return self.codec.prompt_ids(messages)

    def reply(self, questions: Sequence[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
              seed: int = 0, batch_size: int = 16) -> list[str]:
        """Answers to single questions under the model's system prompt."""
        return self.reply_to([self.conversation(q) for q in questions], max_new_tokens, temperature, seed, batch_size)

    def answer_rows(self, rows: Sequence[Row], settings: EvaluationConfig, temperature: float, seed: int) -> list[str]:
        """Answers to dataset rows, each asked as it was trained (its system turn and question), at
        the evaluation's answer length and batch size."""
        return self.reply_to([context(r) for r in rows], max_new_tokens=settings.max_new_tokens,
                             temperature=temperature, seed=seed, batch_size=settings.batch_size)

    def reply_to(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, seed: int = 0, batch_size: int = 16) -> list[str]:
        """Greedy (temperature 0) or sampled answers to conversations ending with a user turn,
        in batches of similar length with left padding. Deterministic for a seed."""
        return [text for text, _ in self.replies(conversations, max_new_tokens, temperature, seed, batch_size)]

    def replies(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                temperature: float = 0.0, seed: int = 0, batch_size: int = 16) -> list[tuple[str, int]]:
        """`reply_to`'s answers with how many tokens each took, its end-of-turn token included (fewer
        than `max_new_tokens`: it stopped by itself)."""
        import torch
        from tqdm.auto import tqdm

        encoded = [self.prompt_ids(c) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding per batch
        answers: dict[int, tuple[str, int]] = {}
        torch.manual_seed(seed)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", leave=False, disable=len(starts) < 2):
            batch = order[start:start + batch_size]
            answers.update(zip(batch, self._generate([encoded[i] for i in batch], max_new_tokens, temperature), strict=True))
        return [answers[i] for i in range(len(encoded))]

    def complete(self, conversation: Sequence[Message], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, seed: int = 0) -> tuple[str, int, int]:
        """One answer with its token usage: (text, prompt tokens, generated tokens)."""
        import torch

        prompt = self.prompt_ids(conversation)
        torch.manual_seed(seed)
        ((text, generated),) = self._generate([prompt], max_new_tokens, temperature)
        return text, len(prompt), generated

    def sample(self, conversation: Sequence[Message], n: int, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               temperature: float = 0.7, seed: int = 0) -> list[tuple[str, int]]:
        """n sampled answers to one conversation, in one batch: (text, generated tokens) each."""
        import torch

        prompt = self.prompt_ids(conversation)
        torch.manual_seed(seed)
        return self._generate([prompt] * n, max_new_tokens, temperature)

    def _generate(self, encoded: list[list[int]], max_new_tokens: int, temperature: float) -> list[tuple[str, int]]:
        """(text, generated token count) per prompt; the count stops at the end-of-turn token or padding."""
        import torch

        tok, stop_id = self.tokenizer, self.codec.stop_id
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=None, top_k=None, pad_token_id=pad, eos_token_id=stop_id)
        results = []
        for row in output:
            new = row[width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in (stop_id, pad)), len(new))
            results.append((tok.decode(new, skip_special_tokens=True).strip(), min(len(new), stop + (stop < len(new)))))
        return results


def load_generator(base_source: str | Path, adapter_dir: str | Path | None, system_prompt: str,
                   device: str = "auto", precision: str = "auto", grounding: Grounding | None = None) -> Generator:
    """Base model plus (optionally) a LoRA adapter, in eval mode on the chosen device."""
    chosen_device, chosen_precision = runtime(device, precision)
    tokenizer = adapter_tokenizer(adapter_dir, base_source)
    model = load_base_model(base_source, chosen_precision, chosen_device)
    model = with_adapter(model, adapter_dir) if adapter_dir else model.eval()
    return Generator(model=model, codec=chat_codec(tokenizer), device=chosen_device, system_prompt=system_prompt,
                     grounding=grounding)


def load_adapter_generator(adapter_dir: str | Path, system_prompt: str, device: str = "auto") -> Generator:
    """An adapter directory written by training, on the base its training summary names."""
    import json

    from tasks.adapters.model.training import SUMMARY_FILE
    from tasks.domain.errors import RslmError

    summary_file = Path(adapter_dir) / SUMMARY_FILE
    if not summary_file.is_file():
        raise RslmError(f"{adapter_dir}: not an adapter directory written by training (no {SUMMARY_FILE})")
    summary = json.loads(summary_file.read_text())
    return load_generator(summary["base_model"], adapter_dir, system_prompt, device=device)
