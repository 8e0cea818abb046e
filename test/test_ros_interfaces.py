"""The generated interfaces work between two real processes over Fast DDS on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

PEER = Path(__file__).with_name("ros_interface_peer.py")


@pytest.fixture
def peer(ros_env):
    process = subprocess.Popen([sys.executable, str(PEER), "--seconds", "60"], env=ros_env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_query_service_and_topics_between_processes(peer):
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.node import Node
    from sensor_msgs.msg import Image

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

        deadline = time.monotonic() + 30
        while not client.service_is_ready() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert client.service_is_ready(), "QueryScene service never appeared"

        request = QueryScene.Request(
            question="what is here?", stamp=Time(sec=5, nanosec=7), max_new_tokens=12
        )
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=20)
        response = future.result()
        assert response is not None, "no response within 20 s"
        assert response.success and response.answer == "echo: what is here? (12)"
        assert (response.scene_stamp.sec, response.scene_stamp.nanosec) == (5, 7)

        empty = client.call_async(QueryScene.Request(question="  "))
        executor.spin_until_future_complete(empty, timeout_sec=20)
        assert empty.result() is not None and not empty.result().success
        assert empty.result().message == "empty question"

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
