"""The `reasoning_steps` expectation suite and the flat table it runs on: one row per step-labelled
answer. Labels are 0 or 1, one per step; a correct answer has no bad step and a corrupted one
exactly one, where it says; and no prompt holds an eval-split or held-out question (a reward model
trained on them would judge their answers from memory)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from tasks.domain.config import ValidationConfig
from tasks.domain.contamination import NGRAM, overlap_with
from tasks.domain.steps import BAD, GOOD, StepExample, StepKind, labels_consistent

SUITE_NAME = "reasoning_steps"


def flatten_steps(examples: Sequence[StepExample], eval_questions: Sequence[str] = (),
                  heldout_questions: Sequence[str] = (),
                  located: tuple[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """One row per example with what the suite checks. `located`: (file, line of each example)."""
    prompts = ["\n".join(m.content for m in e.prompt if m.role == "user") for e in examples]
    eval_overlap = overlap_with(prompts, eval_questions) if eval_questions else [0.0] * len(examples)
    heldout_overlap = overlap_with(prompts, heldout_questions) if heldout_questions else [0.0] * len(examples)
    where = (lambda i: {"file": located[0], "line": located[1][i]}) if located else (lambda i: {})
    return pd.DataFrame.from_records([{
        **where(i),
        "id": example.id,
        "kind": example.kind,
        "labels_binary": all(label in (GOOD, BAD) for label in example.labels),
        "label_per_step": len(example.labels) == len(example.steps),
        "bad_step_as_claimed": labels_consistent(example),
        "empty_steps": sum(not step.strip() for step in example.steps),
        "eval_overlap": eval_overlap[i],
        "heldout_overlap": heldout_overlap[i],
    } for i, example in enumerate(examples)])


def build_suite(validation: ValidationConfig, kinds: Sequence[StepKind]):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def rule(text: str) -> dict:
        return {"rule": text}

    return gx.ExpectationSuite(name=SUITE_NAME, expectations=[
        gxe.ExpectColumnValuesToBeUnique(column="id", meta=rule("example ids are unique")),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["correct", *kinds], meta=rule("a known step kind")),
        gxe.ExpectColumnValuesToBeInSet(column="labels_binary", value_set=[True], meta=rule("labels are 0 or 1")),
        gxe.ExpectColumnValuesToBeInSet(column="label_per_step", value_set=[True], meta=rule("one label per step")),
        gxe.ExpectColumnValuesToBeInSet(column="bad_step_as_claimed", value_set=[True],
                                        meta=rule("a correct answer has no bad step, a corrupted one exactly one")),
        gxe.ExpectColumnValuesToBeBetween(column="empty_steps", max_value=0, meta=rule("no step is empty")),
        gxe.ExpectColumnValuesToBeBetween(column="eval_overlap", max_value=validation.max_eval_overlap,
                                          meta=rule(f"no prompt holds an eval-split question (at most "
                                                    f"{validation.max_eval_overlap:.0%} of its {NGRAM}-word runs)")),
        gxe.ExpectColumnValuesToBeBetween(column="heldout_overlap", max_value=validation.max_heldout_overlap,
                                          meta=rule(f"no prompt holds a held-out question (at most "
                                                    f"{validation.max_heldout_overlap:.0%} of its {NGRAM}-word runs)")),
    ])
