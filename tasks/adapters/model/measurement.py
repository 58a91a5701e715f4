"""Run one model over the evaluation plan: answer-token losses, generated answers, and KL against
its own base (the adapter switched off) on the drift probes. Returns plain values; the metrics
themselves are computed in `tasks/domain/evaluation.py`."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from tasks.adapters.model.inference import Generator
from tasks.adapters.ops.progress import tqdm_progress
from tasks.domain.config import EvaluationConfig, HeldOutQuestion, Probe
from tasks.domain.content import ChoiceItem, ChoiceResult, ContentPlan, choice_results
from tasks.domain.evaluation import (
    AnswerRecord,
    EvaluationResult,
    SampledPass,
    compare_heldout,
    generation_sample,
    judge_eval_content,
    judge_heldout_content,
    loss_sample,
    paraphrase_groups,
    score_answers,
    style_metrics,
    summarise,
)
from tasks.domain.formatting import TokenizedExample
from tasks.domain.framework import Framework
from tasks.domain.metrics import agreement, consistency
from tasks.domain.preferences import PreferencePair
from tasks.domain.records import Message, Row
from tasks.domain.tensor_metrics import kl_per_example


def _tokenize(gen: Generator, examples) -> list[TokenizedExample]:
    return [gen.codec.tokenize(e) for e in examples]


@dataclass
class _Batch:
    input_ids: object
    attention_mask: object
    loss_mask: object


def _batches(gen: Generator, examples: list[TokenizedExample], batch_size: int, description: str):
    """Right-padded tensors, batch by batch, in the given order."""
    for start in tqdm_progress(description, unit="batch", leave=False)(range(0, len(examples), batch_size)):
        yield _padded(gen, examples[start:start + batch_size])


def _padded(gen: Generator, chunk: Sequence[TokenizedExample]) -> _Batch:
    """One batch of examples as right-padded tensors."""
    import torch

    pad = gen.tokenizer.pad_token_id
    width = max(len(e.input_ids) for e in chunk)
    tensor = partial(torch.tensor, device=gen.device)
    return _Batch(input_ids=tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in chunk]),
                  attention_mask=tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk]),
                  loss_mask=tensor([e.completion_mask + [0] * (width - len(e.input_ids)) for e in chunk]))


def answer_losses(gen: Generator, rows: Sequence[Row], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed cross-entropy on each row's answer tokens (same tokens as training), and their count."""
    return _completion_losses(gen, [gen.codec.fmt.row(r) for r in rows], batch_size, "eval loss")


def _completion_losses(gen: Generator, examples, batch_size: int, description: str) -> tuple[list[float], list[int]]:
    import torch

    sums: list[float] = []
    counts: list[int] = []
    with torch.no_grad():
        for batch in _batches(gen, _tokenize(gen, examples), batch_size, description):
            batch_sums, batch_counts = answer_token_losses(gen.model, batch)
            sums += batch_sums
            counts += batch_counts
    return sums, counts


def answer_token_losses(model, batch: _Batch) -> tuple[list[float], list[int]]:
    """`token_losses` with the output layer run only where a target is (issue 29): the backbone on
    every token, the vocabulary's logits only at the positions that predict an answer token. On a
    CPU the full [batch, positions, vocabulary] logits and their softmax were most of the pass.
    The leading tokens the rows have in common (the system prompt) run once for the batch."""
    from tasks.adapters.model.fast_step import backbone_states

    causal_lm, hidden = backbone_states(model, batch.input_ids, batch.attention_mask, share_prefix=True)
    return _target_losses(causal_lm, hidden, batch.input_ids, batch.loss_mask)


def _target_losses(causal_lm, hidden, input_ids, loss_mask) -> tuple[list[float], list[int]]:
    """Per row, the summed cross-entropy of the tokens `loss_mask` marks, and their count, from the
    backbone's hidden states over `input_ids`."""
    import torch

    targets = loss_mask[:, 1:].bool()  # position t predicts token t+1
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][targets]).float()
    nll = torch.nn.functional.cross_entropy(logits, input_ids[:, 1:][targets], reduction="none")
    row = torch.arange(len(input_ids), device=nll.device).unsqueeze(1).expand_as(targets)[targets]
    sums = torch.zeros(len(input_ids), dtype=nll.dtype, device=nll.device).index_add_(0, row, nll)
    return sums.tolist(), targets.sum(dim=1).tolist()


@dataclass(frozen=True)
class Margins:
    """Per pair, log p(chosen) - log p(rejected) under a model, positive = prefers chosen:
    `summed` over each side's answer tokens (what DPO's implicit reward compares) and `per_token`
    (each side's mean), so a longer rejected side (padding, a fourth reason) cannot lose on length alone."""

    summed: list[float]
    per_token: list[float]
    chosen_nll: list[float]  # the chosen answer's mean negative log-probability per token: DPO can lower it too


def preference_margins(gen: Generator, pairs: Sequence[PreferencePair], batch_size: int) -> Margins:
    """Both margins of every pair, from one pass over each side given the prompt."""
    def completions(side: str):
        return [gen.codec.fmt.example(p.conversation(side)) for p in pairs]

    chosen, chosen_tokens = _completion_losses(gen, completions("chosen"), batch_size, "preferences (chosen)")
    rejected, rejected_tokens = _completion_losses(gen, completions("rejected"), batch_size, "preferences (rejected)")
    sides = zip(chosen, chosen_tokens, rejected, rejected_tokens, strict=True)
    summed, per_token, chosen_nll = [], [], []
    for c, c_tokens, r, r_tokens in sides:  # losses are negative log-probabilities
        summed.append(r - c)
        per_token.append(r / max(1, r_tokens) - c / max(1, c_tokens))
        chosen_nll.append(c / max(1, c_tokens))
    return Margins(summed=summed, per_token=per_token, chosen_nll=chosen_nll)


def choice_scores(gen: Generator, items: Sequence[ChoiceItem]) -> list[ChoiceResult]:
    """The choice test: each option's mean log-probability per answer token, given the item's
    prompt, and whether the reference (option 0) scored highest. An item's options (at most five)
    are one batch."""
    import torch

    with torch.no_grad():
        scores = [_option_scores(gen, item) for item in tqdm_progress("choice test", unit="question", leave=False)(items)]
    return choice_results(items, scores)


def _option_scores(gen: Generator, item: ChoiceItem) -> list[float]:
    """The options share their system prompt and question: those run once and serve every option
    (issue 29), about half of each option's tokens otherwise scored five times over."""
    examples = _tokenize(gen, [gen.codec.fmt.example([*item.prompt, Message(role="assistant", content=option)])
                               for option in item.options])
    sums, counts = answer_token_losses(gen.model, _padded(gen, examples))
    return [-s / max(1, n) for s, n in zip(sums, counts, strict=True)]


def _logits(model, batch: _Batch):
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def on_base(gen: Generator, compute, same):
    """`compute()` with the adapter switched off: the base without a second copy of its weights.
    A model without an adapter is its own base, so `same` is returned instead."""
    if not hasattr(gen.model, "disable_adapter"):
        return same
    with gen.model.disable_adapter():
        return compute()


@contextmanager
def adapter_merged(gen: Generator):
    """On a CPU, the LoRA weights folded into the base's for the block (PEFT's merge_adapter), and
    the base's weights as loaded put back after it, bit for bit (a merge then an unmerge rounds
    them): the same model without a LoRA product per projection per token, which made CPU
    generation 1.3x slower (issue 29). It costs a copy of the merged weights (0.4 GB for SmolLM2),
    so elsewhere the adapter stays as it is."""
    import torch

    layers = [m for m in gen.model.modules() if hasattr(m, "merged_adapters") and hasattr(m, "base_layer")]
    if gen.device != "cpu" or not layers or not hasattr(gen.model, "merge_adapter"):
        yield
        return
    originals = [layer.base_layer.weight.detach().clone() for layer in layers]
    gen.model.merge_adapter()
    try:
        yield
    finally:
        gen.model.unmerge_adapter()
        with torch.no_grad():
            for layer, weight in zip(layers, originals, strict=True):
                layer.base_layer.weight.copy_(weight)


def probe_kl(gen: Generator, probes: Sequence[Probe], batch_size: int) -> tuple[list[float], list[int]]:
    """Summed KL(adapted || base) over each probe's predicted positions, and their count. The base
    is the same model with the adapter disabled, so no second copy of the weights is loaded."""
    import torch

    examples = _tokenize(gen, [gen.codec.fmt.example([Message(role="user", content=p.prompt),
                                               Message(role="assistant", content=p.answer)]) for p in probes])
    sums: list[float] = []
    counts: list[int] = []
    with torch.no_grad():
        for batch in _batches(gen, examples, batch_size, "drift probes"):
            adapted = _logits(gen.model, batch)
            base = on_base(gen, partial(_logits, gen.model, batch), adapted)
            # position t predicts token t+1: count the positions whose next token is real
            batch_sums, batch_counts = kl_per_example(adapted[:, :-1], base[:, :-1], batch.attention_mask[:, 1:])
            sums += batch_sums
            counts += batch_counts
    return sums, counts


def _paraphrase_answers(gen: Generator, groups: list[list[Row]], cfg: EvaluationConfig, temperature: float,
                        seed: int) -> list[list[str]]:
    flat = gen.answer_rows([r for g in groups for r in g], cfg, temperature, seed)
    out, start = [], 0
    for group in groups:
        out.append(flat[start:start + len(group)])
        start += len(group)
    return out


def heldout_replies(gen: Generator, questions: Sequence[str], cfg: EvaluationConfig) -> list[str]:
    """Greedy answers to the held-out questions, as evaluation asks them (one definition, so a
    refined model and its SFT parent are compared on the same generation settings)."""
    return gen.reply(questions, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)


def evaluate_generator(gen: Generator, eval_rows: Sequence[Row], framework: Framework, probes: Sequence[Probe],
                       cfg: EvaluationConfig, heldout: Sequence[HeldOutQuestion] = (),
                       content: ContentPlan | None = None) -> EvaluationResult:
    """Every metric for one model on one eval split (and the held-out questions, against its own
    base); deterministic for `cfg.seed`. With a `content` plan (built from the training rows), also
    the content checks: the choice test on held-out questions (tuned and base) and on the generated
    sample's rows, and pasted reasons in every answer."""
    heldout_questions = [q.question for q in heldout]
    sample = generation_sample(eval_rows, cfg.max_generations, cfg.seed)
    loss_rows = loss_sample(eval_rows, cfg.loss_rows, cfg.seed, first=sample)
    heldout_items = content.heldout_items(gen.conversation, [(q.question, q.reference) for q in heldout]) \
        if content and heldout else []
    # what needs the base's own outputs (the adapter switched off) first, on the weights as loaded
    kl = probe_kl(gen, probes, cfg.batch_size)
    ask_heldout = partial(heldout_replies, gen, heldout_questions, cfg)
    base_heldout = on_base(gen, ask_heldout, None) if heldout_questions else []
    base_choices = on_base(gen, partial(choice_scores, gen, heldout_items), None) if heldout_items else None
    groups = paraphrase_groups(eval_rows, cfg.consistency_groups, cfg.seed)
    with adapter_merged(gen):
        tuned_heldout = ask_heldout() if heldout_questions else []
        tuned_choices = choice_scores(gen, heldout_items) if heldout_items else []
        sample_choices = choice_scores(gen, content.row_items(sample[:cfg.choice_rows])) if content else []
        losses = answer_losses(gen, loss_rows, cfg.batch_size)
        generated = gen.answer_rows(sample, cfg, 0.0, cfg.seed)
        paraphrased = _paraphrase_answers(gen, groups, cfg, 0.0, cfg.seed)
        passes = []
        for seed in cfg.stability.seeds:
            sampled = score_answers(sample, gen.answer_rows(sample, cfg, cfg.stability.temperature, seed), framework)
            sampled_groups = _paraphrase_answers(gen, groups, cfg, cfg.stability.temperature, seed)
            passes.append(SampledPass(seed=seed, style_adherence=style_metrics(sampled)["style_adherence"],
                                      consistency=consistency(sampled_groups)))
    loss_by_id = {r.id: (s / n if n else None) for r, s, n in zip(loss_rows, *losses, strict=True)}
    answers: list[AnswerRecord] = score_answers(sample, generated, framework)
    for record in answers:
        record.loss = loss_by_id.get(record.row_id)
    heldout_rows = compare_heldout(heldout_questions, tuned_heldout if base_heldout is None else base_heldout,
                                   tuned_heldout, framework.style) if heldout_questions else []
    if content:
        judge_eval_content(answers, sample, sample_choices, content.index)
        if heldout_items:
            # a model without an adapter is its own base, as for the held-out answers above
            judge_heldout_content(heldout_rows, [q.reference for q in heldout], tuned_choices,
                                  tuned_choices if base_choices is None else base_choices, content.index)
    metrics = summarise(losses, answers, paraphrased, kl, passes, heldout_rows)
    return EvaluationResult(
        metrics=metrics, answers=answers, heldout=heldout_rows,
        paraphrases=[{"group": g[0].metadata.group, "questions": [r.turns("user")[-1] for r in g],
                      "answers": a, "agreement": agreement(a)} for g, a in zip(groups, paraphrased, strict=True)],
        probe_kl=[{"prompt": p.prompt, "kl_per_token": s / n if n else None}
                  for p, s, n in zip(probes, *kl, strict=True)])
