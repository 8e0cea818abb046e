"""The embedding cache: computed once, hit afterwards (no encoder), keyed by everything it depends on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_recordings import SIGNATURES, tiny_data_config, tiny_model_config

from frozen_vlm_perception.config import SyncConfig, VisionConfig
from frozen_vlm_perception.data.embeddings import cache_key, load_embeddings
from frozen_vlm_perception.nn.vision import build_vision_encoder


class CountingEncoder:
    """Wraps the frozen encoder and counts calls and frames."""

    def __init__(self, encoder):
        self.encoder, self.calls, self.frames = encoder, 0, 0

    def __call__(self, frames):
        self.calls += 1
        self.frames += len(frames)
        return self.encoder(frames)


@pytest.fixture(scope="module")
def encoder(torch_threads):
    return build_vision_encoder(VisionConfig(image_size=64))


def test_cache_is_built_once_then_hit_without_the_encoder(tiny_bags, tmp_path, encoder):
    train_bag, val_bag = tiny_bags
    config = tiny_model_config("unused")
    data = replace(tiny_data_config(train_bag, val_bag, tmp_path / "cache"), encode_batch_size=16)
    built: list[CountingEncoder] = []

    def factory():
        built.append(CountingEncoder(encoder))
        return built[-1]

    first = load_embeddings(
        train_bag, data=data, vision=config.vision, imu=config.imu, encoder_factory=factory, progress=False
    )
    assert len(built) == 1 and built[0].frames == len(first) == 240
    assert built[0].calls == int(np.ceil(240 / 16))  # batched, not frame by frame
    assert first.info["cache_hit"] is False

    second = load_embeddings(
        train_bag, data=data, vision=config.vision, imu=config.imu, encoder_factory=factory, progress=False
    )
    assert len(built) == 1, "a cache hit must not even build the encoder"
    assert second.info["cache_hit"] is True
    for name in (
        "vision_pooled",
        "vision_token_mean",
        "vision_tokens",
        "imu",
        "has_imu",
        "label_id",
        "place_id",
        "stamps",
    ):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert (second.label_names, second.place_names) == (first.label_names, first.place_names)

    # What is stored: float16 tokens, float32 the rest, in one plain safetensors file.
    stored = load_file(second.info["cache_file"])
    assert stored["vision_tokens"].dtype == torch.float16 and stored["vision_tokens"].shape == (240, 4, 1280)
    assert stored["vision_pooled"].dtype == torch.float32 and stored["imu"].shape == (240, 64, 6)
    assert first.place_names == sorted(sig.place for sig in SIGNATURES)
    assert int(first.has_imu.sum()) == 237  # the first 1.28 s have no complete IMU window
    # Pooled is the mean of the tokens for MobileNetV2, up to float16 rounding of the stored tokens.
    torch.testing.assert_close(first.vision_token_mean, first.vision_pooled, rtol=1e-4, atol=1e-4)

    # Without tokens (stage 1) the big tensor is not loaded.
    light = load_embeddings(
        train_bag,
        data=data,
        vision=config.vision,
        imu=config.imu,
        encoder_factory=factory,
        with_tokens=False,
        progress=False,
    )
    assert light.vision_tokens is None and light.num_tokens == 4 and len(built) == 1


def test_key_changes_with_what_the_embeddings_depend_on(tiny_bags):
    train_bag, val_bag = tiny_bags
    config = tiny_model_config("unused")
    data = tiny_data_config(train_bag, val_bag, "unused")
    base, _ = cache_key(train_bag, data=data, vision=config.vision, imu=config.imu, sync=SyncConfig())
    variants = [
        cache_key(val_bag, data=data, vision=config.vision, imu=config.imu, sync=SyncConfig()),
        cache_key(
            train_bag,
            data=data,
            vision=replace(config.vision, image_size=96),
            imu=config.imu,
            sync=SyncConfig(),
        ),
        cache_key(
            train_bag,
            data=data,
            vision=config.vision,
            imu=replace(config.imu, window_samples=128),
            sync=SyncConfig(),
        ),
        cache_key(
            train_bag, data=data, vision=config.vision, imu=config.imu, sync=SyncConfig(min_coverage=0.5)
        ),
        cache_key(
            train_bag,
            data=replace(data, frame_stride=2),
            vision=config.vision,
            imu=config.imu,
            sync=SyncConfig(),
        ),
    ]
    keys = {base} | {key for key, _ in variants}
    assert len(keys) == 1 + len(variants)
    # The IMU encoder's architecture does not change the cached inputs: same key.
    same, _ = cache_key(
        train_bag,
        data=data,
        vision=config.vision,
        imu=replace(config.imu, width=64, depth=1),
        sync=SyncConfig(),
    )
    assert same == base


def test_damaged_cache_file_is_rebuilt(tiny_bags, tmp_path, encoder):
    train_bag, val_bag = tiny_bags
    config = tiny_model_config("unused")
    data = tiny_data_config(val_bag, val_bag, tmp_path / "cache")
    first = load_embeddings(
        val_bag,
        data=data,
        vision=config.vision,
        imu=config.imu,
        encoder_factory=lambda: encoder,
        progress=False,
    )
    path = first.info["cache_file"]
    with open(path, "r+b") as handle:
        handle.write(b"garbage!")
    calls = []
    again = load_embeddings(
        val_bag,
        data=data,
        vision=config.vision,
        imu=config.imu,
        encoder_factory=lambda: calls.append(1) or encoder,
        progress=False,
    )
    assert calls == [1] and again.info["cache_hit"] is False
    assert torch.equal(again.vision_pooled, first.vision_pooled)


def test_demo_format_bag_from_make_small_bag(tmp_path, encoder):
    """The real demo recording's layout (HAPT IMU, photos, label + place topics) reads as expected."""
    from frozen_vlm_perception.data.demo_bag import make_small_bag

    make_small_bag(tmp_path / "demo", seconds=6.0, num_segments=2)
    config = tiny_model_config("unused")
    data = tiny_data_config(tmp_path / "demo", tmp_path / "demo", tmp_path / "cache")
    embeddings = load_embeddings(
        tmp_path / "demo",
        data=data,
        vision=config.vision,
        imu=config.imu,
        encoder_factory=lambda: encoder,
        progress=False,
    )
    assert len(embeddings) >= 50
    assert bool(embeddings.has_imu.any()) and bool((embeddings.label_id >= 0).any())
    assert set(embeddings.label_names) <= set(config.labels) and embeddings.place_names
    assert bool((embeddings.labels_for(config.labels) >= 0).any())
