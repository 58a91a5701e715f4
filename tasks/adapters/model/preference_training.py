"""DPO on top of an SFT adapter, with TRL's DPOTrainer. Handed a PeftModel that holds the SFT
adapter, TRL keeps a frozen copy of it as the reference: no second base model in memory. The
prompts and answers are rendered by our own chat format, exactly as SFT saw them."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tasks.adapters.model.base_models import load_base_model, load_tokenizer, runtime
from tasks.adapters.model.chat_codec import chat_codec
from tasks.adapters.model.training import MetricsSink, ddp_arguments, metrics_callback
from tasks.domain.config import RefineConfig, TrainingConfig
from tasks.domain.preferences import PreferencePair


def _rendered(pairs: Sequence[PreferencePair], fmt) -> list[dict[str, str]]:
    rows = []
    for pair in pairs:
        chosen, rejected = fmt.example(pair.conversation("chosen")), fmt.example(pair.conversation("rejected"))
        rows.append({"prompt": chosen.prompt, "chosen": chosen.completion, "rejected": rejected.completion})
    return rows


def _losses(cfg: RefineConfig) -> dict:
    """DPO's loss, plus TRL's "sft" term (mean NLL of the chosen answers' tokens) where weighted."""
    if not cfg.sft_weight:
        return {"loss_type": [cfg.loss_type]}
    return {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, cfg.sft_weight]}


def train_dpo(base_source: str | Path, sft_adapter: str | Path, pairs: Sequence[PreferencePair], cfg: RefineConfig,
              training: TrainingConfig, out_dir: Path, sink: MetricsSink | None = None,
              chat_format: str | None = None) -> dict:
    """Refine the adapter in `sft_adapter` on `pairs`; saves the refined adapter (safetensors) and
    tokenizer to `out_dir`. Returns TRL's last reward figures with the run's size and time. With
    `training.distributed` over one process (`rslm refine --nproc-per-node N`), the DPO runs in
    processes started by torchrun or accelerate, as the SFT training does: `cfg.batch_size` pairs
    per process, rank 0 writing the adapter and passing its metrics to `sink`."""
    if training.distributed.world_size > 1:
        from tasks.adapters.model.distributed import launch_job

        device, _ = runtime(training.device, training.precision, training.cpu_bf16_autocast)
        spec = {"base_source": str(base_source), "sft_adapter": str(sft_adapter), "refine": cfg.model_dump(mode="json"),
                "training": training.model_dump(mode="json"), "out_dir": str(out_dir), "chat_format": chat_format}
        return launch_job("dpo", spec, {"pairs": pairs}, training.distributed, device, sink)
    return train_dpo_in_this_process(base_source, sft_adapter, pairs, cfg, training, out_dir, sink, chat_format)


def train_dpo_in_this_process(base_source: str | Path, sft_adapter: str | Path, pairs: Sequence[PreferencePair],
                              cfg: RefineConfig, training: TrainingConfig, out_dir: Path,
                              sink: MetricsSink | None = None, chat_format: str | None = None) -> dict:
    """`train_dpo`'s work in this process: the whole refinement, or one rank of a launched one
    (the Trainer's DDP; rank 0 alone writes the adapter)."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    device, precision = runtime(training.device, training.precision, training.cpu_bf16_autocast)
    torch.manual_seed(training.seed)
    tokenizer = load_tokenizer(base_source)
    codec = chat_codec(tokenizer, chat_format)
    model = PeftModel.from_pretrained(load_base_model(base_source, precision, device), str(sft_adapter), is_trainable=True)
    args = DPOConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, beta=cfg.beta, max_length=cfg.max_length, **_losses(cfg),
        # per device, never TRL's defaults (bf16 and gradient checkpointing fail or crawl on CPU)
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu", gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", seed=training.seed, dataset_num_proc=None,
        dataloader_num_workers=0, **ddp_arguments(device),
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rendered(pairs, codec.fmt)),
                         processing_class=tokenizer, callbacks=[metrics_callback(sink)])
    started = time.perf_counter()
    trainer.train()
    if trainer.is_world_process_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
        # only the policy: TRL's frozen reference copy ("ref") would double the registered weights
        trainer.model.save_pretrained(str(out_dir), safe_serialization=True, selected_adapters=["default"])
        tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    trainer.accelerator.wait_for_everyone()  # no rank leaves before the adapter is written
    logged = [h for h in trainer.state.log_history if "loss" in h]
    last = logged[-1] if logged else {}
    return {"steps": trainer.state.global_step, "pairs": len(pairs), "duration_s": time.perf_counter() - started,
            "device": device, "precision": precision, "loss_first": logged[0]["loss"] if logged else None,
            "world_size": trainer.args.world_size,
            **{key: value for key, value in last.items() if key.startswith("rewards/") or key == "loss"}}
