"""PerceptionPipeline: batched encode, modality modes, bad input, and answers from the frozen LM."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from frozen_vlm_perception.config import ModelConfig
from frozen_vlm_perception.pipeline import PerceptionPipeline, Scene


@pytest.fixture(scope="module")
def pipeline(torch_threads):
    return PerceptionPipeline.from_config(ModelConfig(), device="cpu", lm_dim=576, seed=0)


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(128, 6)).astype(np.float32)


def test_batched_encode_matches_one_at_a_time(pipeline):
    frames = [skimage.data.coffee(), skimage.data.chelsea(), None]
    windows = [window(0), None, window(2)]
    batched = pipeline.encode(frames, windows)
    for scene, frame, imu in zip(batched, frames, windows, strict=True):
        single = pipeline.encode_one(frame, imu)
        np.testing.assert_allclose(scene.latents, single.latents, rtol=1e-4, atol=1e-4)
        assert scene.modalities == single.modalities
    assert [s.source for s in batched] == ["fused", "vision", "imu"]


def test_scene_fields(pipeline):
    scene = pipeline.encode_one(skimage.data.coffee(), window(0))
    assert scene.latents.shape == (8, 576) and scene.latents.dtype == np.float32
    assert scene.pooled.shape == (1280,)
    assert scene.scores.shape == (6,) and abs(scene.scores.sum() - 1) < 1e-5
    assert scene.label in scene.labels and 0 < scene.confidence <= 1
    assert {"preprocess", "vision", "imu", "fusion_resampler", "head"} <= set(scene.timings_ms)


def assert_same_scene(a, b) -> None:
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.pooled, b.pooled)


def assert_different_scene(a, b) -> None:
    assert np.abs(a.latents - b.latents).max() > 1e-3
    assert np.abs(a.pooled - b.pooled).max() > 1e-3


def test_mode_overrides_drop_a_modality(pipeline):
    """A dropped modality's input changes nothing; the kept one's changes the scene."""
    coffee, chelsea = skimage.data.coffee(), skimage.data.chelsea()
    vision = pipeline.encode_one(coffee, window(0), mode="vision")
    assert vision.source == "vision" and vision.modalities == ("vision",)
    assert_same_scene(vision, pipeline.encode_one(coffee, window(1), mode="vision"))
    assert_same_scene(vision, pipeline.encode_one(coffee, None, mode="vision"))
    assert_different_scene(vision, pipeline.encode_one(chelsea, window(0), mode="vision"))

    imu = pipeline.encode_one(coffee, window(0), mode="imu")
    assert imu.source == "imu" and imu.modalities == ("imu",)
    assert_same_scene(imu, pipeline.encode_one(chelsea, window(0), mode="imu"))
    assert_same_scene(imu, pipeline.encode_one(None, window(0), mode="imu"))
    assert_different_scene(imu, pipeline.encode_one(coffee, window(1), mode="imu"))

    fused = pipeline.encode_one(coffee, window(0), mode="fused")
    assert fused.source == "fused"
    assert_different_scene(fused, pipeline.encode_one(chelsea, window(0), mode="fused"))
    assert_different_scene(fused, pipeline.encode_one(coffee, window(1), mode="fused"))
    with pytest.raises(ValueError, match="no usable modality"):
        pipeline.encode_one(coffee, None, mode="imu")


def test_bad_imu_windows_are_refused(pipeline):
    with pytest.raises(ValueError, match="shape"):
        pipeline.encode_one(None, np.zeros((100, 6), np.float32))
    bad = window(0)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pipeline.encode_one(None, bad)


def test_answer_without_language_model_is_a_clear_error(pipeline):
    scene = pipeline.encode_one(skimage.data.coffee(), None)
    with pytest.raises(RuntimeError, match="without its language model"):
        pipeline.answer(scene, "What is here?")


def word_scene(language_model, words: str, labels: tuple[str, ...]) -> Scene:
    """A scene whose pseudo-tokens are the LM's own embeddings of ``words`` (as after "Scene:")."""
    ids = language_model.tokenizer(" " + words, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        latents = language_model.embed_ids(torch.tensor(ids)).float().numpy()
    scores = np.full(len(labels), 1.0 / len(labels), dtype=np.float32)
    return Scene(latents=latents, pooled=np.zeros(1280, np.float32), scores=scores, labels=labels,
                 modalities=("vision",))  # fmt: skip


def test_answer_uses_the_frozen_language_model(pipeline, language_model):
    full = PerceptionPipeline(
        config=pipeline.config,
        vision=pipeline.vision,
        scene_model=pipeline.scene_model,
        language=language_model,
        device=pipeline.device,
    )
    question = "What is in the photo?"
    # The answer reads the scene: two scenes that say different things get different answers.
    labels = tuple(pipeline.config.labels)
    car = full.answer(word_scene(language_model, "a photo of a red car", labels), question, max_new_tokens=8)
    cat = full.answer(
        word_scene(language_model, "a photo of a sleepy cat", labels), question, max_new_tokens=8
    )
    assert car.text != cat.text
    assert "red" in car.text.lower() and "sleepy" in cat.text.lower(), (car.text, cat.text)
    # An encoded scene's latents are exactly what reaches the LM.
    scene = full.encode_one(skimage.data.coffee(), window(0))
    result = full.answer(scene, question, max_new_tokens=8)
    direct = language_model.generate(torch.from_numpy(scene.latents), question, max_new_tokens=8)
    assert result.text == direct.text and result.num_tokens == direct.num_tokens
    assert 0 < result.num_tokens <= 8
    # ... and they change what the LM expects to say: its loss on one answer differs between two scenes.
    other = full.encode_one(skimage.data.chelsea(), window(1))
    with torch.no_grad():
        losses = [
            language_model.answer_loss(torch.from_numpy(s.latents)[None], [question], ["A cup of coffee."])
            for s in (scene, other)
        ]
    assert abs(float(losses[0]) - float(losses[1])) > 1e-3, losses


def test_without_vision_encoder_imu_scenes_match_and_frames_are_refused(model_dir, torch_threads):
    full = PerceptionPipeline.from_model_dir(model_dir, device="cpu", load_language=False)
    answering = PerceptionPipeline.from_model_dir(
        model_dir, device="cpu", load_language=False, load_vision=False
    )
    assert answering.vision is None
    np.testing.assert_allclose(
        answering.encode_one(None, window(3), mode="imu").latents,
        full.encode_one(None, window(3), mode="imu").latents,
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(RuntimeError, match="load_vision=False"):
        answering.encode_one(skimage.data.coffee(), window(3))


def test_cpu_fast_path_computes_what_the_eager_network_does(pipeline):
    """MobileNetV2 runs through TorchScript pre-packed for oneDNN on the CPU (1.8x): the same function."""
    import torch

    vision = pipeline.vision
    assert vision._cpu_features, "the CPU fast path was not set up"
    pixels = vision.preprocess([skimage.data.coffee(), skimage.data.chelsea()], torch.device("cpu"))
    with torch.inference_mode():
        fast_tokens, _ = vision.encode(pixels)
        eager = vision.features(pixels).flatten(2).transpose(1, 2)
    torch.testing.assert_close(fast_tokens, eager, rtol=1e-4, atol=1e-4)
