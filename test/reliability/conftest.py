"""Fixtures for the reliability tests: a ROS domain of this run's own, a model folder, and the two nodes
in two runner processes (perception and reasoning apart, so that one can be killed beside the other).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The node tests' helpers (ChildProcess, RosClient, Collector, call): one harness for both folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))


@pytest.fixture(scope="session", autouse=True)
def reliability_domain():
    """ROS_DOMAIN_ID 215-232 (claimed: nodes/ros_domain.py; test/nodes uses 1-99, the root ``ros_env``
    100-199) and localhost-only discovery, set before any rclpy context or child process of these tests
    exists."""
    from frozen_vlm_perception.nodes.ros_domain import claim_ros_domain, release_ros_domain

    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    domain = claim_ros_domain(215, 18)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    yield domain
    release_ros_domain(domain)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def split(model_dir, tmp_path_factory, reliability_domain):
    """``runner --nodes perception`` and ``runner --nodes reasoning``: two processes, started together."""
    from reliability_harness import SplitSystem

    system = SplitSystem(tmp_path_factory.mktemp("split"), model_dir)
    yield system
    system.stop()


@pytest.fixture(scope="session")
def ros(split):
    """A client in this process: labels and diagnostics collected from the start."""
    from diagnostic_msgs.msg import DiagnosticArray
    from node_harness import RosClient

    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    client = RosClient("reliability_client")
    client.labels = client.collect(ActivityLabel, "/perception/activity", depth=200)
    client.diagnostics = client.collect(DiagnosticArray, "/diagnostics", depth=50)
    yield client
    client.close()
