"""The process reward model: the profile's base with LoRA and a two-class token-classification
head, trained with the plain `transformers.Trainer` (TRL deleted its `PRMTrainer` in 2026).

An answer is read as the prompt (rendered by the profile's chat format, up to the assistant
header) followed by its steps, each ending with a newline. The label of a step sits on that
step's last token; every other position is -100, so the loss is read only at step ends. A step's
score is the probability of "good" there."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.model.base_models import adapter_tokenizer, load_tokenizer, runtime, torch_dtype, with_adapter
from tasks.adapters.model.chat_codec import ChatCodec, chat_codec
from tasks.adapters.model.training import CHECKPOINTS, MetricsSink, last_complete_checkpoint, metrics_callback
from tasks.domain.config import LoraSettings, RewardConfig, TrainingConfig
from tasks.domain.devices import weights_precision
from tasks.domain.errors import RslmError
from tasks.domain.records import Message, question_turns
from tasks.domain.steps import StepExample, answer_score, answer_steps

STEP_END = "\n"
IGNORE = -100
NUM_LABELS = 2  # 0 bad, 1 good
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SUMMARY_FILE = "reward_summary.json"


@dataclass(frozen=True)
class StepTokens:
    input_ids: list[int]
    labels: list[int]          # the step's label at its last token, -100 elsewhere
    step_ends: list[int]       # position of each step's last token


def step_tokens(codec: ChatCodec, prompt: Sequence[Message], steps: Sequence[str],
                labels: Sequence[int] | None = None, system_turn: bool = True) -> StepTokens:
    """Prompt ids (without its system turn unless `system_turn`), then each step's ids (with its
    newline), the label at the step's last token."""
    ids = list(codec.prompt_ids([m for m in prompt if system_turn or m.role != "system"]))
    targets = [IGNORE] * len(ids)
    ends = []
    for i, step in enumerate(steps):
        piece = codec.encode_text(step.strip() + STEP_END)
        ids += piece
        targets += [IGNORE] * (len(piece) - 1) + [labels[i] if labels is not None else IGNORE]
        ends.append(len(ids) - 1)
    return StepTokens(ids, targets, ends)


def _lora(lora: LoraSettings, top_layers: int, num_layers: int):
    from peft import LoraConfig

    targets = PROJECTIONS if lora.target_modules == "all-linear" else lora.target_modules
    layers = list(range(max(0, num_layers - top_layers), num_layers)) if top_layers else None
    # TOKEN_CLS: PEFT trains and saves the new head ("score") in full beside the adapter
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      layers_to_transform=layers, task_type="TOKEN_CLS", modules_to_save=["score"])


def _load_classifier(base_source: str | Path, precision: str, device: str, attention: str = "sdpa"):
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized": expected, it is what we train
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            str(base_source), num_labels=NUM_LABELS, dtype=torch_dtype(weights_precision(device, precision)),
            use_safetensors=True, trust_remote_code=False, attn_implementation=attention)
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device)


def _collate(pad_id: int):
    def collate(features: list[dict]):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        def padded(key, value):
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])
        return {"input_ids": padded("input_ids", pad_id), "labels": padded("labels", IGNORE),
                "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                for f in features])}
    return collate


def label_weights(labels: Sequence[Sequence[int]]) -> list[float]:
    """Per-class loss weights (bad, good), inversely proportional to each label's count, mean 1.

    >>> label_weights([[IGNORE, 1, 1, 0], [1, 1, 1]])
    [3.0, 0.6]
    """
    counts = [sum(label == c for row in labels for label in row) for c in range(NUM_LABELS)]
    total = sum(counts)
    return [total / (NUM_LABELS * n) if n else 0.0 for n in counts]


def _weighted_loss(weights: Sequence[float]):
    """Cross-entropy at step ends with per-class weights (Trainer's `compute_loss_func`)."""
    def loss(outputs, labels, num_items_in_batch=None):
        import torch

        logits = outputs.logits.float()
        return torch.nn.functional.cross_entropy(logits.view(-1, NUM_LABELS), labels.view(-1).to(logits.device),
                                                 weight=torch.tensor(weights, device=logits.device), ignore_index=IGNORE)
    return loss


def _optimizer(model, cfg: RewardConfig):
    """AdamW with the head in its own group at `head_learning_rate` (Trainer's
    `optimizer_cls_and_kwargs`; None keeps Trainer's single-rate AdamW)."""
    if cfg.head_learning_rate is None:
        return None
    import torch

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    head = [p for name, p in trainable if ".score." in name]
    rest = [p for name, p in trainable if ".score." not in name]
    if not head:
        raise RslmError("reward model: no trainable `score` head found for head_learning_rate")
    return torch.optim.AdamW, {"params": [{"params": rest}, {"params": head, "lr": cfg.head_learning_rate}],
                               "lr": cfg.learning_rate, "weight_decay": 0.0}


def _trainer_class(head_on_step_ends_only: bool, class_weights: Sequence[float] | None):
    """Trainer whose loss is `step_end_loss` (the head only at step ends), or the plain Trainer
    (the classifier's own loss over logits at every position, class-weighted when asked)."""
    from transformers import Trainer

    from tasks.adapters.model.epoch_order import epoch_seeded
    from tasks.adapters.model.fast_step import as_forward, as_trainer_scales, step_end_loss

    if not head_on_step_ends_only:
        return epoch_seeded(Trainer)

    class StepEndTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:  # a caller that wants the logits gets the classifier's own path
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with self.accelerator.autocast():  # accelerate puts autocast around model.forward, bypassed here
                loss = as_forward(model, lambda m: step_end_loss(m, inputs, class_weights, num_items_in_batch))
            if loss is None:  # FSDP or DeepSpeed holds the model: the classifier's own loss
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return as_trainer_scales(self, loss, num_items_in_batch if class_weights is None else None)

    return epoch_seeded(StepEndTrainer)


def build_reward_trainer(base_source: str | Path, examples: Sequence[StepExample], cfg: RewardConfig,
                         training: TrainingConfig, out_dir: Path, sink: MetricsSink | None = None,
                         chat_format: str | None = None):
    """A Trainer over the LoRA-wrapped classifier, ready to `train()`, with its tokenizer and facts
    (device, precision, examples kept and dropped, label weights). Checkpoints go to
    `out_dir/checkpoints` every `cfg.save_steps` steps."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainingArguments

    from tasks.adapters.model.fast_step import use_fast_dropout
    from tasks.adapters.model.training import frozen_linears_to_bf16

    device, precision = runtime(training.device, training.precision, training.cpu_bf16_autocast)
    torch.manual_seed(training.seed)
    tokenizer = load_tokenizer(base_source)
    codec = chat_codec(tokenizer, chat_format)
    encoded = [step_tokens(codec, e.prompt, e.steps, e.labels, cfg.system_turn) for e in examples]
    kept = [t for t in encoded if len(t.input_ids) <= cfg.max_length]
    if not kept:
        raise RslmError(f"no step-labelled answer fits reward.max_length={cfg.max_length} tokens")
    base = _load_classifier(base_source, precision, device, cfg.attention)
    if device == "cpu" and precision == "bf16" and cfg.cpu_bf16_frozen_weights:
        frozen_linears_to_bf16(base, keep=("score",))
    model = get_peft_model(base, _lora(cfg.lora, cfg.top_layers, base.config.num_hidden_layers))
    if cfg.cpu_fast_dropout:
        use_fast_dropout(model)
    args = TrainingArguments(
        output_dir=str(out_dir / CHECKPOINTS), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
        logging_steps=5, logging_first_step=True, report_to="none", seed=training.seed, data_seed=training.seed,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length")
    dataset = Dataset.from_list([{"input_ids": t.input_ids, "labels": t.labels, "length": len(t.input_ids)}
                                 for t in kept])
    weights = label_weights([t.labels for t in kept]) if cfg.balance_labels else None
    plain_loss = _weighted_loss(weights) if weights and not cfg.head_on_step_ends_only else None
    trainer = _trainer_class(cfg.head_on_step_ends_only, weights)(
        model=model, args=args, train_dataset=dataset, data_collator=_collate(tokenizer.pad_token_id),
        callbacks=[metrics_callback(sink)], compute_loss_func=plain_loss, optimizer_cls_and_kwargs=_optimizer(model, cfg))
    return trainer, tokenizer, {"device": device, "precision": precision, "chat_format": codec.fmt.name,
                                "examples": len(kept), "dropped": len(encoded) - len(kept), "label_weights": weights}


def train_reward_model(base_source: str | Path, examples: Sequence[StepExample], cfg: RewardConfig,
                       training: TrainingConfig, out_dir: Path, sink: MetricsSink | None = None,
                       chat_format: str | None = None, say: Callable[[str], None] | None = None) -> dict:
    """LoRA + token head on the step-labelled `examples`; saves the adapter with the head
    (safetensors), the tokenizer and a summary to `out_dir`. Examples over `cfg.max_length` tokens
    are dropped, never cut (a cut answer would lose the labels of its last steps). When `out_dir`
    holds a checkpoint of an interrupted attempt (the caller keys `out_dir` by data and settings),
    training resumes from it: model, optimizer, scheduler, RNG and position in the data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = last_complete_checkpoint(out_dir / CHECKPOINTS)
    trainer, tokenizer, info = build_reward_trainer(base_source, examples, cfg, training, out_dir, sink, chat_format)
    resumed_from = int(resume.name.split("-")[-1]) if resume else 0
    if resume and say:
        say(f"reward model: resuming from checkpoint {resumed_from} of {cfg.max_steps} steps ({resume})")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"base_model": str(base_source), "device": info["device"], "precision": info["precision"],
               "chat_format": info["chat_format"], "system_turn": cfg.system_turn,
               "steps": trainer.state.global_step, "examples": info["examples"], "label_weights": info["label_weights"],
               "dropped_too_long": info["dropped"], "resumed_from_step": resumed_from,
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "duration_s": time.perf_counter() - started,
               "history": [h for h in trainer.state.log_history if "loss" in h]}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


@dataclass
class StepScores:
    steps: list[str]
    scores: list[float]

    @property
    def answer(self) -> float:
        return answer_score(self.scores)

    def to_dict(self) -> dict:
        return {"steps": [{"step": s, "score": round(v, 4)} for s, v in zip(self.steps, self.scores, strict=True)],
                "answer_score": round(self.answer, 4) if self.scores else None}


@dataclass
class RewardScorer:
    """A trained process reward model, ready to score answers to questions."""

    model: object
    codec: ChatCodec
    device: str
    system_prompt: str
    system_turn: bool = True  # as trained (reward.system_turn); models from before the option read it

    def conversation(self, question: str) -> list[Message]:
        return question_turns(self.system_prompt, question)

    def score(self, questions: Sequence[str], answers: Sequence[str], batch_size: int = 16) -> list[StepScores]:
        """Each answer's steps and their scores, under the model's system prompt. An answer with
        no text has no steps and scores NaN."""
        steps = [answer_steps(a) for a in answers]
        scores = self.score_steps([self.conversation(q) for q in questions], steps, batch_size)
        return [StepScores(s, v) for s, v in zip(steps, scores, strict=True)]

    def score_steps(self, prompts: Sequence[Sequence[Message]], steps: Sequence[Sequence[str]],
                    batch_size: int = 16) -> list[list[float]]:
        """P(good) at each step's end, for step lists under their prompt turns."""
        import torch
        from tqdm.auto import tqdm

        encoded = [step_tokens(self.codec, p, s, system_turn=self.system_turn) for p, s in zip(prompts, steps, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        results: dict[int, list[float]] = {}
        pad = self.codec.tokenizer.pad_token_id
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="scoring steps", unit="batch", leave=False, disable=len(starts) < 2):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i].input_ids) for i in batch)
            ids = torch.tensor([encoded[i].input_ids + [pad] * (width - len(encoded[i].input_ids)) for i in batch],
                               device=self.device)
            mask = torch.tensor([[1] * len(encoded[i].input_ids) + [0] * (width - len(encoded[i].input_ids))
                                 for i in batch], device=self.device)
            with torch.no_grad():
                good = torch.softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)[..., 1]
            for row, i in enumerate(batch):
                results[i] = [float(good[row, end]) for end in encoded[i].step_ends]
        return [results[i] for i in range(len(encoded))]


def load_reward_scorer(base_source: str | Path, adapter_dir: str | Path, system_prompt: str,
                       device: str = "auto") -> RewardScorer:
    """Base + reward adapter (with its head), in eval mode."""
    chosen_device, precision = runtime(device, "auto")
    tokenizer = adapter_tokenizer(adapter_dir, base_source)
    model = with_adapter(_load_classifier(base_source, precision, chosen_device), adapter_dir)
    summary = Path(adapter_dir) / SUMMARY_FILE
    trained = json.loads(summary.read_text()) if summary.is_file() else {}
    return RewardScorer(model=model, codec=chat_codec(tokenizer), device=chosen_device, system_prompt=system_prompt,
                        system_turn=trained.get("system_turn", True))
