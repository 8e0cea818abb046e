"""Model folders: ``models/<name>/config.json`` + ``model.safetensors`` (never pickles).

config.json holds the format version, the full ModelConfig, the dimensions the weights were
trained with and free-form metadata (training commands, metrics). Loading checks the version,
the backend and every dimension, then every tensor's name and shape, and says what does not match.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from frozen_vlm_perception.config import (
    CHECKPOINT_FORMAT_VERSION,
    ConfigError,
    ModelConfig,
    from_dict,
    to_dict,
)
from frozen_vlm_perception.paths import MODEL_CONFIG_FILE

CONFIG_FILE = MODEL_CONFIG_FILE
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A model folder is missing, corrupted, or does not match what it is loaded into."""


def save_checkpoint(
    model_dir: str | Path,
    *,
    config: ModelConfig,
    dims: dict[str, int],
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write config.json and model.safetensors into model_dir (each written atomically)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    with tempfile.NamedTemporaryFile(dir=model_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    save_file(tensors, str(tmp_path), metadata={"format_version": str(CHECKPOINT_FORMAT_VERSION)})
    _publish(tmp_path, model_dir / WEIGHTS_FILE)
    document = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": to_dict(config),
        "dims": dict(dims),
        "metadata": metadata or {},
    }
    _write_json_atomic(model_dir / CONFIG_FILE, document)
    return model_dir


def read_checkpoint_config(model_dir: str | Path) -> tuple[ModelConfig, dict[str, int], dict[str, Any]]:
    """(config, dims, metadata) of a model folder, with the format version checked."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise CheckpointError(f"model folder not found: {model_dir}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    version = document.get("format_version") if isinstance(document, dict) else None
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this package reads version "
            f"{CHECKPOINT_FORMAT_VERSION}; retrain or convert the model"
        )
    try:
        config = from_dict(ModelConfig, document.get("model"), where="model")
        config.validate()
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err
    dims = document.get("dims")
    if not isinstance(dims, dict) or not all(isinstance(v, int) for v in dims.values()):
        raise CheckpointError(f"{path}: 'dims' must map names to integers, got {dims!r}")
    return config, dims, document.get("metadata") or {}


def check_compatible(
    *,
    where: str | Path,
    stored: ModelConfig,
    stored_dims: dict[str, int],
    expected_dims: dict[str, int],
    expected_backend: str | None = None,
) -> None:
    """Raise CheckpointError naming every dimension (and the backend) that differs."""
    problems = []
    if expected_backend is not None and stored.vision.backend != expected_backend:
        problems.append(
            f"vision backend: checkpoint {stored.vision.backend!r}, configured {expected_backend!r}"
        )
    for key, value in expected_dims.items():
        if key in stored_dims and stored_dims[key] != value:
            problems.append(f"{key}: checkpoint {stored_dims[key]}, model {value}")
    if problems:
        raise CheckpointError(f"{where} does not match: " + "; ".join(problems))


def load_state_into(
    model_dir: str | Path, module: torch.nn.Module, *, prefix: str = "", allow_missing: tuple[str, ...] = ()
) -> None:
    """Load model.safetensors into module, strictly: names and shapes must all agree. With
    ``prefix``, only the tensors under it (prefix removed) go into ``module`` (a submodule).
    ``allow_missing``: name prefixes of parts new to the module that the file may lack (they keep
    their initial values)."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupted files
        raise CheckpointError(f"{path} is corrupted or not a safetensors file: {err}") from err
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = sorted(name for name in set(expected) - set(state) if not name.startswith(allow_missing))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:8]) + (" ..." if len(wrong) > 8 else ""))
        if missing:
            parts.append(f"missing tensors: {missing[:8]}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected tensors: {unexpected[:8]}" + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(f"{path} does not fit the model: " + " | ".join(parts))
    module.load_state_dict(state, strict=not allow_missing)


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(document, tmp, indent=2)
        tmp.write("\n")
    _publish(Path(tmp.name), path)


def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temp file into place, readable as a normal file (temp files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
