"""A real SentencePiece tokenizer trained on our corpus, converted to a Hugging Face tokenizer and
saved, so the tiny profile loads it with `AutoTokenizer.from_pretrained` like the 7B model.

transformers 5 trap: `LlamaTokenizer(vocab_file=...)` silently encodes text to `[]`. We build the
tokenizer from the SentencePiece model's own vocabulary and merges, and refuse to save one whose
encoding differs from SentencePiece's (`assert_round_trip`)."""
from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from tasks.domain.errors import TokenizerRoundTripError
from tasks.domain.formatting import INST_CLOSE, INST_OPEN

SPM_FILE = "tokenizer.model"


def train_sentencepiece(corpus: Iterable[str], vocab_size: int) -> bytes:
    """Train a BPE SentencePiece model; returns the serialised model. Identity normalisation and
    kept whitespace make HF's tokenizer and SentencePiece agree byte for byte."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus)), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=[INST_OPEN, INST_CLOSE],
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        num_threads=2, minloglevel=2,
    )
    return model.getvalue()


def hf_tokenizer_from_spm(spm_path: Path):
    """A LlamaTokenizer (tokenizers backend) built from the SentencePiece model's vocab and merges."""
    from tokenizers.models import BPE
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(spm_path)).extract(BPE)
    extracted.pop("_spm_precompiled_charsmap", None)
    tokenizer = LlamaTokenizer(**extracted, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                               add_prefix_space=True, legacy=False)
    tokenizer.pad_token = tokenizer.unk_token  # Mistral has no pad token; batching needs one
    return tokenizer


def assert_round_trip(tokenizer, spm_path: Path, samples: Iterable[str]) -> None:
    """Token ids equal SentencePiece's own and decode back to the text, for every sample."""
    import sentencepiece as spm

    reference = spm.SentencePieceProcessor(model_file=str(spm_path))
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if ids != reference.encode(text):
            raise TokenizerRoundTripError(f"tokenizer ids differ from SentencePiece for {text[:60]!r}")
        if tokenizer.decode(ids) != text:
            raise TokenizerRoundTripError(f"tokenizer does not decode back to {text[:60]!r}")
        if text.strip() and len(ids) < 1:
            raise TokenizerRoundTripError(f"tokenizer encoded {text[:60]!r} to nothing")


def build_tokenizer(corpus: list[str], vocab_size: int, out_dir: Path):
    """Train, convert, check and save; returns the tokenizer reloaded from `out_dir`."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    spm_path = out_dir / SPM_FILE
    spm_path.write_bytes(train_sentencepiece(corpus, vocab_size))
    tokenizer = hf_tokenizer_from_spm(spm_path)
    tokenizer.save_pretrained(str(out_dir))
    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    assert_round_trip(reloaded, spm_path, corpus[:200])
    return reloaded

