"""Stage 1 (``fvp train align``): align the IMU encoder to the frozen vision encoder (arXiv 2308.16493).

For every camera frame and the IMU window that ends at it, the IMU encoder's pooled embedding is
pulled towards the frozen vision encoder's pooled embedding of that frame and pushed away from the
other frames of the batch (symmetric InfoNCE, learnable temperature), plus ``supervised_weight``
times an activity cross-entropy. Only the IMU encoder learns; the frozen encoder's outputs come
from the embedding cache, so an epoch never runs it.

The supervised term goes through a small linear probe on the IMU pooled embedding, not through the
SceneModel's ActivityHead: that head reads the LM-width latents that stage 2 trains, and stage 1
must not depend on stage 2's parts. The probe is discarded after training (the model folder holds
exactly the SceneModel, which the pipeline loads strictly); its validation accuracy is recorded in
the report. Its own weights always learn at full rate, while the encoder gets ``supervised_weight``
times its gradient, so with ``--contrastive-only`` (weight 0) it is an honest linear probe of a
purely contrastive embedding: the ablation's activity accuracy.

A second, token-level InfoNCE term (``token_weight``) aligns the mean IMU token with the mean vision
token, so the IMU tokens the resampler reads also live in the vision token space (stage 2 keeps the
IMU encoder frozen; without this term its token projection would stay at its random init).

    python -m frozen_vlm_perception.training.align --bag train_bag --val-bag val_bag --out models/x
    python -m torch.distributed.run --nproc_per_node 2 -m frozen_vlm_perception.training.align ...
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from frozen_vlm_perception.checkpoint import save_checkpoint
from frozen_vlm_perception.config import STANDARD_GRAVITY, ModelConfig, SyncConfig
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import EmbeddingSet, EncoderFactory
from frozen_vlm_perception.nn.imu import ImuEncoder
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.training import distributed
from frozen_vlm_perception.training.common import (
    EarlyStopping,
    History,
    adamw,
    data_record,
    language_hidden_size,
    lr_at,
    plot_history,
    progress_bar,
    run_record,
    say,
    set_lr,
    set_seed,
    update_report,
)
from frozen_vlm_perception.training.config import ALIGN_MONITORS, AlignTrainConfig
from frozen_vlm_perception.training.dataset import EmbeddingDataset, load_train_val
from frozen_vlm_perception.training.losses import (
    LogitScale,
    info_nce,
    retrieval_recall,
    scale_gradient,
    supervised_ce,
)

log = logging.getLogger(__name__)

STAGE = "align"
PLOT_FILE = "train_align.png"


class Aligner(nn.Module):
    """What stage 1 trains: the IMU encoder, the InfoNCE temperature and the linear activity probe."""

    def __init__(self, imu_encoder: ImuEncoder, *, num_labels: int, init_temperature: float):
        super().__init__()
        self.imu_encoder = imu_encoder
        self.logit_scale = LogitScale(init_temperature)
        self.probe = nn.Linear(imu_encoder.out_dim, num_labels)

    def forward(
        self, windows: Tensor, supervised_weight: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """windows (B, T, C) -> pooled (B, D), mean token (B, D), probe logits (B, K), scale ()."""
        tokens, pooled = self.imu_encoder(windows)
        logits = self.probe(scale_gradient(pooled, supervised_weight))
        return pooled, tokens.mean(dim=1), logits, self.logit_scale()


@dataclass
class AlignResult:
    model_dir: Path
    best: dict[str, float]  # validation metrics of the kept (best) epoch
    history: History
    report: dict[str, Any]


def train_align(
    *,
    data: DataConfig,
    model_config: ModelConfig,
    train: AlignTrainConfig,
    out_dir: str | Path,
    sync: SyncConfig | None = None,
    encoder_factory: EncoderFactory | None = None,
    lm_dim: int | None = None,
    args: Any | None = None,
    ctx: distributed.DistContext | None = None,
) -> AlignResult:
    """Train the IMU encoder and write the model folder ``out_dir`` (rank 0 only).

    ``lm_dim``: the LM's width H (default: read from the configured LM without loading it).
    ``encoder_factory``: builds the frozen vision encoder on an embedding-cache miss.
    """
    train.validate()
    model_config.validate()
    ctx = ctx or distributed.setup(train.device)
    set_seed(train.seed)
    out_dir = Path(out_dir)
    show = train.progress and ctx.is_main

    with ctx.main_first():  # rank 0 fills the embedding cache, the others then read it
        train_set, val_set = load_train_val(
            data,
            vision=model_config.vision,
            imu=model_config.imu,
            sync=sync,
            encoder_factory=encoder_factory,
            device=ctx.device,
            with_tokens=False,
            progress=show,
        )
    train_set, val_set = _with_imu(train_set, "training"), _with_imu(val_set, "validation")
    _check_labels(train_set, model_config.labels, train.supervised_weight)

    lm_dim = lm_dim or language_hidden_size(model_config.language)
    scene_model = SceneModel(
        config=model_config,
        vision_dim=train_set.vision_dim,
        vision_tokens=train_set.num_tokens,
        lm_dim=lm_dim,
    )
    aligner = Aligner(
        scene_model.imu_encoder, num_labels=len(model_config.labels), init_temperature=train.init_temperature
    ).to(ctx.device)
    model = ctx.wrap(aligner)
    optimizer = adamw(aligner.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    dataset = EmbeddingDataset(train_set, model_config.labels, with_tokens=False)
    loader, batch_size = _loader(dataset, train.batch_size, train.seed, ctx)
    total_steps = train.epochs * len(loader)
    history = History()
    stopper = EarlyStopping(train.patience, higher_is_better=ALIGN_MONITORS[train.monitor])
    best: dict[str, Any] = {}
    say(
        ctx,
        f"stage 1 (align): {len(train_set)} training / {len(val_set)} validation samples, "
        f"batch {batch_size} x {ctx.world_size} process(es), {len(loader)} steps per epoch, "
        f"on {ctx.device}",
    )

    def validate(record: dict[str, float]) -> bool:
        """Validate, log, keep the best encoder; True when early stopping says stop (same on all ranks)."""
        record.update(evaluate_alignment(aligner, val_set, model_config.labels, train, ctx))
        history.evals.append(record)
        improved = stopper.step(record[train.monitor])
        say(ctx, _epoch_line(record, improved, train.monitor))
        if improved:
            best.update(state=copy.deepcopy(aligner.imu_encoder.state_dict()), metrics=dict(record))
        return ctx.broadcast_bool(stopper.should_stop)

    # Epoch 0: the untrained encoder, the baseline every later epoch is compared with.
    validate({"epoch": 0, "step": 0, "seconds": 0.0, "lr": 0.0})
    step = 0
    for epoch in range(train.epochs):
        epoch_start = time.perf_counter()
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        bar = progress_bar(loader, show, f"align epoch {epoch + 1}/{train.epochs}")
        for batch in bar:
            lr = lr_at(step, base_lr=train.lr, warmup_steps=train.warmup_steps, total_steps=total_steps)
            set_lr(optimizer, lr)
            losses = _train_step(model, optimizer, batch, train, ctx.device)
            step += 1
            history.steps.append({"step": step, "epoch": epoch + 1, "lr": lr, **losses})
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            if show:
                bar.set_postfix(loss=f"{losses['loss']:.3f}", t=f"{1 / losses['scale']:.3f}")
        train_means = ctx.mean({f"train_{k}": v / max(1, len(loader)) for k, v in sums.items()})
        seconds = time.perf_counter() - epoch_start  # the epoch's training steps, validation not included
        if validate({"epoch": epoch + 1, "step": step, "lr": lr, "seconds": seconds, **train_means}):
            say(ctx, f"early stop: {train.monitor} has not improved for {train.patience} epochs")
            break

    aligner.imu_encoder.load_state_dict(best["state"])
    report = _report(train, data, train_set, val_set, history, best["metrics"], ctx, args)
    if ctx.is_main:
        _write_folder(out_dir, scene_model, model_config, report, history, args)
    ctx.barrier()
    return AlignResult(model_dir=out_dir, best=best["metrics"], history=history, report=report)


def _train_step(
    model: nn.Module, optimizer, batch: dict[str, Tensor], train: AlignTrainConfig, device
) -> dict:
    imu = augment_imu(batch["imu"].to(device), train)
    pooled_target = batch["vision_pooled"].to(device)
    token_target = batch["vision_token_mean"].to(device)
    labels = batch["label"].to(device)
    pooled, token_mean, logits, scale = model(imu, train.supervised_weight)
    contrastive = info_nce(pooled, pooled_target, scale)
    tokens = info_nce(token_mean, token_target, scale)
    ce = supervised_ce(logits, labels)
    # The probe learns from the full CE; scale_gradient already cut the encoder's share to the weight.
    loss = contrastive + train.token_weight * tokens + ce
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    objective = contrastive + train.token_weight * tokens + train.supervised_weight * ce
    return {
        "loss": objective.detach().item(),
        "infonce": contrastive.detach().item(),
        "token_infonce": tokens.detach().item(),
        "ce": ce.detach().item(),
        "scale": scale.detach().item(),
    }


def augment_imu(windows: Tensor, train: AlignTrainConfig) -> Tensor:
    """(B, T, C) -> (B, T, C): each window's channels scaled by U(1 - s, 1 + s), plus Gaussian noise.

    Noise is in the encoder's units (accel in g, gyro in rad/s; see nn.imu.normalise_window), so it is
    scaled back to m/s^2 for the accelerometer. Rotations are not used: the gravity direction is what
    tells posture (and, in the demo, the camera's roll), so it must not be randomised."""
    if train.imu_scale_jitter <= 0 and train.imu_noise <= 0:
        return windows
    batch, _, channels = windows.shape
    scale = 1.0 + train.imu_scale_jitter * (2 * torch.rand(batch, 1, channels, device=windows.device) - 1)
    unit = torch.ones(channels, device=windows.device)
    unit[:3] = STANDARD_GRAVITY
    return windows * scale + train.imu_noise * unit * torch.randn_like(windows)


@torch.no_grad()
def evaluate_alignment(
    aligner: Aligner,
    val_set: EmbeddingSet,
    model_labels: list[str],
    train: AlignTrainConfig,
    ctx: distributed.DistContext,
    batch_size: int = 256,
) -> dict[str, float]:
    """Validation metrics over the whole validation set (each rank embeds a shard, then all gather).

    val_r1 / val_r5: IMU->image retrieval recall among all validation frames, the positive being the
    paired frame; chance is 1/N and 5/N. val_acc: the probe's activity accuracy on labelled samples.
    val_infonce: InfoNCE over the whole set as one (N, N) matrix (so it depends on N, not on batches).
    """
    was_training = aligner.training
    aligner.eval()
    labels = val_set.labels_for(model_labels)
    index = torch.tensor(ctx.shard(len(val_set)), dtype=torch.long)
    pooled, token_mean, logits = [], [], []
    for chunk in index.split(batch_size):
        p, t, lo, _ = aligner(val_set.imu[chunk].to(ctx.device))
        pooled.append(p.float().cpu())
        token_mean.append(t.float().cpu())
        logits.append(lo.float().cpu())
    order = ctx.gather_rows(index)
    pooled = ctx.gather_rows(_cat(pooled, index, val_set.vision_dim))
    token_mean = ctx.gather_rows(_cat(token_mean, index, val_set.vision_dim))
    logits = ctx.gather_rows(_cat(logits, index, len(model_labels)))
    aligner.train(was_training)

    target = val_set.vision_pooled[order]
    scale = aligner.logit_scale().detach().cpu()
    recall = retrieval_recall(pooled, target, ks=(1, 5))
    contrastive = float(info_nce(pooled, target, scale))
    tokens = float(info_nce(token_mean, val_set.vision_token_mean[order], scale))
    labels = labels[order]
    known = labels >= 0
    ce = float(supervised_ce(logits, labels))
    acc = float((logits[known].argmax(dim=1) == labels[known]).float().mean()) if bool(known.any()) else 0.0
    num = len(order)
    return {
        "val_loss": contrastive + train.token_weight * tokens + train.supervised_weight * ce,
        "val_infonce": contrastive,
        "val_token_infonce": tokens,
        "val_ce": ce,
        "val_r1": recall[1],
        "val_r5": recall[5],
        "val_acc": acc,
        "chance_r1": 1.0 / num,
        "chance_r5": min(1.0, 5.0 / num),
        "temperature": 1.0 / float(scale),
        "val_samples": float(num),
    }


# --------------------------------------------------------------------------------------------------
# Helpers


def _with_imu(embeddings: EmbeddingSet, what: str) -> EmbeddingSet:
    keep = torch.nonzero(embeddings.has_imu).flatten()
    if len(keep) < 2:
        raise ValueError(
            f"the {what} data has {len(keep)} frame(s) with an IMU window; stage 1 needs IMU windows "
            f"(check --imu-topic; drops: {embeddings.info.get('drops')})"
        )
    return embeddings.subset(keep)


def _check_labels(embeddings: EmbeddingSet, model_labels: list[str], supervised_weight: float) -> None:
    unknown = sorted(set(embeddings.label_names) - set(model_labels))
    if unknown:
        log.warning(
            "labels %s are not among the model's labels %s; those samples count as unlabelled",
            unknown,
            model_labels,
        )
    if supervised_weight > 0 and not bool((embeddings.labels_for(model_labels) >= 0).any()):
        raise ValueError(
            "no training sample has a known activity label, but supervised_weight > 0: give --label-topic "
            "or --labels, or train with --contrastive-only"
        )


def _loader(dataset, batch_size: int, seed: int, ctx: distributed.DistContext) -> tuple[DataLoader, int]:
    """Shuffled batches; the last partial batch is dropped (InfoNCE wants full batches) and the batch
    is shrunk to fit small datasets, so every rank runs the same number of steps."""
    per_rank = len(dataset) // ctx.world_size
    batch_size = max(2, min(batch_size, per_rank))
    if ctx.distributed:
        sampler = DistributedSampler(
            dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True), batch_size


def _cat(parts: list[Tensor], index: Tensor, width: int) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(len(index), width)


def _epoch_line(record: dict[str, float], improved: bool, monitor: str) -> str:
    return (
        f"epoch {record['epoch']:3d}  loss {record.get('train_loss', float('nan')):.4f}  "
        f"val_loss {record['val_loss']:.4f}  "
        f"R@1 {record['val_r1']:.3f} (chance {record['chance_r1']:.3f})  R@5 {record['val_r5']:.3f}  "
        f"acc {record['val_acc']:.3f}  T {record['temperature']:.4f}  {record['seconds']:.1f}s"
        + (f"  * best {monitor}" if improved else "")
    )


def _report(train, data, train_set, val_set, history, best, ctx, args) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "run": run_record(args),
        "settings": asdict(train),
        "data": data_record(data, train_set, val_set),
        "best": best,
        "epochs": history.evals,
        "steps": history.steps,
        "seconds": time.time() - history.started,
        "world_size": ctx.world_size,
    }


def _write_folder(
    out_dir: Path, scene_model: SceneModel, config: ModelConfig, report: dict, history: History, args
) -> None:
    """config.json + model.safetensors (the checkpoint format PerceptionPipeline.save writes; called
    directly so the frozen vision encoder never has to be loaded), the report and the plot."""
    metadata = {
        "training": {
            STAGE: {
                "run": report["run"],
                "seed": report["settings"]["seed"],
                "data": {k: v for k, v in report["data"].items() if k != "config"}
                | {"bag": report["data"]["config"]["bag"], "val_bag": report["data"]["config"]["val_bag"]},
                "metrics": {
                    k: v for k, v in report["best"].items() if k.startswith(("val_", "chance_", "temp"))
                },
                "epochs_run": len(report["epochs"]),
            }
        },
    }
    save_checkpoint(
        out_dir, config=config, dims=scene_model.dims, state_dict=scene_model.state_dict(), metadata=metadata
    )
    update_report(out_dir, STAGE, report)
    plot_history(
        out_dir / PLOT_FILE,
        history,
        title=f"stage 1: IMU alignment ({out_dir.name})",
        step_keys=["loss", "infonce", "token_infonce", "ce"],
        eval_keys=["val_r1", "val_r5", "val_acc", "chance_r1", "chance_r5"],
    )
    log.info("stage 1 model written to %s", out_dir)


# --------------------------------------------------------------------------------------------------
# Command line


def main_align(args: argparse.Namespace) -> int:
    """``fvp train align``: parsed arguments (see cli_args.add_align_arguments) -> exit status."""
    from frozen_vlm_perception.training.cli_args import align_configs_from_args

    data, model_config, train = align_configs_from_args(args)
    ctx = distributed.setup(train.device)
    try:
        result = train_align(
            data=data, model_config=model_config, train=train, out_dir=args.out, args=args, ctx=ctx
        )
        if ctx.is_main:
            best = result.best
            print(
                f"wrote {result.model_dir}  (best epoch {best.get('epoch')}: "
                f"R@1 {best.get('val_r1', 0):.3f}, R@5 {best.get('val_r5', 0):.3f}, "
                f"acc {best.get('val_acc', 0):.3f})"
            )
    finally:
        distributed.teardown(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    from frozen_vlm_perception.training.cli_args import add_align_arguments, module_main

    return module_main(
        "python -m frozen_vlm_perception.training.align", __doc__, add_align_arguments, main_align, argv
    )


if __name__ == "__main__":
    sys.exit(main())
