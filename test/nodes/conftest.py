"""Fixtures for the node tests: a ROS domain of this run's own (model_dir comes from test/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def ros_domain():
    """Its own ROS_DOMAIN_ID per test run (claimed: nodes/ros_domain.py) and localhost-only discovery,
    set before any rclpy context exists in this process or a child, so parallel runs never meet.
    Ids 1-99: the root conftest's per-test ``ros_env`` uses 100-199."""
    from frozen_vlm_perception.nodes.ros_domain import claim_ros_domain, release_ros_domain

    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    domain = claim_ros_domain(1, 99)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    yield domain
    release_ros_domain(domain)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
