"""Which ROS domain a run's traffic uses: unless the user chose, this host only and a domain of its own."""

from __future__ import annotations

import os


def default_ros_domain() -> None:
    """Unless the user chose them, keep this run's ROS traffic on this host and off other runs' domains.

    Sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID derived from the pid (50..89) in
    os.environ, so child processes started afterwards inherit the same values.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 40))
