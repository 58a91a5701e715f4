"""The process reward model on hand-written answers outside every pattern, ProcessBench-style
(issue 30 part 6): each held-out question's reference as written and with one planted false or
irrelevant step (`configs/probes/steps/<domain>.yaml`). Prints the F1 of "finds the earliest wrong
step" and "says none when none is wrong", with its bootstrap interval over the questions, and
every answer's step scores; writes JSON beside.

    .venv/bin/python tests/bench/processbench.py [--framework configs/frameworks/cs.yaml]
        [--reward-model models:/reasoning-slm-cs-prm/2] [--probes my-answers.yaml]

The reward stage measures the same figures on every reward model it trains
(`prm/heldout/out_of_framework/*`), and gates on them where `reward.min_out_of_framework_f1` is set."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from flows.cli.common import registered_scorer, reward_model_uri  # noqa: E402 - importable only after the sys.path lines above
from tasks.adapters.ops.config_files import load_framework, load_model, load_pipeline_config, load_step_probes  # noqa: E402 - importable only after the sys.path lines above
from tasks.adapters.ops.settings import paths  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.config import StepProbeSet  # noqa: E402 - importable only after the sys.path lines above
from tasks.domain.steps import earliest_wrong, step_probe_figures  # noqa: E402 - importable only after the sys.path lines above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipeline.yaml")
    parser.add_argument("--framework", help="framework YAML (default: the config's); its domain picks the probes")
    parser.add_argument("--reward-model", help="reward model URI (default: the domain's -prm@champion)")
    parser.add_argument("--probes", help="a StepProbeSet YAML of your own (default: the domain's step probes)")
    parser.add_argument("--threshold", type=float, default=0.5, help="a step scored below this is wrong")
    args = parser.parse_args()
    config = load_pipeline_config(args.config)
    domain = load_framework(args.framework or config.framework).domain
    probes = load_model(StepProbeSet, Path(args.probes)) if args.probes else load_step_probes(config.evaluation, domain)
    if probes is None:
        sys.exit(f"{domain}: no step probes under {config.evaluation.step_probes_dir}")
    default = f"models:/{config.tracking.reward_model(domain)}@champion" if args.framework else None
    scorer = registered_scorer(reward_model_uri(args.config, args.reward_model or default))
    scores = scorer.score_steps([scorer.conversation(a.question) for a in probes.answers],
                                [a.steps for a in probes.answers])
    questions, wrong_steps = [a.question for a in probes.answers], [a.wrong_step for a in probes.answers]
    figures = step_probe_figures(questions, wrong_steps, scores, args.threshold)
    print(f"{domain}: {len(probes.answers)} answers to {len(set(questions))} questions; finds the wrong step "
          f"{figures['erroneous']:.2f}, says none when none is wrong {figures['correct']:.2f}, F1 {figures['f1']:.2f} "
          f"(95% interval over questions {figures['f1_low']:.2f}-{figures['f1_high']:.2f})")
    print(f"planted step scored below the true step it replaced: {figures['planted_below_true']:.2f} (0.5: blind to it)")
    rows = []
    for answer, step_scores in zip(probes.answers, scores, strict=True):
        found = earliest_wrong(step_scores, args.threshold)
        mark = "ok " if found == answer.wrong_step else "MISS"
        print(f"{mark} wrong={answer.wrong_step} found={found} scores={' '.join(f'{s:.2f}' for s in step_scores)} "
              f"| {answer.question}")
        rows.append({"question": answer.question, "steps": answer.steps, "wrong_step": answer.wrong_step,
                     "found": found, "scores": step_scores})
    # a probe file is named for its domain (steps/devops.yaml, steps-dev/devops.yaml): its folder tells them apart
    name = f"{Path(args.probes).parent.name}-{Path(args.probes).stem}" if args.probes else domain
    out = paths().home / "bench" / f"processbench-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"figures": figures, "answers": rows}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
