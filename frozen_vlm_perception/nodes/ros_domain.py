"""Which ROS domain a run's traffic uses: unless the user chose, this host only and a domain of its own.

Two runs on one host (a demo beside ``make test``, two ``make test`` at once) must never share a
domain: a client would be answered by the other run's node. Deriving the id from the pid makes that
rare, not impossible, so a domain id is *claimed*: an exclusive ``flock`` on a file named after it in
the temp directory, held until released or until this process exits (the kernel drops the lock of a
dead process, so no claim goes stale). Child processes inherit the id through the environment.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

CLAIMS_DIR = Path(tempfile.gettempdir()) / "frozen_vlm_perception-ros-domains"

_held: dict[int, IO] = {}  # domain id -> the open lock file of this process's claim


class NoFreeDomain(RuntimeError):
    """Every domain id of a range is claimed already (by this or another process on this host)."""


def claim_ros_domain(first: int, count: int) -> int:
    """A ROS_DOMAIN_ID in ``[first, first + count)`` that no other process on this host holds, claimed
    for this process until :func:`release_ros_domain` or exit. Tried from a pid-derived start, so
    concurrent runs rarely contend. Raises NoFreeDomain."""
    CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
    start = os.getpid() % count
    for k in range(count):
        domain = first + (start + k) % count
        if domain in _held:
            continue
        lock = open(CLAIMS_DIR / f"{domain}.lock", "a")  # noqa: SIM115 (held open: that is the claim)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held[domain] = lock
        return domain
    raise NoFreeDomain(f"every ROS domain id {first}..{first + count - 1} is claimed already, by this or "
                       f"another process on this host (claims: {CLAIMS_DIR})")


def release_ros_domain(domain: int) -> None:
    """Give up this process's claim on ``domain`` (nothing when it holds none)."""
    lock = _held.pop(domain, None)
    if lock is not None:
        lock.close()


def default_ros_domain() -> None:
    """Unless the user chose them, keep this run's ROS traffic on this host and off other runs' domains.

    Sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a claimed ROS_DOMAIN_ID in 50..89 in os.environ,
    so child processes started afterwards inherit the same values.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(claim_ros_domain(50, 40))
