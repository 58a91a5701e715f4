"""Two pieces of the training step that cost more than they should, each behind its own
TrainingConfig switch (issue 19; `make bench` measures each one alone):

- `answer_only_loss`: the next-token loss with the output layer run only at answer positions.
  TRL's fused LM head does that only where Triton runs; on a CPU or a Mac its torch fallback
  scores every position in fp32 passes over the vocabulary, which was 30% of a SmolLM2 step.
- `FastDropout`: LoRA's dropout with its keep-mask drawn three elements per 64-bit draw.
  `bernoulli_` draws one per element, and was 13% of a SmolLM2 step on a CPU.
- `step_end_loss` (issue 29): the reward model's token head only at the labelled step ends."""
from __future__ import annotations

import importlib.util
import sys

import torch

# At most this many logits at once (256 MiB in fp32): more answer tokens than that go through the
# output layer in chunks, each recomputed in the backward pass, so no [tokens, vocab] tensor is kept.
LOGITS_PER_CHUNK = 1 << 26
# Fewer leading tokens in common than this run with the rest: a second backbone pass costs more.
MIN_SHARED_PREFIX = 8


def trl_head_scores_answers_only(device: str) -> bool:
    """Where TRL's Triton kernel runs (CUDA with Triton installed), its fused head already scores
    only labelled positions, tile by tile, and is kept; elsewhere `answer_only_loss` replaces it."""
    return device == "cuda" and importlib.util.find_spec("triton") is not None


def as_forward(model, step):
    """`step(module)`, where `module` is the model itself or the one a DistributedDataParallel
    wrapper holds; under the wrapper, run as its forward. DDP arms the gradient all-reduce in its
    own forward: the loss functions here call the backbone directly, which, called from outside
    it, would let each rank train on its own gradients, silently. None when another wrapper
    (FSDP, DeepSpeed) holds the model: the caller takes the library's own loss path."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return step(model) if isinstance(model, torch.nn.Module) and _plain(model) else None
    inner = model.module
    if not _plain(inner):
        return None
    inner.forward = lambda: step(inner)  # an instance attribute: nn.Module.__call__ finds it first
    try:
        return model()
    finally:
        del inner.forward


def as_trainer_scales(trainer, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """The loss as `Trainer.compute_loss` would hand it back: a sum over the token count of every
    rank (`num_items_in_batch`, gathered across devices) is multiplied by the number of ranks,
    since DDP then averages the ranks' gradients. A `compute_loss` override that builds its own
    loss must do the same, or its gradients and logged loss are divided by the world size."""
    args = trainer.args
    if (num_items_in_batch is not None and args.average_tokens_across_devices
            and (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func)):
        return loss * trainer.accelerator.num_processes
    return loss


def _plain(model) -> bool:
    """A transformers or PEFT model, not one that FSDP or DeepSpeed has taken apart."""
    return not any(type(m).__module__.startswith(("torch.distributed", "deepspeed")) for m in model.modules())


def _unwrapped(model):
    """The model under PEFT's wrapper (the model itself when there is none), and its backbone."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner, getattr(inner, inner.base_model_prefix)


def backbone_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, share_prefix: bool = False):
    """The model under PEFT's wrapper (the model itself when there is none) and its backbone's last
    hidden states, with no head run: callers run their head only where they need it. With
    `share_prefix`, the leading tokens every row has in common run once, not once per row
    (`shared_prefix_length`), and the rows continue from their keys and values: the same states."""
    inner, backbone = _unwrapped(model)
    shared = shared_prefix_length(input_ids, attention_mask) if share_prefix and not _checkpointing(backbone) else 0
    if shared < MIN_SHARED_PREFIX:  # a prefix this short saves less than its extra pass costs
        return inner, _whole(backbone, input_ids, attention_mask)
    prefix_ids = input_ids[:1, :shared]
    prefix = backbone(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True)
    cache = prefix.cache
    if cache is None or cache.get_seq_length() != shared:  # a model that kept no cache: the rows could not see it
        return inner, _whole(backbone, input_ids, attention_mask)
    cache.batch_repeat_interleave(len(input_ids))  # differentiable: each row's gradient flows back into the prefix
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    rest = backbone(input_ids=input_ids[:, shared:], attention_mask=mask, cache=cache, use_cache=True).last_hidden_state
    return inner, torch.cat([prefix.last_hidden_state.expand(len(input_ids), -1, -1), rest], dim=1)


def _whole(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _checkpointing(backbone) -> bool:
    """Gradient checkpointing is on: transformers 5 then drops the cache inside each decoder layer
    (the flag is on the layers, not the backbone), so rows run after a prefix would not see it."""
    return any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> int:
    """How many leading tokens every row of a right-padded batch has in common (none of them
    padding), leaving each row at least one token of its own; 0 for a single row, where there is
    nothing to share. A domain's rows all begin with its system prompt (a third of a DevOps row's
    tokens)."""
    if len(input_ids) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    return min(int(same.long().cumprod(dim=0).sum()), input_ids.shape[1] - 1)


def answer_only_loss(model, inputs: dict, num_items_in_batch=None, share_prefix: bool = False) -> tuple[torch.Tensor, int, int]:
    """Mean next-token cross-entropy over the positions whose label is not -100 (or the sum over
    `num_items_in_batch`, as the Trainer asks under gradient accumulation), with how many tokens
    it covered and how many of them the model ranked first. The backbone runs on every token; the
    output layer only on the labelled ones, in the autocast dtype when one is active; with
    `share_prefix`, the rows' common leading tokens (the system prompt) once per batch."""
    causal_lm, hidden = backbone_states(model, inputs["input_ids"], inputs.get("attention_mask"), share_prefix)
    labels = inputs["labels"][:, 1:]  # position t predicts token t+1
    labelled = labels != -100
    hidden, targets = hidden[:, :-1][labelled], labels[labelled]
    head = causal_lm.get_output_embeddings()
    per_chunk = max(1, LOGITS_PER_CHUNK // head.weight.shape[0])
    total, top1 = hidden.new_zeros((), dtype=torch.float32), 0
    for start in range(0, len(targets), per_chunk):
        h, t = hidden[start:start + per_chunk], targets[start:start + per_chunk]
        if len(targets) > per_chunk:
            nll, hits = torch.utils.checkpoint.checkpoint(_summed_nll, head, h, t, use_reentrant=False)
        else:
            nll, hits = _summed_nll(head, h, t)
        total, top1 = total + nll, top1 + int(hits)
    count = int(labelled.sum())
    denominator = max(count, 1) if num_items_in_batch is None else num_items_in_batch
    return total / denominator, count, top1


def step_end_loss(model, inputs: dict, class_weights=None, num_items_in_batch=None) -> torch.Tensor:
    """The reward model's loss with its token head (and the dropout before it) run only at the
    labelled step ends, not at every token: cross-entropy there, weighted per class when
    `class_weights` is given, mean over those positions (or their sum over `num_items_in_batch`).
    The same loss `transformers`' token classifier computes from its logits at every position."""
    classifier, hidden = backbone_states(model, inputs["input_ids"], inputs.get("attention_mask"))
    labels = inputs["labels"]
    labelled = labels != -100
    logits = classifier.score(classifier.dropout(hidden[labelled])).float()
    weight = None if class_weights is None else torch.tensor(class_weights, device=logits.device)
    if num_items_in_batch is None or weight is not None:  # a weighted loss is a weighted mean, as torch's
        return torch.nn.functional.cross_entropy(logits, labels[labelled], weight=weight)
    return torch.nn.functional.cross_entropy(logits, labels[labelled], reduction="sum") / num_items_in_batch


def _summed_nll(head, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()  # the softmax in fp32, whatever the matmul ran in
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return nll, (logits.detach().argmax(-1) == targets).sum()


class FastDropout(torch.nn.Module):
    """Inverted dropout, as `nn.Dropout`, whose keep-mask on a CPU comes from 16-bit lanes of 64-bit
    draws of torch's generator (bits 0-47 of each draw are uniform: three lanes per draw, a third of
    `bernoulli_`'s draws). Seeded by `torch.manual_seed` like everything else; p is rounded to a
    multiple of 1/65536. Off a CPU, or on a big-endian one, it is `nn.functional.dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.drop_below = round(p * 65536) - 32768  # P(lane < drop_below) = p for a uniform int16 lane

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and x.device.type == "cpu" and sys.byteorder == "little"):
            return torch.nn.functional.dropout(x, self.p, self.training)
        count = x.numel()
        lanes = torch.empty((count + 2) // 3, 4, dtype=torch.int16)
        lanes.view(torch.int64).random_()  # [0, 2^63): lane 3 holds the 15 top bits and is not used
        keep = lanes[:, :3].reshape(-1)[:count].view(x.shape) >= self.drop_below
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Replace every LoRA dropout module of a PEFT model with `FastDropout` of the same p; returns
    how many were replaced."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for adapter, dropout in dropouts.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[adapter] = FastDropout(dropout.p)
                replaced += 1
    return replaced
