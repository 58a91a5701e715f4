"""Load base + adapter and answer prompts, formatted by the same Mistral function as training."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.models import load_base_model, load_tokenizer, runtime
from tasks.domain.formatting import encode_with_specials, format_prompt
from tasks.domain.records import Message

DEFAULT_MAX_NEW_TOKENS = 96  # terse answers: 60 words fit comfortably


@dataclass
class Generator:
    model: object
    tokenizer: object
    device: str
    system_prompt: str

    def prompt_ids(self, question: str) -> list[int]:
        messages = [Message(role="system", content=self.system_prompt), Message(role="user", content=question)]
        tok = self.tokenizer
        return encode_with_specials(format_prompt(messages), lambda t: tok.encode(t, add_special_tokens=False),
                                    tok.bos_token_id, tok.eos_token_id)

    def reply(self, questions: Sequence[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0,
              seed: int = 0) -> list[str]:
        """Greedy (temperature 0) or sampled answers, batched with left padding."""
        import torch

        tok = self.tokenizer
        encoded = [self.prompt_ids(q) for q in questions]
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=None, top_k=None, pad_token_id=pad, eos_token_id=tok.eos_token_id)
        return [tok.decode(row[width:], skip_special_tokens=True).strip() for row in output]


def load_generator(base_source: str | Path, adapter_dir: str | Path | None, system_prompt: str,
                   device: str = "auto", precision: str = "auto") -> Generator:
    """Base model plus (optionally) a LoRA adapter, in eval mode on the chosen device."""
    from peft import PeftModel

    chosen_device, chosen_precision = runtime(device, precision)
    tokenizer_source = Path(adapter_dir) / "tokenizer" if adapter_dir and (Path(adapter_dir) / "tokenizer").is_dir() else base_source
    tokenizer = load_tokenizer(tokenizer_source)
    model = load_base_model(base_source, chosen_precision, chosen_device)
    if adapter_dir:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return Generator(model=model, tokenizer=tokenizer, device=chosen_device, system_prompt=system_prompt)
