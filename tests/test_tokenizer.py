"""The tiny tokenizer is a real SentencePiece model that round-trips through from_pretrained."""
import pytest
import sentencepiece as spm

from tasks.adapters.model.base_models import check_tokenizer, load_tokenizer
from tasks.domain.errors import TokenizerRoundTripError

SAMPLES = ["Why split a 10.0.0.0/16 VPC into /24 subnets for an EKS cluster?",
           "1. Isolation: each /24 is its own blast radius.  Two spaces,\nnew line, émoji ✓ and 日本."]


def test_round_trip_matches_sentencepiece(tiny_base):
    tokenizer = load_tokenizer(tiny_base)
    reference = spm.SentencePieceProcessor(model_file=str(tiny_base / "tokenizer.model"))
    for text in SAMPLES:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text)
        assert tokenizer.decode(ids) == text
        assert len(ids) >= len(text) // 8, "a plausible number of tokens, not [<s>, </s>]"
    assert tokenizer.convert_tokens_to_ids(["[INST]", "[/INST]"]) != [tokenizer.unk_token_id] * 2
    assert tokenizer.pad_token_id is not None


def test_check_tokenizer_catches_the_transformers5_trap(tiny_base):
    from transformers import LlamaTokenizer

    broken = LlamaTokenizer(vocab_file=str(tiny_base / "tokenizer.model"))  # encodes text to []
    with pytest.raises(TokenizerRoundTripError):
        check_tokenizer(broken, SAMPLES)
    check_tokenizer(load_tokenizer(tiny_base), SAMPLES)
