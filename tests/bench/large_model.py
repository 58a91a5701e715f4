"""The `large_model` section of `make bench`, for a GPU machine: our training step (the same
`build_trainer`, LoRA r=16 on all linear layers, loss on answers, length-grouped batches) on a
random-init model with Mistral-7B-v0.3's shapes, built directly on the device, since no weights can be
downloaded here. Reports tokens/s and model-FLOPs utilisation.

MFU counts 4·N FLOPs per trained token: forward 2·N, backward 2·N for the activation gradients, and
no weight gradients for the frozen base (LoRA's own are negligible). N excludes the input embedding,
a lookup rather than a matmul. Attention's own FLOPs (small at these sequence lengths) are left out,
so MFU is slightly understated."""
from __future__ import annotations

import time
from pathlib import Path

# Mistral-7B-Instruct-v0.3's config.json, less what random init does not need.
MISTRAL_7B_SHAPES = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
                     "max_position_embeddings": 32768, "rope_theta": 1_000_000.0}

# Dense bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s; first match on the device
# name wins, so the PCIe H100 comes before the generic one. `--peak-tflops` overrides.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}


def peak_tflops_for(device_name: str) -> float | None:
    return next((tflops for name, tflops in PEAK_BF16_TFLOPS.items() if name in device_name), None)


def model_flops_utilisation(matmul_params: int, tokens_per_s: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return 4 * matmul_params * tokens_per_s / (peak_tflops * 1e12)


class StepClock:
    """Wall-clock time at the end of every optimizer step, the device synchronised first, so the
    warm-up steps (kernel selection, allocator growth) can be left out of the rate."""

    def __init__(self, synchronise):
        from transformers import TrainerCallback

        clock = self
        self.ends: list[float] = []

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                synchronise()
                clock.ends.append(time.perf_counter())

        self.callback = Callback()


def build_random_model(shapes: dict, tokenizer, device: str, precision: str):
    """A Mistral model with `shapes`, random weights, created on `device` in its training dtype."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tasks.adapters.model.base_models import torch_dtype

    config = MistralConfig(**shapes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, sliding_window=None)
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it trains: 14.5 GB of bf16 never touches host memory
        model = MistralForCausalLM._from_config(config, dtype=torch_dtype(precision))
    return model.to(device)


def bench_large_model(base: Path, rows, device: str, workdir: Path, shapes: dict = MISTRAL_7B_SHAPES,
                      steps: int = 10, warmup_steps: int = 3, batch_size: int = 16,
                      peak_tflops: float | None = None) -> dict:
    """Train `warmup_steps + steps` optimizer steps; rate and MFU over the last `steps`.
    `base` supplies the tokenizer (the bench profile's); its weights are not used."""
    import torch

    from tasks.adapters.model.base_models import load_tokenizer, runtime
    from tasks.adapters.model.training import build_trainer
    from tasks.adapters.ops.config_files import load_profile

    cfg = load_profile("bench").training.model_copy(update={
        "device": device, "max_steps": warmup_steps + steps, "batch_size": batch_size,
        "logging_steps": warmup_steps + steps})
    resolved, precision = runtime(cfg.device, cfg.precision)
    cuda = resolved == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_random_model(shapes, load_tokenizer(base), resolved, precision)
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    trainer, _, info = build_trainer(base, rows, [], cfg, workdir / "large-model", model=model)
    clock = StepClock(torch.cuda.synchronize if cuda else (lambda: None))
    trainer.add_callback(clock.callback)
    trainer.train()
    timed = clock.ends[-1] - clock.ends[warmup_steps - 1]
    timed_tokens = sum(info["counter"].per_batch[warmup_steps:warmup_steps + steps])  # batch i is step i
    device_name = torch.cuda.get_device_name() if cuda else resolved
    peak = peak_tflops or peak_tflops_for(device_name)
    tokens_per_s = timed_tokens / timed
    return {"device": device_name, "precision": precision, "shapes": shapes, "parameters": matmul_params,
            "steps_timed": steps, "warmup_steps": warmup_steps, "batch_size": batch_size,
            "seconds_per_step": timed / steps, "tokens_per_s": tokens_per_s, "peak_tflops": peak,
            "mfu": model_flops_utilisation(matmul_params, tokens_per_s, peak),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def large_model_markdown(r: dict) -> list[str]:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (unknown peak: pass --peak-tflops)"
    memory = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a"
    return ["## Training step, Mistral-7B shapes (random init)", "",
            f"{r['parameters'] / 1e9:.2f}B matmul parameters on {r['device']} ({r['precision']}), batch {r['batch_size']}, "
            f"{r['steps_timed']} steps after {r['warmup_steps']} warm-up", "",
            "| tokens/s | s/step | MFU (4·N FLOPs/token) | peak memory |", "|---|---|---|---|",
            f"| {r['tokens_per_s']:.0f} | {r['seconds_per_step']:.2f} | {mfu} | {memory} |", ""]
