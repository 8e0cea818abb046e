"""Training data over the embedding cache: the held-out tail in time, the DataLoader samples."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tiny_recordings import tiny_data_config, tiny_model_config

from frozen_vlm_perception.config import VisionConfig
from frozen_vlm_perception.data.embeddings import load_embeddings
from frozen_vlm_perception.nn.vision import build_vision_encoder
from frozen_vlm_perception.training.dataset import EmbeddingDataset, load_train_val, split_tail


@pytest.fixture(scope="module")
def encoder(torch_threads):
    return build_vision_encoder(VisionConfig(image_size=64))


def test_split_tail_holds_out_the_end_in_time(tiny_bags, embedding_cache, encoder):
    _, val_bag = tiny_bags
    config = tiny_model_config("unused")
    data = tiny_data_config(val_bag, val_bag, embedding_cache)
    embeddings = load_embeddings(
        val_bag,
        data=data,
        vision=config.vision,
        imu=config.imu,
        encoder_factory=lambda: encoder,
        with_tokens=False,
        progress=False,
    )
    train, val = split_tail(embeddings, 0.2)
    assert len(train) + len(val) == len(embeddings) and len(val) == 24
    assert float(train.stamps.max()) < float(val.stamps.min())
    item = EmbeddingDataset(val, ["walking", "lying"], with_tokens=False)[0]
    assert set(item) >= {"imu", "vision_pooled", "label", "has_imu"} and item["imu"].shape == (64, 6)


def test_without_a_val_bag_the_tail_of_the_training_bag_validates(tiny_bags, embedding_cache, encoder):
    train_bag, _ = tiny_bags
    config = tiny_model_config("unused")
    data = replace(tiny_data_config(train_bag, train_bag, embedding_cache), val_bag="", val_fraction=0.25)
    train, val = load_train_val(
        data, vision=config.vision, imu=config.imu, encoder_factory=lambda: encoder, progress=False
    )
    assert (len(train), len(val)) == (180, 60)
    assert float(train.stamps.max()) < float(val.stamps.min())
