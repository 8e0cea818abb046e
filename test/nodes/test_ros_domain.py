"""frozen_vlm_perception/nodes/ros_domain.py: a claimed domain id is nobody else's on this host."""

from __future__ import annotations

import subprocess
import sys

import pytest

from frozen_vlm_perception.nodes import ros_domain
from frozen_vlm_perception.nodes.ros_domain import NoFreeDomain, claim_ros_domain, release_ros_domain

FIRST = 233  # outside every range the tests and tools claim (1-232 in use)


@pytest.fixture(autouse=True)
def private_claims(tmp_path, monkeypatch):
    """Claims in a folder of this test's own: another make test running this test meanwhile never meets
    them (the mechanism is the same in any folder)."""
    monkeypatch.setattr(ros_domain, "CLAIMS_DIR", tmp_path)
    return tmp_path


def claim_in_another_process(first: int, count: int) -> str:
    code = (
        "from pathlib import Path\n"
        "from frozen_vlm_perception.nodes import ros_domain\n"
        f"ros_domain.CLAIMS_DIR = Path({str(ros_domain.CLAIMS_DIR)!r})\n"
        "try: print(ros_domain.claim_ros_domain(" + f"{first}, {count}))\n"
        "except ros_domain.NoFreeDomain: print('none')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_a_claimed_domain_is_skipped_by_other_processes_until_released():
    mine = claim_ros_domain(FIRST, 2)
    try:
        assert claim_in_another_process(FIRST, 2) == str(FIRST + 1 - (mine - FIRST))  # the other one
        assert claim_in_another_process(mine, 1) == "none"
    finally:
        release_ros_domain(FIRST)
        release_ros_domain(FIRST + 1)
    assert claim_in_another_process(mine, 1) == str(mine)  # released: free again


def test_a_dead_process_leaves_no_claim_behind():
    assert claim_in_another_process(FIRST, 1) == str(FIRST)  # that process claimed it and exited
    assert claim_ros_domain(FIRST, 1) == FIRST
    release_ros_domain(FIRST)


def test_a_full_range_says_so():
    mine = claim_ros_domain(FIRST, 1)
    try:
        with pytest.raises(NoFreeDomain, match="is claimed already"):
            claim_ros_domain(FIRST, 1)  # this process holds the only id: refused, not handed out twice
        assert claim_in_another_process(FIRST, 1) == "none"
    finally:
        release_ros_domain(mine)
