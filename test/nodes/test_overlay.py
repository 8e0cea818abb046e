"""/perception/overlay through the real nodes (the runner in its own process, Fast DDS).

One runner for the module; the tests run in file order: first nobody subscribes to the overlay
(nothing may be drawn), then this process subscribes (overlays arrive, the right size, rgb8, the
frame with text on it), a question is answered (its answer shows up on the overlay), and the
subscription goes away again (drawing stops).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from node_harness import Collector, RosClient, call, start_runner

from frozen_vlm_perception.overlay import scaled_size
from frozen_vlm_perception.tools.latency_probe import SensorStream

pytestmark = pytest.mark.slow

OVERLAY = "/perception/overlay"
WIDTH, HEIGHT, SCALE = 320, 240, 0.75  # not the default scale: the parameter must be the one used
QUESTION = "What is the person doing?"


@pytest.fixture(scope="module")
def system(model_dir, tmp_path_factory):
    params = {
        "perception": {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5,
                       "overlay": {"scale": SCALE}},
        "reasoning": {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5,
                      "max_new_tokens": 8},
    }
    child = start_runner(tmp_path_factory.mktemp("runner"), params)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def ros(system):
    from diagnostic_msgs.msg import DiagnosticArray

    from frozen_vlm_perception_interfaces.msg import AnsweredQuestion
    from frozen_vlm_perception_interfaces.srv import QueryScene

    client = RosClient("overlay_client")
    client.diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    client.answered = client.collect(AnsweredQuestion, "/reasoning/answered")
    client.query = client.node.create_client(QueryScene, "/reasoning/query")
    assert client.query.wait_for_service(timeout_sec=30)
    client.stream = SensorStream(client.node, camera_hz=10.0, imu_hz=100.0, width=WIDTH, height=HEIGHT)
    client.stream.start()
    yield client
    client.stream.stop()
    client.close()


def perception_counts(ros, since: float = 0.0) -> list[dict[str, str]]:
    return [{kv.key: kv.value for kv in status.values}
            for msg in ros.diagnostics.messages(since) for status in msg.status
            if status.name == "perception: perception"]


def wait_counts(ros, predicate, timeout: float, since: float = 0.0) -> dict[str, str]:
    """The first perception diagnostics (received after ``since``) that satisfy ``predicate``."""
    msgs = ros.diagnostics.wait_for(lambda _: any(predicate(d) for d in perception_counts(ros, since)),
                                    timeout=timeout, since=since)
    assert msgs
    return next(d for d in perception_counts(ros, since) if predicate(d))


def labelled(d: dict[str, str]) -> int:
    return int(d.get("frames_labelled", "0"))


def plain_scaled(rgb: np.ndarray) -> np.ndarray:
    """The camera frame scaled as the overlay is, with nothing drawn on it."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(scaled_size(WIDTH, HEIGHT, SCALE), Image.Resampling.BOX))


def as_array(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((a != b).any(axis=(1, 2)))


def test_nothing_is_drawn_while_nobody_subscribes(ros):
    start = labelled(wait_counts(ros, lambda d: "overlays_published" in d, timeout=60))
    counts = wait_counts(ros, lambda d: labelled(d) >= start + 10, timeout=90)
    assert ros.node.count_subscribers(OVERLAY) == 0
    assert ros.node.count_publishers(OVERLAY) == 1  # it exists; it just draws nothing
    assert counts["overlays_published"] == "0", counts
    assert "overlay_error" not in counts


@pytest.fixture(scope="module")
def overlays(ros):
    """This process's subscription to the overlay, for the tests below (removed by the last one)."""
    from sensor_msgs.msg import Image

    collector = Collector()
    ros.overlay_sub = ros.node.create_subscription(Image, OVERLAY, collector.add, 10)
    return collector


def test_the_overlay_is_published_while_subscribed(ros, overlays):
    msgs = overlays.wait_for(lambda m: len(m) >= 3, timeout=60)
    width, height = scaled_size(WIDTH, HEIGHT, SCALE)
    base = plain_scaled(ros.stream.rgb)
    stamps = ros.stream.stamps()
    for msg in msgs:
        assert (msg.width, msg.height, msg.encoding) == (width, height, "rgb8")
        assert msg.step == 3 * width and len(msg.data) == 3 * width * height
        assert msg.header.frame_id == "camera"
        assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec in stamps
        image = as_array(msg)
        rows = changed_rows(image, base)
        assert rows.size, "the overlay is the plain scaled frame: nothing was drawn"
        assert rows.max() < height // 4, "before any answer only the label band is drawn"
        np.testing.assert_array_equal(image[height // 4:], base[height // 4:])  # the frame itself, scaled
    counts = wait_counts(ros, lambda d: int(d.get("overlays_published", "0")) >= 3, timeout=30)
    assert "overlay_error" not in counts


def test_the_latest_answer_is_drawn(ros, overlays):
    from frozen_vlm_perception_interfaces.srv import QueryScene

    response = call(ros.query, QueryScene.Request(question=QUESTION), timeout=120)
    assert response.success, response.message
    answered = ros.answered.wait_for(lambda m: len(m) >= 1, timeout=30)[-1]
    assert (answered.question, answered.answer) == (QUESTION, response.answer)
    assert answered.grounding == response.grounding and answered.scene_stamp == response.scene_stamp
    since = time.time() + 0.5  # overlays drawn after the answer reached the perception node
    base = plain_scaled(ros.stream.rgb)
    height = base.shape[0]
    msgs = overlays.wait_for(lambda m: len(m) >= 3, timeout=60, since=since)
    for msg in msgs:
        rows = changed_rows(as_array(msg), base)
        assert rows.size and rows.max() == height - 1 and rows.min() < height // 4, "label and answer bands"
        assert changed_rows(as_array(msg)[height // 2:], base[height // 2:]).size


def test_drawing_stops_when_the_subscriber_leaves(ros, overlays):
    ros.node.destroy_subscription(ros.overlay_sub)
    deadline = time.monotonic() + 20
    while ros.node.count_subscribers(OVERLAY):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)  # the perception process sees the subscription go too
    before = wait_counts(ros, lambda d: True, timeout=10, since=time.time())
    after = wait_counts(ros, lambda d: labelled(d) >= labelled(before) + 10, timeout=90)
    assert after["overlays_published"] == before["overlays_published"], (before, after)
