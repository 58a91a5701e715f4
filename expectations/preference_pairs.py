"""The `reasoning_preferences` expectation suite and the flat table it runs on: one row per
preference pair. Chosen must pass the answer rules, rejected must differ and break the rule its
pair claims, and no prompt may hold an eval-split or held-out question (DPO on them would make
their evaluation look learned when it was copied)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from expectations.prompt_checks import decontamination, prompt_columns
from tasks.domain.config import ValidationConfig
from tasks.domain.framework import Framework
from tasks.domain.metrics import hedges, is_structured, word_count
from tasks.domain.preferences import RULES, PreferencePair, broken_rule

SUITE_NAME = "reasoning_preferences"


def flatten_pairs(pairs: Sequence[PreferencePair], framework: Framework, pool: dict[str, list[str]],
                  eval_questions: Sequence[str] = (), heldout_questions: Sequence[str] = (),
                  located: tuple[str, Sequence[int]] | None = None) -> pd.DataFrame:
    """One row per pair with what the suite checks. `located`: (file, line of each pair), so a
    failure names the line of the pairs file to look at."""
    shared = prompt_columns([x.prompt for x in pairs], eval_questions, heldout_questions, located)
    return pd.DataFrame.from_records([{
        **shared[i],
        "id": pair.id,
        "kind": pair.kind,
        "chosen_words": word_count(pair.chosen),
        "chosen_structured": is_structured(pair.chosen),
        "chosen_hedged": bool(hedges(pair.chosen, framework.style.banned_phrases)),
        "rejected_differs": pair.rejected.strip() != pair.chosen.strip(),
        "breaks_claimed_rule": broken_rule(pair, framework, pool),
    } for i, pair in enumerate(pairs)])


def build_suite(framework: Framework, validation: ValidationConfig):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    style = framework.style

    def rule(text: str) -> dict:
        return {"rule": text}

    return gx.ExpectationSuite(name=SUITE_NAME, expectations=[
        gxe.ExpectColumnValuesToNotBeNull(column="id", meta=rule("every pair has an id")),
        gxe.ExpectColumnValuesToBeUnique(column="id", meta=rule("pair ids are unique")),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=list(RULES), meta=rule("a known rejection kind")),
        gxe.ExpectColumnValuesToBeBetween(column="chosen_words", min_value=style.min_answer_words,
                                          max_value=style.max_answer_words,
                                          meta=rule(f"chosen answers are {style.min_answer_words}-"
                                                    f"{style.max_answer_words} words")),
        gxe.ExpectColumnValuesToBeInSet(column="chosen_structured", value_set=[True],
                                        meta=rule("chosen answers are 1-3 numbered reasons")),
        gxe.ExpectColumnValuesToBeInSet(column="chosen_hedged", value_set=[False],
                                        meta=rule("chosen answers use no hedging filler")),
        gxe.ExpectColumnValuesToBeInSet(column="rejected_differs", value_set=[True],
                                        meta=rule("rejected differs from chosen")),
        gxe.ExpectColumnValuesToBeInSet(column="breaks_claimed_rule", value_set=[True],
                                        meta=rule("rejected breaks the rule its pair claims")),
        *decontamination(validation),
    ])
