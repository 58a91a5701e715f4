"""Best-of-n against greedy decoding on the held-out questions: the champion chat model answers
each question greedily, once sampled, and best-of-n (n samples, the process reward model's pick);
each answer is judged by held-out style (the reward model plays no part in it) and by the reward
model's mean step score. Prints a table and every answer verbatim; writes JSON beside.

    .venv/bin/python tests/bench/best_of_heldout.py [--n 4] [--model models:/reasoning-slm-devops@champion]

The step reward of the best-of-n answers is the reward model grading its own pick: read held-out
style as the independent figure."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from flows.cli.common import champion_uri, registered_generator, registered_scorer, reward_model_uri  # noqa: E402 - importable only after the sys.path lines above
from tasks.adapters.model.best_of import best_of  # noqa: E402 - importable only after the sys.path lines above
from tasks.adapters.ops.config_files import load_framework, load_heldout, load_pipeline_config  # noqa: E402 - importable only after the sys.path lines above
from tasks.adapters.ops.settings import paths  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.evaluation import heldout_style  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.numbers import fmt  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.steps import answer_steps  # noqa: E402 - importable only after the sys.path lines above


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipeline.yaml")
    parser.add_argument("--model", help="chat model URI (default: the configured domain's @champion)")
    parser.add_argument("--reward-model", help="reward model URI (default: the domain's -prm@champion)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    config = load_pipeline_config(args.config)
    framework = load_framework(config.framework)
    heldout = load_heldout(config.evaluation, framework.domain)
    questions = [q.question for q in heldout.questions] if heldout else []
    generator = registered_generator(args.model or champion_uri(args.config))
    scorer = registered_scorer(reward_model_uri(args.config, args.reward_model))
    started = time.perf_counter()
    greedy = generator.reply(questions, max_new_tokens=args.max_new_tokens, seed=args.seed)
    rows = []
    for question, plain in zip(questions, greedy, strict=True):
        conversation = generator.conversation(question)
        picked = best_of(generator, scorer, conversation, args.n, args.max_new_tokens, args.temperature, args.seed)
        one = picked.candidates[0]  # the first sample alone: what sampling without a judge gives
        (plain_scores,) = scorer.score_steps([conversation], [answer_steps(plain)])
        rows.append({"question": question,
                     "greedy": plain, "greedy_style": heldout_style(question, plain, framework.style),
                     "greedy_step_reward": _mean(plain_scores) if plain_scores else 0.0,
                     "sample": one[0], "sample_style": heldout_style(question, one[0], framework.style),
                     "sample_step_reward": _mean(one[1].scores) if one[1].scores else 0.0,
                     "best": picked.text, "best_style": heldout_style(question, picked.text, framework.style),
                     "best_step_reward": _mean(picked.candidates[picked.chosen][1].scores) or 0.0,
                     "candidates": picked.metadata()["candidates"]})
    summary = {f"{way}_{measure}": _mean(r[f"{way}_{measure}"] for r in rows)
               for way in ("greedy", "sample", "best") for measure in ("style", "step_reward")}
    summary |= {"questions": len(rows), "n": args.n, "seconds": time.perf_counter() - started}
    out = paths().home / "bench" / "best_of_heldout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print("| decoding | held-out style | mean step reward |\n|---|---|---|")
    for way, label in (("greedy", "greedy"), ("sample", f"one sample (T={args.temperature})"),
                       ("best", f"best of {args.n}")):
        print(f"| {label} | {fmt(summary[f'{way}_style'])} | {fmt(summary[f'{way}_step_reward'])} |")
    for row in rows:
        print(f"\n## {row['question']}\n- greedy ({row['greedy_style']:.2f}): {row['greedy']}\n"
              f"- best of {args.n} ({row['best_style']:.2f}): {row['best']}")
    print(f"\n{summary['seconds']:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
