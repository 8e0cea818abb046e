"""The question reader: tokens from the scene and the question, padding ignored, zero at the start."""

from __future__ import annotations

import pytest
import torch

from frozen_vlm_perception.config import ConfigError, ModelConfig, ReaderConfig
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.nn.reader import QuestionReader

H = 32


def reader(**kw) -> QuestionReader:
    torch.manual_seed(0)
    module = QuestionReader(config=ReaderConfig(num_tokens=3, dim=16, heads=2, dim_head=8, **kw), lm_dim=H)
    return module.eval()


def trained(module: QuestionReader) -> QuestionReader:
    """As if trained: a non-zero output projection (a new reader writes zeros)."""
    with torch.no_grad():
        module.out_proj.weight.normal_(0, 0.5)
    return module


def test_a_new_reader_writes_zeros_and_shapes_follow_the_docstring():
    scene, question = torch.randn(2, 5, H), torch.randn(2, 7, H)
    module = reader()
    tokens = module(scene, question)
    assert tokens.shape == (2, 3, H) and module.num_tokens == 3
    assert not tokens.any()  # added to a trained model, it starts from that model's answers
    with pytest.raises(ValueError, match="must share B"):
        module(scene, question[:1])


def test_tokens_depend_on_the_question_and_the_scene():
    module = trained(reader())
    scene, question = torch.randn(1, 5, H), torch.randn(1, 7, H)
    base = module(scene, question)
    assert not torch.allclose(base, module(scene, torch.randn(1, 7, H)))
    assert not torch.allclose(base, module(torch.randn(1, 5, H), question))


def test_padding_of_a_short_question_changes_nothing():
    module = trained(reader())
    scene, question = torch.randn(1, 5, H), torch.randn(1, 4, H)
    alone = module(scene, question)
    padded = torch.cat([question, torch.randn(1, 6, H) * 10], dim=1)  # garbage where the padding is
    mask = torch.tensor([[True] * 4 + [False] * 6])
    torch.testing.assert_close(module(scene, padded, mask), alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(module(scene, padded), alone)  # unmasked, the garbage is read


def test_scene_model_has_a_reader_only_when_configured():
    plain = SceneModel(config=ModelConfig(), vision_dim=16, vision_tokens=4, lm_dim=H)
    assert plain.reader is None and not any(k.startswith("reader.") for k in plain.state_dict())
    config = ModelConfig(reader=ReaderConfig(num_tokens=2, dim=16))
    with_reader = SceneModel(config=config, vision_dim=16, vision_tokens=4, lm_dim=H)
    assert with_reader.reader is not None and with_reader.reader.num_tokens == 2
    with pytest.raises(ConfigError, match="reader.num_tokens"):
        ModelConfig(reader=ReaderConfig(num_tokens=-1)).validate()
