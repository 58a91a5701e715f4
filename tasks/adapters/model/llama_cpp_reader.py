"""llama.cpp as a second, independent reader of an exported GGUF (issue 32): the engine Ollama and
LM Studio run, with its own tokenizer, its own quantized kernels and its own chat-template code.
transformers' GGUF loader, the first reader, de-quantizes to fp32 and rebuilds a Hugging Face
tokenizer, so a file it reads well can still tokenize, compute or stop differently in llama.cpp
(SmolLM2's q8_0: equal answers to 7 of 8 questions through transformers, 1 of 8 through llama.cpp).

Used where `llama-cpp-python` is installed: `make test` installs it (built once from its sdist, which
vendors llama.cpp, into a wheel cache), `make run` does not."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# What llama.cpp logs when a file loads but will tokenize or stop badly: a missing pre-tokenizer
# ("GENERATION QUALITY WILL BE DEGRADED"; an unknown one or a BPE vocabulary without merges does not
# load at all), an end-of-sequence token it does not treat as the end of a turn (generation that
# never ends). Its dump of the file's metadata ("- kv 18: tokenizer.ggml.merges ...") is not a warning.
SUSPECT_LOAD_WORDS = ("missing pre-tokenizer", "GENERATION QUALITY", "not in special_eog_ids")


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class LlamaCppReading:
    """What llama.cpp made of one GGUF file."""

    suspect_lines: list[str]      # load log lines with SUSPECT_LOAD_WORDS
    token_ids: list[list[int]]    # per text, tokenized with special tokens parsed, no BOS added
    logits: list                  # per token sequence, [positions, vocab] float32 (numpy)
    answers: list[str]            # greedy chat completions through the GGUF's own chat template
    finish_reasons: list[str]     # "stop" (end-of-turn token) or "length" (ran out of max_tokens)


@contextlib.contextmanager
def _stderr_into(path: Path):
    """File descriptor 2 (where llama.cpp's C code logs) and `sys.stderr` (where llama-cpp-python's
    log callback prints), both into `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield
        finally:
            sink.flush()
            os.dup2(saved, 2)
            os.close(saved)


def read_with_llama_cpp(path: Path, texts: Sequence[str], sequences: Sequence[Sequence[int]],
                        conversations: Sequence[Sequence[dict]], max_new_tokens: int) -> LlamaCppReading:
    """Load `path` in llama.cpp on the CPU and have it tokenize `texts`, score every position of
    `sequences` (logits for all of them) and answer `conversations` greedily (temperature 0)."""
    import numpy as np
    from llama_cpp import Llama

    context = max(len(s) for s in sequences) + max_new_tokens + 256  # the longest sequence or prompt + answer
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "llama.log"
        with _stderr_into(log):
            llm = Llama(model_path=str(path), n_ctx=context, logits_all=True, n_threads=os.cpu_count() or 1,
                        seed=0, verbose=True)
        suspect = [line.strip() for line in log.read_text(errors="replace").splitlines()
                   if any(word in line for word in SUSPECT_LOAD_WORDS)]
        with _stderr_into(log):  # llama.cpp logs every evaluation too; none of it is the caller's
            token_ids = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
            logits = []
            for sequence in sequences:
                llm.reset()
                llm.eval(list(sequence))
                logits.append(np.array(llm.scores[:len(sequence)], dtype=np.float32))
            replies = [llm.create_chat_completion(messages=list(c), temperature=0.0, max_tokens=max_new_tokens, seed=0)
                       for c in conversations]
    del llm
    return LlamaCppReading(suspect_lines=suspect, token_ids=token_ids, logits=logits,
                           answers=[r["choices"][0]["message"]["content"].strip() for r in replies],
                           finish_reasons=[r["choices"][0]["finish_reason"] for r in replies])


def nmse(reference, other) -> float:
    """Normalised mean squared error of `other`'s logits against `reference`'s, over every position
    and word of every sequence: sum((other - reference)^2) / sum(reference^2), llama.cpp's own
    measure for a converted model (`examples/model-conversion`: below 1e-4 "excellent", 1e-2 passes)."""
    import numpy as np

    error = sum(float(np.square(np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)).sum())
                for a, b in zip(reference, other, strict=True))
    power = sum(float(np.square(np.asarray(a, dtype=np.float64)).sum()) for a in reference)
    return error / power if power else 0.0
