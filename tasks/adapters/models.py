"""Base models and tokenizers. Both profiles load through `from_pretrained` with safetensors and
without remote code; the tiny profile first builds and saves its model and tokenizer locally."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tasks.domain.config import ModelProfile, TinyModelConfig
from tasks.domain.devices import Device, Precision, choose_device, choose_precision
from tasks.domain.errors import ConfigError, TokenizerRoundTripError
from tasks.domain.hashing import content_hash
from tasks.adapters.tokenizer import build_tokenizer

TINY_MARKER = "rslm-tiny.json"


def runtime(device: str, precision: str) -> tuple[Device, Precision]:
    """Resolve `auto` against what this machine has."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    try:
        chosen = choose_device(device, cuda=cuda, mps=mps)
        bf16 = chosen == "cuda" and torch.cuda.is_bf16_supported()
        return chosen, choose_precision(chosen, precision, bf16_supported=bf16)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def torch_dtype(precision: Precision):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def ensure_tiny_base(tiny: TinyModelConfig, corpus: list[str], models_dir: Path) -> Path:
    """Build (once) a Mistral-architecture model from config plus a SentencePiece tokenizer trained
    on `corpus`, saved together as a model directory. Cached by config and corpus hash."""
    key = content_hash({"tiny": tiny.model_dump(), "corpus": content_hash(corpus)})[:12]
    target = models_dir / f"tiny-{key}"
    if (target / TINY_MARKER).exists():
        return target
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    staging = models_dir / f".tiny-{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted build
    tokenizer = build_tokenizer(corpus, tiny.vocab_size, staging)
    torch.manual_seed(tiny.seed)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers, num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads, max_position_embeddings=tiny.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, sliding_window=None,
        initializer_range=tiny.initializer_range,
    )
    MistralForCausalLM(config).save_pretrained(str(staging), safe_serialization=True)
    (staging / TINY_MARKER).write_text(json.dumps({"key": key, "tiny": tiny.model_dump()}, indent=2))
    if target.exists():  # another run finished the same build first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.replace(target)
    return target


def load_tokenizer(source: str | Path):
    """The tokenizer of a model directory or hub id, with a pad token for batching."""
    from transformers import AutoTokenizer

    source = Path(source) / "tokenizer" if (Path(source) / "tokenizer").is_dir() else source
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def check_tokenizer(tokenizer, samples: list[str]) -> None:
    """The transformers 5 trap: a tokenizer that encodes text to (almost) nothing. Plain text must
    decode back to itself and take a plausible number of tokens."""
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < max(1, len(text) // 12) or tokenizer.decode(ids).strip() != text.strip():
            raise TokenizerRoundTripError(
                f"tokenizer does not round-trip {text[:50]!r} ({len(ids)} tokens): refusing to train on it")


def load_base_model(source: str | Path, precision: Precision, device: Device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype=torch_dtype(precision), use_safetensors=True, trust_remote_code=False)
    return model.to(device)


def base_model_source(profile: ModelProfile, corpus: list[str], models_dir: Path, override: str | None = None) -> Path | str:
    """Where the base model comes from: the tiny build, or the profile's hub id / local path."""
    if profile.kind == "tiny":
        if profile.tiny is None:
            raise ConfigError(f"profile {profile.name!r}: kind tiny needs a `tiny:` section")
        return ensure_tiny_base(profile.tiny, corpus, models_dir)
    source = override or profile.source
    if not source:
        raise ConfigError(f"profile {profile.name!r}: kind pretrained needs `source` (hub id or path)")
    return source
