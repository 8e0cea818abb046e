"""Stage 2 (``fvp train adapter``): train fusion + adapter + activity head through the frozen LM.

Starting from the stage-1 model folder, the frozen vision encoder (its cached outputs), the IMU
encoder (frozen now, so the alignment of stage 1 is kept) and the LM are fixed. What learns:

- the fusion's modality embeddings, the adapter (Perceiver Resampler or the linear layer) and the
  activity head;
- from the frozen LM's next-token loss on template answers built from the labels
  ("What is the person doing?" -> "The person is walking upstairs.", and with a place, "Where is the
  person and what are they doing?" -> "The person is walking upstairs at a table with a cup of
  coffee."; see questions.py reference_answer), the gradient reaching the scene's pseudo-tokens
  through the LM;
- plus the activity head's cross-entropy on the latents.

Modality dropout: each sample is randomly fused, vision-only or IMU-only, so all three inference
modes are trained (a robot whose IMU drops out must still get answers). The place question is only
asked when the frame is used: an IMU window cannot know the place. The fusion weight alpha is
jittered per batch around the configured value, because it is a user-facing knob at inference; with a
learned gate (``--fusion gate``) a share of the batches is fused by the gate instead. At the end, the
fixed alpha is chosen on the validation data (training/fusion.py) and stored in the folder.

The LM forward+backward is the expensive part (SmolLM2-135M on a CPU: seconds per step), so only
``lm_batch_size`` samples of a batch go through it, every ``lm_loss_every``-th step, and training
stops after ``max_steps``.

    fvp train adapter --bag train_bag --val-bag val_bag --model models/x
    python -m torch.distributed.run --nproc_per_node 2 -m frozen_vlm_perception.training.adapter ...
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from frozen_vlm_perception.answers import answer_is_correct, place_keys_for
from frozen_vlm_perception.checkpoint import (
    CheckpointError,
    check_compatible,
    load_state_into,
    read_checkpoint_config,
    save_checkpoint,
)
from frozen_vlm_perception.config import ConfigError, ModelConfig, SyncConfig
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import EmbeddingSet, EncoderFactory
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.nn.reader import QuestionReader, decided_answer_starts, read_as_asked
from frozen_vlm_perception.questions import (
    DECISION_GATE_NEGATIVES,
    DECISION_WORDINGS,
    FAMILY_NAMES,
    GENERAL_TRAINING_QUESTIONS,
    NO_WORD,
    PREDICATES,
    YES_NO_PREDICATE,
    YES_WORD,
    families_for,
    make_qa,
    scene_caption,
    wordings,
    yes_no_truth,
)
from frozen_vlm_perception.training import distributed
from frozen_vlm_perception.training.common import (
    EarlyStopping,
    History,
    adamw,
    data_record,
    lr_at,
    plot_history,
    progress_bar,
    run_record,
    say,
    set_lr,
    set_seed,
    write_json,
)
from frozen_vlm_perception.training.config import ADAPTER_MONITORS, AdapterTrainConfig
from frozen_vlm_perception.training.dataset import EmbeddingDataset, load_train_val
from frozen_vlm_perception.training.fusion import choose_fusion, sweep_table
from frozen_vlm_perception.training.losses import embedding_mse, supervised_ce

log = logging.getLogger(__name__)

STAGE = "adapter"
PLOT_FILE = "train_adapter.png"
READER_STAGE = "reader"  # only_reader: the question reader trained alone on a finished folder
READER_PLOT_FILE = "train_reader.png"
DECISION_STAGE = "decision"  # only_decision: the reader's yes/no decision trained alone
DECISION_PLOT_FILE = "train_decision.png"
# The records (train_report.json, config.json's training metadata) and plots a folder trained on by
# each stage keeps from the folder it started from: those that still describe its parts.
_KEPT_RECORDS = {STAGE: (), READER_STAGE: (STAGE, "fusion"), DECISION_STAGE: (STAGE, "fusion", READER_STAGE)}
_PLOTS = {STAGE: PLOT_FILE, READER_STAGE: READER_PLOT_FILE, DECISION_STAGE: DECISION_PLOT_FILE}
MODES = ("fused", "vision", "imu")
HEAD_BATCH = 64  # head refit: samples per step
HEAD_VAL_EVERY = 50  # head refit: steps between validations


@dataclass
class AdapterResult:
    model_dir: Path
    best: dict[str, float]
    history: History
    report: dict[str, Any]


def train_adapter(
    *,
    data: DataConfig,
    model_dir: str | Path,
    train: AdapterTrainConfig,
    out_dir: str | Path | None = None,
    sync: SyncConfig | None = None,
    encoder_factory: EncoderFactory | None = None,
    language: Any | None = None,
    args: Any | None = None,
    ctx: distributed.DistContext | None = None,
) -> AdapterResult:
    """Train stage 2 on top of the stage-1 folder ``model_dir``; write the finished folder to
    ``out_dir`` (default: ``model_dir`` itself). ``language``: an already loaded FrozenLanguageModel
    (default: the one the model's config names)."""
    train.validate()
    if train.only_decision:  # the decision is part of the reader, and only it learns
        train = replace(train, only_reader=True, reader_decision=True)
    ctx = ctx or distributed.setup(train.device)
    set_seed(train.seed)
    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir else model_dir
    show = train.progress and ctx.is_main
    config, dims, metadata = read_checkpoint_config(model_dir)

    with ctx.main_first():
        train_set, val_set = load_train_val(
            data,
            vision=config.vision,
            imu=config.imu,
            sync=sync,
            encoder_factory=encoder_factory,
            device=ctx.device,
            with_tokens=True,
            progress=show,
        )
    expected = {"vision_dim": train_set.vision_dim, "vision_tokens": train_set.num_tokens}
    check_compatible(where=model_dir, stored=config, stored_dims=dims, expected_dims=expected)
    _check_labels(train_set, config.labels)

    if train.adapter and train.adapter != config.adapter.kind:
        config = replace(config, adapter=replace(config.adapter, kind=train.adapter))
    new_gate = train.fusion == "gate" and config.fusion.weighting != "gate"
    if train.fusion:
        config = replace(config, fusion=replace(config.fusion, weighting=train.fusion))
    # reader_tokens N: a folder without a reader gets a fresh one; one with N tokens trains it on.
    has, wanted = config.reader.num_tokens, train.reader_tokens
    new_reader = wanted > 0 and has == 0
    if wanted > 0 and has not in (0, wanted) and not train.reinit:
        raise ConfigError(
            f"{model_dir} has a question reader of {has} tokens, not {wanted}: train it on "
            "(reader_tokens 0 or the same count), or start afresh with reinit"
        )
    if train.reader_tokens > 0:
        config = replace(config, reader=replace(config.reader, num_tokens=train.reader_tokens))
    if train.only_reader and config.reader.num_tokens == 0:
        raise ConfigError(f"only_reader: {model_dir} has no question reader; add one with reader_tokens")
    new_decision = train.reader_decision and not config.reader.decision
    if new_decision:
        if config.reader.num_tokens == 0:
            raise ConfigError(
                f"reader_decision: {model_dir} has no question reader; add one with reader_tokens"
            )
        config = replace(config, reader=replace(config.reader, decision=True))
    if train.monitor == "val_decision_yes_no" and not config.reader.decision:
        raise ConfigError("--monitor val_decision_yes_no needs a reader that decides (--reader-decision)")
    scene_model = SceneModel(
        config=config,
        vision_dim=dims["vision_dim"],
        vision_tokens=dims["vision_tokens"],
        lm_dim=dims["lm_dim"],
    )
    if train.reinit:  # only stage 1's IMU encoder comes from the folder
        load_state_into(model_dir, scene_model.imu_encoder, prefix="imu_encoder.")
        reinit_stage2_parts(scene_model, seed=train.seed)
    else:  # a gate or reader new to the folder keeps its fresh init (the folder's alpha; zero tokens)
        new_parts = (("fusion.gate.",) if new_gate else ()) + (("reader.",) if new_reader else ())
        new_parts += DECISION_PARTS if new_decision else ()
        load_state_into(model_dir, scene_model, allow_missing=new_parts)
    scene_model.to(ctx.device)
    language = language if language is not None else _load_language(config, ctx.device)
    if new_decision or (train.reinit and config.reader.decision):
        start_decision(scene_model, language)
    if language.hidden_size != dims["lm_dim"]:
        raise CheckpointError(
            f"{model_dir}: lm_dim {dims['lm_dim']}, the language model's width is {language.hidden_size}"
        )
    frozen_imu = freeze_for_stage2(scene_model)
    if train.only_reader:
        scene_model.requires_grad_(False)
        scene_model.reader.requires_grad_(True)
    if train.only_decision:  # the reader's free tokens stay too: only yes/no answers can change
        scene_model.reader.requires_grad_(False)
        reader = scene_model.reader
        for part in (reader.decision, reader.yes_tokens, reader.no_tokens):
            part.requires_grad_(True)
    if scene_model.reader is not None and scene_model.reader.decides:
        # The decision's P(label) is the scene model's head's, never its own: left free, the copy
        # merged walking upstairs and downstairs (no trained predicate tells them apart), the
        # downstairs row of each predicate went unlearned, and every "Is the person moving?" about a
        # walking-downstairs scene was answered no. A frozen copy, synced before the folder is written.
        scene_model.reader.decision.activity.requires_grad_(False)
    model = ctx.wrap(scene_model)
    optimizer = adamw(scene_model.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    dataset = EmbeddingDataset(train_set, config.labels, with_tokens=True)
    loader = _loader(dataset, train.batch_size, train.seed, ctx)
    task = LmTask(
        language=language,
        labels=list(config.labels),
        place_names=train_set.place_names,
        num_tokens=scene_model.num_scene_tokens,
        general=general_answers(language, GENERAL_TRAINING_QUESTIONS) if train.p_general > 0 else (),
        p_general=train.p_general,
        p_yes_no=train.p_yes_no,
        first_token_weight=train.first_token_weight,
        answers_name_place=train.answers_name_place,
    )
    total_steps = min(train.max_steps, train.epochs * len(loader))
    val_every = train.val_every or len(loader)
    rng = random.Random(train.seed * 1000 + ctx.rank)  # modality dropout, alpha jitter, question choice
    history = History()
    stopper = EarlyStopping(train.patience, higher_is_better=ADAPTER_MONITORS[train.monitor])
    best: dict[str, Any] = {}
    say(
        ctx,
        f"stage 2 (adapter, {config.adapter.kind}): {len(train_set)} training / {len(val_set)} validation "
        f"samples, batch {loader.batch_size} x {ctx.world_size}, up to {total_steps} steps, on {ctx.device}",
    )

    def validate(record: dict[str, float]) -> bool:
        """Validate, log, keep the best trainable state; True when early stopping says stop."""
        started = time.perf_counter()
        record.update(evaluate_adapter(scene_model, task, val_set, config, train, ctx))
        record["val_seconds"] = time.perf_counter() - started
        history.evals.append(record)
        improved = stopper.step(record[train.monitor])
        say(ctx, _eval_line(record, improved, train.monitor))
        if improved:
            best.update(state=copy.deepcopy(_trainable_state(scene_model)), metrics=dict(record))
        return ctx.broadcast_bool(stopper.should_stop)

    # Step 0: the untrained adapter through the frozen LM, the baseline for everything after.
    stop = validate({"step": 0, "epoch": 0, "lr": 0.0})
    if train.caption_steps > 0 and not train.only_reader:  # the caption loss moves the scene tokens only
        started = time.perf_counter()
        caption = caption_warm_start(model, optimizer, loader, task, train, config, rng, ctx.device)
        history.steps.extend(caption)
        say(
            ctx,
            f"caption warm start: {len(caption)} steps in {time.perf_counter() - started:.1f} s, "
            f"caption loss {caption[0]['caption']:.3f} -> {caption[-1]['caption']:.3f}",
        )
        stop = validate({"step": 0, "epoch": 0, "lr": 0.0, "after_caption_steps": float(len(caption))})
    step = 0
    bar = progress_bar(range(total_steps), show, "adapter")
    for epoch in range(train.epochs):
        if stop or step >= total_steps:
            break
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            set_train_mode(scene_model)
            lr = lr_at(step, base_lr=train.lr, warmup_steps=train.warmup_steps, total_steps=total_steps)
            set_lr(optimizer, lr)
            with_lm = step % train.lm_loss_every == 0
            losses = _train_step(model, optimizer, task, batch, train, config, rng, with_lm, ctx.device)
            step += 1
            history.steps.append({"step": step, "epoch": epoch + 1, "lr": lr, **losses})
            bar.update(1)
            if show:
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("loss", "lm_loss")})
            if step % val_every == 0 or step == total_steps:
                stop = validate({"step": step, "epoch": epoch + 1, "lr": lr, **_recent(history, val_every)})
                if stop:
                    say(
                        ctx, f"early stop: {train.monitor} has not improved for {train.patience} validations"
                    )
            if stop or step >= total_steps:
                break
    bar.close()

    scene_model.load_state_dict(best["state"], strict=False)
    head_record, fusion_record = None, None
    if train.head_steps > 0 and not train.only_reader:
        head_record = refit_head(scene_model, train_set, val_set, config, train, ctx.device)
        h = head_record
        say(
            ctx,
            f"head refit on the kept latents: {h['steps']} steps in {h['seconds']:.1f} s, val fused accuracy "
            f"{h['val_acc_fused_before']:.3f} -> {h['val_acc_fused_after']:.3f} (kept step {h['kept_step']})",
        )
    # The fixed alpha is chosen on the validation data (a gate, if any, is kept and scored beside it).
    if not train.only_reader:
        fusion_record = choose_fusion(scene_model, val_set, list(config.labels), ctx.device)
        say(ctx, "fusion weight on the validation data:\n" + sweep_table(fusion_record))
    if scene_model.reader is not None and scene_model.reader.decides:
        scene_model.reader.decision.activity.load_state_dict(scene_model.head.state_dict())
    config = scene_model.config
    frozen_ok = _same_state(frozen_imu, scene_model.imu_encoder.state_dict())
    if not frozen_ok:  # cannot happen unless someone unfreezes it; never ship a silently changed encoder
        raise RuntimeError("the IMU encoder changed during stage 2 although it is frozen")
    report = _report(train, data, train_set, val_set, history, best["metrics"], ctx, args, model_dir)
    report["fusion"] = fusion_record
    report["head_refit"] = head_record
    if ctx.is_main:
        stage = DECISION_STAGE if train.only_decision else READER_STAGE if train.only_reader else STAGE
        _write_folder(out_dir, scene_model, config, metadata, report, history, stage=stage)
    ctx.barrier()
    return AdapterResult(model_dir=out_dir, best=best["metrics"], history=history, report=report)


# The parameters a decision adds to a reader (nn/reader.py), and the texts its token sets start at.
DECISION_PARTS = ("reader.decision.", "reader.yes_tokens", "reader.no_tokens")
DECISION_START_TEXTS = ("Answer: yes.", "Answer: no.")


def start_decision(scene_model: SceneModel, language) -> None:
    """Start a new reader decision: its activity head as a copy of the scene model's (frozen), its
    yes and no token sets (M, H) at the LM's embeddings of DECISION_START_TEXTS (tiled, then cut to
    M): word-like vectors of the LM's own scale for the LM loss to refine."""
    reader = scene_model.reader
    reader.decision.activity.load_state_dict(scene_model.head.state_dict())
    with torch.no_grad():
        for tokens, text in zip((reader.yes_tokens, reader.no_tokens), DECISION_START_TEXTS, strict=True):
            ids = language.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = (ids * (len(tokens) // len(ids) + 1))[: len(tokens)]
            tokens.copy_(language.embed_ids(torch.tensor(ids)).to(tokens))


def freeze_for_stage2(scene_model: SceneModel) -> dict[str, Tensor]:
    """Freeze the IMU encoder (and the fusion's embeddings where the linear adapter never reads
    them); returns a copy of the encoder's state to check it is untouched at the end."""
    scene_model.imu_encoder.requires_grad_(False)
    if scene_model.config.adapter.kind == "linear":
        scene_model.fusion.modality_embed.requires_grad_(False)  # the linear adapter reads pooled only
    return {k: v.detach().clone() for k, v in scene_model.imu_encoder.state_dict().items()}


def set_train_mode(scene_model: SceneModel) -> None:
    """Train mode for the trainable parts; the frozen IMU encoder stays in eval (no dropout)."""
    scene_model.train()
    scene_model.imu_encoder.eval()


def reinit_stage2_parts(scene_model: SceneModel, *, seed: int) -> None:
    """Fresh fusion, adapter and head (initialised as a new SceneModel with ``seed`` would be); the
    IMU encoder of stage 1 is kept. Makes stage 2 repeatable from any folder with the same encoder."""
    torch.manual_seed(seed)
    fresh = SceneModel(
        config=scene_model.config,
        vision_dim=scene_model.dims["vision_dim"],
        vision_tokens=scene_model.dims["vision_tokens"],
        lm_dim=scene_model.lm_dim,
    )
    state = {k: v for k, v in fresh.state_dict().items() if not k.startswith("imu_encoder.")}
    scene_model.load_state_dict(state, strict=False)


@dataclass
class LmTask:
    """What the LM is taught: question/answer pairs from labels, caption targets, general answers."""

    language: Any
    labels: list[str]
    place_names: list[str]
    num_tokens: int  # K pseudo-tokens per scene
    general: tuple[tuple[str, str], ...] = ()  # (question, the LM's own answer without a scene)
    p_general: float = 0.0
    p_yes_no: float = 0.0  # share of the scene questions that are yes/no (0: every family equally often)
    first_token_weight: float = 1.0  # weight of each answer's first token in the training loss
    answers_name_place: bool = False  # questions.reference_answer(place_everywhere=...)
    _captions: dict[str, Tensor] = field(default_factory=dict)

    def place(self, place_id: int) -> str | None:
        return self.place_names[place_id] if place_id >= 0 else None

    def caption_targets(self, captions: list[str]) -> Tensor:
        """The LM's input embeddings of each caption's tokens, tiled to K tokens: (B, K, H)."""
        rows = []
        for caption in captions:
            if caption not in self._captions:
                ids = self.language.tokenizer(" " + caption, add_special_tokens=False)["input_ids"]
                if len(ids) > self.num_tokens:  # the end is cut: say so once per caption
                    log.warning(
                        "caption %r is %d tokens, longer than the %d pseudo-tokens: its end is cut",
                        caption, len(ids), self.num_tokens,
                    )
                ids = (ids * (self.num_tokens // len(ids) + 1))[: self.num_tokens]  # tile, then cut
                with torch.no_grad():
                    self._captions[caption] = self.language.embed_ids(torch.tensor(ids)).float()
            rows.append(self._captions[caption])
        return torch.stack(rows)


def general_answers(language, questions: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The frozen LM's own greedy answers to ``questions`` with no scene (what it should keep saying)."""
    pairs = []
    for question in questions:
        text = language.generate(None, question, max_new_tokens=32).text
        if text:
            pairs.append((question, text))
    return tuple(pairs)


def caption_loss(
    task: LmTask, latents: Tensor, batch: dict[str, Tensor], has_vision: Tensor
) -> Tensor | None:
    """Pseudo-tokens (B, K, H) of the labelled samples towards their caption's word embeddings."""
    labels = batch["label"].tolist()
    chosen = [i for i, lab in enumerate(labels) if lab >= 0]
    if not chosen:
        return None
    captions = [
        scene_caption(
            task.labels[labels[i]], task.place(int(batch["place_id"][i])) if has_vision[i] else None
        )
        for i in chosen
    ]
    target = task.caption_targets(captions).to(latents.device, latents.dtype)
    return embedding_mse(latents[chosen], target)


def caption_warm_start(model, optimizer, loader, task, train, config, rng, device) -> list[dict[str, float]]:
    """``train.caption_steps`` steps of head CE + caption loss: no LM forward, milliseconds each."""
    steps: list[dict[str, float]] = []
    while len(steps) < train.caption_steps:
        for batch in loader:
            set_train_mode(model.module if hasattr(model, "module") else model)
            lr = lr_at(
                len(steps), base_lr=train.lr, warmup_steps=train.warmup_steps, total_steps=train.caption_steps
            )
            set_lr(optimizer, lr)
            losses = _train_step(
                model, optimizer, task, batch, train, config, rng, False, device, caption_only=True
            )
            steps.append({"step": 0, "caption_step": len(steps) + 1, "lr": lr, **losses})
            if len(steps) >= train.caption_steps:
                break
    return steps


def _train_step(
    model,
    optimizer,
    task: LmTask,
    batch,
    train: AdapterTrainConfig,
    config: ModelConfig,
    rng: random.Random,
    with_lm: bool,
    device,
    *,
    caption_only: bool = False,
) -> dict[str, float]:
    """One optimizer step: modality dropout, jittered alpha, head CE (+ the LM loss when with_lm;
    + the caption loss, alone when ``caption_only``)."""
    has_vision, has_imu = sample_modalities(batch["has_imu"], train, rng)
    alpha = batch_alpha(config, train, rng)
    out = model(
        vision_tokens=batch["vision_tokens"].to(device).float(),
        vision_pooled=batch["vision_pooled"].to(device),
        imu_windows=batch["imu"].to(device),
        has_vision=has_vision.to(device),
        has_imu=has_imu.to(device),
        alpha=alpha,
    )
    labels = batch["label"].to(device)
    ce = supervised_ce(out.logits, labels)
    loss = train.ce_weight * ce
    losses = {"ce": ce.detach().item()}
    caption_weight = 1.0 if caption_only else train.caption_weight
    if caption_weight > 0:
        caption = caption_loss(task, out.latents, batch, has_vision)
        if caption is not None:
            loss = loss + caption_weight * caption
            losses["caption"] = caption.detach().item()
    if train.gate_weight > 0 and not caption_only:
        gate = gate_loss(_unwrap(model), batch, device)
        if gate is not None:
            loss = loss + train.gate_weight * gate
            losses["gate"] = gate.detach().item()
    reader = _unwrap(model).reader
    if reader is not None and reader.decides and train.decision_weight > 0 and not caption_only:
        known = batch["label"] >= 0
        if known.any():
            names = [task.labels[int(i)] for i in batch["label"][known]]
            decision = decision_loss(
                task, reader, out.latents[known.to(device)], names, rng, train.decision_questions
            )
            loss = loss + train.decision_weight * decision
            losses["decision"] = decision.detach().item()
    if with_lm and not caption_only:
        lm = lm_loss(task, out.latents, batch, has_vision, train.lm_batch_size, rng, _unwrap(model).reader)
        if lm is not None:
            loss = loss + train.lm_weight * lm
            losses["lm_loss"] = lm.detach().item()
    optimizer.zero_grad(set_to_none=True)
    if not loss.requires_grad:  # only_reader, and no labelled sample reached the LM: nothing to learn
        return losses | {"loss": loss.detach().item()}
    loss.backward()
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train.grad_clip)
    optimizer.step()
    sync_decision_head(_unwrap(model))
    losses["loss"] = loss.detach().item()
    return losses


def sync_decision_head(scene_model: SceneModel) -> None:
    """Keep a deciding reader's frozen copy of the activity head equal to the head while the head
    trains (stage 2 with a reader that decides, from a fresh adapter): its P(label) must be the one
    the labels come from, not the random head the run started with. A no-op when the head is fixed."""
    reader, head = scene_model.reader, scene_model.head
    if reader is None or not reader.decides or not any(p.requires_grad for p in head.parameters()):
        return
    with torch.no_grad():
        for mine, theirs in zip(reader.decision.activity.parameters(), head.parameters(), strict=True):
            mine.copy_(theirs)


def gate_loss(scene_model: SceneModel, batch: dict[str, Tensor], device) -> Tensor | None:
    """The gate's own loss (None without a gate or a labelled sample with both modalities).

    Per sample, the target vision weight is p_v / (p_v + p_i), where p_v and p_i are the probabilities
    the model gives the true label from vision alone and from the IMU alone (no gradient): a frame
    that explains the activity better than the IMU window pulls the weight to vision, and the other
    way round. Binary cross-entropy between the gate's weight and that target."""
    gate = scene_model.fusion.gate
    if gate is None:
        return None
    index = torch.nonzero(batch["has_imu"] & (batch["label"] >= 0)).flatten()
    if len(index) == 0:
        return None
    vision_tokens = batch["vision_tokens"][index].to(device).float()
    vision_pooled = batch["vision_pooled"][index].to(device)
    imu = batch["imu"][index].to(device)
    labels = batch["label"][index].to(device)
    ones = torch.ones(len(index), dtype=torch.bool, device=device)
    with torch.no_grad():
        def log_p_true(has_vision: Tensor, has_imu: Tensor) -> Tensor:
            out = scene_model(vision_tokens=vision_tokens, vision_pooled=vision_pooled, imu_windows=imu,
                              has_vision=has_vision, has_imu=has_imu)
            return out.logits.float().log_softmax(-1).gather(1, labels[:, None]).squeeze(1)

        target = torch.sigmoid(log_p_true(ones, ~ones) - log_p_true(~ones, ones))  # p_v / (p_v + p_i)
        _, imu_pooled = scene_model.imu_encoder(imu)  # frozen in stage 2: only the gate learns here
    weight = gate(vision_pooled, imu_pooled)
    return torch.nn.functional.binary_cross_entropy(weight.float(), target)


def _unwrap(model) -> SceneModel:
    """The SceneModel inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def lm_loss(
    task: LmTask,
    latents: Tensor,
    batch: dict[str, Tensor],
    has_vision: Tensor,
    limit: int,
    rng: random.Random | None,
    reader: QuestionReader | None = None,
) -> Tensor | None:
    """The frozen LM's answer loss for up to ``limit`` labelled samples of the batch (None if none).

    latents (B, L, H); batch["label"] indexes ``task.labels``, batch["place_id"] ``task.place_names``.
    With ``rng`` (training) each sample gets a random family and wording (questions.make_qa), or,
    with probability ``task.p_general``, a general question and the LM's own no-scene answer. Without
    (validation) the families the sample can answer are cycled by its position, trained wordings.
    With a question ``reader``, its tokens (from the latents and each question) follow the question.
    Returns a scalar."""
    labels = batch["label"].tolist()
    chosen = [i for i, lab in enumerate(labels) if lab >= 0][:limit]
    if not chosen:
        return None
    questions, answers, decisions = [], [], []
    for n, i in enumerate(chosen):
        place = task.place(int(batch["place_id"][i]))
        vision = bool(has_vision[i])
        family = None  # a general question
        if rng is not None and task.general and rng.random() < task.p_general:
            question, answer = rng.choice(task.general)
        elif rng is not None:
            family = "yes_no" if task.p_yes_no > 0 and rng.random() < task.p_yes_no else None
            qa = make_qa(
                task.labels[labels[i]], place, has_vision=vision, rng=rng, family=family,
                place_everywhere=task.answers_name_place,
            )  # fmt: skip
            question, answer, family = qa.question, qa.answer, qa.family
        else:
            possible = families_for(place, has_vision=vision)
            qa = make_qa(
                task.labels[labels[i]], place, has_vision=vision, family=possible[n % len(possible)],
                index=n, place_everywhere=task.answers_name_place,
            )  # fmt: skip
            question, answer, family = qa.question, qa.answer, qa.family
        questions.append(question)
        answers.append(answer)
        decisions.append(true_decision(family, question, task.labels[labels[i]]))
    weight = task.first_token_weight if rng is not None else 1.0  # validation: the plain mean
    # A deciding reader is fed the true decision, so this loss teaches the LM to read its token sets
    # (its own choice is taught by decision_loss).
    after = None if reader is None else read_questions(
        task, reader, latents[chosen], questions,
        decision=torch.tensor(decisions) if reader.decides else None,
    )  # fmt: skip
    return task.language.answer_loss(
        latents[chosen], questions, answers, after_question=after, first_token_weight=weight
    )


def read_questions(
    task: LmTask,
    reader: QuestionReader,
    latents: Tensor,
    questions: list[str],
    *,
    decision: Tensor | None = None,
) -> Tensor:
    """The reader's tokens (B, M, H) for scenes' latents (B, L, H) and their questions (``decision``
    (B, 2): the [gate, yes] a deciding reader uses instead of its own)."""
    embeds, mask = task.language.question_embeddings(questions)
    if decision is not None:
        decision = decision.to(latents.device)
    embeds = embeds.to(latents.device, latents.dtype)
    return reader(latents, embeds, mask.to(latents.device), decision=decision)


def true_decision(family: str | None, question: str, label: str) -> tuple[float, float]:
    """The [gate, yes] a deciding reader should reach: (1, truth) for a yes/no question about the
    scene, (0, 0) for any other (``family`` None: a general question)."""
    if family != "yes_no":
        return 0.0, 0.0
    return 1.0, float(yes_no_truth(question, label))


# What the reader's decision trains on (no evaluation or validation wording among them): yes/no
# questions, the family's trained wordings and questions.DECISION_WORDINGS (question -> predicate);
# questions its gate must shut for, every other family's trained wordings, the general training
# questions and questions.DECISION_GATE_NEGATIVES.
_TRAINED_YES_NO: dict[str, str] = {q: YES_NO_PREDICATE[q] for q in wordings("yes_no")}
DECISION_YES_NO: dict[str, str] = _TRAINED_YES_NO | DECISION_WORDINGS
GATE_NEGATIVES: tuple[str, ...] = (
    tuple(q for family in FAMILY_NAMES if family != "yes_no" for q in wordings(family))
    + GENERAL_TRAINING_QUESTIONS
    + DECISION_GATE_NEGATIVES
)


@functools.cache
def _decision_options(label: str, generated: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The decision's yes/no training questions about ``label``, the family's trained wordings or
    (``generated``) questions.DECISION_WORDINGS: (those true of it, those false)."""
    pool = DECISION_WORDINGS if generated else _TRAINED_YES_NO
    holds = {q: PREDICATES[predicate](label) for q, predicate in pool.items()}
    return tuple(q for q, h in holds.items() if h), tuple(q for q, h in holds.items() if not h)


def decision_loss(
    task: LmTask,
    reader: QuestionReader,
    latents: Tensor,
    labels: list[str],
    rng: random.Random,
    per_scene: int,
    *,
    generated_share: float = 0.5,
    negatives: Sequence[str] = GATE_NEGATIVES,
) -> Tensor:
    """The deciding reader's own loss: ``per_scene`` random questions about each scene (latents
    (B, L, H), true ``labels``), half of them yes/no questions (yes and no equally often;
    ``generated_share`` of those questions.DECISION_WORDINGS, the others the family's trained
    wordings, which would be 11 among 1397 if drawn alike), half ``negatives``; binary cross-entropy
    of the gate on all and of the yes logit on the yes/no ones. No LM forward: a few milliseconds
    for a batch's questions."""
    rows, questions, targets = [], [], []
    for row, label in enumerate(labels):
        for _ in range(per_scene):
            if rng.random() < 0.5:
                true_of, false_of = _decision_options(label, rng.random() < generated_share)
                want = rng.random() < 0.5
                question = rng.choice((true_of if want else false_of) or (false_of if want else true_of))
                targets.append((1.0, float(PREDICATES[DECISION_YES_NO[question]](label))))
            else:
                question = rng.choice(negatives)
                targets.append(true_decision(None, question, label))
            rows.append(row)
            questions.append(question)
    embeds, mask = task.language.question_embeddings(questions)
    _, logits = reader.read(
        latents[rows], embeds.to(latents.device, latents.dtype), mask.to(latents.device)
    )
    target = torch.tensor(targets, device=logits.device, dtype=logits.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    gate = bce(logits[:, 0], target[:, 0])
    asked = target[:, 0] > 0.5
    return gate + (bce(logits[asked, 1], target[asked, 1]) if asked.any() else 0.0)


def yes_no_question(label: str, n: int) -> tuple[str, bool] | None:
    """The n-th validation yes/no question about ``label`` and its true answer: yes for even n, no
    for odd n, the trained wordings that answer so cycled by n (None: no wording is true, or false,
    about this label). Deterministic, so every validation asks the same questions."""
    want = n % 2 == 0
    matching = [q for q in wordings("yes_no") if yes_no_truth(q, label) == want]
    return (matching[(n // 2) % len(matching)], want) if matching else None


def yes_no_correct(
    task: LmTask, reader: QuestionReader | None, latents: Tensor, labels: list[str], *, start: int = 0
) -> tuple[int, int]:
    """(right, asked): yes/no questions (``yes_no_question(label, start + n)``) about scenes with
    latents (B, L, H) and true ``labels`` that the LM's first answer token gets right (its "Yes"
    logit above its "No" logit for a true yes, below it for a true no)."""
    keep, asked = [], []
    for n, label in enumerate(labels):
        pair = yes_no_question(label, start + n)
        if pair is not None:
            keep.append(n)
            asked.append(pair)
    if not keep:
        return 0, 0
    questions = [q for q, _ in asked]
    scenes = latents[keep]
    after = None if reader is None else read_questions(task, reader, scenes, questions)
    logits = task.language.first_answer_logits(scenes, questions, after_question=after)
    # The first token of the reference answers ("Yes, the person is ...", questions.reference_answer).
    yes_id, no_id = (task.language.first_token_id(f"{word}, the person") for word in (YES_WORD, NO_WORD))
    said_yes = (logits[:, yes_id] > logits[:, no_id]).tolist()
    return sum(said == truth for said, (_, truth) in zip(said_yes, asked, strict=True)), len(asked)


def validation_questions(labels: list[str], places: list[str | None]) -> list[tuple[str, str]]:
    """(family, question) for each validation scene (true ``labels``, ``places``; fused, so a scene
    with a place can answer every family): the families it can answer in turn, each family's
    validation wordings cycled, and yes/no wordings whose true answer is yes and no in turn (always
    "no" scores 0.5). Deterministic, so every validation asks the same questions."""
    asked, seen = [], dict.fromkeys(FAMILY_NAMES, 0)
    for n, (label, place) in enumerate(zip(labels, places, strict=True)):
        possible = families_for(place, has_vision=True)
        family = possible[n % len(possible)]
        k, seen[family] = seen[family], seen[family] + 1
        options = wordings(family, validation=True)
        if family == "yes_no":
            options = [q for q in options if yes_no_truth(q, label) == (k % 2 == 0)] or options
            k //= 2
        asked.append((family, options[k % len(options)]))
    return asked


def answers_correct(
    task: LmTask,
    reader: QuestionReader | None,
    latents: Tensor,
    labels: list[str],
    places: list[str | None],
    asked: list[tuple[str, str]],
    *,
    place_keys: list[str],
    max_new_tokens: int,
) -> dict[str, tuple[int, int]]:
    """family -> (right, asked): the LM's greedy answers to ``asked`` (family, question) about scenes
    with latents (B, L, H) and truths (``labels``, ``places``), scored by answers.answer_is_correct.
    Scenes asked the same question are decoded together."""
    rows_of: dict[str, list[int]] = {}
    for row, (_, question) in enumerate(asked):
        rows_of.setdefault(question, []).append(row)
    counts = {family: [0, 0] for family in FAMILY_NAMES}
    for question, rows in rows_of.items():
        scenes = latents[rows]
        after, starts = None, None
        if reader is not None:  # as the pipeline answers (PerceptionPipeline.answer_batch)
            after, decision = read_as_asked(reader, task.language, scenes, [question] * len(rows))
            if decision is not None and reader.decision_starts_answer:
                starts = decided_answer_starts(task.language, decision)
        # A yes/no answer is scored by its first word: no need to decode the rest.
        limit = 3 if asked[rows[0]][0] == "yes_no" else max_new_tokens
        generations = task.language.generate_batch(
            scenes, question, max_new_tokens=limit, after_question=after, answer_starts=starts
        )
        for row, generation in zip(rows, generations, strict=True):
            family = asked[row][0]
            right = answer_is_correct(
                family, question, generation.text, label=labels[row], place=places[row],
                labels=task.labels, place_keys=place_keys,
            )  # fmt: skip
            counts[family][0] += int(right)
            counts[family][1] += 1
    return {family: (r, n) for family, (r, n) in counts.items() if n}


def sample_modalities(
    has_imu: Tensor, train: AdapterTrainConfig, rng: random.Random
) -> tuple[Tensor, Tensor]:
    """Modality dropout: (B,) has_vision, has_imu masks. Samples without an IMU window are vision-only."""
    weights = [train.p_fused, train.p_vision, train.p_imu]
    vision, imu = [], []
    for available in has_imu.tolist():
        mode = rng.choices(MODES, weights=weights)[0] if available else "vision"
        vision.append(mode != "imu")
        imu.append(mode != "vision")
    return torch.tensor(vision), torch.tensor(imu)


def batch_alpha(config: ModelConfig, train: AdapterTrainConfig, rng: random.Random) -> float | None:
    """The fusion weight of one training batch: None (the gate's, per sample) for a share ``p_gate``
    of the batches of a gated model, else the configured alpha jittered."""
    if config.fusion.weighting == "gate" and rng.random() < train.p_gate:
        return None
    return jittered_alpha(config.fusion.alpha, train.alpha_jitter, rng)


def jittered_alpha(alpha: float, jitter: float, rng: random.Random) -> float:
    if jitter <= 0:
        return alpha
    return min(0.95, max(0.05, alpha + rng.uniform(-jitter, jitter)))


@torch.no_grad()
def evaluate_adapter(
    scene_model: SceneModel,
    task: LmTask,
    val_set: EmbeddingSet,
    config: ModelConfig,
    train: AdapterTrainConfig,
    ctx: distributed.DistContext,
    batch_size: int = 64,
) -> dict[str, float]:
    """Activity accuracy per inference mode and CE (fused), plus the LM's answer loss (fused, the
    deterministic question of each sample) on ``val_lm_samples`` labelled samples."""
    scene_model.eval()
    labels = val_set.labels_for(config.labels)
    index = torch.tensor(ctx.shard(len(val_set)), dtype=torch.long)
    order = ctx.gather_rows(index)
    metrics: dict[str, float] = {}
    for mode in MODES:
        logits = []
        for chunk in index.split(batch_size):
            out = _forward(scene_model, val_set, chunk, mode, ctx.device)
            logits.append(out.logits.float().cpu())
        gathered = ctx.gather_rows(torch.cat(logits) if logits else torch.zeros(0, len(config.labels)))
        target = labels[order]
        usable = (target >= 0) & (
            val_set.has_imu[order] if mode != "vision" else torch.ones_like(target, dtype=torch.bool)
        )
        if mode == "fused":
            metrics["val_ce"] = float(supervised_ce(gathered, torch.where(usable, target, -1)))
        correct = (gathered.argmax(dim=1) == target)[usable]
        metrics[f"val_acc_{mode}"] = float(correct.float().mean()) if len(correct) else 0.0
    metrics["val_acc"] = metrics["val_acc_fused"]

    # Up to val_lm_samples labelled samples spread evenly over the set (not just its first seconds).
    labelled = spread_labelled(labels, train.val_lm_samples)
    mine = labelled[ctx.rank :: ctx.world_size]
    total, count = 0.0, 0
    for chunk in mine.split(train.lm_batch_size):
        out = _forward(scene_model, val_set, chunk, "fused", ctx.device)
        batch = {"label": labels[chunk], "place_id": val_set.place_id[chunk]}
        has_vision = torch.ones(len(chunk), dtype=torch.bool)
        loss = lm_loss(task, out.latents, batch, has_vision, len(chunk), None, scene_model.reader)
        if loss is not None:
            total += float(loss) * len(chunk)
            count += len(chunk)
    reduced = ctx.mean({"val_lm_loss": total / max(count, 1)}, weight=float(count))
    metrics["val_lm_loss"] = reduced["val_lm_loss"]

    # Yes/no: the word that decides the answer is one token of a dozen in the LM loss, so it is
    # scored on its own, on more samples (the same ones at every validation).
    labelled = spread_labelled(labels, train.val_yes_no_samples)
    right, asked = 0, 0
    for chunk in labelled[ctx.rank :: ctx.world_size].split(train.lm_batch_size):
        out = _forward(scene_model, val_set, chunk, "fused", ctx.device)
        names = [config.labels[int(i)] for i in labels[chunk]]
        r, a = yes_no_correct(task, scene_model.reader, out.latents, names, start=asked)
        right, asked = right + r, asked + a
    reduced = ctx.mean({"val_yes_no_acc": right / max(asked, 1)}, weight=float(asked))
    metrics["val_yes_no_acc"] = reduced["val_yes_no_acc"]
    if scene_model.reader is not None and scene_model.reader.decides:
        metrics.update(_decision_accuracy(scene_model, task, val_set, labels, config, train, ctx))
    if train.val_answer_samples > 0:
        metrics.update(_answer_accuracy(scene_model, task, val_set, labels, config, train, ctx))
    metrics["val_loss"] = train.ce_weight * metrics["val_ce"] + train.lm_weight * metrics["val_lm_loss"]
    return metrics


def spread_labelled(labels: Tensor, limit: int) -> Tensor:
    """Indices of up to ``limit`` labelled samples (labels (N,) >= 0) spread evenly over the set,
    not just its first seconds; the same ones at every validation."""
    labelled = torch.nonzero(labels >= 0).flatten()
    if len(labelled) > limit:
        labelled = labelled[torch.linspace(0, len(labelled) - 1, limit).round().long()]
    return labelled


def _decision_accuracy(
    scene_model: SceneModel,
    task: LmTask,
    val_set: EmbeddingSet,
    labels: Tensor,
    config: ModelConfig,
    train: AdapterTrainConfig,
    ctx: distributed.DistContext,
) -> dict[str, float]:
    """The deciding reader's own choices on validation wordings (never trained): every yes/no one
    about ``val_yes_no_samples`` scenes (val_decision_yes_no: the gate says yes/no *and* the yes logit
    is right), and every other family's (val_decision_gate: the gate says it is not yes/no)."""
    labelled = spread_labelled(labels, train.val_yes_no_samples)[ctx.rank :: ctx.world_size]
    names = [config.labels[int(i)] for i in labels[labelled]]
    others = [q for family in FAMILY_NAMES if family != "yes_no" for q in wordings(family, validation=True)]
    right = {"yes_no": [0, 0], "gate": [0, 0]}
    for part in torch.arange(len(labelled)).split(train.lm_batch_size * 4):
        latents = _forward(scene_model, val_set, labelled[part], "fused", ctx.device).latents
        for question in wordings("yes_no", validation=True) + tuple(others):
            _, logits = read_as_asked(scene_model.reader, task.language, latents, [question] * len(part))
            says = (logits > 0).tolist()
            for n, (gate, yes) in zip(part.tolist(), says, strict=True):
                want_gate, want_yes = true_decision(
                    "yes_no" if question in YES_NO_PREDICATE else None, question, names[n]
                )
                key = "yes_no" if want_gate else "gate"
                right[key][0] += int(gate == bool(want_gate) and (not want_gate or yes == bool(want_yes)))
                right[key][1] += 1
    packed = torch.tensor([[*right["yes_no"], *right["gate"]]], dtype=torch.float64, device=ctx.device)
    total = ctx.gather_rows(packed).sum(dim=0).tolist()
    return {
        "val_decision_yes_no": total[0] / max(total[1], 1),
        "val_decision_gate": total[2] / max(total[3], 1),
    }


# Greedy answers of the validation questions stop here: "The person is walking upstairs next to an
# astronaut." is 13 tokens (fvp eval's answers allow 24).
VAL_ANSWER_MAX_NEW_TOKENS = 20


def _answer_accuracy(
    scene_model: SceneModel,
    task: LmTask,
    val_set: EmbeddingSet,
    labels: Tensor,
    config: ModelConfig,
    train: AdapterTrainConfig,
    ctx: distributed.DistContext,
) -> dict[str, float]:
    """val_answer_acc_<family> and their mean val_answer_acc: greedy answers to validation wordings
    (validation_questions) about ``val_answer_samples`` labelled samples spread over the set, fused.
    What stage 2 can keep a step for when it must be good at wordings it never trained on."""
    labelled = spread_labelled(labels, train.val_answer_samples)
    names = [config.labels[int(i)] for i in labels[labelled]]
    places = [task.place(int(p)) for p in val_set.place_id[labelled]]
    asked = validation_questions(names, places)
    keys = place_keys_for(task.place_names)
    rows = list(range(ctx.rank, len(labelled), ctx.world_size))
    # All latents first, so that every scene asked the same question is decoded in one batch.
    latents = torch.cat([
        _forward(scene_model, val_set, labelled[part], "fused", ctx.device).latents
        for part in torch.tensor(rows, dtype=torch.long).split(train.lm_batch_size * 4)
    ]) if rows else None  # fmt: skip
    found = {} if latents is None else answers_correct(
        task, scene_model.reader, latents, [names[r] for r in rows], [places[r] for r in rows],
        [asked[r] for r in rows], place_keys=keys, max_new_tokens=VAL_ANSWER_MAX_NEW_TOKENS,
    )  # fmt: skip
    counts = {family: list(found.get(family, (0, 0))) for family in FAMILY_NAMES}
    packed = torch.tensor([[v for family in FAMILY_NAMES for v in counts[family]]], dtype=torch.float64)
    total = ctx.gather_rows(packed.to(ctx.device)).sum(dim=0).tolist()
    metrics = {}
    for i, family in enumerate(FAMILY_NAMES):
        right, n = total[2 * i], total[2 * i + 1]
        if n:
            metrics[f"val_answer_acc_{family}"] = right / n
    per_family = list(metrics.values())
    metrics["val_answer_acc"] = sum(per_family) / len(per_family) if per_family else 0.0
    return metrics


@torch.no_grad()
def pooled_latents(
    scene_model: SceneModel, embeddings: EmbeddingSet, mode: str, device, *, batch_size: int = 256
) -> Tensor:
    """The head's input for every sample in one inference mode: latents averaged over L, (M, H) float32.
    Samples without an IMU window fall back to vision (see _forward)."""
    scene_model.eval()
    rows = []
    for chunk in torch.arange(len(embeddings)).split(batch_size):
        out = _forward(scene_model, embeddings, chunk, mode, device)
        rows.append(out.latents.float().mean(dim=1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, scene_model.lm_dim)


def refit_head(
    scene_model: SceneModel,
    train_set: EmbeddingSet,
    val_set: EmbeddingSet,
    config: ModelConfig,
    train: AdapterTrainConfig,
    device,
) -> dict[str, Any]:
    """Stage 2's last step: the activity head alone, fit to the kept adapter's latents.

    The adapter is kept where the validation loss was lowest, but the head beside it was trained on
    latents that were still moving, and the LM losses pull those latents towards what the LM needs.
    The head reads only the latents' mean (nn/heads.py), so the mean is computed once per sample and
    mode (fused, vision only, IMU only), and ``train.head_steps`` cross-entropy steps on it take
    seconds. Every HEAD_VAL_EVERY steps the fused validation accuracy is measured; the best head is
    kept, the one the refit started from included, so on validation the refit can only help.
    Same-seeded on every rank, so the ranks keep identical heads."""
    started = time.perf_counter()
    head = scene_model.head
    labels = train_set.labels_for(config.labels)
    rng = torch.Generator().manual_seed(train.seed)
    # Fused at the model's own weighting (its alpha, or its gate): what the nodes publish.
    features = {mode: pooled_latents(scene_model, train_set, mode, device) for mode in MODES}
    val_labels = val_set.labels_for(config.labels)
    val_features = pooled_latents(scene_model, val_set, "fused", device)
    val_usable = (val_labels >= 0) & val_set.has_imu

    def val_accuracy() -> float:
        head.eval()
        with torch.no_grad():  # a mean as a single latent (B, 1, H): the head's mean over it is itself
            logits = head(val_features[val_usable, None].to(device))
        return float((logits.argmax(dim=1).cpu() == val_labels[val_usable]).float().mean())

    usable = torch.nonzero(labels >= 0).flatten()
    # Modality dropout as in training: fused / vision / IMU; samples without IMU are vision only.
    probs = torch.tensor([train.p_fused, train.p_vision, train.p_imu])
    stacked = torch.stack([features[m] for m in MODES])  # (3, M, H)
    optimizer = adamw(head.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    best = {"step": 0, "val_acc_fused": val_accuracy()}
    best_state = copy.deepcopy(head.state_dict())
    curve = [dict(best)]
    for step in range(1, train.head_steps + 1):
        head.train()
        index = usable[torch.randint(len(usable), (HEAD_BATCH,), generator=rng)]
        mode = torch.multinomial(probs, len(index), replacement=True, generator=rng)
        mode = torch.where(train_set.has_imu[index], mode, 1)
        loss = supervised_ce(head(stacked[mode, index, None].to(device)), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % HEAD_VAL_EVERY == 0 or step == train.head_steps:
            record = {"step": step, "val_acc_fused": val_accuracy()}
            curve.append(record)
            if record["val_acc_fused"] > best["val_acc_fused"]:
                best, best_state = record, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.eval()
    return {
        "steps": train.head_steps,
        "seconds": time.perf_counter() - started,
        "val_acc_fused_before": curve[0]["val_acc_fused"],
        "val_acc_fused_after": best["val_acc_fused"],
        "kept_step": best["step"],
        "curve": curve,
    }


def _forward(scene_model: SceneModel, embeddings: EmbeddingSet, index: Tensor, mode: str, device):
    has_imu = embeddings.has_imu[index]
    use_vision = torch.full_like(has_imu, mode != "imu")
    use_imu = has_imu & (mode != "vision")
    # A sample with neither (IMU mode, no window) falls back to vision so the batch stays valid; its
    # metrics are masked out by the caller.
    use_vision = use_vision | ~use_imu
    return scene_model(
        vision_tokens=embeddings.vision_tokens[index].to(device).float(),
        vision_pooled=embeddings.vision_pooled[index].to(device),
        imu_windows=embeddings.imu[index].to(device),
        has_vision=use_vision.to(device),
        has_imu=use_imu.to(device),
    )


# --------------------------------------------------------------------------------------------------
# Helpers


def _load_language(config: ModelConfig, device):
    from frozen_vlm_perception.nn.language import FrozenLanguageModel

    return FrozenLanguageModel(config=config.language, device=device)


def _check_labels(embeddings: EmbeddingSet, model_labels: list[str]) -> None:
    if not bool((embeddings.labels_for(model_labels) >= 0).any()):
        raise ValueError(
            f"no training sample has one of the model's labels {model_labels} "
            f"(found: {embeddings.label_names}); stage 2 builds its answers from labels: "
            "give --label-topic or --labels"
        )


def _loader(dataset, batch_size: int, seed: int, ctx: distributed.DistContext) -> DataLoader:
    batch_size = max(1, min(batch_size, len(dataset) // ctx.world_size))
    if ctx.distributed:
        sampler = DistributedSampler(
            dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)


def _trainable_state(scene_model: SceneModel) -> dict[str, Tensor]:
    names = {n for n, p in scene_model.named_parameters() if p.requires_grad}
    return {
        k: v for k, v in scene_model.state_dict().items() if k in names or not k.startswith("imu_encoder.")
    }


def _same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _recent(history: History, window: int) -> dict[str, float]:
    """Mean training losses over the last ``window`` steps (for the validation record)."""
    recent = history.steps[-window:]
    out = {}
    for key in ("loss", "ce", "lm_loss", "gate"):
        values = [s[key] for s in recent if key in s]
        if values:
            out[f"train_{key}"] = sum(values) / len(values)
    return out


def _eval_line(record: dict[str, float], improved: bool, monitor: str) -> str:
    lm = record.get("train_lm_loss", float("nan"))
    return (
        f"step {record['step']:4d}  loss {record.get('train_loss', float('nan')):.4f}  lm {lm:.4f}  "
        f"val_loss {record['val_loss']:.4f}  val_lm {record['val_lm_loss']:.4f}  acc fused/vision/imu "
        f"{record['val_acc_fused']:.3f}/{record['val_acc_vision']:.3f}/{record['val_acc_imu']:.3f}  "
        f"yes/no {record.get('val_yes_no_acc', float('nan')):.3f}"
        + (_answers_text(record) if "val_answer_acc" in record else "")
        + (
            f"  decision yes/no {record['val_decision_yes_no']:.3f} gate {record['val_decision_gate']:.3f}"
            if "val_decision_yes_no" in record
            else ""
        )
        + (f"  * best {monitor}" if improved else "")
    )


def _answers_text(record: dict[str, float]) -> str:
    """"  answers 0.812 (act 0.81 place 1.00 ...)": the validation wordings' answer accuracy."""
    short = {"activity": "act", "place": "place", "activity_place": "act+place", "yes_no": "yes/no"}
    parts = [
        f"{short.get(f, f)} {record[f'val_answer_acc_{f}']:.2f}"
        for f in FAMILY_NAMES
        if f"val_answer_acc_{f}" in record
    ]
    return f"  answers {record['val_answer_acc']:.3f} ({' '.join(parts)})"


def _report(train, data, train_set, val_set, history, best, ctx, args, model_dir) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "run": run_record(args),
        "settings": asdict(train),
        "data": data_record(data, train_set, val_set),
        "from_model": str(model_dir),
        "best": best,
        "evals": history.evals,
        "steps": history.steps,
        "seconds": time.time() - history.started,
        "world_size": ctx.world_size,
        "frozen_check": "IMU encoder bit-identical before and after stage 2",
    }


def _write_folder(
    out_dir: Path,
    scene_model: SceneModel,
    config: ModelConfig,
    metadata: dict,
    report: dict,
    history: History,
    *,
    stage: str = STAGE,
) -> None:
    """The completed folder: weights + config (stage-1 metadata kept, stage 2's added), report, plot.

    ``stage`` READER_STAGE (only_reader) or DECISION_STAGE (only_decision): the folder's own records
    of the parts this run kept stay beside this run's (_KEPT_RECORDS); records of parts it trained
    afresh (a reader or decision of the folder a fresh stage 2 started from) describe another model
    and are left behind, as in train_report.json."""
    from frozen_vlm_perception.training.align import STAGE as ALIGN_STAGE

    metadata = dict(metadata)
    kept = (ALIGN_STAGE, *_KEPT_RECORDS[stage])
    training = {name: record for name, record in (metadata.get("training") or {}).items() if name in kept}
    training[stage] = {
        "run": report["run"],
        "seed": report["settings"]["seed"],
        "from_model": report["from_model"],
        "data": {k: v for k, v in report["data"].items() if k != "config"}
        | {"bag": report["data"]["config"]["bag"], "val_bag": report["data"]["config"]["val_bag"]},
        "metrics": {k: v for k, v in report["best"].items() if k.startswith("val_")},
        "steps_run": len(report["steps"]),
    }
    metadata["training"] = training
    save_checkpoint(
        out_dir, config=config, dims=scene_model.dims, state_dict=scene_model.state_dict(), metadata=metadata
    )
    _write_report(Path(report["from_model"]), out_dir, report, stage=stage)
    plot_history(
        out_dir / _PLOTS[stage],
        history,
        title=f"stage 2: adapter ({out_dir.name})",
        step_keys=["loss", "ce", "lm_loss"],
        eval_keys=["val_loss", "val_lm_loss", "val_acc_fused", "val_acc_vision", "val_acc_imu"],
    )
    log.info("stage 2 model written to %s", out_dir)


def _write_report(from_model: Path, out_dir: Path, report: dict, *, stage: str = STAGE) -> None:
    """train_report.json with stage 1's record (and plot) from the folder stage 2 started from, and
    this run's. Records of later stages there (an earlier stage 2, ``fvp train fusion``) describe
    another model and are left behind: this run chose its own alpha (``report["fusion"]``)."""
    import json
    import shutil

    from frozen_vlm_perception.training.align import PLOT_FILE as ALIGN_PLOT
    from frozen_vlm_perception.training.align import STAGE as ALIGN_STAGE
    from frozen_vlm_perception.training.common import REPORT_FILE

    try:
        before = json.loads((from_model / REPORT_FILE).read_text())
    except (OSError, ValueError):
        before = {}
    # only_reader / only_decision: the parts they keep stay, and so do the records that describe them
    kept = (ALIGN_STAGE, *_KEPT_RECORDS[stage])
    plots = (ALIGN_PLOT, *(_PLOTS[name] for name in _KEPT_RECORDS[stage] if name in _PLOTS))
    for plot in plots:
        if out_dir != from_model and (from_model / plot).is_file():
            shutil.copyfile(from_model / plot, out_dir / plot)
    document = {key: before[key] for key in kept if isinstance(before, dict) and before.get(key) is not None}
    write_json(out_dir / REPORT_FILE, document | {stage: report})


# --------------------------------------------------------------------------------------------------
# Command line


def main_adapter(args: argparse.Namespace) -> int:
    """``fvp train adapter``: parsed arguments (see cli_args.add_adapter_arguments) -> exit status."""
    from frozen_vlm_perception.training.cli_args import adapter_configs_from_args

    data, train = adapter_configs_from_args(args)
    ctx = distributed.setup(train.device)
    try:
        result = train_adapter(
            data=data, model_dir=args.model, train=train, out_dir=args.out, args=args, ctx=ctx
        )
        if ctx.is_main:
            best = result.best
            print(
                f"wrote {result.model_dir}  (best step {best.get('step')}: val_lm_loss "
                f"{best.get('val_lm_loss', float('nan')):.3f}, acc fused/vision/imu "
                f"{best.get('val_acc_fused', 0):.3f}/{best.get('val_acc_vision', 0):.3f}/"
                f"{best.get('val_acc_imu', 0):.3f})"
            )
    finally:
        distributed.teardown(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    from frozen_vlm_perception.training.cli_args import add_adapter_arguments, module_main

    return module_main(
        "python -m frozen_vlm_perception.training.adapter", __doc__, add_adapter_arguments, main_adapter, argv
    )


if __name__ == "__main__":
    sys.exit(main())
