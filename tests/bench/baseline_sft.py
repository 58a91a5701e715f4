"""The plainest way to do our job, for `make bench` to compare against: TRL's SFTTrainer on
Mistral-formatted text rows, default collation, random batches (no length grouping), loss on every
token. Same model, data, LoRA settings, batch size and number of optimizer steps as ours."""
from __future__ import annotations

import time
from pathlib import Path


def run_baseline(base_dir: str, texts: list[str], steps: int, batch_size: int, learning_rate: float,
                 max_length: int, out_dir: Path, lora: dict, seed: int = 42) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    args = SFTConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=learning_rate, logging_steps=max(1, steps // 3), save_strategy="no",
                     report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
                     max_length=max_length, packing=False, seed=seed, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    seen = {"tokens": 0}
    inner = trainer.data_collator

    def counting(features):
        batch = inner(features)
        seen["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        seen["padded"] = seen.get("padded", 0) + int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": seen["tokens"], "padded_tokens": seen.get("padded", 0),
            "examples": steps * batch_size}
