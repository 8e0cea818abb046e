"""The generated interfaces work between two real processes over Fast DDS on loopback; a service
answer that gets lost is asked again (frozen_vlm_perception/nodes/service_call.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

PEER = Path(__file__).with_name("ros_interface_peer.py")


def start_peer(env, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PEER), "--seconds", "60", *extra], env=env, **popen)


def stop_peer(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
def peer(ros_env):
    process = start_peer(ros_env)
    try:
        yield process
    finally:
        stop_peer(process)


def test_query_service_and_topics_between_processes(peer):
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from frozen_vlm_perception.nodes.service_call import call_service
    from frozen_vlm_perception_interfaces.msg import ActivityLabel
    from frozen_vlm_perception_interfaces.srv import QueryScene

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node("interface_client", context=context)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        labels: list[ActivityLabel] = []
        images: list[Image] = []
        node.create_subscription(ActivityLabel, "peer/activity", labels.append, 10)
        node.create_subscription(Image, "peer/image", images.append, 10)
        client = node.create_client(QueryScene, "peer/query")

        # Waits for the service (30 s at most), lets the peer match our response reader, and asks
        # again if an answer is lost: what once failed here as "failed to send response (timeout)".
        deadline = time.monotonic() + 30
        request = QueryScene.Request(
            question="what is here?", stamp=Time(sec=5, nanosec=7), max_new_tokens=12
        )
        response = call_service(client, request, timeout=30, attempt_timeout=5, executor=executor)
        assert response.success and response.answer == "echo: what is here? (12)"
        assert (response.scene_stamp.sec, response.scene_stamp.nanosec) == (5, 7)

        empty = call_service(client, QueryScene.Request(question="  "), timeout=20, executor=executor)
        assert not empty.success and empty.message == "empty question"

        while (len(labels) < 3 or len(images) < 3) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert len(labels) >= 3 and len(images) >= 3
        label, image = labels[-1], images[-1]
        assert label.label == "walking" and label.source == ActivityLabel.SOURCE_FUSED
        assert list(label.candidate_labels) == ["walking", "sitting"]
        assert bytes(image.data) == bytes(range(18)) and image.encoding == "rgb8"
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_lost_answer_is_asked_again_within_the_timeout(ros_env):
    """The peer handles every request but never sends its first two responses. One attempt gets
    nothing; ``fvp query``'s client (retrying) gets the answer to the third request, in time."""
    import rclpy

    from frozen_vlm_perception.nodes.query_client import query
    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, call_service, wait_until_ready
    from frozen_vlm_perception_interfaces.srv import QueryScene

    process = start_peer(ros_env, "--drop-first", "2", stdout=subprocess.PIPE, text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("one_attempt_client", context=context)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = node.create_client(QueryScene, "peer/query")
        assert wait_until_ready(client.service_is_ready, time.monotonic() + 30), "the peer never came up"
        # Control: one attempt as long as the whole timeout: the answer is lost, nothing comes.
        with pytest.raises(ServiceTimeout, match="1 attempts"):
            call_service(client, QueryScene.Request(question="first?"), timeout=4, attempt_timeout=4,
                         executor=executor)
        start = time.monotonic()
        response = query("third time lucky?", service="peer/query", timeout=20, attempt_timeout=2)
        elapsed = time.monotonic() - start
        assert response.success and response.answer == "echo: third time lucky? (0)"
        assert 2.0 <= elapsed < 10.0, elapsed  # one attempt timed out, the next one was answered
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        stop_peer(process)
    output = process.stdout.read()
    assert output.splitlines() == ["dropped response 1", "dropped response 2"], output


def test_a_missing_service_fails_within_the_timeout(ros_env):
    import rclpy

    from frozen_vlm_perception.nodes.service_call import ServiceUnavailable, call_service
    from frozen_vlm_perception_interfaces.srv import QueryScene

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("lonely_client", context=context)
        client = node.create_client(QueryScene, "nobody/query")
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="nobody/query"):
            call_service(client, QueryScene.Request(question="anyone?"), timeout=1.0)
        assert time.monotonic() - start < 3.0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
