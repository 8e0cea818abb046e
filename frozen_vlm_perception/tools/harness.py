"""Nodes in child processes, for the tools that drive them from outside (demo, bench, soak, the latency
probe, eval --through-ros): the one harness they share.

A node in its own process is what ``ros2 launch`` gives a robot; measuring it from another process
sees the transport, the executor and the process's own CPU share the way a robot's other nodes do.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Bring-up of a node process: a first start also builds the LM's weight cache (about 25 s) on top of
# loading the models, on a loaded 2-core machine.
READY_TIMEOUT_S = 240.0


class NodeProcess:
    """A child process that prints ``ready_line`` once up; its output is kept for error messages."""

    def __init__(self, command: Sequence[str], ready_line: str, name: str):
        self.name, self.ready_line = name, ready_line
        self.log: collections.deque[str] = collections.deque(maxlen=200)  # the tail, for errors
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            if line.startswith(self.ready_line):
                self.ready.set()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(list(self.log)[-30:])
                raise RuntimeError(f"{self.name} did not come up (exit {self.process.poll()}):\n{tail}")

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def peak_rss_mb(self) -> float | None:
        """High-water resident set of the process so far (Linux VmHWM), None where unknown."""
        return peak_rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def peak_rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def runner_command(
    nodes: str, *, model_dir: str, device: str = "auto", params: Sequence[str] = ()
) -> list[str]:
    """The runner (shipped config/perception.yaml) for ``nodes`` ("perception", "reasoning" or both,
    comma-separated) with ``model_dir``, ``device`` and extra ``name:=value`` parameters."""
    command = [
        sys.executable,
        "-m",
        "frozen_vlm_perception.nodes.runner",
        "--nodes",
        nodes,
        "--ros-args",
        "-p",
        f"model_dir:={model_dir}",
        "-p",
        f"device:={device}",
    ]
    for param in params:
        command += ["-p", param]
    return [*command, "--log-level", "warn"]


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of latencies in ms ({"n": 0} when there are none)."""
    if not values_ms:
        return {"n": 0}
    v = np.asarray(values_ms, dtype=np.float64)
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max()), "mean": float(v.mean())}
