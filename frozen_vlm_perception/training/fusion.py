"""The fusion weight, chosen by data: an alpha sweep on validation data, and the choice it makes.

Stage 2 ends with ``choose_fusion``: the fused accuracy of the trained model for every alpha of
``ALPHA_GRID`` on the validation samples, the best of the ``CHOOSABLE_ALPHAS`` stored in the model
folder's config (a user never tunes it by hand), and, for a model with a learned gate
(``fusion.weighting: gate``), the gate's own accuracy beside it. ``fvp train fusion`` runs the same on a
finished folder without retraining.

Why validation and not training data: on the samples it was trained on, every modality looks
reliable (the head has seen them), so only held-out samples show which sensor says little.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from frozen_vlm_perception.checkpoint import read_checkpoint_config, save_checkpoint
from frozen_vlm_perception.data.embeddings import EmbeddingSet
from frozen_vlm_perception.nn.fusion import ALPHA_GRID
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.training.common import update_report
from frozen_vlm_perception.training.losses import supervised_ce

log = logging.getLogger(__name__)

STAGE = "fusion"

# The alphas the sweep may choose: both sensors keep a share. The fused latents feed the language
# model as well as the head, and alpha 0 (or 1) would hide the camera (or the IMU) from every answer:
# no answer could name the place (or the motion) however well the labels scored. The sweep still
# scores the whole ALPHA_GRID, so the single-sensor accuracies stay in the report.
CHOOSABLE_ALPHAS: tuple[float, ...] = tuple(alpha for alpha in ALPHA_GRID if 0.0 < alpha < 1.0)


@torch.no_grad()
def fused_scores(
    scene_model: SceneModel,
    embeddings: EmbeddingSet,
    labels: torch.Tensor,
    alpha: float | None,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> dict[str, float]:
    """Fused accuracy and cross-entropy over the labelled samples that have an IMU window, at a
    fixed ``alpha`` or (None) the model's own weighting; plus the mean vision weight it used."""
    scene_model.eval()
    index = torch.nonzero((labels >= 0) & embeddings.has_imu).flatten()
    if len(index) == 0:
        raise ValueError("no labelled sample with an IMU window to choose the fusion weight on")
    logits, weights = [], []
    for chunk in index.split(batch_size):
        out = scene_model(
            vision_tokens=embeddings.vision_tokens[chunk].to(device).float(),
            vision_pooled=embeddings.vision_pooled[chunk].to(device),
            imu_windows=embeddings.imu[chunk].to(device),
            alpha=alpha,
        )
        logits.append(out.logits.float().cpu())
        weights.append(out.vision_weight.float().cpu())
    logits_all, target = torch.cat(logits), labels[index]
    weight = torch.cat(weights)
    return {
        "accuracy": float((logits_all.argmax(1) == target).float().mean()),
        "ce": float(supervised_ce(logits_all, target)),
        "vision_weight_mean": float(weight.mean()),
        "vision_weight_std": float(weight.std()) if len(weight) > 1 else 0.0,
        "n": int(len(index)),
    }


def best_alpha(sweep: list[dict[str, float]], choices: tuple[float, ...] = CHOOSABLE_ALPHAS) -> float:
    """The alpha among ``choices`` with the highest accuracy; among equal accuracies (to 3 decimals:
    differences below one sample in a thousand are noise) the lowest cross-entropy."""
    rows = [row for row in sweep if any(abs(row["alpha"] - choice) < 1e-9 for choice in choices)]
    if not rows:
        raise ValueError(f"the sweep has none of the choosable alphas {choices}")
    return max(rows, key=lambda row: (round(row["accuracy"], 3), -row["ce"]))["alpha"]


def choose_fusion(
    scene_model: SceneModel,
    embeddings: EmbeddingSet,
    model_labels: list[str],
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Sweep alpha on ``embeddings`` (validation data), set the model's alpha to the best one and
    return the record for the training report: sweep, chosen alpha, and the gate's scores if any."""
    labels = embeddings.labels_for(model_labels)
    sweep = [{"alpha": alpha, **fused_scores(scene_model, embeddings, labels, alpha, device)}
             for alpha in ALPHA_GRID]
    chosen = best_alpha(sweep)
    record: dict[str, Any] = {
        "alpha": chosen,
        "previous_alpha": scene_model.fusion.alpha,
        "sweep": sweep,
        "weighting": scene_model.config.fusion.weighting,
        "chosen_on": embeddings.info.get("bag", "validation data"),
    }
    if scene_model.fusion.gate is not None:
        record["gate"] = fused_scores(scene_model, embeddings, labels, None, device)
    set_alpha(scene_model, chosen)
    row = next(r for r in sweep if r["alpha"] == chosen)
    log.info(
        "fusion: alpha %.1f chosen on %d validation samples (fused accuracy %.3f; alpha %.1f gave %.3f)%s",
        chosen, row["n"], row["accuracy"], record["previous_alpha"],
        next((r["accuracy"] for r in sweep if r["alpha"] == record["previous_alpha"]), float("nan")),
        f"; the gate gives {record['gate']['accuracy']:.3f}" if "gate" in record else "",
    )
    return record


def set_alpha(scene_model: SceneModel, alpha: float) -> None:
    """The model's fixed vision weight, in the module and in the config it is saved with."""
    scene_model.fusion.alpha = alpha
    scene_model.config = replace(scene_model.config, fusion=replace(scene_model.config.fusion, alpha=alpha))


def sweep_table(record: dict[str, Any]) -> str:
    """The sweep as a markdown table (for logs and the closing print of ``fvp train fusion``)."""
    head = "| alpha | " + " | ".join(f"{r['alpha']:.1f}" for r in record["sweep"]) + " |"
    rule = "|---|" + "---|" * len(record["sweep"])
    acc = "| fused accuracy | " + " | ".join(f"{r['accuracy']:.3f}" for r in record["sweep"]) + " |"
    lines = [head, rule, acc]
    if "gate" in record:
        gate = record["gate"]
        lines.append(
            f"\ngate: accuracy {gate['accuracy']:.3f}, vision weight {gate['vision_weight_mean']:.2f} "
            f"+- {gate['vision_weight_std']:.2f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# fvp train fusion: choose alpha for a finished folder


def refit_fusion(model_dir: str | Path, embeddings: EmbeddingSet, device: str = "cpu") -> dict[str, Any]:
    """Choose the alpha of the finished folder ``model_dir`` on ``embeddings`` and save it there."""
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    model_dir = Path(model_dir)
    _, _, metadata = read_checkpoint_config(model_dir)
    scene_model = PerceptionPipeline.from_model_dir(
        model_dir, device=device, load_language=False, load_vision=False
    ).scene_model
    record = choose_fusion(scene_model, embeddings, list(scene_model.config.labels), device)
    save_checkpoint(
        model_dir,
        config=scene_model.config,
        dims=scene_model.dims,
        state_dict=scene_model.state_dict(),
        metadata=metadata,
    )
    update_report(model_dir, STAGE, record)
    return record



def main_fusion(args: argparse.Namespace) -> int:
    """``fvp train fusion --bag VAL --model DIR``: choose alpha on the (validation) bag."""
    from frozen_vlm_perception.data.cli_args import data_config_from_args
    from frozen_vlm_perception.data.embeddings import load_embeddings

    config, _, _ = read_checkpoint_config(args.model)
    data = data_config_from_args(args)
    embeddings = load_embeddings(
        data.bag, data=data, vision=config.vision, imu=config.imu, device=args.device, with_tokens=True
    )
    record = refit_fusion(args.model, embeddings, args.device)
    print(sweep_table(record))
    print(f"wrote {args.model}: fusion.alpha {record['previous_alpha']:g} -> {record['alpha']:g}")
    return 0
