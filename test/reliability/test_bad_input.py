"""Bad input from another process, end to end over Fast DDS: every bad message is a counted drop with
its reason in /diagnostics, and the node keeps labelling good input.

test/nodes covers the same conversions in-process (bad step, unknown encoding, NaN IMU) and, end to end,
empty and oversized questions and questions about unknown stamps; this adds the drop accounting over
DDS (each reason counted exactly, nothing unaccounted for) and what those tests leave out.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from node_harness import call, stamp_ns, wait_until
from reliability_harness import count, fresh_diagnostics, grew, wait_for_status

from frozen_vlm_perception.conversions import rgb_to_image, to_time_msg
from frozen_vlm_perception.tools.latency_probe import SensorStream

pytestmark = pytest.mark.slow

PACE_S = 0.15  # one bad frame at a time: the worker takes each before the next arrives


def bad_images(t: float) -> list[tuple[str | None, object]]:
    """(expected drop reason or None for a frame that must be labelled, message)."""
    from sensor_msgs.msg import Image

    good = np.full((60, 80, 3), 100, np.uint8)

    def image(**fields) -> Image:
        msg = rgb_to_image(good, stamp=t, frame_id="camera")
        for key, value in fields.items():
            setattr(msg, key, value)
        return msg

    return [
        ("bad_step", image(step=10)),  # smaller than a row
        ("bad_step", image(step=80 * 3 * 100)),  # implausibly large for the width
        ("bad_size", image(data=bytes(60 * 80 * 3 - 7))),  # data length does not match step * height
        ("empty", image(height=0, width=0, step=0, data=b"")),
        ("unknown_encoding", image(encoding="yuv422")),
        ("too_large", image(width=100_000, step=300_000)),
        (None, image(is_bigendian=1)),  # rgb8 has no byte order: the flag is harmless, labelled
    ]


def test_bad_images_and_imu_are_counted_by_reason_and_good_input_still_labelled(split, ros):
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image, Imu

    from frozen_vlm_perception_interfaces.srv import QueryScene

    node = ros.node
    cameras = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=50))
    imus = node.create_publisher(Imu, "/imu/data", QoSProfile(depth=100))
    wait_until(lambda: cameras.get_subscription_count() >= 1 and imus.get_subscription_count() >= 1, 20,
               "the perception node subscribes")

    def imu(t: float, *, accel_cov: float = 0.0, gyro_cov: float = 0.0, x: float = 0.0) -> Imu:
        msg = Imu()
        msg.header.stamp = to_time_msg(t)
        msg.linear_acceleration.x, msg.linear_acceleration.z = x, 9.81
        msg.linear_acceleration_covariance[0] = accel_cov
        msg.angular_velocity_covariance[0] = gyro_cov
        return msg

    t = time.time()
    imus.publish(imu(t))  # a good sample first: the bad ones after it (same topic: in order) are judged by it
    before = fresh_diagnostics(ros, "perception")

    # Paced: each reason must be counted exactly, 3 rounds of every bad kind.
    rounds, expected_images, expected_imu = 3, {}, {}
    for _ in range(rounds):
        since = time.time()
        for reason, msg in bad_images(t):
            cameras.publish(msg)
            if reason is not None:
                expected_images[f"drop:camera:{reason}"] = expected_images.get(f"drop:camera:{reason}", 0) + 1
            time.sleep(PACE_S)
        # The round's last frame (big-endian rgb8) is labelled: the worker is idle before the next round.
        good = stamp_ns(to_time_msg(t))
        ros.labels.wait_for(lambda msgs, good=good: any(stamp_ns(m.header.stamp) == good for m in msgs),
                            timeout=20, since=since)
        t += 0.5
        bad_imu = [
            ("duplicate_stamp", imu(t - 0.5)),  # the stamp of the last good sample again
            ("out_of_order", imu(t - 0.7)),  # older than the newest, by less than a clock reset
            ("nonfinite", imu(t, x=float("nan"))),
            ("nonfinite", imu(t, x=float("inf"))),
            ("accel_unavailable", imu(t, accel_cov=-1.0)),  # REP-145: not provided
            ("gyro_unavailable", imu(t, gyro_cov=-1.0)),
        ]
        for reason, msg in bad_imu:
            imus.publish(msg)
            expected_imu[f"drop:imu:{reason}"] = expected_imu.get(f"drop:imu:{reason}", 0) + 1
            time.sleep(0.02)
        imus.publish(imu(t))  # good again: the next round's duplicate repeats this stamp
        time.sleep(0.05)
    expected = {**expected_images, **expected_imu}
    received_all = count(before, "frames_received") + rounds * len(bad_images(t))
    # Until the node's own counts cover everything sent (bounded), then exact.
    paced = wait_for_status(ros, "perception", lambda d: count(d, "frames_received") >= received_all and all(
        count(d, key) - count(before, key) >= n for key, n in expected.items()), timeout=20)
    drops = grew(before, paced, "drop:")
    for key, n in expected.items():
        assert drops.get(key, 0) == n, (key, n, drops)
    labelled = count(paced, "frames_labelled") - count(before, "frames_labelled")
    received = count(paced, "frames_received") - count(before, "frames_received")
    assert labelled == rounds, (labelled, drops)  # the big-endian rgb8 frames
    assert received == rounds * len(bad_images(t)), (received, drops)

    # A real burst, unpaced: frames may be superseded (and DDS keeps only the newest 2 for a slow
    # reader), but every frame the node received is accounted for: labelled, dropped with a reason, or
    # superseded by a newer one.
    burst = [m for _ in range(10) for r, m in bad_images(t) if r is not None]
    for msg in burst:
        cameras.publish(msg)

    def settled(d: dict) -> bool:
        """Every frame of the burst that arrived is labelled, dropped or superseded; nothing pending."""
        received = count(d, "frames_received") - count(paced, "frames_received")
        handled = sum(count(d, k) - count(paced, k) for k in d if k.startswith("drop:camera:")
                      and not k.endswith("lost_in_transport"))
        handled += sum(count(d, k) - count(paced, k) for k in ("drop:superseded", "frames_labelled"))
        return received > 0 and received == handled and d.get("period_frames_received") == "0"

    after = wait_for_status(ros, "perception", settled, timeout=20)
    lost = count(after, "drop:camera:lost_in_transport") - count(paced, "drop:camera:lost_in_transport")
    new_drops = {
        k: n for k, n in grew(paced, after, "drop:camera:").items() if not k.endswith("lost_in_transport")
    }
    superseded = count(after, "drop:superseded") - count(paced, "drop:superseded")
    new_received = count(after, "frames_received") - count(paced, "frames_received")
    new_labelled = count(after, "frames_labelled") - count(paced, "frames_labelled")
    assert 0 < new_received <= len(burst)
    assert new_received == sum(new_drops.values()) + superseded + new_labelled, (new_received, new_drops)

    # Good input afterwards: labels again.
    stream = SensorStream(node, camera_hz=15.0, imu_hz=200.0, width=160, height=120).start()
    try:
        ros.labels.wait_for(lambda msgs: len(msgs) >= 5, timeout=30, since=time.time())
    finally:
        stream.stop()
    print(
        f"\npaced drops counted: {drops}; labelled {labelled}/{received} received; burst of {len(burst)}: "
        f"received {new_received}, dropped {sum(new_drops.values())}, superseded {superseded}, reported lost "
        f"in transport {lost}"
    )

    # Questions a careless client can send that the end-to-end node tests do not try.
    query = node.create_client(QueryScene, "/reasoning/query")
    try:
        assert query.wait_for_service(timeout_sec=20)
        greedy = call(query, QueryScene.Request(question="Describe it.", max_new_tokens=5000), 20)
        assert not greedy.success and "more than 4096" in greedy.message
        future = QueryScene.Request(question="What happens next?", stamp=to_time_msg(time.time() + 3600.0))
        reply = call(query, future, 20)
        assert not reply.success and "no scene within" in reply.message
        nul = call(query, QueryScene.Request(question="\x00"), 20)  # rosidl strings end at NUL: empty
        assert not nul.success and "empty" in nul.message
    finally:
        node.destroy_client(query)
        node.destroy_publisher(cameras)
        node.destroy_publisher(imus)
