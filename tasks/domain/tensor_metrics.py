"""Metrics over logits: per-example loss on answer tokens and the KL divergence between two models'
next-token distributions. Pure tensor math (torch, imported lazily), no model loading."""
from __future__ import annotations


def shifted(logits, input_ids, mask):
    """Align position t's logits with token t+1 (the token they predict) and its mask."""
    return logits[:, :-1, :], input_ids[:, 1:], mask[:, 1:]


def token_losses(logits, input_ids, loss_mask) -> tuple[list[float], list[int]]:
    """Per-example summed cross-entropy on the tokens where `loss_mask` is 1, and their count.
    `loss_mask[b, t]` marks token t as a target (the answer and its </s>)."""
    import torch

    logits, targets, mask = shifted(logits, input_ids, loss_mask)
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    mask = mask.to(nll.dtype)
    return (nll * mask).sum(dim=1).tolist(), mask.sum(dim=1).long().tolist()


def kl_per_example(logits_p, logits_q, attention_mask) -> tuple[list[float], list[int]]:
    """Summed KL(P || Q) over each example's real positions, and how many positions: P is the
    adapted model, Q the base. KL is 0 when the two distributions agree and grows as P moves."""
    import torch

    log_p = torch.log_softmax(logits_p.float(), dim=-1)
    log_q = torch.log_softmax(logits_q.float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [batch, positions]
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum(dim=1).tolist(), mask.sum(dim=1).long().tolist()
