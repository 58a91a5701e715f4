"""The dataset card: a README.md beside each built dataset, in the style of a Hugging Face dataset
card (YAML header, then what the data is, where it came from, how it was checked)."""
from __future__ import annotations

from typing import Any

import yaml


def _size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < bound:
            return label
    return "100K<n<1M"


def dataset_card(manifest: dict[str, Any], *, license_id: str, sources: list[str], validation: dict[str, Any]) -> str:
    """Markdown for one dataset. `manifest` is the dataset's manifest.json; `validation` holds the
    GX outcome (`success`, `summary`, `skipped`, `contamination`).

    >>> card = dataset_card({"domain": "devops", "sha256": "ab" * 32, "rows": {"train": 9, "eval": 1},
    ...     "counts_per_principle": {"p": {"train": 9, "eval": 1}}, "generator": {"name": "offline"}, "seed": 1,
    ...     "files": {"train": "t.jsonl", "eval": "e.jsonl"}}, license_id="cc-by-4.0", sources=["framework"],
    ...     validation={"success": True, "summary": "10 rows passed 14 expectations", "skipped": {}, "contamination": {}})
    >>> card.splitlines()[1], "| p | 9 | 1 |" in card
    ('license: cc-by-4.0', True)
    """
    rows = manifest["rows"]
    header = {"license": license_id, "language": ["en"], "task_categories": ["text-generation"],
              "size_categories": [_size_category(rows["train"] + rows["eval"])],
              "pretty_name": f"reasoning-slm {manifest['domain']} reasoning dataset",
              "configs": [{"config_name": "default", "data_files": [
                  {"split": "train", "path": manifest["files"]["train"]},
                  {"split": "eval", "path": manifest["files"]["eval"]}]}]}
    counts = manifest.get("counts_per_principle", {})
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# reasoning-slm: {manifest['domain']}", "",
             f"Supervised conversations in the OpenAI `messages` format that teach a small model to answer "
             f"{manifest['domain']} questions with terse, numbered reasons. Built by reasoning-slm from a "
             "reasoning framework (first principles, explanatory principles, core logic, compressed blocks).", "",
             "| | rows |", "|---|---|", f"| train | {rows['train']} |", f"| eval | {rows['eval']} |"]
    for key in ("generated", "exact_duplicates", "near_duplicates", "repeated_answers"):
        if key in rows:
            lines.append(f"| {key.replace('_', ' ')} | {rows[key]} |")
    lines += ["", "## Rows per final principle", "", "| principle | train | eval |", "|---|---|---|"]
    lines += [f"| {name} | {c.get('train', 0)} | {c.get('eval', 0)} |" for name, c in sorted(counts.items())]
    lines += ["", "## Where it came from", "",
              f"- generator: `{manifest['generator'].get('name')}`"
              + (f" (model `{manifest['generator']['model']}`)" if manifest["generator"].get("model") else ""),
              f"- sources: {', '.join(f'`{s}`' for s in sources) or '`framework`'}",
              f"- seed: {manifest.get('seed')}; train file sha256 `{manifest['sha256']}`",
              "- the eval split holds whole paraphrase groups out, per final principle", "",
              "## How it was checked", "",
              f"Great Expectations suite `reasoning_dataset`: **{'passed' if validation['success'] else 'FAILED'}**. "
              f"{validation['summary']}"]
    for rule, reason in (validation.get("skipped") or {}).items():
        lines.append(f"- not checked: {rule} ({reason})")
    figures = validation.get("contamination") or {}
    if figures:
        lines += ["", "## Contamination", ""]
    if "heldout_questions" in figures:
        lines.append(f"- Checked against {int(figures['heldout_questions'])} held-out questions in 8-word runs: "
                     f"{int(figures['rows_sharing_heldout_ngrams'])} rows share any run, "
                     f"{int(figures['rows_over_heldout_threshold'])} exceed the threshold; "
                     f"the largest share of one question found in a row is {figures['heldout_overlap_max']:.2f}.")
    if "eval_questions" in figures:
        lines.append(f"- Eval split against training rows: of {int(figures['eval_questions'])} eval questions, "
                     f"{int(figures['eval_questions_over_half'])} have more than half of their 8-word runs in one "
                     f"training row (template siblings), {int(figures['eval_questions_over_threshold'])} exceed the "
                     f"threshold; largest {figures['eval_overlap_max']:.2f}, mean {figures['eval_overlap_mean']:.2f}.")
    lines += ["", "## License", "", f"`{license_id}`.", ""]
    return "\n".join(lines)
