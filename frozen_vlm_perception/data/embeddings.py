"""The embedding cache: bags -> paired samples -> frozen-vision embeddings, computed once and cached.

The vision encoder is frozen, so its outputs for a given bag never change: every frame is encoded
exactly once, in batches, and the result is stored as one safetensors file (never a pickle) under
the cache folder (``$FVP_CACHE_DIR/embeddings``, else ``~/.cache/frozen_vlm_perception/embeddings``).
Training epochs and ``fvp eval`` then read tensors only. The file name is a SHA-256 over everything
the contents depend on (see :func:`cache_key`):

- the bag's content identity: every file's name and size, plus its SHA-256 (files up to 64 MiB,
  i.e. every test and demo bag) or, for larger files, the SHA-256 of its first and last 8 MiB with
  its mtime (an mcap's tail is its summary, with chunk CRCs: any rewrite changes it);
- the encoder identity: backend, model name, pretrained flag, image size and the weights file(s)
  (fingerprinted the same way), plus this package's version (preprocessing lives in its code);
- the pairing: topics, label source (the CSV's hash), frame stride, IMU window and sync settings.

One cached set holds, for M frames: vision tokens (M, N, D) float16 (half the disk and RAM; the
frozen features lose nothing that matters at 3 significant digits), vision pooled (M, D) and the
mean vision token (M, D) in float32, IMU windows (M, T, C) float32 (zeros where ``has_imu`` is
false), label and place ids into the label/place names found in the bag (-1: unknown) and stamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

import frozen_vlm_perception
from frozen_vlm_perception.config import ImuConfig, SyncConfig, VisionConfig
from frozen_vlm_perception.data.bags import read_paired_samples, resolve_bag_path
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.paths import cache_dir, make_readable

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the stored tensors or their meaning change
WHOLE_FILE_HASH_LIMIT = 64 << 20  # hash files up to this size completely
EDGE_BYTES = 8 << 20  # larger files: hash this much of the head and of the tail
META_KEY = "fvp_embeddings"

# Builds the frozen encoder only on a cache miss (a cache hit never constructs it).
EncoderFactory = Callable[[], Any]


@dataclass
class EmbeddingSet:
    """Cached frozen-vision embeddings of M paired samples of one bag (or a subset of them)."""

    vision_pooled: Tensor  # (M, D) float32
    vision_token_mean: Tensor  # (M, D) float32, mean over the N tokens
    vision_tokens: Tensor | None  # (M, N, D) float16; None when loaded without tokens
    imu: Tensor  # (M, T, C) float32, zeros where has_imu is False
    has_imu: Tensor  # (M,) bool
    label_id: Tensor  # (M,) int64 into label_names, -1 unknown
    place_id: Tensor  # (M,) int64 into place_names, -1 unknown
    stamps: Tensor  # (M,) float64 frame stamps (s)
    label_names: list[str]
    place_names: list[str]
    num_tokens: int  # N, known even when the tokens are not loaded
    info: dict[str, Any] = field(default_factory=dict)  # bag, key, drops, cache file, hit

    def __len__(self) -> int:
        return len(self.vision_pooled)

    @property
    def vision_dim(self) -> int:
        return int(self.vision_pooled.shape[1])

    def subset(self, indices: Sequence[int] | Tensor) -> EmbeddingSet:
        index = torch.as_tensor(indices, dtype=torch.long)
        return EmbeddingSet(
            vision_pooled=self.vision_pooled[index],
            vision_token_mean=self.vision_token_mean[index],
            vision_tokens=None if self.vision_tokens is None else self.vision_tokens[index],
            imu=self.imu[index],
            has_imu=self.has_imu[index],
            label_id=self.label_id[index],
            place_id=self.place_id[index],
            stamps=self.stamps[index],
            label_names=self.label_names,
            place_names=self.place_names,
            num_tokens=self.num_tokens,
            info=dict(self.info),
        )

    def labels_for(self, model_labels: Sequence[str]) -> Tensor:
        """(M,) int64 indices into ``model_labels`` (-1 where unknown or not one of them)."""
        lookup = torch.tensor(
            [_index(model_labels, name) for name in self.label_names] + [-1], dtype=torch.long
        )
        return lookup[self.label_id]  # label_id -1 picks the trailing -1

    def place_of(self, i: int) -> str | None:
        pid = int(self.place_id[i])
        return self.place_names[pid] if pid >= 0 else None

    def label_of(self, i: int) -> str | None:
        lid = int(self.label_id[i])
        return self.label_names[lid] if lid >= 0 else None


# --------------------------------------------------------------------------------------------------
# Loading (cache hit) or building (cache miss)


def default_cache_dir() -> Path:
    """<cache>/embeddings (see frozen_vlm_perception.paths.cache_dir)."""
    return cache_dir("embeddings")


def load_embeddings(
    bag: str | Path,
    *,
    data: DataConfig,
    vision: VisionConfig,
    imu: ImuConfig,
    sync: SyncConfig | None = None,
    encoder_factory: EncoderFactory | None = None,
    device: str | torch.device = "cpu",
    with_tokens: bool = True,
    progress: bool = True,
) -> EmbeddingSet:
    """The embeddings of ``bag``: read from the cache, or computed (once) and cached.

    ``encoder_factory`` builds the frozen vision encoder on a miss (default: from ``vision`` on
    ``device``). ``with_tokens=False`` skips loading the (large) token tensor.
    """
    sync = sync or SyncConfig()
    key, material = cache_key(bag, data=data, vision=vision, imu=imu, sync=sync)
    folder = Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()
    path = folder / f"{key[:40]}.safetensors"
    if data.use_cache and path.is_file():
        try:
            found = _read(path, key, with_tokens=with_tokens)
            found.info.update(cache_file=str(path), cache_hit=True)
            log.info("embeddings of %s from the cache %s (%d samples)", bag, path, len(found))
            return found
        except Exception as err:  # safetensors raises its own error types; damaged: rebuild below
            log.warning("embedding cache %s is unreadable (%s); rebuilding it", path, err)
    if encoder_factory is None:
        from frozen_vlm_perception.nn.vision import build_vision_encoder

        encoder_factory = lambda: build_vision_encoder(vision, device)
    built = build_embeddings(bag, data=data, imu=imu, sync=sync, encoder=encoder_factory(), progress=progress)
    built.info.update(key=key, key_material=material, cache_hit=False)
    if data.use_cache:
        _write(path, built, key)
        built.info["cache_file"] = str(path)
    if not with_tokens:
        built.vision_tokens = None
    return built


def build_embeddings(
    bag: str | Path,
    *,
    data: DataConfig,
    imu: ImuConfig,
    sync: SyncConfig,
    encoder: Any,
    progress: bool = True,
) -> EmbeddingSet:
    """Read the paired samples of ``bag`` and run the frozen encoder over their frames in batches.

    ``encoder``: frames (list of (H, W, 3) uint8) -> tokens (B, N, D), pooled (B, D).
    """
    from tqdm.auto import tqdm

    samples = read_paired_samples(
        bag,
        camera_topic=data.camera_topic,
        imu_topic=data.imu_topic or None,
        label_topic=data.label_topic or None,
        labels_csv=data.labels_csv or None,
        place_topic=data.place_topic or None,
        imu_config=imu,
        sync_config=sync,
        frame_stride=data.frame_stride,
    )
    tokens, pooled, token_mean = [], [], []
    windows, has_imu, labels, places, stamps = [], [], [], [], []
    frames: list[np.ndarray] = []

    def flush() -> None:
        if not frames:
            return
        batch_tokens, batch_pooled = encoder(frames)
        batch_tokens = batch_tokens.float().cpu()
        tokens.append(batch_tokens.half())
        token_mean.append(batch_tokens.mean(dim=1))
        pooled.append(batch_pooled.float().cpu())
        frames.clear()

    empty_window = np.zeros((imu.window_samples, imu.channels), dtype=np.float32)
    bar = tqdm(samples, desc=f"encoding {Path(bag).name}", unit="frame", disable=not progress)
    for sample in bar:
        frames.append(sample.frame)
        window = sample.imu_window.data if sample.imu_window is not None else None
        ok = window is not None and window.shape == empty_window.shape and bool(np.isfinite(window).all())
        windows.append(window if ok else empty_window)
        has_imu.append(ok)
        labels.append(sample.label)
        places.append(sample.place)
        stamps.append(sample.stamp)
        if len(frames) >= data.encode_batch_size:
            flush()
    flush()
    bar.close()
    if not stamps:
        raise ValueError(
            f"{bag}: no camera frames on {data.camera_topic} could be read (drops: {dict(samples.drops)})"
        )
    drops = dict(Counter(samples.drops))
    if drops:
        log.info("%s: %s", bag, ", ".join(f"{k}={v}" for k, v in sorted(drops.items())))
    label_names = sorted({x for x in labels if x is not None})
    place_names = sorted({x for x in places if x is not None})
    all_tokens = torch.cat(tokens)
    return EmbeddingSet(
        vision_pooled=torch.cat(pooled),
        vision_token_mean=torch.cat(token_mean),
        vision_tokens=all_tokens,
        imu=torch.from_numpy(np.stack(windows)),
        has_imu=torch.tensor(has_imu, dtype=torch.bool),
        label_id=torch.tensor([_index(label_names, x) for x in labels], dtype=torch.long),
        place_id=torch.tensor([_index(place_names, x) for x in places], dtype=torch.long),
        stamps=torch.tensor(stamps, dtype=torch.float64),
        label_names=label_names,
        place_names=place_names,
        num_tokens=int(all_tokens.shape[1]),
        info={"bag": str(bag), "drops": drops},
    )


# --------------------------------------------------------------------------------------------------
# Cache identity


def cache_key(
    bag: str | Path, *, data: DataConfig, vision: VisionConfig, imu: ImuConfig, sync: SyncConfig
) -> tuple[str, dict[str, Any]]:
    """(SHA-256 hex, the JSON-able material it was computed from)."""
    material = {
        "format": CACHE_FORMAT,
        "package_version": frozen_vlm_perception.__version__,
        "bag": bag_fingerprint(bag),
        "encoder": encoder_identity(vision),
        "pairing": {
            "camera_topic": data.camera_topic,
            "imu_topic": data.imu_topic,
            "label_topic": data.label_topic,
            "labels_csv": _file_fingerprint(Path(data.labels_csv)) if data.labels_csv else None,
            "place_topic": data.place_topic,
            "frame_stride": data.frame_stride,
            "imu": {"channels": imu.channels, "rate_hz": imu.rate_hz, "window_samples": imu.window_samples},
            "sync": asdict(sync),
        },
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), material


def bag_fingerprint(bag: str | Path) -> list[dict[str, Any]]:
    """Content identity of a bag: every (non-hidden) file of the folder, or the lone storage file."""
    path = resolve_bag_path(bag)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    root = path.parent if path.is_file() else path
    return [
        {"name": str(f.relative_to(root)), **_file_fingerprint(f)}
        for f in files
        if not any(part.startswith(".") for part in f.relative_to(root).parts)
    ]


def encoder_identity(vision: VisionConfig) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "backend": vision.backend,
        "model_name": vision.model_name,
        "pretrained": vision.pretrained,
        "image_size": vision.image_size,
        "weights": None,
    }
    if vision.pretrained:
        if vision.weights:
            weights = Path(vision.weights).expanduser()
        elif vision.backend == "mobilenet_v2":
            from frozen_vlm_perception.nn.vision import packaged_mobilenet_weights

            weights = packaged_mobilenet_weights()
        else:
            weights = None
        if weights is not None and weights.is_dir():
            identity["weights"] = [
                {"name": str(f.relative_to(weights)), **_file_fingerprint(f)}
                for f in sorted(weights.rglob("*"))
                if f.is_file()
            ]
        elif weights is not None and weights.is_file():
            identity["weights"] = {"name": weights.name, **_file_fingerprint(weights)}
        elif weights is not None:
            raise FileNotFoundError(f"vision weights not found: {weights}")
    return identity


def _file_fingerprint(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_HASH_LIMIT:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
            return {"size": size, "sha256": digest.hexdigest()}
        digest.update(handle.read(EDGE_BYTES))
        handle.seek(size - EDGE_BYTES)
        digest.update(handle.read(EDGE_BYTES))
    return {"size": size, "edges_sha256": digest.hexdigest(), "mtime_ns": path.stat().st_mtime_ns}


# --------------------------------------------------------------------------------------------------
# The cache file


def _write(path: Path, embeddings: EmbeddingSet, key: str) -> None:
    """One safetensors file, written to a temporary name and renamed (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "vision_pooled": embeddings.vision_pooled,
        "vision_token_mean": embeddings.vision_token_mean,
        "vision_tokens": embeddings.vision_tokens,
        "imu": embeddings.imu,
        "has_imu": embeddings.has_imu,
        "label_id": embeddings.label_id,
        "place_id": embeddings.place_id,
        "stamps": embeddings.stamps,
    }
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "label_names": embeddings.label_names,
        "place_names": embeddings.place_names,
        "num_tokens": embeddings.num_tokens,
        "info": {k: v for k, v in embeddings.info.items() if k in ("bag", "drops", "key_material")},
    }
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(tmp_path),
            metadata={META_KEY: json.dumps(meta)},
        )
        make_readable(tmp_path)  # a cache may be shared; the temporary file was created private
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _read(path: Path, key: str, *, with_tokens: bool) -> EmbeddingSet:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})[META_KEY])
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise ValueError("the cache file does not match its key or format")
        get = handle.get_tensor
        return EmbeddingSet(
            vision_pooled=get("vision_pooled"),
            vision_token_mean=get("vision_token_mean"),
            vision_tokens=get("vision_tokens") if with_tokens else None,
            imu=get("imu"),
            has_imu=get("has_imu"),
            label_id=get("label_id"),
            place_id=get("place_id"),
            stamps=get("stamps"),
            label_names=list(meta["label_names"]),
            place_names=list(meta["place_names"]),
            num_tokens=int(meta["num_tokens"]),
            info={**meta.get("info", {}), "key": key},
        )


def _index(names: Sequence[str], name: str | None) -> int:
    try:
        return list(names).index(name) if name is not None else -1
    except ValueError:
        return -1
