"""PerceptionPipeline: frames + IMU windows -> scenes; scene + question -> answer. No ROS here.

pipeline = PerceptionPipeline.from_model_dir("models/demo")
scene = pipeline.encode_one(frame_rgb, imu_window)        # frame (H, W, 3) uint8, window (T, C)
print(scene.label, scene.confidence)
print(pipeline.answer(scene, "What is the person doing?").text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frozen_vlm_perception.checkpoint import (
    check_compatible,
    load_state_into,
    read_checkpoint_config,
    save_checkpoint,
)
from frozen_vlm_perception.config import FusionConfig, ModelConfig
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.nn.reader import decided_answer_starts, read_as_asked
from frozen_vlm_perception.nn.vision import FrozenVisionEncoder, build_vision_encoder

MODALITY_VISION = "vision"
MODALITY_IMU = "imu"
SOURCE_FUSED = "fused"


@dataclass
class Scene:
    """What perception knows about one frame: the LM's pseudo-tokens plus a fast activity label."""

    latents: np.ndarray  # (L, H) float32, pseudo-tokens in the LM's embedding width
    pooled: np.ndarray  # (D,) float32, fused pooled embedding in the vision space
    scores: np.ndarray  # (num_labels,) float32 softmax over labels
    labels: tuple[str, ...]
    modalities: tuple[str, ...]  # which of "vision", "imu" were used
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage, for the whole batch
    # Share of vision in the fusion: the gate's per-frame weight or the fixed alpha (1.0 vision only,
    # 0.0 IMU only): which sensor the robot trusted for this frame.
    vision_weight: float = 1.0

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.scores))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.scores))

    @property
    def source(self) -> str:
        """'fused' when both modalities were used, else the one that was."""
        return SOURCE_FUSED if len(self.modalities) == 2 else self.modalities[0]


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else CPU; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (use 'auto' or 'cpu')")
    return device


class PerceptionPipeline:
    def __init__(
        self,
        *,
        config: ModelConfig,
        vision: FrozenVisionEncoder | None,
        scene_model: SceneModel,
        language: Any | None = None,
        device: torch.device,
    ):
        self.config = config
        self.vision = vision
        self.scene_model = scene_model.to(device).eval()
        self.language = language
        self.device = device

    # ----------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        device: str = "auto",
        load_language: bool = True,
        load_vision: bool = True,
        fusion: FusionConfig | None = None,
    ) -> PerceptionPipeline:
        """Load a trained model folder; the frozen parts come from their packages/paths in its config.

        ``load_vision=False``: no frozen vision encoder (for answering only: the reasoning node gets
        its scenes as latents, and the paper's ViT-L-14 would cost a GB for nothing); ``encode`` then
        accepts IMU windows only.
        """
        config, dims, _ = read_checkpoint_config(model_dir)
        if fusion is not None:
            fusion.validate()
            config = replace(config, fusion=fusion)
        torch_device = resolve_device(device)
        vision = build_vision_encoder(config.vision, torch_device) if load_vision else None
        scene_model = SceneModel(
            config=config,
            vision_dim=vision.dim if vision is not None else dims["vision_dim"],
            vision_tokens=vision.num_tokens if vision is not None else dims["vision_tokens"],
            lm_dim=dims["lm_dim"],
        )
        check_compatible(where=model_dir, stored=config, stored_dims=dims, expected_dims=scene_model.dims)
        load_state_into(model_dir, scene_model)
        language = None
        if load_language:
            language = _load_language(config, torch_device)
            check_compatible(
                where=model_dir,
                stored=config,
                stored_dims=dims,
                expected_dims={"lm_dim": language.hidden_size},
            )
        return cls(
            config=config, vision=vision, scene_model=scene_model, language=language, device=torch_device
        )

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        *,
        device: str = "auto",
        language: Any | None = None,
        lm_dim: int | None = None,
        seed: int = 0,
    ) -> PerceptionPipeline:
        """A pipeline with real frozen parts and freshly initialised trainable parts (before training).

        Pass a loaded ``language`` model, or only its width ``lm_dim`` for a perception-only pipeline.
        """
        config.validate()
        torch_device = resolve_device(device)
        if language is None and lm_dim is None:
            language = _load_language(config, torch_device)
        lm_dim = language.hidden_size if language is not None else lm_dim
        vision = build_vision_encoder(config.vision, torch_device)
        torch.manual_seed(seed)
        scene_model = SceneModel(
            config=config, vision_dim=vision.dim, vision_tokens=vision.num_tokens, lm_dim=lm_dim
        )
        return cls(
            config=config, vision=vision, scene_model=scene_model, language=language, device=torch_device
        )

    def save(self, model_dir: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write the trainable parts and the config (the frozen parts are referenced, not copied)."""
        return save_checkpoint(
            model_dir,
            config=self.config,
            dims=self.scene_model.dims,
            state_dict=self.scene_model.state_dict(),
            metadata=metadata,
        )

    # ----------------------------------------------------------------------------------------------
    # perception

    @torch.inference_mode()
    def encode(
        self,
        frames: Sequence[np.ndarray | None] | None,
        imu_windows: Sequence[np.ndarray | None] | None,
        *,
        mode: str | None = None,
        alpha: float | None = None,
    ) -> list[Scene]:
        """Encode a batch; either list may be None, and single entries may be None (missing modality).

        frames: uint8 RGB (H, W, 3) each (sizes may differ); imu_windows: float (T, C) each, as
        resampled by sync.ImuBuffer.window. ``mode`` ("fused" | "vision" | "imu") and ``alpha``
        override the config's fusion settings for this call.
        """
        mode = mode or self.config.fusion.mode
        batch = len(frames) if frames is not None else len(imu_windows or ())
        if batch == 0:
            return []
        frames = list(frames) if frames is not None and mode != "imu" else [None] * batch
        windows = list(imu_windows) if imu_windows is not None and mode != "vision" else [None] * batch
        if len(frames) != len(windows):
            raise ValueError(f"{len(frames)} frames but {len(windows)} IMU windows")
        has_vision = np.array([f is not None for f in frames])
        has_imu = np.array([w is not None for w in windows])
        if not np.all(has_vision | has_imu):
            raise ValueError(f"mode {mode!r}: some samples have no usable modality")

        timings: dict[str, float] = {}
        stage = self._stopwatch(timings)
        vision_tokens = vision_pooled = None
        if has_vision.any():
            if self.vision is None:
                raise RuntimeError("this pipeline was loaded without its vision encoder (load_vision=False)")
            with stage("preprocess"):
                pixels = self.vision.preprocess([f for f in frames if f is not None], self.device)
            with stage("vision"):
                tokens, pooled = self.vision.encode(pixels)
            vision_tokens = _scatter(tokens, has_vision, self.device)
            vision_pooled = _scatter(pooled, has_vision, self.device)
        imu_tensor = None
        if has_imu.any():
            imu_tensor = torch.from_numpy(_stack_windows(windows, self.config.imu)).to(self.device)
        out = self.scene_model(
            vision_tokens=vision_tokens,
            vision_pooled=vision_pooled,
            imu_windows=imu_tensor,
            has_vision=torch.from_numpy(has_vision).to(self.device),
            has_imu=torch.from_numpy(has_imu).to(self.device),
            alpha=alpha,
            stage=stage,
        )
        latents = out.latents.float().cpu().numpy()
        pooled = out.pooled.float().cpu().numpy()
        scores = out.logits.float().softmax(-1).cpu().numpy()
        vision_weights = out.vision_weight.float().cpu().tolist()
        labels = tuple(self.config.labels)
        scenes = []
        for i in range(batch):
            modalities = tuple(
                name
                for name, present in ((MODALITY_VISION, has_vision[i]), (MODALITY_IMU, has_imu[i]))
                if present
            )
            scenes.append(
                Scene(
                    latents=latents[i],
                    pooled=pooled[i],
                    scores=scores[i],
                    labels=labels,
                    modalities=modalities,
                    timings_ms=timings,
                    vision_weight=vision_weights[i],
                )
            )
        return scenes

    def encode_one(self, frame: np.ndarray | None, imu_window: np.ndarray | None, **kwargs: Any) -> Scene:
        return self.encode([frame], [imu_window], **kwargs)[0]

    # ----------------------------------------------------------------------------------------------
    # reasoning

    def answer(
        self,
        scene: Scene | None,
        question: str,
        *,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        """Greedy answer of the frozen LM to ``question`` about ``scene`` (None: the question alone)."""
        language = self._language()
        scene_tokens, after, starts = None, None, None
        if scene is not None:
            scene_tokens = torch.from_numpy(np.asarray(scene.latents, dtype=np.float32)).to(self.device)
            after, decision = self._read(scene_tokens[None], [question])
            starts = self._answer_starts(decision)
        return language.generate(
            scene_tokens,
            question,
            max_new_tokens=max_new_tokens,
            on_text=on_text,
            should_stop=should_stop,
            after_question=None if after is None else after[0],
            answer_start=() if starts is None else starts[0],
        )

    def answer_batch(self, latents: torch.Tensor, question: str, *, max_new_tokens: int | None = None):
        """Greedy answers to one ``question`` about B scenes' latents (B, K, H), decoded together
        (``FrozenLanguageModel.generate_batch``, through the question reader when the model has one)."""
        latents = latents.to(self.device)
        after, decision = self._read(latents, [question] * len(latents))
        return self._language().generate_batch(
            latents,
            question,
            max_new_tokens=max_new_tokens,
            after_question=after,
            answer_starts=self._answer_starts(decision),
        )

    def read_question(self, latents: torch.Tensor, questions: list[str]) -> torch.Tensor | None:
        """The question reader's tokens (B, M, H) for latents (B, K, H) and B questions; None when the
        model has no reader (its answers read the scene's latents alone)."""
        return self._read(latents, questions)[0]

    def question_decision(self, latents: torch.Tensor, questions: list[str]) -> torch.Tensor | None:
        """The question reader's own [gate, yes] logits (B, 2) for latents (B, K, H) and B questions
        (nn/reader.py YesNoDecision); None when the model's reader does not decide."""
        return self._read(latents, questions)[1]

    @torch.inference_mode()
    def _read(
        self, latents: torch.Tensor, questions: list[str]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        reader = self.scene_model.reader
        if reader is None:
            return None, None
        return read_as_asked(reader, self._language(), latents.to(self.device, torch.float32), questions)

    def _answer_starts(self, decision: torch.Tensor | None) -> list[list[int]] | None:
        """The answers' first tokens from the reader's decision (B, 2), or None: the LM chooses."""
        if decision is None or not self.scene_model.reader.decision_starts_answer:
            return None
        return decided_answer_starts(self._language(), decision)

    def _language(self):
        if self.language is None:
            raise RuntimeError("this pipeline was loaded without its language model (load_language=False)")
        return self.language

    # ----------------------------------------------------------------------------------------------

    def _stopwatch(self, timings: dict[str, float]) -> Callable[[str], Any]:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        @contextmanager
        def stage(name: str) -> Iterator[None]:
            sync()
            start = time.perf_counter()
            yield
            sync()
            timings[name] = timings.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

        return stage


def _load_language(config: ModelConfig, device: torch.device):
    from frozen_vlm_perception.nn.language import FrozenLanguageModel

    return FrozenLanguageModel(config=config.language, device=device)


def _scatter(values: torch.Tensor, present: np.ndarray, device: torch.device) -> torch.Tensor:
    """(K, ...) rows for the present samples -> (B, ...) with zeros where absent."""
    if present.all():
        return values.to(device)
    out = values.new_zeros((len(present), *values.shape[1:]))
    out[torch.from_numpy(np.flatnonzero(present)).to(values.device)] = values
    return out.to(device)


def _stack_windows(windows: list[np.ndarray | None], imu_config) -> np.ndarray:
    """List of (T, C) windows or None -> (B, T, C) float32 with zeros for the missing ones, checked."""
    shape = (imu_config.window_samples, imu_config.channels)
    out = np.zeros((len(windows), *shape), dtype=np.float32)
    for i, window in enumerate(windows):
        if window is None:
            continue
        window = np.asarray(window, dtype=np.float32)
        if window.shape != shape:
            raise ValueError(f"IMU window {i} has shape {window.shape}, the encoder expects {shape}")
        if not np.isfinite(window).all():
            raise ValueError(f"IMU window {i} holds NaN or inf")
        out[i] = window
    return out
