"""Merge an adapter into its base and write GGUF files, with our own code on the `gguf` package's
writer (no llama.cpp checkout, no compiler), and read every artifact back to check it (issue 18).

GGUF conventions followed here (llama.cpp's, as its reader and transformers' GGUF loader expect):
- tensor names from gguf-py's own name map for the llama architecture;
- the q and k projections permuted from Hugging Face's rotate-half RoPE layout to GGML's
  interleaved one (transformers reverses exactly this when it reads a llama GGUF);
- 1-D tensors (norms) stay f32; a tied output layer is not written (the reader reuses token_embd);
- the tokenizer as `gpt2` (byte-level BPE: SmolLM2) or `llama` (SentencePiece-style BPE with
  merges: Mistral and the tiny model), its special ids, BOS flag and chat template."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tasks.adapters.model.base_models import adapter_tokenizer, load_base_model, with_adapter
from tasks.adapters.model.chat_codec import ChatCodec, chat_codec
from tasks.adapters.model.inference import Generator, load_generator
from tasks.domain.errors import RslmError
from tasks.domain.export_spec import GGUF_ARCHITECTURES, JINJA_TEMPLATES, GgufType, adds_bos

EXPORT_INFO = "rslm_export.json"
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4  # gguf TokenType values


class ExportError(RslmError):
    pass


def merge_adapter(base_source: str | Path, adapter_dir: str | Path, out_dir: Path, max_new_tokens: int,
                  provenance: dict, device: str = "cpu", precision: str = "fp32") -> Path:
    """Base + LoRA merged (`merge_and_unload`; fp32 on CPU, the device's half precision on a GPU or
    Mac, where a 7B model in fp32 would not fit) into a plain safetensors model with its
    tokenizer, a chat template equal to our format, a greedy generation config that stops at the
    format's end of turn, and `rslm_export.json` (where it came from, its system prompt). Loads with
    transformers alone, without peft."""
    from transformers import GenerationConfig

    tokenizer = adapter_tokenizer(adapter_dir, base_source)
    codec = chat_codec(tokenizer)
    merged = with_adapter(load_base_model(base_source, precision, device), adapter_dir).merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = JINJA_TEMPLATES[codec.fmt.name]
    tokenizer.save_pretrained(str(out_dir))
    GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=codec.stop_id,
                     pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id).save_pretrained(str(out_dir))
    (out_dir / EXPORT_INFO).write_text(json.dumps({**provenance, "chat_format": codec.fmt.name}, indent=1))
    return out_dir


def load_merged(merged_dir: str | Path, device: str = "auto") -> Generator:
    """A merged export, ready to answer under the system prompt it was exported with."""
    info_file = Path(merged_dir) / EXPORT_INFO
    if not info_file.is_file():
        raise ExportError(f"{merged_dir}: not a merged export (no {EXPORT_INFO}); use --base for a plain model")
    return load_generator(merged_dir, None, json.loads(info_file.read_text()).get("system_prompt", ""), device=device)


def gguf_architecture(config) -> str:
    """The GGUF architecture for a model config, or a one-line refusal naming what is supported."""
    arch = (config.architectures or ["?"])[0]
    if arch not in GGUF_ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(sorted(GGUF_ARCHITECTURES))} models, not {arch}")
    return GGUF_ARCHITECTURES[arch]


def _permute_rope(weights, n_head: int):
    """Hugging Face's rotate-half q/k rows -> GGML's interleaved pairs (llama.cpp's convention)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensor(name: str, value, config, quant: GgufType):
    """(data, raw type) for one tensor: norms f32; matrices f16 or Q8_0 (rows of 32 values)."""
    import gguf
    import numpy as np

    data = value.detach().float().numpy()
    if name.endswith("attn_q.weight"):
        data = _permute_rope(data, config.num_attention_heads)
    elif name.endswith("attn_k.weight"):
        data = _permute_rope(data, config.num_key_value_heads)
    if data.ndim == 1:
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype
    return data.astype(np.float16), None


def _add_model_metadata(writer, config, quant: GgufType, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope_theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if rope_theta:
        writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)


def _tokenizer_model(tokenizer_json: dict) -> str:
    """`gpt2` for a byte-level BPE (SmolLM2), `llama` for a SentencePiece-style one (Mistral, tiny)."""
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export needs a BPE tokenizer, not {model.get('type')!r}")
    return "gpt2" if "ByteLevel" in json.dumps(tokenizer_json.get("pre_tokenizer")) else "llama"


def _prefixes_every_text(tokenizer_json: dict) -> bool:
    """llama.cpp's `add_space_prefix` puts a space before the first text and after every special
    token. A Metaspace pre-tokenizer with `prepend_scheme: first` (Mistral v0.3's tokenizer.json, and
    tiny's) prefixes only the start of the whole input, which in a chat prompt is a special token: no
    prefix anywhere there, so the flag is off (on, llama.cpp read "[INST] You" as "[INST]", "▁", "▁You",
    where training saw "[INST]", "▁You"). `always`, or a normalizer that prepends, turns it on."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    for step in [pre, *pre.get("pretokenizers", [])]:
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") == "always"
    return '"Prepend"' in json.dumps(tokenizer_json.get("normalizer"))


def gguf_text_field(path: Path, key: str) -> str | None:
    """One string field of a GGUF file's metadata (None when absent)."""
    import gguf

    field = gguf.GGUFReader(str(path)).get_field(key)
    return field.contents() if field is not None else None


def _add_tokenizer(writer, merged_dir: Path, tokenizer, codec: ChatCodec, vocab_size: int,
                   pre_tokenizer: str | None) -> None:
    tokenizer_json = json.loads((merged_dir / "tokenizer.json").read_text())
    kind = _tokenizer_model(tokenizer_json)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    # control (never printed, as llama.cpp treats them): special tokens and added tokens marked special
    special = set(tokenizer.all_special_tokens) | set(codec.special_ids) | {t for t, is_special in added.items() if is_special}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token)
        types.append(TOKEN_CONTROL if token in special else TOKEN_USER_DEFINED if token in added else TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":  # which split regex llama.cpp applies before the merges; unknown: its default
        writer.add_tokenizer_pre(pre_tokenizer or "default")
    if kind == "llama":
        writer.add_token_scores([-float(i) for i in range(vocab_size)])  # SentencePiece BPE: earlier id, higher priority
        writer.add_add_space_prefix(_prefixes_every_text(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, codec.stop_id),
           (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id))
    for setter, token_id in ids:
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(adds_bos(codec.fmt))
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def write_gguf(merged_dir: Path, out_path: Path, quant: GgufType, name: str, pre_tokenizer: str | None = None) -> Path:
    """The merged model as one GGUF file of type `quant`, written beside as `.partial` and renamed
    when whole. `pre_tokenizer` names llama.cpp's split regex for a byte-level vocabulary (SmolLM2:
    "smollm", as its upstream GGUF says)."""
    import gguf
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(merged_dir))
    arch = gguf_architecture(config)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    codec = chat_codec(tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    partial = out_path.with_name(out_path.name + ".partial")
    # one tensor in memory at a time: read from the shards one by one, spooled to a temporary file
    writer = gguf.GGUFWriter(str(partial), arch, use_temp_file=True)
    try:
        _add_model_metadata(writer, config, quant, name)
        _add_tokenizer(writer, merged_dir, tokenizer, codec, config.vocab_size, pre_tokenizer)
        for shard in sorted(merged_dir.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as weights:
                for hf_name in weights.keys():
                    if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                        continue  # tied: the reader takes the output layer from token_embd
                    gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                    if gguf_name is None:
                        raise ExportError(f"no GGUF name for tensor {hf_name}")
                    data, raw_type = _tensor(gguf_name, weights.get_tensor(hf_name), config, quant)
                    writer.add_tensor(gguf_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    partial.replace(out_path)
    return out_path


def read_back_gguf(path: Path, device: str = "cpu", precision: str = "fp32"):
    """(model, tokenizer) from a GGUF by transformers' own GGUF loader, the independent reader; the
    weights de-quantized to `precision` on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.adapters.model.base_models import torch_dtype

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.pad_token is None:  # batched generation needs one; as load_tokenizer does
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype(precision))
    return model.to(device).eval(), tokenizer


def sequence_logits(model, sequences: Sequence[Sequence[int]]):
    """fp32 logits of each token sequence, one at a time (no padding to blur the comparison), on the CPU."""
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([list(ids)], device=model.device)).logits[0].float().cpu() for ids in sequences]


def logit_gap(reference, other) -> tuple[float, float]:
    """(largest |logit difference| over every position and word, share of positions whose top word
    differs), for two lists of [positions, vocab] logits."""
    worst = max(float((a - b).abs().max()) for a, b in zip(reference, other, strict=True))
    return worst, decided_top1_changed(reference, other, tie=0.0)  # tie 0: every position counts


def decided_top1_changed(reference, other, tie: float) -> float:
    """The share of positions whose most likely next word changed, counting only positions where
    the reference's own top two words are at least `tie` apart in logits: at a near-tie (SmolLM2's
    system prompt has one 0.0002 wide) either word is the model's, and any rounding picks one."""
    import torch

    decided = changed = 0
    for a, b in zip(reference, other, strict=True):
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        top2 = a.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) >= tie
        decided += int(clear.sum())
        changed += int(((a.argmax(-1) != b.argmax(-1)) & clear).sum())
    return changed / decided if decided else 0.0
