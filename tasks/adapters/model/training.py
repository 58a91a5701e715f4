"""LoRA fine-tuning with PEFT through TRL's SFTTrainer.

Examples are tokenized once here (prompt + completion, completion mask from the Mistral format),
so TRL skips its own templating and trains on exactly the strings `rslm format` prints."""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.adapters.model.base_models import check_tokenizer, load_base_model, load_tokenizer, runtime
from tasks.adapters.model.chat_codec import ChatCodec, chat_codec
from tasks.adapters.model.distributed import MetricsSink
from tasks.domain.config import TrainingConfig
from tasks.domain.errors import RslmError
from tasks.domain.formatting import TokenizedExample
from tasks.domain.records import Row

SUMMARY_FILE = "training_summary.json"
CHECKPOINTS = "checkpoints"  # under the training directory: local only (optimizer and RNG states are pickles)


@dataclass
class TrainingSummary:
    base_model: str
    device: str
    precision: str
    chat_format: str
    steps: int
    epochs: float
    examples: int
    dropped_too_long: int
    trainable_params: int
    total_params: int
    train_loss_first: float
    train_loss_last: float
    train_loss_mean: float
    eval_loss: float | None
    tokens_seen: int
    loss_tokens: int
    tokens_per_second: float
    loss_tokens_per_second: float
    duration_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0  # 0: trained from the start; N: picked up from checkpoint N of an interrupted attempt
    world_size: int = 1  # training processes (DDP ranks); tokens_seen counts all of them

    def metrics(self) -> dict[str, float]:
        """The numeric summary, for MLflow."""
        keys = ["train_loss_first", "train_loss_last", "train_loss_mean", "eval_loss", "tokens_seen",
                "loss_tokens", "tokens_per_second", "loss_tokens_per_second", "duration_s",
                "trainable_params", "dropped_too_long", "examples"]
        return {k: float(getattr(self, k)) for k in keys if getattr(self, k) is not None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def tokenize_rows(rows: Sequence[Row], codec: ChatCodec, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize every row; returns the examples and how many were too long to keep whole."""
    examples, dropped = [], 0
    for row in rows:
        example = codec.tokenize(codec.fmt.row(row), max_length)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    return examples, dropped


class _CountingCollator:
    """Wraps TRL's collator to count the tokens actually trained (exact, not estimated)."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = 0
        self.loss_tokens = 0
        self.padded_tokens = 0  # what the model computes on, padding included
        self.per_batch: list[int] = []  # non-pad tokens of batch i, in order (a benchmark leaves out warm-up)

    def __call__(self, features):
        batch = self.inner(features)
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        self.per_batch.append(tokens)
        self.tokens += tokens
        self.loss_tokens += int((batch["labels"] != -100).sum())
        self.padded_tokens += int(batch["input_ids"].numel())
        return batch


def metrics_callback(sink: MetricsSink | None):
    from transformers import TrainerCallback

    class ForwardMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            # every rank logs the same (already reduced) figures; rank 0 alone passes them on
            if sink and logs and state.is_world_process_zero:
                numeric = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}
                sink(numeric, state.global_step)

    return ForwardMetrics()


def _datasets(examples: list[TokenizedExample]):
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": e.input_ids, "completion_mask": e.completion_mask,
                               "length": len(e.input_ids)} for e in examples])


def frozen_linears_to_bf16(model, keep: tuple[str, ...] = ()) -> None:
    """Cast the base's linear weights to bf16 before LoRA wraps them (PEFT keeps its adapters in
    fp32); the output layer stays as it is when it shares its weight with the embeddings, and so
    does every module named in `keep` (a reward model's new head, which is trained). Only under
    CPU bf16 autocast, whose matmuls read bf16 weights anyway."""
    import torch

    embeddings = model.get_input_embeddings().weight
    for name, module in model.named_modules():
        if name.split(".")[-1] in keep:
            continue
        if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)


def _answer_only_trainer_class(share_prefix: bool):
    """SFTTrainer whose loss runs the output layer only at answer positions (`fast_step`), logging
    the same `mean_token_accuracy` as TRL's (its `entropy` would cost a pass over the vocabulary)."""
    from trl import SFTTrainer

    from tasks.adapters.model.fast_step import answer_only_loss, as_forward, as_trainer_scales

    class AnswerOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:  # a caller that wants the logits gets TRL's own path, which builds them
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate puts the mixed-precision autocast around model.forward, which this bypasses
            with self.accelerator.autocast():
                result = as_forward(model, lambda m: answer_only_loss(m, inputs, num_items_in_batch, share_prefix))
            if result is None:  # FSDP or DeepSpeed holds the model: TRL's own loss
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, tokens, top1 = result
            loss = as_trainer_scales(self, loss, num_items_in_batch)
            if tokens:
                self._metrics["train" if model.training else "eval"]["mean_token_accuracy"].append(top1 / tokens)
            return loss

    return AnswerOnlySFTTrainer


def build_trainer(base_source: str | Path, train_rows: Sequence[Row], eval_rows: Sequence[Row],
                  cfg: TrainingConfig, out_dir: Path, sink: MetricsSink | None = None, model=None,
                  chat_format: str | None = None):
    """An SFTTrainer over a LoRA-wrapped base model, ready to `train()`; returned with its stats.
    `model` replaces loading the weights from `base_source` (whose tokenizer is still used): the
    CUDA benchmark builds a random-init model with Mistral-7B's shapes directly on the GPU.
    `chat_format` (the profile's) must match the format the tokenizer's own template uses."""
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from tasks.adapters.model.epoch_order import epoch_seeded
    from tasks.adapters.model.fast_step import trl_head_scores_answers_only, use_fast_dropout

    device, precision = runtime(cfg.device, cfg.precision, cfg.cpu_bf16_autocast)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_source)
    check_tokenizer(tokenizer, [row.turns("assistant")[-1] for row in train_rows[:20]])
    codec = chat_codec(tokenizer, chat_format)
    train_examples, dropped = tokenize_rows(train_rows, codec, cfg.max_length)
    eval_examples, _ = tokenize_rows(eval_rows, codec, cfg.max_length)
    if not train_examples:
        raise RslmError(f"no training example fits max_length={cfg.max_length} tokens")
    model = load_base_model(base_source, precision, device, cfg.attention) if model is None else model
    if device == "cpu" and precision == "bf16" and cfg.cpu_bf16_frozen_weights:
        frozen_linears_to_bf16(model)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if cfg.cpu_fast_dropout:
        use_fast_dropout(model)
    args = SFTConfig(
        output_dir=str(out_dir / CHECKPOINTS),
        max_steps=cfg.max_steps, num_train_epochs=cfg.num_epochs,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # transformers 5 reads a warmup_steps float below 1 as a share of the steps (warmup_ratio is deprecated)
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        seed=cfg.seed, data_seed=cfg.seed,
        # Precision chosen per device, never TRL's bf16 default (which fails on CPU).
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        gradient_checkpointing=cfg.gradient_checkpointing,
        max_length=cfg.max_length, completion_only_loss=True, packing=False,
        eval_strategy="no", report_to="none", dataset_num_proc=None, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length",
        **ddp_arguments(device),
    )
    answer_only_head = cfg.head_on_answers_only and not trl_head_scores_answers_only(device)
    # either way, each epoch's row order comes from the data seed (a resumed run reads the same rows)
    trainer_class = epoch_seeded(_answer_only_trainer_class(cfg.shared_prefix) if answer_only_head else SFTTrainer)
    trainer = trainer_class(model=model, args=args, train_dataset=_datasets(train_examples),
                            eval_dataset=_datasets(eval_examples) if eval_examples else None,
                            processing_class=tokenizer, callbacks=[metrics_callback(sink)])
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    return trainer, tokenizer, {"device": device, "precision": precision, "dropped": dropped, "chat_format": codec.fmt.name,
                                "examples": len(train_examples), "counter": counter}


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint the trainer finished writing (it writes trainer_state.json last); a
    checkpoint cut short by a kill is deleted, so the trainer never resumes from half of one."""
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for partial in [p for p in found if not (p / "trainer_state.json").is_file()]:
        shutil.rmtree(partial, ignore_errors=True)
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def ddp_arguments(device: str) -> dict:
    """Trainer arguments for a rank of a launched DDP training (none in a single process): gloo on a
    CPU (nccl, the default, on CUDA), and no search for unused parameters, since every LoRA weight
    takes part in every step and the search costs a pass over the graph."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return {}
    return {"ddp_find_unused_parameters": False, **({"ddp_backend": "gloo"} if device == "cpu" else {})}


def train_lora(base_source: str | Path, train_rows: Sequence[Row], eval_rows: Sequence[Row],
               cfg: TrainingConfig, out_dir: Path, sink: MetricsSink | None = None,
               chat_format: str | None = None) -> TrainingSummary:
    """Train, evaluate once on the eval split, and save the adapter, tokenizer and summary:
    `adapter_config.json`, `adapter_model.safetensors`, `tokenizer/`, `training_summary.json`.
    Checkpoints go to `out_dir/checkpoints/`; when `out_dir` holds one from an interrupted attempt
    (same data and settings: the caller keys `out_dir` by them), training resumes from it: model,
    optimizer, scheduler, RNG and position in the data. With `cfg.distributed` over one process,
    the training runs in processes started by torchrun or accelerate (`distributed.py`); this one
    waits, passes rank 0's metrics to `sink` and reads back the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = last_complete_checkpoint(out_dir / CHECKPOINTS)
    if cfg.distributed.world_size > 1:
        return train_across_processes(base_source, train_rows, eval_rows, cfg, out_dir, resume, sink, chat_format)
    return train_in_this_process(base_source, train_rows, eval_rows, cfg, out_dir, resume, sink, chat_format)


def train_in_this_process(base_source: str | Path, train_rows: Sequence[Row], eval_rows: Sequence[Row],
                          cfg: TrainingConfig, out_dir: Path, resume: Path | None, sink: MetricsSink | None = None,
                          chat_format: str | None = None) -> TrainingSummary:
    """`train_lora`'s work in this process: the whole training, or one rank of a launched one
    (rank 0 alone writes the adapter and the summary; token counts are summed over the ranks)."""
    trainer, tokenizer, info = build_trainer(base_source, train_rows, eval_rows, cfg, out_dir, sink, chat_format=chat_format)
    counter: _CountingCollator = info["counter"]
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    duration = time.perf_counter() - started
    eval_loss = None
    if trainer.eval_dataset is not None:
        trainer.data_collator = counter.inner  # evaluation tokens are not training tokens
        eval_loss = float(trainer.evaluate()["eval_loss"])
        if sink and trainer.is_world_process_zero():
            sink({"eval_loss": eval_loss}, trainer.state.global_step)
    tokens, loss_tokens = _summed_over_ranks(trainer, counter.tokens, counter.loss_tokens)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    summary = TrainingSummary(
        base_model=str(base_source), device=info["device"], precision=info["precision"], chat_format=info["chat_format"],
        steps=trainer.state.global_step, epochs=float(trainer.state.epoch or 0.0),
        examples=info["examples"], dropped_too_long=info["dropped"],
        trainable_params=trainable, total_params=sum(p.numel() for p in trainer.model.parameters()),
        train_loss_first=losses[0] if losses else float("nan"),
        train_loss_last=losses[-1] if losses else float("nan"),
        train_loss_mean=float(result.training_loss), eval_loss=eval_loss,
        tokens_seen=tokens, loss_tokens=loss_tokens,
        tokens_per_second=tokens / duration if duration else 0.0,
        loss_tokens_per_second=loss_tokens / duration if duration else 0.0,
        duration_s=duration, history=[h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h],
        resumed_from_step=int(resume.name.split("-")[-1]) if resume else 0,
        world_size=trainer.args.world_size,
    )
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # sharded weights are gathered to rank 0 by a collective every rank joins (not run here: GPUs only)
        trainer.save_model(str(out_dir))
        if trainer.is_world_process_zero():
            (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: never published
    elif trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(out_dir), safe_serialization=True)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir / "tokenizer"))
        (out_dir / SUMMARY_FILE).write_text(summary.to_json())
    trainer.accelerator.wait_for_everyone()  # no rank leaves before the adapter is written
    return summary


def _summed_over_ranks(trainer, *counts: int) -> list[int]:
    """Per-rank counts summed over every rank of a launched training (as they are, in one process)."""
    if trainer.args.world_size <= 1:
        return list(counts)
    import torch

    summed = trainer.accelerator.reduce(torch.tensor(counts, device=trainer.args.device), reduction="sum")
    return [int(v) for v in summed.tolist()]


def train_across_processes(base_source: str | Path, train_rows: Sequence[Row], eval_rows: Sequence[Row],
                           cfg: TrainingConfig, out_dir: Path, resume: Path | None, sink: MetricsSink | None = None,
                           chat_format: str | None = None) -> TrainingSummary:
    """`train_lora` in `cfg.distributed.world_size` processes: launched, waited for, read back.
    A failed rank raises one line naming it; the launcher has stopped the others by then."""
    from tasks.adapters.model.distributed import launch_job

    device, _ = runtime(cfg.device, cfg.precision, cfg.cpu_bf16_autocast)
    spec = {"base_source": str(base_source), "training": cfg.model_dump(mode="json"), "out_dir": str(out_dir),
            "resume": str(resume) if resume else None, "chat_format": chat_format}
    summary = launch_job("sft", spec, {"train": train_rows, "eval": eval_rows}, cfg.distributed, device, sink)
    return TrainingSummary(**summary)
