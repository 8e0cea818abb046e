"""The ceiling of any adapter: what can the frozen LM answer if the pseudo-tokens are free parameters?

Every (activity, place) pair of the demo gets its own K pseudo-tokens, trained directly with the LM's
answer loss on the trained wordings of every question family (questions.py); no sensors, no adapter.
An adapter can at best write these tokens for a scene, so a family that free tokens cannot teach the
frozen LM is out of reach for any adapter whose tokens do not depend on the question. Scored with the
evaluation's rules (evaluation/qa.py) on trained and held-out wordings.

    .venv/bin/python tools/probe_free_tokens.py [--steps 300] [--eval-every 150]

Takes about 25 minutes on 2 CPU cores (SmolLM2-135M, 16 samples a step). docs/ANSWERS.md has the result.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS, LanguageConfig
from frozen_vlm_perception.data.photos import place_keys
from frozen_vlm_perception.evaluation.qa import pick_wording, score_answer
from frozen_vlm_perception.nn.language import FrozenLanguageModel
from frozen_vlm_perception.questions import FAMILY_NAMES, make_qa, scene_caption

NUM_TOKENS = 8  # K of models/demo


def caption_tokens(language: FrozenLanguageModel, label: str, place: str) -> torch.Tensor:
    """The start point: the LM's embeddings of the scene's caption, tiled to K tokens (K, H)."""
    ids = language.tokenizer(" " + scene_caption(label, place), add_special_tokens=False)["input_ids"]
    ids = (ids * (NUM_TOKENS // len(ids) + 1))[:NUM_TOKENS]
    return language.embed_ids(torch.tensor(ids)).detach().clone()


@torch.no_grad()
def accuracy(language, tokens, scenes, labels, places, rounds: int = 2) -> dict[str, float]:
    """Share of correct answers per family and wording kind, every scene asked ``rounds`` wordings."""
    result = {}
    for family in FAMILY_NAMES:
        for held_out in (False, True):
            right = total = 0
            for round_ in range(rounds):
                by_question: dict[str, list[int]] = {}
                for i, (label, _) in enumerate(scenes):
                    question = pick_wording(family, held_out=held_out, index=round_ + i, label=label)
                    by_question.setdefault(question, []).append(i)
                for question, rows in by_question.items():
                    answers = language.generate_batch(tokens[rows], question, max_new_tokens=14)
                    for i, generation in zip(rows, answers, strict=True):
                        label, place = scenes[i]
                        scored = score_answer(
                            family, question, generation.text, label=label, place=place, labels=labels,
                            place_keys=places,
                        )  # fmt: skip
                        right += scored.correct
                        total += 1
            result[f"{family} {'held-out' if held_out else 'trained'}"] = right / total
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    language = FrozenLanguageModel(config=LanguageConfig())
    labels, places = list(DEFAULT_ACTIVITY_LABELS), place_keys()
    scenes = [(label, place) for label in labels for place in places]
    tokens = torch.nn.Parameter(torch.stack([caption_tokens(language, *scene) for scene in scenes]))
    optimizer = torch.optim.Adam([tokens], lr=args.lr)
    rng = random.Random(0)

    def show(step: int) -> None:
        scores = accuracy(language, tokens, scenes, labels, places)
        print(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)

    show(0)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = [rng.randrange(len(scenes)) for _ in range(16)]
        pairs = [make_qa(*scenes[i], has_vision=True, rng=rng) for i in rows]
        loss = language.answer_loss(tokens[rows], [p.question for p in pairs], [p.answer for p in pairs])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            print(f"step {step}: loss {loss.item():.3f}, {(time.perf_counter() - started) / step:.2f} s/step")
        if step % args.eval_every == 0 or step == args.steps:
            show(step)


if __name__ == "__main__":
    main()
