"""The plainest way to train our step-level reward model, for `make bench` to compare against: a
`transformers` token classifier with LoRA (the same settings: rank, blocks, a trained `score`
head) under the plain `Trainer`, its own loss over logits at every position, default attention
and dropout, random batches padded by `DataCollatorForTokenClassification`. Same model, rows
(token ids and step-end labels), batch size, learning rate and steps as ours."""
from __future__ import annotations

import time
from pathlib import Path

from tasks.adapters.model.base_models import torch_dtype


class TokenCounter:
    """Wraps a collator and counts, exactly, the non-pad and padded tokens it hands the model."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = self.padded_tokens = self.labelled = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += int(batch["input_ids"].numel())
        self.labelled += int((batch["labels"] != -100).sum())
        return batch


def run_baseline_prm(base_dir: str, rows: list[dict], steps: int, batch_size: int, learning_rate: float,
                     out_dir: Path, lora: dict, top_layers: int, seed: int = 42, device: str = "cpu",
                     precision: str = "fp32") -> dict:
    """`rows`: {"input_ids", "labels"} each (labels -100 except at step ends)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForTokenClassification.from_pretrained(base_dir, num_labels=2, dtype=torch_dtype(precision),
                                                            use_safetensors=True).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    layers = model.config.num_hidden_layers
    model = get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], task_type="TOKEN_CLS",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if lora["target_modules"] == "all-linear" else lora["target_modules"],
        layers_to_transform=list(range(layers - top_layers, layers)) if top_layers else None, modules_to_save=["score"]))
    args = TrainingArguments(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=learning_rate, logging_steps=max(1, steps // 3), save_strategy="no",
                             report_to="none", use_cpu=device == "cpu", bf16=precision == "bf16",
                             fp16=precision == "fp16", seed=seed, dataloader_num_workers=0)
    counter = TokenCounter(DataCollatorForTokenClassification(tokenizer))
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=counter)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": counter.tokens, "answer_tokens": counter.labelled,
            "padded_tokens": counter.padded_tokens, "examples": steps * batch_size}
