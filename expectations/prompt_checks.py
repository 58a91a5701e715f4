"""What the suites over training prompts share (preference pairs, step-labelled answers): each
row's place in its file and how much of an eval-split or held-out question its prompt holds, and
the two expectations that bound those overlaps."""
from __future__ import annotations

from collections.abc import Sequence

from tasks.domain.config import ValidationConfig
from tasks.domain.contamination import NGRAM, overlap_with
from tasks.domain.records import Message


def prompt_columns(prompts: Sequence[Sequence[Message]], eval_questions: Sequence[str] = (),
                   heldout_questions: Sequence[str] = (),
                   located: tuple[str, Sequence[int]] | None = None) -> list[dict]:
    """Per prompt: `file` and `line` (where `located` gives them), `eval_overlap`, `heldout_overlap`."""
    users = ["\n".join(m.content for m in prompt if m.role == "user") for prompt in prompts]
    eval_overlap = overlap_with(users, eval_questions) if eval_questions else [0.0] * len(users)
    heldout_overlap = overlap_with(users, heldout_questions) if heldout_questions else [0.0] * len(users)
    return [{**({"file": located[0], "line": located[1][i]} if located else {}),
             "eval_overlap": eval_overlap[i], "heldout_overlap": heldout_overlap[i]} for i in range(len(users))]


def decontamination(validation: ValidationConfig) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="eval_overlap", max_value=validation.max_eval_overlap,
                                          meta={"rule": f"no prompt holds an eval-split question (at most "
                                                        f"{validation.max_eval_overlap:.0%} of its {NGRAM}-word runs)"}),
        gxe.ExpectColumnValuesToBeBetween(column="heldout_overlap", max_value=validation.max_heldout_overlap,
                                          meta={"rule": f"no prompt holds a held-out question (at most "
                                                        f"{validation.max_heldout_overlap:.0%} of its {NGRAM}-word runs)"}),
    ]
