"""Best-of-n decoding: sample n answers, let the process reward model score every step, return the
answer whose weakest step scores highest (`rslm chat --best-of`, `rslm serve` with `best_of`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasks.adapters.model.inference import DEFAULT_MAX_NEW_TOKENS, Generator
from tasks.adapters.model.reward_model import RewardScorer, StepScores
from tasks.domain.records import Message
from tasks.domain.steps import answer_steps, best_index

DEFAULT_TEMPERATURE = 0.7  # best-of-n needs different answers to choose from: greedy gives n copies


@dataclass
class BestOf:
    text: str
    completion_tokens: int
    chosen: int
    candidates: list[tuple[str, StepScores]]

    def metadata(self) -> dict:
        """What a response carries besides the answer: every candidate's step scores, and which won."""
        return {"best_of": len(self.candidates), "chosen": self.chosen,
                "candidates": [{"text": text, **scores.to_dict()} for text, scores in self.candidates]}


def best_of(generator: Generator, scorer: RewardScorer, conversation: Sequence[Message], n: int,
            max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, seed: int = 0) -> BestOf:
    """n sampled answers (at `temperature`, or the default where it is 0), the best by the reward model."""
    sampled = generator.sample(conversation, n, max_new_tokens, temperature or DEFAULT_TEMPERATURE, seed)
    steps = [answer_steps(text) for text, _ in sampled]
    scores = [StepScores(s, v) for s, v in zip(steps, scorer.score_steps([conversation] * n, steps), strict=True)]
    chosen = best_index([s.answer for s in scores])
    return BestOf(text=sampled[chosen][0], completion_tokens=sampled[chosen][1], chosen=chosen,
                  candidates=[(text, s) for (text, _), s in zip(sampled, scores, strict=True)])
