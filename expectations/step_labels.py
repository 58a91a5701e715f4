"""The `reasoning_steps` expectation suite and the flat table it runs on: one row per step-labelled
answer. Labels are 0 or 1, one per step; a correct answer has no bad step and a corrupted one
exactly one, where it says; and no prompt holds an eval-split or held-out question (a reward model
trained on them would judge their answers from memory)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from expectations.prompt_checks import decontamination, prompt_columns
from tasks.domain.config import ValidationConfig
from tasks.domain.steps import BAD, GOOD, StepExample, StepKind, labels_consistent

SUITE_NAME = "reasoning_steps"


def flatten_steps(examples: Sequence[StepExample], eval_questions: Sequence[str] = (),
                  heldout_questions: Sequence[str] = (),
                  located: tuple[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """One row per example with what the suite checks. `located`: (file, line of each example)."""
    shared = prompt_columns([x.prompt for x in examples], eval_questions, heldout_questions, located)
    return pd.DataFrame.from_records([{
        **shared[i],
        "id": example.id,
        "kind": example.kind,
        "labels_binary": all(label in (GOOD, BAD) for label in example.labels),
        "label_per_step": len(example.labels) == len(example.steps),
        "bad_step_as_claimed": labels_consistent(example),
        "empty_steps": sum(not step.strip() for step in example.steps),
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
        *decontamination(validation),
    ])
