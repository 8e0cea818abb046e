"""Subscription reliability: ``auto`` (the default) follows the publishers; an explicit setting wins.

The slow tests run the perception node in a runner process of its own (its own ROS_DOMAIN_ID per
test, from ``ros_env``) and publish camera + IMU from this process over real Fast DDS, the publishers
created only after the node is configured and active, as when a driver starts after our node.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from node_harness import RosClient, start_runner

from frozen_vlm_perception.nodes import perception_node
from frozen_vlm_perception.nodes.qos import RELIABILITY_AUTO, resolve_reliability

ROOT = Path(__file__).resolve().parents[2]
NODE = "perception: perception"  # the status name in /diagnostics
LABEL_TIMEOUT_S = 120.0  # two shared CPU cores: the first labels can take a while


# --------------------------------------------------------------------------------------------------
# The choice itself (no ROS)


@pytest.mark.parametrize(("offered", "expected"), [
    ([], "reliable"),  # nothing on the topic yet: reliable until a best-effort publisher shows up
    (["reliable"], "reliable"),
    (["reliable", "reliable"], "reliable"),
    (["best_effort"], "best_effort"),
    (["reliable", "best_effort"], "best_effort"),  # a best-effort subscription hears both
])
def test_auto_is_best_effort_when_any_publisher_is(offered, expected):
    assert resolve_reliability(RELIABILITY_AUTO, offered) == expected
    assert resolve_reliability(RELIABILITY_AUTO, iter(offered)) == expected  # any iterable


@pytest.mark.parametrize("setting", ["reliable", "best_effort"])
@pytest.mark.parametrize("offered", [[], ["reliable"], ["best_effort"], ["reliable", "best_effort"]])
def test_an_explicit_setting_wins(setting, offered):
    assert resolve_reliability(setting, offered) == setting


def test_auto_is_the_default_in_the_table_and_the_shipped_parameter_files():
    specs = {s.name: s for s in perception_node.PARAMS}
    for name in ("camera.qos_reliability", "imu.qos_reliability"):
        assert specs[name].default == RELIABILITY_AUTO
        assert set(specs[name].choices) == {"auto", "reliable", "best_effort"}
        assert specs[name].check("sometimes") is not None
    for path in sorted((ROOT / "config").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        params = document["/**/perception"]["ros__parameters"]
        for kind in ("camera", "imu"):
            value = params.get(kind, {}).get("qos_reliability", RELIABILITY_AUTO)
            assert value == RELIABILITY_AUTO, f"{path.name}: {kind}.qos_reliability {value}"


# --------------------------------------------------------------------------------------------------
# Real processes


def start_perception(tmp_path, model_dir, **params):
    settings = {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5, **params}
    return start_runner(tmp_path, {"perception": settings}, "--nodes", "perception")


def statuses(diagnostics, since: float = 0.0) -> list[dict]:
    out = []
    for received, msg in list(diagnostics.items):
        if received >= since:
            for status in msg.status:
                if status.name == NODE:
                    out.append({**{kv.key: kv.value for kv in status.values}, "_received": received})
    return out


def wait_for_status(diagnostics, predicate, timeout: float, since: float = 0.0) -> dict:
    diagnostics.wait_for(lambda _: any(predicate(s) for s in statuses(diagnostics, since)), timeout=timeout)
    return next(s for s in statuses(diagnostics, since) if predicate(s))


class Session:
    """The node's runner, and a client here that collects labels and diagnostics."""

    def __init__(self, tmp_path, model_dir, **params):
        from diagnostic_msgs.msg import DiagnosticArray

        from frozen_vlm_perception_interfaces.msg import ActivityLabel

        self.child = start_perception(tmp_path, model_dir, **params)  # configured and active
        self.ros = RosClient("qos_test")
        self.labels = self.ros.collect(ActivityLabel, "/perception/activity")
        self.diagnostics = self.ros.collect(DiagnosticArray, "/diagnostics")
        self.stream = None

    def publish(self, profile=None):
        """Camera (15 Hz, 160x120) and IMU (200 Hz) publishers created now, with ``profile``."""
        from frozen_vlm_perception.tools.latency_probe import SensorStream

        self.stream = SensorStream(self.ros.node, camera_hz=15.0, imu_hz=200.0, width=160, height=120,
                                   camera_qos=profile, imu_qos=profile).start()

    def close(self):
        if self.stream is not None:
            self.stream.stop()
        self.ros.close()
        self.child.stop()


@pytest.fixture
def session(ros_env, model_dir, tmp_path):
    """``ros_env``: a ROS_DOMAIN_ID of this test's own, for this process and the runner."""
    sessions = []

    def make(**params) -> Session:
        sessions.append(Session(tmp_path, model_dir, **params))
        return sessions[-1]

    yield make
    for s in sessions:
        s.close()


def wait_for_output(child, text: str, timeout: float) -> None:
    """Until ``text`` is in the child's output (bounded; fails with its output)."""
    deadline = time.monotonic() + timeout
    while text not in child.output:
        assert child.proc.poll() is None, f"the runner exited:\n{child.output[-4000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{child.output[-4000:]}"
        time.sleep(0.1)


def fused(msgs) -> list:
    return [m for m in msgs if m.source == "fused"]


@pytest.mark.slow
def test_default_parameters_hear_a_sensor_data_driver_started_later(session):
    from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data

    profile = qos_profile_sensor_data  # what camera and IMU drivers use
    assert (profile.reliability, profile.depth) == (ReliabilityPolicy.BEST_EFFORT, 5)
    s = session()
    # Nothing publishes yet: the node starts reliable and says so.
    assert "/camera/image_raw: subscribed reliable (camera.qos_reliability auto" in s.child.output
    s.publish(profile)
    # Fused labels: camera frames and IMU samples both arrived through best-effort subscriptions.
    s.labels.wait_for(lambda msgs: len(fused(msgs)) >= 3, timeout=LABEL_TIMEOUT_S)
    status = wait_for_status(s.diagnostics, lambda v: v.get("camera_qos_reliability") == "best_effort", 10)
    assert status["imu_qos_reliability"] == "best_effort"
    for topic, parameter in (("/camera/image_raw", "camera"), ("/imu/data", "imu")):
        assert f"{topic}: subscribed best_effort ({parameter}.qos_reliability auto" in s.child.output
    assert "incompatible" not in s.child.output  # the switch is not an error


@pytest.mark.slow
def test_default_parameters_stay_reliable_with_reliable_publishers(session):
    s = session()
    s.publish()  # SensorStream's own profiles: reliable, keep last 2 / 100
    s.labels.wait_for(lambda msgs: len(fused(msgs)) >= 3, timeout=LABEL_TIMEOUT_S)
    status = wait_for_status(s.diagnostics, lambda v: int(v.get("frames_labelled", 0)) > 0, 10)
    assert (status["camera_qos_reliability"], status["imu_qos_reliability"]) == ("reliable", "reliable")
    assert "subscribed best_effort" not in s.child.output
    assert "incompatible" not in s.child.output


@pytest.mark.slow
def test_an_explicit_reliable_camera_hears_no_best_effort_driver_and_says_so_once(session):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    s = session(camera={"qos_reliability": "reliable"})  # the IMU stays auto
    assert "/camera/image_raw: subscribed reliable (camera.qos_reliability reliable)" in s.child.output
    s.publish(qos_profile_sensor_data)
    wait_for_output(s.child, "/camera/image_raw: a publisher's QoS is incompatible", 60)
    # A second best-effort camera publisher is a second incompatible event: still one line.
    s.ros.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    since = time.time() + 3.0
    # The IMU (auto) is heard meanwhile, so the publishers work: only the camera is cut off.
    status = wait_for_status(s.diagnostics, lambda v: int(v.get("imu_buffer_samples", 0)) > 0
                             and v["_received"] >= since, 30)
    assert status["imu_qos_reliability"] == "best_effort"
    assert status["camera_qos_reliability"] == "reliable"
    assert all(int(v.get("frames_received", 0)) == 0 for v in statuses(s.diagnostics))
    assert not s.labels.messages()
    lines = [line for line in s.child.lines if "incompatible" in line]
    assert len(lines) == 1, lines
    assert "set parameter camera.qos_reliability to auto (or best_effort)" in lines[0]
