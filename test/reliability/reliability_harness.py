"""Helpers for the reliability tests: the split system, bags to loop, diagnostics read back as numbers.

Every wait is bounded; every child process is stopped (SIGTERM, then SIGKILL) by whoever started it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from node_harness import READY_TIMEOUT_S, ChildProcess

from frozen_vlm_perception.nodes.runner import params_file_from

MAX_NEW_TOKENS = 12  # short answers keep the tests fast
# The node's limit on a question, waiting included (default 60 s). The generating thread runs at nice 19,
# so beside another make test a 12-token answer took 31 s and the third in line waits over 60 s: the
# load test's clients wait up to 120 s (test_load.py) and must get an answer or "busy", not a timeout.
ANSWER_TIMEOUT_S = 150.0
RUNNER = ["-m", "frozen_vlm_perception.nodes.runner"]


def split_params(model_dir) -> dict[str, Any]:
    return {
        "perception": {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5},
        "reasoning": {
            "model_dir": str(model_dir),
            "torch_threads": 1,
            "diagnostics_period_s": 0.5,
            "max_new_tokens": MAX_NEW_TOKENS,
            "queue_size": 2,
            "answer_timeout_s": ANSWER_TIMEOUT_S,
        },
    }


def start_children(*argvs: list[str]) -> list[ChildProcess]:
    """Start several runner processes at once and wait until each says it is ready."""
    children = [ChildProcess(argv) for argv in argvs]
    try:
        for child in children:
            child.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        for child in children:
            child.stop()
        raise
    return children


class SplitSystem:
    """The perception node and the reasoning node in two runner processes."""

    def __init__(self, tmp: Path, model_dir):
        self.params_file = params_file_from(split_params(model_dir), str(tmp))
        self.perception, self.reasoning = start_children(self._argv("perception"), self._argv("reasoning"))

    def _argv(self, node: str) -> list[str]:
        return [*RUNNER, "--params-file", self.params_file, "--nodes", node]

    def restart_reasoning(self) -> None:
        self.reasoning.stop()
        (self.reasoning,) = start_children(self._argv("reasoning"))

    def stop(self) -> None:
        for child in (self.reasoning, self.perception):
            child.stop()


# --------------------------------------------------------------------------------------------------
# Bags


def write_bag(
    path: Path,
    *,
    seconds: float,
    camera_hz: float = 30.0,
    imu_hz: float = 200.0,
    imu_gaps: tuple[tuple[float, float], ...] = (),
    base_s: float = 5000.0,
    size: tuple[int, int] = (90, 120),
) -> dict[str, Any]:
    """A synthetic recording: frames at ``camera_hz``, a walking-like IMU at ``imu_hz`` except inside
    ``imu_gaps`` ((start, end) seconds from the beginning). Stamps from ``base_s`` (a recording from
    long ago, not the wall clock). Returns the frame stamps (ns) and the settings."""
    from frozen_vlm_perception.data.bags import BagWriter

    base = int(base_s * 1e9)
    frames: list[int] = []
    events = [(k / imu_hz, "imu") for k in range(int(seconds * imu_hz))]
    events += [(k / camera_hz + 0.5 / imu_hz, "camera") for k in range(int(seconds * camera_hz))]
    height, width = size
    with BagWriter(path) as bag:
        for t, kind in sorted(events):
            t_ns = base + int(round(t * 1e9))
            if kind == "imu":
                if any(a <= t < b for a, b in imu_gaps):
                    continue
                phase = 2 * np.pi * 1.8 * t
                bag.write_imu(
                    "/imu/data",
                    t_ns,
                    [0.3 * np.sin(phase), 0.0, 9.81 + 2.0 * np.sin(phase)],
                    [0.0, 0.2 * np.cos(phase), 0.0],
                )
            else:
                bag.write_image(
                    "/camera/image_raw", np.full((height, width, 3), len(frames) % 255, np.uint8), t_ns
                )
                frames.append(t_ns)
    return {"frames": frames, "base_ns": base, "seconds": seconds}


class BagLoop:
    """Plays a bag over and over (the player with ``loop=True``) in a thread until stopped."""

    def __init__(self, bag: Path, *, rate: float = 1.0, delay: float = 0.5):
        from frozen_vlm_perception.nodes.player import PlayStats

        self.stats = PlayStats()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(bag, rate, delay), name="bag-loop", daemon=True
        )
        self.started = time.time()

    def _run(self, bag: Path, rate: float, delay: float) -> None:
        from frozen_vlm_perception.nodes.player import play_bag

        try:
            self.stats = play_bag(
                bag,
                rate=rate,
                loop=True,
                stop=self._stop,
                handle_signals=False,
                delay=delay,
                node_name=f"fvp_player_{id(self)}",
            )
        except BaseException as err:  # reported by stop()
            self.error = err

    def __enter__(self) -> BagLoop:
        self.started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the bag player did not stop"
        if self.error is not None:
            raise AssertionError(f"the bag player failed: {self.error!r}")


# --------------------------------------------------------------------------------------------------
# Diagnostics


def statuses(ros, node: str, since: float = 0.0) -> list[dict]:
    """Key/values of ``node``'s /diagnostics statuses received since ``since`` (oldest first), plus
    ``_level``, ``_message`` and ``_received`` (this process's receive time)."""
    out = []
    for received, msg in list(ros.diagnostics.items):
        if received < since:
            continue
        for status in msg.status:
            if status.name == f"{node}: {node}":
                values: dict = {kv.key: kv.value for kv in status.values}
                values["_level"] = int.from_bytes(status.level, "little")
                values["_message"], values["_received"] = status.message, received
                out.append(values)
    return out


def fresh_diagnostics(ros, node: str, timeout: float = 10.0) -> dict[str, str]:
    """The first status of ``node`` published after now (its totals are at least as new as now)."""
    since = time.time()
    ros.diagnostics.wait_for(lambda _: bool(statuses(ros, node, since)), timeout=timeout, since=since)
    return statuses(ros, node, since)[0]


def wait_for_status(ros, node: str, predicate, timeout: float = 15.0) -> dict[str, str]:
    """The first status of ``node`` published after now for which ``predicate(status)`` holds: a
    bounded wait for the node's own counts to reach a state (instead of a fixed sleep)."""
    since = time.time()
    found: list[dict] = []

    def seen(_) -> bool:
        found[:] = [d for d in statuses(ros, node, since) if predicate(d)][:1]
        return bool(found)

    try:
        ros.diagnostics.wait_for(seen, timeout=timeout, since=since)
    except AssertionError as err:
        last = statuses(ros, node, since)[-1:]
        raise AssertionError(f"no {node} status as wanted within {timeout} s; the last: {last}") from err
    return found[0]


def count(values: dict[str, str], key: str) -> int:
    return int(values.get(key, 0))


def grew(before: dict[str, str], after: dict[str, str], prefix: str) -> dict[str, int]:
    """Counters starting with ``prefix`` that grew between two statuses, and by how much."""
    keys = {k for k in after if k.startswith(prefix)}
    return {
        k: count(after, k) - count(before, k) for k in sorted(keys) if count(after, k) != count(before, k)
    }
