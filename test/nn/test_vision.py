"""Frozen vision encoders: real ImageNet weights classify real photos; other backends build and run."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torchvision

from frozen_vlm_perception.config import VisionConfig
from frozen_vlm_perception.nn.vision import build_vision_encoder

CATEGORIES = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


def top5(encoder, image: np.ndarray) -> list[str]:
    logits = encoder.imagenet_logits([image])[0]
    return [CATEGORIES[i] for i in logits.topk(5).indices.tolist()]


def test_mobilenet_classifies_coffee_as_espresso_or_cup(vision_encoder):
    best = top5(vision_encoder, skimage.data.coffee())
    assert best[0] in {"espresso", "cup", "coffee mug"}, best


def test_mobilenet_classifies_chelsea_as_a_cat(vision_encoder):
    best = top5(vision_encoder, skimage.data.chelsea())
    assert best[0] in {"Egyptian cat", "tabby", "tiger cat", "Persian cat", "Siamese cat"}, best


def test_mobilenet_shapes_and_any_frame_size(vision_encoder):
    frames = [skimage.data.coffee(), np.zeros((120, 160, 3), np.uint8), np.full((480, 640, 3), 200, np.uint8)]
    tokens, pooled = vision_encoder(frames)
    assert tokens.shape == (3, 49, 1280) and pooled.shape == (3, 1280)
    assert vision_encoder.num_tokens == 49 and vision_encoder.dim == 1280
    torch.testing.assert_close(pooled, tokens.mean(dim=1))


def test_batched_equals_one_by_one(vision_encoder):
    frames = [skimage.data.coffee(), skimage.data.chelsea()]
    _, batched = vision_encoder(frames)
    singles = torch.cat([vision_encoder([f])[1] for f in frames])
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("height, width", [(120, 160), (480, 640), (300, 200)])
def test_preprocessing_is_torchvisions_float_reference(vision_encoder, height, width):
    """Resize (antialiased, in float), centre crop, normalise, as the ImageNet weights expect; the
    trained heads were fitted on exactly this. Resizing in uint8 instead moved embeddings by 5%."""
    import torchvision.transforms.v2.functional as TF

    frame = np.random.default_rng(height).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    pre = vision_encoder.preprocess
    reference = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
    reference = TF.resize(reference, [pre.resize], antialias=True)
    reference = TF.center_crop(reference, [pre.crop]).clamp(0.0, 1.0)
    reference = TF.normalize(reference, list(pre.mean), list(pre.std))
    torch.testing.assert_close(pre([frame], torch.device("cpu"))[0], reference, rtol=0, atol=1e-5)


def test_encoder_stays_frozen(vision_encoder):
    vision_encoder.train()
    assert not vision_encoder.training
    assert not any(p.requires_grad for p in vision_encoder.parameters())


def test_rejects_non_rgb_frames(vision_encoder):
    with pytest.raises(ValueError, match="uint8 RGB"):
        vision_encoder([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        vision_encoder([np.zeros((10, 10, 3), np.float32)])


def test_open_clip_backend_random_init_gives_tokens_and_pooled_in_one_space(torch_threads):
    encoder = build_vision_encoder(VisionConfig(backend="open_clip", model_name="ViT-S-32", pretrained=False))
    tokens, pooled = encoder([skimage.data.coffee()])
    assert tokens.shape == (1, encoder.num_tokens, encoder.dim) and pooled.shape == (1, encoder.dim)
    assert encoder.num_tokens == 49  # 224 / 32 = 7 patches a side


def test_open_clip_backend_needs_a_local_file_when_pretrained():
    with pytest.raises(ValueError, match="local open_clip checkpoint"):
        build_vision_encoder(VisionConfig(backend="open_clip", model_name="ViT-S-32"))
    with pytest.raises(FileNotFoundError):
        build_vision_encoder(VisionConfig(backend="open_clip", model_name="ViT-S-32", weights="/nope.bin"))


def test_hf_clip_backend_loads_a_local_folder(tmp_path, torch_threads):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    small = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=16,
        projection_dim=48,
    )
    CLIPVisionModelWithProjection(small).save_pretrained(tmp_path)
    encoder = build_vision_encoder(VisionConfig(backend="hf_clip", weights=str(tmp_path)))
    tokens, pooled = encoder([skimage.data.coffee(), skimage.data.chelsea()])
    assert tokens.shape == (2, 16, 48) and pooled.shape == (2, 48)
