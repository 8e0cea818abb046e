"""Question reader: a few pseudo-tokens written from the scene and the question together.

The scene's pseudo-tokens (the resampler's latents) are computed when the frame arrives, before any
question, so they cannot decide a yes or a no: the frozen 135M LM then has to apply the question's
predicate to the activity itself, and it cannot (docs/ANSWERS.md, "What the frozen LM cannot do").
The reader's learned queries attend to the scene's pseudo-tokens *and* the question's token
embeddings (as InstructBLIP's instruction-aware queries do), and its tokens go right after the
question, where the LM only has to read the deciding word.

    scene (B, K, H) ─┐
                     ├─ project to dim, + kind embedding ─ [attention + feed-forward] x depth ─ (B, M, H)
    question (B, T, H) (the LM's own embeddings of the question's tokens; padding masked)

The output projection starts at zero, so a new reader adds tokens the LM barely notices (zero
vectors: no key, no value) and training starts from the answers of the model it is added to.

With ``decision`` (config.ReaderConfig) the reader also decides a yes/no question itself. Trained
only through the LM's answer loss, where the deciding word is one target token of about twelve, a
reader learned the yes/no of the wordings it was trained on and not of others (docs/ANSWERS.md).
``YesNoDecision`` factors the decision so that each part is simple enough to generalize: from the
question alone, a ``gate`` (is this a yes/no question about the scene?) and, per activity label,
whether the question's predicate holds for it; from the scene alone, the activity probabilities;
P(yes) = sum over labels of P(label) * P(predicate holds for label). They pick between two learned
token sets that are added to the free tokens,

    tokens = free + [gate > 0] * ([yes > 0] * yes_tokens + [yes <= 0] * no_tokens)

and the LM only has to learn to read two fixed patterns, the same for every wording. Training feeds
the true gate and answer instead of the predicted ones (``decision``), so the LM learns to read the
patterns while the logits learn to choose them; the token sets start at the LM's embeddings of a
short text that states the answer ("Answer: yes." / "Answer: no.", set by training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frozen_vlm_perception.config import ReaderConfig
from frozen_vlm_perception.nn.heads import ActivityHead
from frozen_vlm_perception.nn.resampler import perceiver_layers
from frozen_vlm_perception.questions import NO_WORD, YES_WORD, opens_as_yes_no


class QuestionReader(nn.Module):
    def __init__(self, *, config: ReaderConfig, lm_dim: int, num_labels: int = 0):
        super().__init__()
        dim = config.dim
        self.in_proj = nn.Linear(lm_dim, dim)
        self.kind = nn.Parameter(torch.zeros(2, dim))  # 0: scene token, 1: question token
        self.queries = nn.Parameter(torch.randn(config.num_tokens, dim) * 0.02)
        self.layers = perceiver_layers(
            dim=dim, depth=config.depth, heads=config.heads, dim_head=config.dim_head, ff_mult=config.ff_mult
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, lm_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        self.decision = None
        self.decision_starts_answer = config.decision and config.decision_starts_answer
        if config.decision:
            if num_labels < 1:
                raise ValueError("a reader with a decision needs the activity labels (num_labels >= 1)")
            self.decision = YesNoDecision(lm_dim=lm_dim, num_labels=num_labels)
            self.yes_tokens = nn.Parameter(torch.zeros(config.num_tokens, lm_dim))
            self.no_tokens = nn.Parameter(torch.zeros(config.num_tokens, lm_dim))

    @property
    def num_tokens(self) -> int:
        return self.queries.shape[0]

    @property
    def decides(self) -> bool:
        return self.decision is not None

    def forward(
        self,
        scene: Tensor,
        question: Tensor,
        question_mask: Tensor | None = None,
        *,
        decision: Tensor | None = None,
    ) -> Tensor:
        """scene (B, K, H), question (B, T, H), question_mask (B, T) bool (True: a real token; None:
        all real) -> tokens (B, M, H) to place right after the question. ``decision`` (B, 2) in [0, 1]:
        the [gate, yes] to use instead of the reader's own (training); ignored without ``decides``."""
        return self.read(scene, question, question_mask, decision=decision)[0]

    def read(
        self,
        scene: Tensor,
        question: Tensor,
        question_mask: Tensor | None = None,
        *,
        decision: Tensor | None = None,
        may_decide: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``forward``, and the [gate, yes] logits (B, 2) (None without ``decides``).
        ``may_decide`` (B,) bool: the questions that open as a yes/no question (questions.opens_as_yes_no);
        the others' gate is shut, whatever the learned gate says."""
        if scene.ndim != 3 or question.ndim != 3 or scene.shape[0] != question.shape[0]:
            raise ValueError(
                f"scene (B, K, H) and question (B, T, H) must share B, got {tuple(scene.shape)} and "
                f"{tuple(question.shape)}"
            )
        media = torch.cat(
            [self.in_proj(scene) + self.kind[0], self.in_proj(question.to(scene.dtype)) + self.kind[1]], dim=1
        )
        log_weights = None
        if question_mask is not None:
            present = torch.cat([question_mask.new_ones(scene.shape[:2]), question_mask.bool()], dim=1)
            log_weights = torch.zeros(present.shape, dtype=media.dtype, device=media.device)
            log_weights = log_weights.masked_fill(~present.to(media.device), float("-inf"))
        x = self.queries.expand(scene.shape[0], -1, -1)
        for attn, ff in self.layers:
            x = attn(media, x, log_weights) + x
            x = ff(x) + x
        tokens = self.out_proj(self.norm(x))
        if self.decision is None:
            return tokens, None
        logits = self.decision(scene, question.to(scene.dtype), question_mask)
        if may_decide is not None:  # a learned gate opened on "How many legs does a dog have?" (0.65-0.84)
            shut = ~may_decide.to(device=logits.device, dtype=torch.bool)
            logits = torch.stack([logits[:, 0].masked_fill(shut, float("-inf")), logits[:, 1]], dim=1)
        # Its own decision is taken whole (logit > 0), as training feeds it: the LM learned to read the
        # yes set and the no set, not a blend (a blend read as "no"), and a gate of 0.1 on a question
        # that is not yes/no still added a tenth of a set to it.
        chosen = (logits > 0).to(tokens.dtype) if decision is None else decision.to(tokens.dtype)
        gate, yes = chosen[:, 0, None, None], chosen[:, 1, None, None]
        return tokens + gate * (yes * self.yes_tokens + (1 - yes) * self.no_tokens), logits


class YesNoDecision(nn.Module):
    """[gate, yes] logits of a yes/no question about a scene, factored into a question part and a
    scene part (so a new wording only has to be read right, not re-learned with every scene).

    Question: every token (B, T, H) scores the gate and, per label, whether the question's
    predicate holds for it (LayerNorm -> Linear, (B, T, 1 + N)), pooled over the real tokens by a
    log-mean-exp, a soft maximum: the words that decide ("sitting", "stairs") speak loudest, and
    words that no trained wording had ("at the moment", "on the ground") do not dilute them as a
    mean of the embeddings did (unseen wordings read right: 9 of 9 against 5 of 9, docs/ANSWERS.md).
    Scene: a copy of the scene model's activity head (kept equal to it by training, so P(label) is
    what ActivityLabel publishes) -> P(label) (B, N).
    P(yes) = sum_l P(label l) sigmoid(holds_l), returned as a logit.
    """

    def __init__(self, *, lm_dim: int, num_labels: int):
        super().__init__()
        self.question_norm = nn.LayerNorm(lm_dim)
        self.asks = nn.Linear(lm_dim, 1 + num_labels)
        self.activity = ActivityHead(dim=lm_dim, num_labels=num_labels)

    def question_scores(self, question: Tensor, question_mask: Tensor | None = None) -> Tensor:
        """question (B, T, H), question_mask (B, T) bool -> pooled logits (B, 1 + N): [gate, holds...]."""
        scores = self.asks(self.question_norm(question))
        if question_mask is None:
            question_mask = torch.ones(question.shape[:2], dtype=torch.bool, device=question.device)
        mask = question_mask.bool().to(question.device)[..., None]
        count = mask.sum(dim=1).clamp(min=1).to(scores.dtype)
        pooled = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=1) - torch.log(count)
        return pooled

    def forward(self, scene: Tensor, question: Tensor, question_mask: Tensor | None = None) -> Tensor:
        """scene (B, K, H), question (B, T, H), question_mask (B, T) bool -> logits (B, 2) [gate, yes]."""
        asks = self.question_scores(question, question_mask)
        p_label = self.activity(scene).softmax(dim=-1)
        p_yes = (p_label * torch.sigmoid(asks[:, 1:])).sum(dim=-1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([asks[:, 0], torch.log(p_yes) - torch.log1p(-p_yes)], dim=1)


def read_as_asked(
    reader: QuestionReader, language, latents: Tensor, questions: list[str]
) -> tuple[Tensor, Tensor | None]:
    """A reader's tokens (B, M, H) and [gate, yes] logits (B, 2) for scenes' latents (B, K, H) and
    B questions, as answering reads them: the LM's embeddings of the questions, and only questions
    that open as a yes/no question may be decided (questions.opens_as_yes_no)."""
    embeds, mask = language.question_embeddings(questions)
    may_decide = torch.tensor([opens_as_yes_no(q) for q in questions], device=latents.device)
    return reader.read(
        latents, embeds.to(latents.device, latents.dtype), mask.to(latents.device), may_decide=may_decide
    )


def decided_answer_starts(language, logits: Tensor) -> list[list[int]]:
    """Per row of a deciding reader's [gate, yes] logits (B, 2), the token ids its answer begins
    with (ReaderConfig.decision_starts_answer): the LM's first token of "Yes, ..." or "No, ..." where
    the gate opens, nothing where it does not (the LM answers unaided)."""
    yes_id, no_id = (language.first_token_id(f"{word}, the person") for word in (YES_WORD, NO_WORD))
    return [[yes_id if yes > 0 else no_id] if gate > 0 else [] for gate, yes in logits.tolist()]
