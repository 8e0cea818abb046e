"""The nodes' code paths without DDS in between: lifecycle and memory, bad input, parameters.

The node objects are created in this process (their own rclpy Context, nothing spinning) and their
callbacks are called directly: the same code the executor runs, but deterministic.
"""

from __future__ import annotations

import gc
import time
import weakref

import numpy as np
import pytest

from frozen_vlm_perception.conversions import rgb_to_image

pytestmark = pytest.mark.slow


def make_perception(context, model_dir, **params):
    from rclpy.parameter import Parameter

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode

    overrides = [Parameter(k, value=v) for k, v in {"model_dir": str(model_dir), **params}.items()]
    return PerceptionNode(context=context, parameter_overrides=overrides)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_deactivate_frees_the_model_and_activate_reloads_it(context, model_dir):
    from rclpy.lifecycle import TransitionCallbackReturn as R

    node = make_perception(context, model_dir)
    try:
        assert node.pipeline is None  # nothing is loaded before configure
        assert node.trigger_configure() == R.SUCCESS
        weights = weakref.ref(node.pipeline.scene_model)
        vision = weakref.ref(node.pipeline.vision)
        assert node.trigger_activate() == R.SUCCESS
        worker = node._worker
        assert worker is not None and worker.is_alive()

        assert node.trigger_deactivate() == R.SUCCESS
        assert node.pipeline is None and not worker.is_alive()
        gc.collect()
        assert weights() is None and vision() is None, "the model's weights are still referenced"

        assert node.trigger_activate() == R.SUCCESS
        assert node.pipeline is not None and node._worker.is_alive()
        assert node.trigger_shutdown() == R.SUCCESS
        assert node.pipeline is None
    finally:
        node.release()
        node.destroy_node()


def test_configure_fails_cleanly_without_a_model(context, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn as R

    node = make_perception(context, tmp_path / "missing")
    try:
        assert node.trigger_configure() == R.FAILURE
        assert node.pipeline is None and node._sub_camera is None
        assert node.trigger_shutdown() == R.SUCCESS
    finally:
        node.destroy_node()


def test_bad_messages_are_counted_drops_not_crashes(context, model_dir):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from sensor_msgs.msg import Image, Imu

    node = make_perception(context, model_dir, **{"fusion.mode": "vision"})
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        frame = np.zeros((48, 64, 3), np.uint8)

        bad_step = rgb_to_image(frame, stamp=1.0)
        bad_step.step = 10
        node._on_image(bad_step)
        wait_until(lambda: node.counters.get("drop:camera:bad_step") == 1)

        unknown = Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))
        node._on_image(unknown)
        wait_until(lambda: node.counters.get("drop:camera:unknown_encoding") == 1)

        nan_imu = Imu()
        nan_imu.linear_acceleration.x = float("nan")
        node._on_imu(nan_imu)
        assert node.counters.get("drop:imu:nonfinite") == 1

        node._on_image(rgb_to_image(frame, stamp=2.0))  # a good frame still gets through
        wait_until(lambda: node.counters.get("frames_labelled") == 1)

        level, _, values = node.diagnostics()
        values = dict(values)
        assert values["drop:camera:bad_step"] == 1 and values["model_loaded"] is True
    finally:
        node.release()
        node.destroy_node()


def test_only_the_newest_frame_waits_the_rest_are_superseded():
    from frozen_vlm_perception.nodes.perception_node import LatestFrame

    box = LatestFrame()
    assert box.take(timeout=0.01) is None
    assert box.put("a") is False
    assert box.put("b") is True  # "a" was never taken: superseded
    assert box.take(timeout=0.01) == "b"
    assert box.take(timeout=0.01) is None


def test_imu_mode_labels_frames_from_the_imu_window_alone(context, model_dir):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from sensor_msgs.msg import Imu

    node = make_perception(context, model_dir, **{"fusion.mode": "imu"})
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        for k in range(3 * 50 + 1):  # 3 s at 50 Hz, stamps 100.00 .. 103.00
            msg = Imu()
            msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + k // 50, (k % 50) * 20_000_000
            msg.linear_acceleration.z = 9.81
            node._on_imu(msg)
        # In imu mode the frame only gives the time: even an undecodable one is labelled.
        frame = rgb_to_image(np.zeros((8, 8, 3), np.uint8), stamp=103.0)
        frame.step = 1
        node._on_image(frame)
        wait_until(lambda: node.counters.get("frames_labelled") == 1)
        assert node.counters.get("source:imu") == 1
        assert node.counters.get("drop:camera:bad_step") == 0
    finally:
        node.release()
        node.destroy_node()


def test_reasoning_scene_history_validation_and_lookup(context):
    from builtin_interfaces.msg import Time

    from frozen_vlm_perception.nodes.reasoning_node import ReasoningNode
    from frozen_vlm_perception_interfaces.msg import SceneLatents

    node = ReasoningNode(context=context)  # not configured: no language model needed for this
    try:
        assert node.find_scene(Time()) == (None, "no scene received yet")

        def latents(sec: int, values: np.ndarray, num: int = 2, dim: int = 3) -> SceneLatents:
            msg = SceneLatents(num_latents=num, dim=dim, data=values.astype(np.float32).ravel().tolist())
            msg.header.stamp = Time(sec=sec)
            return msg

        node._on_latents(latents(10, np.ones(6)))
        node._on_latents(latents(11, np.ones(5)))  # 5 values for 2 x 3
        node._on_latents(latents(12, np.array([1, 2, np.nan, 4, 5, 6])))
        node._on_latents(latents(13, np.arange(6)))
        assert node.counters.get("drop:bad_shape") == 1 and node.counters.get("drop:nonfinite") == 1

        latest, _ = node.find_scene(Time())
        assert latest.stamp.sec == 13 and latest.scene.latents.shape == (2, 3)
        nearest, _ = node.find_scene(Time(sec=10, nanosec=50_000_000))
        assert nearest.stamp.sec == 10
        missing, why = node.find_scene(Time(sec=12))  # the NaN scene was never stored
        assert missing is None and "no scene within" in why
    finally:
        node.destroy_node()


def test_a_scene_keeps_its_activity_label_after_the_label_map_forgets_its_stamp(context):
    """A question holds its scene while it waits and generates (beside another make test: 104 s); the
    stamp -> label map keeps only 2 x history_size stamps, so the scene itself must keep its label."""
    from builtin_interfaces.msg import Time
    from rclpy.parameter import Parameter

    from frozen_vlm_perception.nodes.reasoning_node import NO_ACTIVITY, ReasoningNode
    from frozen_vlm_perception_interfaces.msg import ActivityLabel, SceneLatents

    node = ReasoningNode(context=context, parameter_overrides=[Parameter("history_size", value=2)])

    def scene(sec: int) -> None:
        msg = SceneLatents(num_latents=2, dim=3, data=np.ones(6, np.float32).tolist())
        msg.header.stamp = Time(sec=sec)
        node._on_latents(msg)

    def label(sec: int, name: str) -> None:
        msg = ActivityLabel(label=name, confidence=0.9, candidate_labels=[name, "other"], scores=[0.9, 0.1])
        msg.header.stamp = Time(sec=sec)
        node._on_activity(msg)

    try:
        label(1, "sitting")  # the label may arrive before its scene
        scene(1)
        early, _ = node.find_scene(Time())
        scene(2)
        label(2, "lying")  # ... or after it
        late, _ = node.find_scene(Time())
        assert (early.stamp.sec, late.stamp.sec) == (1, 2)
        for sec in range(3, 13):  # ten more labelled scenes: both stamps leave the map and the history
            scene(sec)
            label(sec, "walking")
        assert len(node._activities) == 4 and 1_000_000_000 not in node._activities
        assert [r.stamp.sec for r in node._history] == [11, 12]
        assert node.activity_of(early).label == "sitting" and node.activity_of(late).label == "lying"
        assert node.activity_of(late).probabilities == pytest.approx({"lying": 0.9, "other": 0.1})
        scene(20)  # no label ever arrives for it
        newest, _ = node.find_scene(Time())
        assert node.activity_of(newest) is NO_ACTIVITY
    finally:
        node.destroy_node()


def test_effective_fusion_keeps_the_models_gate_unless_alpha_is_explicit():
    from frozen_vlm_perception.config import FusionConfig
    from frozen_vlm_perception.nodes.perception_node import ALPHA_FROM_MODEL, FROM_MODEL, effective_fusion

    gated = FusionConfig(alpha=0.2, weighting="gate")
    own = effective_fusion({"mode": FROM_MODEL, "alpha": ALPHA_FROM_MODEL}, gated)
    assert (own.mode, own.alpha, own.weighting) == ("fused", 0.2, "gate")
    explicit = effective_fusion({"mode": "fused", "alpha": 0.7}, gated)
    assert (explicit.alpha, explicit.weighting) == (0.7, "fixed")
    fixed = effective_fusion({"mode": "imu", "alpha": ALPHA_FROM_MODEL}, FusionConfig(alpha=0.4))
    assert (fixed.mode, fixed.alpha, fixed.weighting) == ("imu", 0.4, "fixed")
