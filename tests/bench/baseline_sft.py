"""The plainest way to do our job, for `make bench` to compare against: TRL's SFTTrainer on text rows
in the model's chat format, default collation, random batches (no length grouping), loss on every
token. Same model, data, LoRA settings, batch size and number of optimizer steps as ours."""
from __future__ import annotations

import time
from pathlib import Path

from tasks.adapters.model.base_models import torch_dtype
from tasks.domain.formatting import INST_CLOSE

# What precedes an answer, per chat format: the answer tokens are those after its last occurrence.
ANSWER_MARKERS = {"mistral": INST_CLOSE, "chatml": "<|im_start|>assistant\n"}


def run_baseline(base_dir: str, texts: list[str], steps: int, batch_size: int, learning_rate: float,
                 max_length: int, out_dir: Path, lora: dict, seed: int = 42, device: str = "cpu",
                 precision: str = "fp32", chat_format: str = "mistral") -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype(precision),  # as ours loads it
                                                 use_safetensors=True).to(device)
    args = SFTConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=learning_rate, logging_steps=max(1, steps // 3), save_strategy="no",
                     report_to="none", use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
                     max_length=max_length, packing=False, seed=seed, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    marker = tokenizer.encode(ANSWER_MARKERS[chat_format], add_special_tokens=False)
    counter = AnswerTokenCounter(trainer.data_collator, marker)
    trainer.data_collator = counter
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": counter.tokens, "answer_tokens": counter.answer_tokens,
            "padded_tokens": counter.padded_tokens, "examples": steps * batch_size}


class AnswerTokenCounter:
    """Counts, exactly, what the baseline trains on: non-pad tokens, padded tokens, and answer tokens
    (those after the last occurrence of the `marker` ids: [/INST], or ChatML's assistant header),
    the ones our step puts loss on."""

    def __init__(self, inner, marker: int | list[int]):
        self.inner, self.marker = inner, [marker] if isinstance(marker, int) else list(marker)
        self.tokens = self.answer_tokens = self.padded_tokens = 0

    def _answer_start(self, ids: list[int]) -> int | None:
        width = len(self.marker)
        starts = [i for i in range(len(ids) - width + 1) if ids[i:i + width] == self.marker]
        return starts[-1] + width if starts else None

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = ids.new_ones(ids.shape)
        self.tokens += int(mask.sum())
        self.padded_tokens += int(ids.numel())
        for row_ids, row_mask in zip(ids, mask, strict=True):
            start = self._answer_start(row_ids.tolist())
            if start is not None:
                self.answer_tokens += int(row_mask[start:].sum())
        return batch
