"""argparse helpers for the training commands.

    add_align_arguments(parser)     # the flags of `fvp train align` (and adapter, fusion)
    align_configs_from_args(args)   # -> DataConfig, ModelConfig, AlignTrainConfig

The recording flags (--bag, --val-bag, topics, labels, cache) and their DataConfig come from
data/cli_args.py, shared with every other command that reads bags (e.g. eval). Defaults are not
repeated here: a flag left out keeps the dataclass default (training/config.py).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from frozen_vlm_perception.config import ADAPTER_KINDS, FUSION_WEIGHTINGS, ConfigError, ModelConfig, from_dict
from frozen_vlm_perception.data.cli_args import add_bag_arguments, data_config_from_args
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.paths import MODEL_CONFIG_FILE
from frozen_vlm_perception.training.config import (
    ADAPTER_MONITORS,
    ALIGN_MONITORS,
    AdapterTrainConfig,
    AlignTrainConfig,
)


def _option(group, defaults, name: str, kind: type, text: str = "", **kwargs) -> None:
    """--name-with-dashes for the settings field ``name``; the help shows the dataclass default."""
    default = getattr(defaults, name)
    group.add_argument(
        "--" + name.replace("_", "-"),
        type=kind,
        default=None,
        help=f"{text} (default {default})".strip(),
        **kwargs,
    )


def _add_common_training(parser: argparse.ArgumentParser, defaults, monitors: dict[str, bool]) -> None:
    group = parser.add_argument_group("training")
    _option(group, defaults, "epochs", int)
    _option(group, defaults, "batch_size", int, "per process")
    _option(group, defaults, "lr", float, "peak learning rate (AdamW, warmup then cosine)")
    _option(group, defaults, "weight_decay", float)
    _option(group, defaults, "warmup_steps", int)
    _option(group, defaults, "patience", int, "validations without improvement before stopping")
    _option(group, defaults, "monitor", str, "early-stopping metric", choices=sorted(monitors))
    _option(group, defaults, "seed", int)
    _option(group, defaults, "device", str, "auto | cpu | cuda | cuda:N (torchrun: one GPU per process)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fvp train align`` (stage 1)."""
    defaults = AlignTrainConfig()
    add_bag_arguments(parser)
    parser.add_argument(
        "--out", required=True, help="model folder to write (config.json + model.safetensors)"
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model-config",
        default=None,
        metavar="FILE",
        help="YAML/JSON ModelConfig (or a model folder's config.json); flags below override it",
    )
    model.add_argument(
        "--adapter",
        choices=ADAPTER_KINDS,
        default=None,
        help="resampler (Perceiver Resampler) or linear (one fully-connected layer) (default resampler)",
    )
    _add_common_training(parser, defaults, ALIGN_MONITORS)
    stage = parser.add_argument_group("stage 1")
    _option(stage, defaults, "supervised_weight", float, "weight of the activity cross-entropy")
    stage.add_argument("--contrastive-only", action="store_true", help="supervised weight 0 (the ablation)")
    _option(stage, defaults, "token_weight", float, "weight of the token-level InfoNCE")
    _option(stage, defaults, "imu_scale_jitter", float, "IMU amplitude augmentation")
    _option(stage, defaults, "imu_noise", float, "IMU noise augmentation")


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fvp train adapter`` (stage 2)."""
    defaults = AdapterTrainConfig()
    add_bag_arguments(parser)
    parser.add_argument("--model", required=True, help="the stage-1 model folder (updated in place)")
    parser.add_argument("--out", default=None, help="write the finished model here instead of --model")
    _add_common_training(parser, defaults, ADAPTER_MONITORS)
    stage = parser.add_argument_group("stage 2")
    _option(stage, defaults, "max_steps", int, "cap on optimizer steps")
    _option(stage, defaults, "lm_loss_every", int, "LM loss on every n-th step")
    _option(stage, defaults, "lm_batch_size", int, "samples per step through the LM")
    _option(stage, defaults, "lm_weight", float)
    _option(stage, defaults, "ce_weight", float)
    _option(stage, defaults, "alpha_jitter", float, "fusion alpha ~ U(alpha -+ this) per batch")
    _option(stage, defaults, "caption_steps", int, "warm-start steps towards caption embeddings (no LM)")
    _option(stage, defaults, "caption_weight", float, "caption loss weight during the LM steps")
    _option(stage, defaults, "p_general", float, "share of LM samples with a general-knowledge question")
    _option(stage, defaults, "p_yes_no", float, "share of the other LM samples asked a yes/no question")
    _option(stage, defaults, "first_token_weight", float, "weight of each answer's first token (yes/no)")
    _option(stage, defaults, "val_yes_no_samples", int, "validation samples asked a yes/no question")
    _option(stage, defaults, "val_answer_samples", int, "validation samples answered in a validation wording")
    _option(stage, defaults, "head_steps", int, "head-only steps on the kept adapter's latents")
    stage.add_argument(
        "--answers-name-place",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activity and yes/no answers name the known place too (questions.reference_answer; "
        f"default: {'on' if defaults.answers_name_place else 'off'})",
    )
    stage.add_argument(
        "--reinit",
        action="store_true",
        default=None,
        help="fresh fusion, adapter and head (seeded) instead of the folder's; the IMU encoder is kept",
    )
    stage.add_argument(
        "--adapter",
        choices=("resampler", "linear"),
        default=None,
        help="with --reinit: train this adapter kind instead of the folder's (stage 1 does not depend on it)",
    )
    stage.add_argument(
        "--fusion",
        choices=FUSION_WEIGHTINGS,
        default=None,
        help="fixed: one vision weight alpha (chosen on the validation data at the end); gate: a small "
        "network weighs the modalities per sample (default: the folder's)",
    )
    _option(stage, defaults, "p_gate", float, "with a gate: share of batches fused by the gate")
    _option(stage, defaults, "gate_weight", float, "with a gate: weight of its per-sample reliability loss")
    stage.add_argument(
        "--modality-probs",
        type=float,
        nargs=3,
        default=None,
        metavar=("FUSED", "VISION", "IMU"),
        help="modality dropout probabilities "
        f"(default {defaults.p_fused} {defaults.p_vision} {defaults.p_imu})",
    )
    _option(stage, defaults, "val_every", int, "validate every n steps; 0: every epoch")
    _option(stage, defaults, "val_lm_samples", int, "validation samples through the LM")
    _option(
        stage, defaults, "reader_tokens", int,
        "add a fresh question reader writing this many tokens after the question (0: the folder's)",
    )  # fmt: skip
    stage.add_argument(
        "--only-reader",
        action="store_true",
        default=None,
        help="train the question reader alone; the folder's fusion, adapter and head stay as they are",
    )
    stage.add_argument(
        "--reader-decision",
        action="store_true",
        default=None,
        help="give the question reader its own yes/no decision (a gate and a yes logit with their own "
        "loss, choosing between two learned token sets)",
    )
    stage.add_argument(
        "--only-decision",
        action="store_true",
        default=None,
        help="train the reader's yes/no decision alone (implies --only-reader --reader-decision)",
    )
    _option(stage, defaults, "decision_weight", float, "weight of the reader's decision loss")
    _option(stage, defaults, "decision_questions", int, "questions per labelled sample for the decision loss")


def add_fusion_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fvp train fusion`` (choose a finished folder's alpha)."""
    add_bag_arguments(parser, with_val=False)
    parser.add_argument("--model", required=True, help="the finished model folder (its alpha is updated)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")


# --------------------------------------------------------------------------------------------------
# Namespaces -> configs


def align_configs_from_args(args: argparse.Namespace) -> tuple[DataConfig, ModelConfig, AlignTrainConfig]:
    data = data_config_from_args(args)
    model = load_model_config(args.model_config) if args.model_config else ModelConfig()
    if args.adapter:
        model = replace(model, adapter=replace(model.adapter, kind=args.adapter))
    model.validate()
    train = _train_config(AlignTrainConfig, args)
    if args.contrastive_only:
        train = replace(train, supervised_weight=0.0)
    train.validate()
    return data, model, train


def adapter_configs_from_args(args: argparse.Namespace) -> tuple[DataConfig, AdapterTrainConfig]:
    data = data_config_from_args(args)
    train = _train_config(AdapterTrainConfig, args)
    if args.modality_probs:
        train = replace(
            train,
            p_fused=args.modality_probs[0],
            p_vision=args.modality_probs[1],
            p_imu=args.modality_probs[2],
        )
    train.validate()
    return data, train


def _train_config(cls, args: argparse.Namespace):
    """The dataclass with every field whose flag was given (same name, '-' -> '_') overridden."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "progress":
            values[f.name] = value
    values["progress"] = not getattr(args, "no_progress", False)
    return cls(**values)


def load_model_config(path: str | Path) -> ModelConfig:
    """A ModelConfig from YAML or JSON: the mapping itself, or a model folder's config.json ("model")."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_CONFIG_FILE
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read the model config {path}: {err}") from err
    if path.suffix == ".json":
        document = json.loads(text)
    else:
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if isinstance(document, dict) and "model" in document and "format_version" in document:
        document = document["model"]
    config = from_dict(ModelConfig, document, where=str(path))
    config.validate()
    return config


def module_main(prog: str, doc: str | None, add_arguments, handler, argv: list[str] | None) -> int:
    """``python -m <prog>``: parse ``argv`` with ``add_arguments``, quiet library logs, run ``handler``."""
    import logging

    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return handler(parser.parse_args(argv))
