"""Training settings as dataclasses (the model's own defaults stay in ``frozen_vlm_perception.config``).

``AlignTrainConfig`` is stage 1 (the IMU encoder aligned to the frozen vision encoder),
``AdapterTrainConfig`` is stage 2 (fusion + adapter + head trained through the frozen LM). Which bags
and topics to read is ``DataConfig`` (data/config.py), shared with evaluation. The CLI flags map one
to one onto these fields (see cli_args.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from frozen_vlm_perception.config import FUSION_WEIGHTINGS, ConfigError

# Early-stopping metrics and whether larger is better.
ALIGN_MONITORS = {"val_loss": False, "val_infonce": False, "val_r1": True, "val_r5": True, "val_acc": True}
ADAPTER_MONITORS = {
    "val_loss": False, "val_lm_loss": False, "val_ce": False, "val_acc": True, "val_yes_no_acc": True,
    "val_answer_acc": True, "val_decision_yes_no": True,
}


@dataclass
class AlignTrainConfig:
    """Stage 1: InfoNCE (IMU pooled vs frozen image pooled) + supervised_weight x activity CE."""

    epochs: int = 40
    batch_size: int = 64  # per process; InfoNCE negatives are the other samples of the local batch
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    supervised_weight: float = 1.0  # 0: contrastive only (the ablation)
    # Weight of the token-level term: mean IMU token vs mean frozen vision token (InfoNCE). It puts
    # the IMU *tokens* (what the resampler reads) in the vision token space too; without it their
    # projection would never be trained, since stage 2 keeps the IMU encoder frozen.
    token_weight: float = 0.5
    init_temperature: float = 0.07
    # Training-time IMU augmentation (per window and channel): amplitude scale U(1 -+ this) and
    # Gaussian noise of this std (in g for accel, rad/s for gyro). People and phone mounts differ.
    imu_scale_jitter: float = 0.1
    imu_noise: float = 0.02
    patience: int = 8  # epochs without improvement of ``monitor`` before stopping
    # Retrieval, not val_loss: on the demo data the whole-set InfoNCE rises after a few epochs (the
    # temperature sharpens, confident misses cost more) while R@1/R@5 and accuracy keep improving.
    monitor: str = "val_r5"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: InfoNCE needs negatives")
        if self.lr <= 0 or self.supervised_weight < 0 or self.token_weight < 0:
            raise ConfigError("lr must be > 0, supervised_weight and token_weight >= 0")
        if not 0 <= self.imu_scale_jitter < 1 or self.imu_noise < 0:
            raise ConfigError("imu_scale_jitter must lie in [0, 1) and imu_noise be >= 0")
        if not 0 < self.init_temperature <= 1:
            raise ConfigError(f"init_temperature must lie in (0, 1], got {self.init_temperature}")
        _positive("patience", self.patience)
        if self.monitor not in ALIGN_MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(ALIGN_MONITORS)}, got {self.monitor!r}")


@dataclass
class AdapterTrainConfig:
    """Stage 2: fusion + adapter + activity head, through the frozen LM's next-token loss."""

    epochs: int = 20
    max_steps: int = 1200  # hard cap on LM steps (the LM forward dominates the cost; ~2.4 s each on 2 cores)
    batch_size: int = 16  # per process, for the activity-head loss
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    lm_weight: float = 1.0
    ce_weight: float = 1.0
    lm_loss_every: int = 1  # run the LM loss every n-th step (the head loss runs every step)
    lm_batch_size: int = 8  # samples of each batch that go through the LM
    # Modality dropout: each sample is fused / vision-only / IMU-only with these probabilities, so all
    # three inference modes see training data.
    p_fused: float = 0.5
    p_vision: float = 0.25
    p_imu: float = 0.25
    # Each batch uses alpha ~ U(alpha - j, alpha + j) (clipped to [0.05, 0.95]) so the alpha override
    # users have at inference (pipeline.encode(alpha=...), the node parameter) stays in distribution.
    alpha_jitter: float = 0.2
    # Warm start: this many cheap steps (no LM forward) first pull the pseudo-tokens towards the LM's
    # own embeddings of the scene's caption ("walking upstairs next to a cat"), so the LM starts by
    # reading words it knows; the LM loss then refines them.
    caption_steps: int = 1500
    caption_weight: float = 0.2  # the caption loss's weight during the LM steps (keeps tokens word-like)
    p_general: float = 0.1  # share of LM samples that ask a general question, taught its no-scene answer
    # Share of the other LM samples asked a yes/no question (0: each family the sample can answer
    # equally often). A yes or no is one token of a dozen in the answer loss; more of them is more
    # signal for the word a question reader must decide.
    p_yes_no: float = 0.0
    # Each answer's first token counts this many times in the LM loss (1: a plain mean). For a yes/no
    # answer it is the "Yes" or "No", the one word that decides it; for the other families it is
    # "The", which the LM writes from the start, so the weight costs them nothing.
    first_token_weight: float = 1.0
    # Activity and yes/no answers name the known place after the activity (questions.reference_answer).
    # Without it the LM learns "The person is <activity>." and falls back on it for place questions:
    # held-out place wordings 0.61 -> 1.00, activity and place 0.60 -> 0.96 (docs/ANSWERS.md).
    answers_name_place: bool = True
    reinit: bool = False  # start fusion, adapter and head from a fresh init (the IMU encoder is kept)
    adapter: str = ""  # "resampler" | "linear" with reinit: switch the adapter kind; "": the folder's
    # "fixed" | "gate": how the modalities are weighted (config.FusionConfig.weighting); "": the folder's.
    # A gate that is new to the folder starts at the folder's alpha.
    fusion: str = ""
    p_gate: float = 0.5  # with a gate: share of batches fused by the gate (the rest by a jittered alpha)
    # With a gate: weight of its own loss, which teaches it per sample which modality gives the true
    # label more probability (training/adapter.py gate_loss); the head's loss alone barely moves it.
    gate_weight: float = 1.0
    # A question reader (config.ReaderConfig, nn/reader.py) of this many tokens: added fresh (its
    # output at zero) to a folder without one, trained on where the folder has one of this size;
    # 0: the folder's (none, or the one it has).
    reader_tokens: int = 0
    # Train the question reader alone: the scene model (fusion, adapter, head, alpha) stays as the
    # folder has it, so labels and latents do not change and only the answers can.
    only_reader: bool = False
    # Give the folder's question reader its own yes/no decision (config.ReaderConfig.decision): a gate
    # and a yes logit that pick one of two learned token sets, taught by their own cross-entropy on
    # ``decision_questions`` questions per labelled sample and step (no LM forward, so thousands a
    # minute), while the LM loss, fed the true decision, teaches the token sets.
    reader_decision: bool = False
    decision_weight: float = 1.0
    decision_questions: int = 8
    # Train the reader's decision alone (implies only_reader and reader_decision): everything else,
    # the reader's free tokens included, stays as the folder has it, so only yes/no answers change.
    only_decision: bool = False
    # After the adapter is chosen: steps that refit the activity head alone on its latents (0: none).
    head_steps: int = 1000
    val_every: int = 200  # validate every n steps; 0: after every epoch
    val_lm_samples: int = 32  # validation samples that go through the LM
    # Validation samples asked a yes/no question (trained wordings, true answer yes for half of
    # them), scored by whether the LM's first answer token prefers "Yes" or "No" (val_yes_no_acc).
    val_yes_no_samples: int = 64
    # Validation samples asked one question each in a validation wording (questions.py: never
    # trained, never evaluated), families in turn; the LM's greedy answers are scored by the
    # evaluation's rules (answers.answer_is_correct): val_answer_acc, the mean over families, and
    # val_answer_acc_<family>. 0: not asked.
    val_answer_samples: int = 64
    patience: int = 4  # validations without improvement before stopping
    # The LM's answer loss alone: the head is refit on the kept latents afterwards (head_steps), and
    # head CE + LM loss kept a half-trained adapter (step 600 of 1200, docs/ANSWERS.md).
    monitor: str = "val_lm_loss"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        for name in ("epochs", "max_steps", "batch_size", "lm_loss_every", "lm_batch_size", "patience"):
            _positive(name, getattr(self, name))
        if self.lr <= 0 or self.lm_weight < 0 or self.ce_weight < 0 or self.caption_weight < 0:
            raise ConfigError("lr must be > 0, lm_weight, ce_weight and caption_weight >= 0")
        if self.adapter not in ("", "resampler", "linear"):
            raise ConfigError(f"adapter must be resampler or linear, got {self.adapter!r}")
        if self.adapter and not self.reinit:
            raise ConfigError("choosing the adapter kind in stage 2 needs reinit (--reinit): a new adapter")
        if self.fusion not in ("", *FUSION_WEIGHTINGS):
            raise ConfigError(f"fusion must be one of {FUSION_WEIGHTINGS}, got {self.fusion!r}")
        if self.gate_weight < 0:
            raise ConfigError(f"gate_weight must be >= 0, got {self.gate_weight}")
        if not 0 <= self.p_gate <= 1:
            raise ConfigError(f"p_gate must lie in [0, 1], got {self.p_gate}")
        if self.caption_steps < 0 or self.head_steps < 0 or not 0 <= self.p_general <= 1:
            raise ConfigError("caption_steps and head_steps must be >= 0 and p_general in [0, 1]")
        if not 0 <= self.p_yes_no <= 1:
            raise ConfigError(f"p_yes_no must lie in [0, 1], got {self.p_yes_no}")
        if self.first_token_weight < 0 or self.val_yes_no_samples < 0 or self.val_answer_samples < 0:
            raise ConfigError("first_token_weight, val_yes_no_samples and val_answer_samples must be >= 0")
        if self.monitor == "val_answer_acc" and self.val_answer_samples == 0:
            raise ConfigError("monitor val_answer_acc needs val_answer_samples > 0")
        probs = (self.p_fused, self.p_vision, self.p_imu)
        if min(probs) < 0 or sum(probs) <= 0:
            raise ConfigError(f"modality probabilities must be >= 0 and not all 0, got {probs}")
        if not 0 <= self.alpha_jitter <= 0.5:
            raise ConfigError(f"alpha_jitter must lie in [0, 0.5], got {self.alpha_jitter}")
        if self.monitor not in ADAPTER_MONITORS:
            raise ConfigError(f"monitor must be one of {sorted(ADAPTER_MONITORS)}, got {self.monitor!r}")
        if not 0 <= self.reader_tokens <= 64:
            raise ConfigError(f"reader_tokens must lie in [0, 64], got {self.reader_tokens}")
        if self.decision_weight < 0 or self.decision_questions < 1:
            raise ConfigError("decision_weight must be >= 0 and decision_questions >= 1")
        if (self.only_reader or self.only_decision) and (self.reinit or self.adapter or self.fusion):
            raise ConfigError("only_reader keeps the folder's scene model: no reinit, adapter or fusion")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
