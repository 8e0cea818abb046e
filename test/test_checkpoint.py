"""Checkpoint round trip and every mismatch error, through the real pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data

from frozen_vlm_perception.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from frozen_vlm_perception.config import AdapterConfig, ModelConfig
from frozen_vlm_perception.pipeline import PerceptionPipeline

LM_DIM = 576


@pytest.fixture(scope="module")
def saved(tmp_path_factory, torch_threads):
    pipeline = PerceptionPipeline.from_config(ModelConfig(), device="cpu", lm_dim=LM_DIM, seed=3)
    folder = pipeline.save(tmp_path_factory.mktemp("model") / "demo", metadata={"note": "test"})
    return pipeline, folder


def window(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(128, 6)).astype(np.float32)


def test_round_trip_gives_identical_scenes(saved):
    pipeline, folder = saved
    loaded = PerceptionPipeline.from_model_dir(folder, device="cpu", load_language=False)
    a = pipeline.encode([skimage.data.coffee()], [window()])[0]
    b = loaded.encode([skimage.data.coffee()], [window()])[0]
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert json.loads((folder / CONFIG_FILE).read_text())["metadata"] == {"note": "test"}


def test_no_pickle_in_a_model_folder(saved):
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert (folder / WEIGHTS_FILE).read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON header


def edit_config(folder, edit):
    document = json.loads((folder / CONFIG_FILE).read_text())
    edit(document)
    (folder / CONFIG_FILE).write_text(json.dumps(document))


@pytest.fixture
def copy(saved, tmp_path):
    _, folder = saved
    target = tmp_path / "copy"
    target.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (target / name).write_bytes((folder / name).read_bytes())
    return target


def load(folder):
    return PerceptionPipeline.from_model_dir(folder, device="cpu", load_language=False)


def test_wrong_format_version(copy):
    edit_config(copy, lambda d: d.update(format_version=99))
    with pytest.raises(CheckpointError, match="format version 99"):
        load(copy)


def test_wrong_vision_dimension(copy):
    edit_config(copy, lambda d: d["dims"].update(vision_dim=1024))
    with pytest.raises(CheckpointError, match="vision_dim: checkpoint 1024, model 1280"):
        load(copy)


def test_wrong_backend_config(copy):
    edit_config(copy, lambda d: d["model"]["vision"].update(backend="resnet"))
    with pytest.raises(CheckpointError, match="vision.backend must be one of"):
        load(copy)


def test_unknown_setting_in_config(copy):
    edit_config(copy, lambda d: d["model"]["adapter"].update(num_latens=4))
    with pytest.raises(CheckpointError, match=r"unknown setting\(s\) \['num_latens'\]"):
        load(copy)


def test_weights_of_another_architecture(copy, tmp_path):
    other = PerceptionPipeline.from_config(
        ModelConfig(adapter=AdapterConfig(num_latents=4)), device="cpu", lm_dim=LM_DIM
    ).save(tmp_path / "other")
    (copy / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match=r"shape mismatch: adapter.latents: checkpoint \(4, 256\)"):
        load(copy)


def test_linear_weights_into_a_resampler_config(copy, tmp_path):
    other = PerceptionPipeline.from_config(
        ModelConfig(adapter=AdapterConfig(kind="linear")), device="cpu", lm_dim=LM_DIM
    ).save(tmp_path / "other")
    (copy / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="missing tensors"):
        load(copy)


def test_corrupted_weights_file(copy):
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    (copy / WEIGHTS_FILE).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="corrupted"):
        load(copy)


def test_missing_folder_and_files(tmp_path, copy):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "nope")
    (copy / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load(copy)
    (copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(copy)
