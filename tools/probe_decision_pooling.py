"""How should the reader's decision pool a question's tokens so that unseen wordings read right?

The question part of nn/reader.py's YesNoDecision alone, offline, no scene and no LM forward: a
LayerNorm and a linear layer on the LM's input embeddings of a question's tokens give the gate (is
this a yes/no question about the person?) and, per activity label, whether the question's predicate
holds for it. Trained on the trained wordings of every family and the general training questions
(questions.py), scored on the 9 held-out and validation yes/no wordings, which training never sees:
for each wording, the probability given to the right answer for its worst label (above 0.5: every
label right). Three poolings: the mean of the embeddings, the maximum of per-token scores, and
their log-mean-exp (YesNoDecision.question_scores); each with and without random vocabulary tokens
inserted into the training questions. Numbers in docs/ANSWERS.md ("A reader that decides").

    .venv/bin/python tools/probe_decision_pooling.py
"""

from __future__ import annotations

import random

import torch
from torch.nn import functional as F

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS, LanguageConfig
from frozen_vlm_perception.nn.language import FrozenLanguageModel
from frozen_vlm_perception.nn.reader import YesNoDecision
from frozen_vlm_perception.questions import (
    FAMILIES,
    FAMILY_NAMES,
    GENERAL_QUESTIONS,
    GENERAL_TRAINING_QUESTIONS,
    PREDICATES,
    YES_NO_PREDICATE,
)

LABELS = list(DEFAULT_ACTIVITY_LABELS)
STEPS, BATCH = 600, 64


def targets(question: str) -> list[float]:
    """[gate, holds per label]: what the question part should say."""
    if question not in YES_NO_PREDICATE:
        return [0.0] * (1 + len(LABELS))
    holds = PREDICATES[YES_NO_PREDICATE[question]]
    return [1.0] + [float(holds(label)) for label in LABELS]


def with_random_tokens(embeds, mask, vocabulary, rng):
    """Half the rows get 1-4 random vocabulary tokens before their last token (the question mark)."""
    embeds = F.pad(embeds, (0, 0, 0, 4))
    mask = F.pad(mask, (0, 4))
    for row in range(len(embeds)):
        if rng.random() < 0.5:
            n, k = int(mask[row].sum()), rng.randint(1, 4)
            embeds[row, n - 1 + k] = embeds[row, n - 1].clone()
            embeds[row, n - 1 : n - 1 + k] = vocabulary[torch.randint(len(vocabulary), (k,))]
            mask[row, : n + k] = True
    return embeds, mask


def pooled(decision: YesNoDecision, pooling: str, embeds, mask):
    if pooling == "log-mean-exp":
        return decision.question_scores(embeds, mask)
    if pooling == "mean":
        weights = mask.float()[..., None]
        return decision.asks(decision.question_norm((embeds * weights).sum(1) / weights.sum(1)))
    scores = decision.asks(decision.question_norm(embeds)).masked_fill(~mask[..., None], float("-inf"))
    return scores.max(dim=1).values


def main() -> None:
    language = FrozenLanguageModel(config=LanguageConfig())
    vocabulary = language.lm.get_input_embeddings().weight.detach()
    train_q = [q for f in FAMILY_NAMES for q in FAMILIES[f].trained] + list(GENERAL_TRAINING_QUESTIONS)
    unseen_yes_no = list(FAMILIES["yes_no"].held_out + FAMILIES["yes_no"].validation)
    others = [f for f in FAMILY_NAMES if f != "yes_no"]
    unseen_other = [q for f in others for q in FAMILIES[f].held_out + FAMILIES[f].validation]
    unseen_other += [q for q, _ in GENERAL_QUESTIONS]
    train_e, train_m = language.question_embeddings(train_q)
    train_t = torch.tensor([targets(q) for q in train_q])
    print("| pooling | random tokens | yes/no wordings right | worst label, per wording (mean) | top gate, "
          "other questions |")
    print("|---|---|---|---|---|")
    for pooling in ("mean", "max", "log-mean-exp"):
        for augment in (False, True):
            torch.manual_seed(0)
            rng = random.Random(0)
            decision = YesNoDecision(lm_dim=language.hidden_size, num_labels=len(LABELS))
            parts = list(decision.question_norm.parameters()) + list(decision.asks.parameters())
            optimizer = torch.optim.AdamW(parts, lr=1e-3, weight_decay=0.01)
            for _ in range(STEPS):
                rows = torch.randint(len(train_q), (BATCH,))
                embeds, mask = train_e[rows], train_m[rows]
                if augment:
                    embeds, mask = with_random_tokens(embeds, mask, vocabulary, rng)
                logits = pooled(decision, pooling, embeds, mask)
                loss = F.binary_cross_entropy_with_logits(logits, train_t[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                p = torch.sigmoid(pooled(decision, pooling, *language.question_embeddings(unseen_yes_no)))
                want = torch.tensor([targets(q) for q in unseen_yes_no])
                worst = torch.where(want[:, 1:] > 0.5, p[:, 1:], 1 - p[:, 1:]).min(dim=1).values
                worst = torch.where(p[:, 0] > 0.5, worst, torch.zeros_like(worst))  # the gate must open too
                gate_elsewhere = torch.sigmoid(
                    pooled(decision, pooling, *language.question_embeddings(unseen_other))[:, 0]
                ).max()
            print(
                f"| {pooling} | {'yes' if augment else 'no'} | {int((worst > 0.5).sum())} of {len(worst)} "
                f"| {' '.join(f'{w:.2f}' for w in worst.tolist())} ({worst.mean():.2f}) "
                f"| {gate_elsewhere:.2f} |"
            )


if __name__ == "__main__":
    main()
