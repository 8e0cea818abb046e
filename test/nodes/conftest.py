"""Fixtures for the node tests: a ROS domain of this run's own (model_dir comes from test/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def ros_domain():
    """Its own ROS_DOMAIN_ID per test run (from the pid) and localhost-only discovery, set before any
    rclpy context exists in this process or a child, so parallel runs on one machine never meet.
    Ids 1-99: the root conftest's per-test ``ros_env`` uses 100-199."""
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 99)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    yield int(os.environ["ROS_DOMAIN_ID"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
