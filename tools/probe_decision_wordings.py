"""Does the reader's yes/no decision read unseen wordings the same from one seed to the next?

Retrains only the question part of a model's decision (nn/reader.py YesNoDecision: its LayerNorm
and linear layer; the scene model, the head copy and the LM stay as they are) with the real
``decision_loss`` on the demo train split's scenes, 300 steps from a fresh init, for several seeds
and two sets of training questions:

- ``trained``: the yes/no family's 11 trained wordings, and as gate negatives the other families'
  trained wordings and the general training questions (the session-15 recipe);
- ``generated``: as shipped, half of the yes/no questions from questions.DECISION_WORDINGS and the
  gate negatives with questions.DECISION_GATE_NEGATIVES.

Then the decision alone (no LM) on every labelled scene of the test split, for the yes/no family's
held-out wordings (evaluation's; never trained), and the validation split for its validation
wordings; and the largest gate on every other family's unseen wordings and evaluation's general
questions, before and after the yes/no-opening rule (questions.opens_as_yes_no). Scenes where the
IMU window spans two activities count too, so the head's own errors cap every number. Numbers in
docs/ANSWERS.md ("A decision that reads any wording").

    .venv/bin/python tools/probe_decision_wordings.py [--model models/demo] [--seeds 4]
"""

from __future__ import annotations

import argparse
import random
from types import SimpleNamespace

import torch

from frozen_vlm_perception.config import SyncConfig
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import load_embeddings
from frozen_vlm_perception.evaluation.scene_outputs import run_scene_model
from frozen_vlm_perception.pipeline import PerceptionPipeline
from frozen_vlm_perception.questions import (
    FAMILIES,
    FAMILY_NAMES,
    GENERAL_QUESTIONS,
    GENERAL_TRAINING_QUESTIONS,
    opens_as_yes_no,
    wordings,
    yes_no_truth,
)
from frozen_vlm_perception.training.adapter import decision_loss

STEPS, SCENES, PER_SCENE = 300, 32, 8
SESSION_15_NEGATIVES = tuple(q for f in FAMILY_NAMES if f != "yes_no" for q in wordings(f)) + tuple(
    GENERAL_TRAINING_QUESTIONS
)


def labelled_scenes(pipeline: PerceptionPipeline, bag: str) -> tuple[torch.Tensor, list[str]]:
    config = pipeline.config
    samples = load_embeddings(
        bag, data=DataConfig(bag=bag), vision=config.vision, imu=config.imu, sync=SyncConfig(), progress=False
    )
    latents = run_scene_model(pipeline, samples, "fused")["latents"]
    known = samples.label_id >= 0
    return latents[known], [samples.label_names[i] for i in samples.label_id[known].tolist()]


def decided_right(pipeline, latents, labels, questions) -> float:
    right = 0
    for question in questions:
        gate, yes = (pipeline.question_decision(latents, [question] * len(latents)) > 0).T.tolist()
        truths = [yes_no_truth(question, label) for label in labels]
        right += sum(g and y == t for g, y, t in zip(gate, yes, truths, strict=True))
    return right / (len(questions) * len(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    pipeline = PerceptionPipeline.from_model_dir(args.model, device="cpu")
    decision = pipeline.scene_model.reader.decision
    train = labelled_scenes(pipeline, "demo_bags/train")
    test = labelled_scenes(pipeline, "demo_bags/test")
    val = labelled_scenes(pipeline, "demo_bags/val")
    sets = [wordings(f, held_out=True) + wordings(f, validation=True) for f in FAMILY_NAMES if f != "yes_no"]
    others = [q for family in sets for q in family]
    others += [q for q, _ in GENERAL_QUESTIONS]
    task = SimpleNamespace(language=pipeline.language)
    print("| training questions | seed | held-out wordings, test | validation wordings, val "
          "| top gate elsewhere (after the yes/no-opening rule) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, share, negatives in (("trained", 0.0, SESSION_15_NEGATIVES), ("generated", 0.5, None)):
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            rng = random.Random(seed)
            decision.question_norm.reset_parameters()
            decision.asks.reset_parameters()
            parts = list(decision.question_norm.parameters()) + list(decision.asks.parameters())
            optimizer = torch.optim.AdamW(parts, lr=1e-3)
            extra = {} if negatives is None else {"negatives": negatives}
            for _ in range(STEPS):
                rows = torch.randint(len(train[1]), (SCENES,))
                labels = [train[1][i] for i in rows.tolist()]
                loss = decision_loss(
                    task, pipeline.scene_model.reader, train[0][rows], labels, rng, PER_SCENE,
                    generated_share=share, **extra,
                )  # fmt: skip
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                held_out = decided_right(pipeline, *test, FAMILIES["yes_no"].held_out)
                validation = decided_right(pipeline, *val, FAMILIES["yes_no"].validation)
                embeds, mask = pipeline.language.question_embeddings(others)
                gates = torch.sigmoid(decision.question_scores(embeds, mask)[:, 0])
                opens = torch.tensor([opens_as_yes_no(q) for q in others])
            top = int(gates.argmax())
            print(
                f"| {name} | {seed} | {held_out:.3f} | {validation:.3f} | {gates[top]:.2f} "
                f"({others[top]!r}) ({gates[opens].max():.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
