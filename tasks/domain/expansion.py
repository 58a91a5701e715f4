"""Pattern expansion: blueprint patterns x slot values -> conversations, then exact and
near-duplicate removal, a balanced cap, and a train/eval split stratified by final principle.
Deterministic for a seed: the same blueprint and seed always give the same rows in the same order."""
from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

from tasks.domain.blueprint import Blueprint, BlueprintEntry
from tasks.domain.errors import ConfigError
from tasks.domain.framework import Pattern, SlotValue
from tasks.domain.records import Message, Row, RowMetadata
from tasks.domain.sampling import round_robin

Progress = Callable[[Iterable], Iterable]


def _no_progress(items: Iterable) -> Iterable:
    return items


def render(template: str, values: dict[str, SlotValue]) -> str:
    """Fill a template; dict slot values are reachable as attributes (`{split.vpc}`).

    >>> render("Split {s.vpc} into {s.subnet} in {env}", {"s": {"vpc": "/16", "subnet": "/24"}, "env": "prod"})
    'Split /16 into /24 in prod'
    """
    return template.format(**bind(values))


def bind(values: dict[str, SlotValue]) -> dict[str, object]:
    """Slot values as `str.format` arguments; bind once where several templates share them."""
    return {k: SimpleNamespace(**v) if isinstance(v, dict) else v for k, v in values.items()}


def slot_assignments(pattern: Pattern) -> Iterator[dict[str, SlotValue]]:
    """Every combination of slot values, in declaration order."""
    names = list(pattern.slots)
    for combo in itertools.product(*(pattern.slots[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def answer_template(pattern: Pattern, group: str) -> str:
    """The wording a slot combination is answered in: one of the pattern's answers, picked by the
    group's hash (stable across runs, the same for every paraphrase of the question)."""
    answers = pattern.answers()
    return answers[int(hashlib.sha1(group.encode("utf-8")).hexdigest(), 16) % len(answers)]


def _conversation(system: str, entry_pattern: Pattern, question: str, values: dict, answer: str) -> list[Message]:
    bound = bind(values)
    messages = [
        Message(role="system", content=system),
        Message(role="user", content=question.format(**bound)),
        Message(role="assistant", content=answer.format(**bound)),
    ]
    if entry_pattern.follow_up:
        messages += [
            Message(role="user", content=entry_pattern.follow_up.question.format(**bound)),
            Message(role="assistant", content=entry_pattern.follow_up.answer.format(**bound)),
        ]
    return messages


def expand_entry(entry: BlueprintEntry, blueprint: Blueprint, blueprint_hash: str) -> Iterator[Row]:
    for pattern in entry.patterns:
        for values in slot_assignments(pattern):
            group = f"{pattern.id}:{_short_hash(repr(sorted(values.items(), key=lambda kv: kv[0])))}"
            answer = answer_template(pattern, group)
            for question in pattern.questions:
                try:
                    messages = _conversation(blueprint.system_prompt, pattern, question, values, answer)
                except (KeyError, AttributeError, IndexError, ValueError) as error:
                    raise ConfigError(f"pattern {pattern.id!r}: cannot fill template: {error}") from None
                digest = _short_hash("\x1f".join(f"{m.role}:{m.content}" for m in messages))
                yield Row(
                    id=f"{blueprint.domain}-{digest}",
                    messages=messages,
                    metadata=RowMetadata(
                        domain=blueprint.domain,
                        principle_path=entry.principle_path,
                        pattern_id=pattern.id,
                        group=group,
                        blueprint_hash=blueprint_hash,
                        generator=blueprint.generator.name,
                        source=entry.provenance.label() if entry.provenance else None,
                    ),
                )


def expand_blueprint(blueprint: Blueprint, progress: Progress = _no_progress) -> list[Row]:
    """All rows the blueprint's patterns produce, before dedup. `progress` wraps the entry loop
    (the adapter passes tqdm; the pure code prints nothing)."""
    blueprint_hash = blueprint.digest()
    rows: list[Row] = []
    for entry in progress(blueprint.entries):
        rows.extend(expand_entry(entry, blueprint, blueprint_hash))
    return rows


_FILLER = frozenset({"a", "an", "the", "please", "briefly", "exactly", "just", "really"})


def near_duplicate_key(row: Row) -> str:
    """Prompts that differ only in case, punctuation, spacing or filler words share a key.

    >>> from tasks.domain.records import Message as M
    >>> r = lambda q: Row(id="x", messages=[M(role="user", content=q), M(role="assistant", content="a")],
    ...     metadata=RowMetadata(domain="d", principle_path=["p"], pattern_id="p", group="g", blueprint_hash="h"))
    >>> near_duplicate_key(r("Why split the VPC?")) == near_duplicate_key(r("why  split a VPC"))
    True
    """
    text = " ".join(row.turns("user")).casefold()
    words = [w for w in re.split(r"[^\w./]+", text) if w and w not in _FILLER]
    return " ".join(words)


@dataclass
class DedupStats:
    exact_duplicates: int = 0
    near_duplicates: int = 0
    repeated_answers: int = 0  # rows dropped by `max_answer_repeats` or `max_groups_per_pattern`


def deduplicate(rows: Iterable[Row]) -> tuple[list[Row], DedupStats]:
    """Drop exact duplicates (same messages) and near duplicates (same normalised prompt); the
    first occurrence wins. Linear time: a hash set per kind, no pairwise comparison."""
    stats = DedupStats()
    seen_exact: set[str] = set()
    seen_near: set[str] = set()
    kept: list[Row] = []
    for row in rows:
        exact = "\x1f".join(f"{m.role}:{m.content.strip()}" for m in row.messages)
        if exact in seen_exact:
            stats.exact_duplicates += 1
            continue
        near = near_duplicate_key(row)
        if near in seen_near:
            stats.near_duplicates += 1
            continue
        seen_exact.add(exact)
        seen_near.add(near)
        kept.append(row)
    return kept, stats


def cap_repeats(rows: Iterable[Row], max_answer_repeats: int, max_groups_per_pattern: int,
                stats: DedupStats) -> list[Row]:
    """Keep at most `max_answer_repeats` question groups per exact answer and `max_groups_per_pattern`
    groups per pattern, the first ones in order (`<= 0`: no such cap). Caps count groups, not rows:
    a kept group keeps all its paraphrases (the consistency metric compares their answers).

    >>> from tasks.domain.records import Message as M
    >>> r = lambda q, a, g: Row(id=q, messages=[M(role="user", content=q), M(role="assistant", content=a)],
    ...     metadata=RowMetadata(domain="d", principle_path=["p"], pattern_id="p", group=g, blueprint_hash="h"))
    >>> stats = DedupStats()
    >>> rows = [r("q1", "A", "g1"), r("q1b", "A", "g1"), r("q2", "A", "g2"), r("q3", "B", "g3"), r("q4", "A", "g4")]
    >>> [x.id for x in cap_repeats(rows, 2, 0, stats)], stats.repeated_answers
    (['q1', 'q1b', 'q2', 'q3'], 1)
    >>> [x.id for x in cap_repeats(rows, 0, 1, DedupStats())]
    ['q1', 'q1b']
    """
    answer_groups: Counter[str] = Counter()
    pattern_groups: Counter[str] = Counter()
    verdict: dict[str, bool] = {}  # group -> kept
    kept: list[Row] = []
    for row in rows:
        group = row.metadata.group
        if group not in verdict:
            answer, pattern = row.turns("assistant")[-1].strip(), row.metadata.pattern_id
            verdict[group] = not (0 < max_answer_repeats <= answer_groups[answer]
                                  or 0 < max_groups_per_pattern <= pattern_groups[pattern])
            if verdict[group]:
                answer_groups[answer] += 1
                pattern_groups[pattern] += 1
        if verdict[group]:
            kept.append(row)
        else:
            stats.repeated_answers += 1
    return kept


def _by_principle(rows: Iterable[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.metadata.final_principle].append(row)
    return groups


def balanced_cap(rows: list[Row], max_samples: int) -> list[Row]:
    """Keep at most `max_samples` rows, taking round-robin across final principles so a cap never
    starves a principle. `max_samples <= 0` keeps everything."""
    if max_samples <= 0 or len(rows) <= max_samples:
        return rows
    return round_robin(_by_principle(rows).values(), max_samples)


def stratified_split(rows: list[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Split by question group (all paraphrases of one question land on the same side, so eval
    never sees a rewording of a training question), stratified by final principle: each principle
    with at least two groups gets at least one eval group."""
    rng = random.Random(seed)
    train: list[Row] = []
    evaluation: list[Row] = []
    by_principle = _by_principle(rows)
    for principle in sorted(by_principle):
        members = by_principle[principle]
        groups = sorted({r.metadata.group for r in members})
        rng.shuffle(groups)
        n_eval = 0 if len(groups) < 2 else min(len(groups) - 1, max(1, round(len(groups) * eval_fraction)))
        eval_groups = set(groups[:n_eval])
        for row in members:
            (evaluation if row.metadata.group in eval_groups else train).append(row)
    return _with_split(train, "train"), _with_split(evaluation, "eval")


def _with_split(rows: list[Row], split: str) -> list[Row]:
    # model_construct skips re-validating fields that were validated a moment ago; model_copy
    # spent a fifth of the whole build here at 100k rows.
    def relabel(row: Row) -> Row:
        metadata = type(row.metadata).model_construct(**{**row.metadata.__dict__, "split": split})
        return type(row).model_construct(**{**row.__dict__, "metadata": metadata})

    return [relabel(r) for r in rows]


@dataclass
class DatasetBuild:
    train: list[Row]
    eval: list[Row]
    generated: int
    dedup: DedupStats
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def build_dataset(blueprint: Blueprint, *, seed: int, eval_fraction: float, max_samples: int,
                  max_answer_repeats: int = 0, max_groups_per_pattern: int = 0,
                  progress: Progress = _no_progress) -> DatasetBuild:
    """Expand, shuffle (seeded), deduplicate, cap and split: the whole dataset recipe."""
    return assemble_dataset(expand_blueprint(blueprint, progress), seed=seed, eval_fraction=eval_fraction,
                            max_samples=max_samples, max_answer_repeats=max_answer_repeats,
                            max_groups_per_pattern=max_groups_per_pattern)


def assemble_dataset(rows: list[Row], *, seed: int, eval_fraction: float, max_samples: int,
                     max_answer_repeats: int = 0, max_groups_per_pattern: int = 0) -> DatasetBuild:
    """Shuffle (seeded), deduplicate, cap and split rows that carry metadata: generated rows and a
    user's imported ones go through the same steps, but for the repeat caps, which import_dataset
    leaves at 0 (a user's rows are kept as written)."""
    rows = list(rows)
    generated = len(rows)
    random.Random(seed).shuffle(rows)
    rows, dedup = deduplicate(rows)
    rows = cap_repeats(rows, max_answer_repeats, max_groups_per_pattern, dedup)
    rows = balanced_cap(rows, max_samples)
    train, evaluation = stratified_split(rows, eval_fraction, seed)
    train_counts = Counter(r.metadata.final_principle for r in train)
    eval_counts = Counter(r.metadata.final_principle for r in evaluation)
    counts = {p: {"train": train_counts[p], "eval": eval_counts[p]} for p in sorted(train_counts | eval_counts)}
    return DatasetBuild(train=train, eval=evaluation, generated=generated, dedup=dedup, counts=counts)


def preview(framework, blueprint: Blueprint, seed: int, dataset, samples: int = 5) -> str:
    """What a dataset build would produce, without writing it: the blueprint per principle, the
    row counts at every step and a few rows. `dataset` is the DatasetConfig."""
    build = build_dataset(blueprint, seed=seed, eval_fraction=dataset.eval_fraction, max_samples=dataset.max_samples,
                          max_answer_repeats=dataset.max_answer_repeats, max_groups_per_pattern=dataset.max_groups_per_pattern)
    info = blueprint.generator
    lines = [f"blueprint: {blueprint.domain} by {info.name} v{info.version}" + (f" ({info.model})" if info.model else ""),
             f"  {len(blueprint.entries)} reasoning blocks, {sum(len(e.patterns) for e in blueprint.entries)} patterns",
             "", "| final principle | blocks | patterns | train | eval |", "|---|---|---|---|---|"]
    for principle in blueprint.final_principles:
        entries = [e for e in blueprint.entries if e.final_principle == principle]
        counts = build.counts.get(principle, {"train": 0, "eval": 0})
        lines.append(f"| {principle} | {len(entries)} | {sum(len(e.patterns) for e in entries)} | "
                     f"{counts['train']} | {counts['eval']} |")
    kept = len(build.train) + len(build.eval)
    unique = build.generated - build.dedup.exact_duplicates - build.dedup.near_duplicates
    dedup = build.dedup
    capped = f", {dedup.repeated_answers} over the answer-repeat or per-pattern cap" if dedup.repeated_answers else ""
    lines += ["", f"rows: {build.generated} expanded -> {unique} after dedup "
                  f"({dedup.exact_duplicates} exact, {dedup.near_duplicates} near duplicates{capped}) -> {kept} kept "
                  f"({len(build.train)} train / {len(build.eval)} eval)", ""]
    for row in random.Random(seed).sample(build.train, min(samples, len(build.train))):
        source = f" [{row.metadata.source}]" if row.metadata.source else ""
        lines += [f"- {'/'.join(row.metadata.principle_path)}{source}", f"  Q: {row.turns('user')[-1]}",
                  f"  A: {row.turns('assistant')[-1]}"]
    return "\n".join(lines) + "\n"
