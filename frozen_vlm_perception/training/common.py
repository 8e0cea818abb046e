"""Small pieces both training stages use: seeding, the LR schedule, early stopping, progress bars and
console lines, reports, plots."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frozen_vlm_perception.config import LanguageConfig
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import EmbeddingSet
from frozen_vlm_perception.paths import make_readable
from frozen_vlm_perception.training.distributed import DistContext

REPORT_FILE = "train_report.json"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * base_lr`` at ``total_steps`` (nanoGPT's)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(params, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms, embeddings-as-vectors and scalars
    such as the logit scale are not decayed: decaying them only fights the loss)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


@dataclass
class EarlyStopping:
    """Tracks the best value of a metric; ``step`` says whether it improved."""

    patience: int
    higher_is_better: bool
    best: float | None = None
    bad_rounds: int = 0

    def step(self, value: float) -> bool:
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better:
            self.best, self.bad_rounds = value, 0
        else:
            self.bad_rounds += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_rounds >= self.patience


@dataclass
class History:
    """Per-step training losses and per-validation metrics, for the report and the plot."""

    steps: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def progress_bar(iterable, show: bool, desc: str):
    """A tqdm progress bar over ``iterable`` that disappears when done; ``show`` false: none drawn."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def say(ctx: DistContext, message: str) -> None:
    """One line on rank 0's stdout (through tqdm, so it does not tear a progress bar)."""
    if ctx.is_main:
        from tqdm.auto import tqdm

        tqdm.write(message)


def data_record(data: DataConfig, train_set: EmbeddingSet, val_set: EmbeddingSet) -> dict[str, Any]:
    """The report's "data" entry: the DataConfig, and for the train and the validation set their
    sample count, samples per label ("(none)": unlabelled), cache key and dropped messages."""

    def counts(e: EmbeddingSet) -> dict[str, int]:
        out: dict[str, int] = {}
        for lid in e.label_id.tolist():
            name = e.label_names[lid] if lid >= 0 else "(none)"
            out[name] = out.get(name, 0) + 1
        return out

    return {
        "config": asdict(data),
        "train": {
            "samples": len(train_set),
            "labels": counts(train_set),
            "cache_key": train_set.info.get("key"),
            "drops": train_set.info.get("drops"),
        },
        "val": {
            "samples": len(val_set),
            "labels": counts(val_set),
            "cache_key": val_set.info.get("key"),
            "drops": val_set.info.get("drops"),
        },
    }


def language_hidden_size(config: LanguageConfig) -> int:
    """The LM's embedding width H without loading its weights (stage 1 only needs the number)."""
    from transformers import AutoConfig

    if config.source == "smollm2":
        from frozen_vlm_perception.nn.language import ensure_smollm2_cache

        folder = ensure_smollm2_cache()
    else:
        folder = Path(config.source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"language.source {config.source!r} is not a local model folder")
    hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return int(text.hidden_size)


def run_record(args: Any | None) -> dict[str, Any]:
    """How this run was started: the exact command line, the parsed arguments, the environment."""
    return {
        "command": command_line(),
        "args": {k: v for k, v in sorted(vars(args).items()) if _jsonable(v)} if args is not None else {},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def command_line() -> str:
    """The command as typed, as far as it can be rebuilt: ``python -m module ...`` for modules,
    prefixed with ``torchrun --nproc_per_node N`` when torchrun started this process."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = (
        ["python", "-m", spec.name.removesuffix(".__main__")]
        if spec is not None
        else [Path(sys.argv[0]).name]
    )
    if "TORCHELASTIC_RUN_ID" in os.environ:
        head = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "?"), *head]
    return shlex.join([*head, *sys.argv[1:]])


def update_report(model_dir: Path, stage: str, report: dict[str, Any]) -> Path:
    """Put ``report`` under ``stage`` in the folder's train_report.json (other stages kept)."""
    path = Path(model_dir) / REPORT_FILE
    document: dict[str, Any] = {}
    if path.is_file():
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            document = {}
    document[stage] = report
    write_json(path, document)
    return path


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(document, tmp, indent=2, default=_json_default)
        tmp.write("\n")
    make_readable(Path(tmp.name))
    os.replace(tmp.name, path)


def plot_history(
    path: Path, history: History, *, title: str, step_keys: list[str], eval_keys: list[str]
) -> Path:
    """Loss curves (per step, smoothed) on the left, validation metrics on the right, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on robots and CI machines
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in step_keys:
        points = [(s["step"], s[key]) for s in history.steps if key in s]
        if points:
            x, y = zip(*points, strict=True)
            left.plot(x, y, alpha=0.25, linewidth=0.8)
            left.plot(x, _smooth(np.array(y)), label=key, color=left.lines[-1].get_color())
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(loc="upper right", fontsize=8)
    for key in eval_keys:
        points = [(e["step"], e[key]) for e in history.evals if key in e]
        if points:
            x, y = zip(*points, strict=True)
            style = {"linestyle": "--"} if key.startswith("chance") else {"marker": "o", "markersize": 3}
            right.plot(x, y, label=key, **style)
    right.set_xlabel("step")
    right.set_ylabel("validation")
    right.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _smooth(y: np.ndarray, window: int = 10) -> np.ndarray:
    window = max(1, min(window, len(y)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
