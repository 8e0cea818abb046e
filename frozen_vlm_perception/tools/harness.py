"""Nodes in child processes, for the tools that drive them from outside (demo, bench and its system
part, soak, the latency probe, eval --through-ros; the node tests too): the one harness they share.

A node in its own process is what ``ros2 launch`` gives a robot; measuring it from another process
sees the transport, the executor and the process's own CPU share the way a robot's other nodes do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# Bring-up of a node process: a first start also builds the LM's weight cache (about 25 s) on top of
# loading the models, on a loaded 2-core machine. Every tool waits this long for a ready line.
READY_TIMEOUT_S = 240.0
KEEP_LINES = 200  # the tail of a child's output kept for error messages (None: all of it)


class NodeNotReady(RuntimeError):
    """The child exited, or did not print its ready line in time; the message ends with its output."""


class NodeProcess:
    """A child process (nodes, the player, a test's client) whose output a thread of its own reads.

    ``ready_line``: what it prints at the start of a line once up (the runner's ``READY_LINE``);
    :meth:`wait_ready` waits for it. Its output is kept (the last ``keep_lines`` lines, all with None)
    for :attr:`output` and the error messages; once the ready line has come, each further line also goes
    to ``after_ready`` (the demo shows the nodes' warnings that way). :meth:`stop` always ends the child:
    SIGTERM, then SIGKILL. The child runs with this process's environment, unbuffered.
    """

    def __init__(
        self,
        command: Sequence[str],
        ready_line: str | None = None,
        name: str = "the child process",
        *,
        keep_lines: int | None = KEEP_LINES,
        after_ready: Callable[[str], None] | None = None,
    ):
        self.name, self.ready_line = name, ready_line
        self.keep_lines, self.after_ready = keep_lines, after_ready
        self.lines: list[str] = []  # as printed, newline included
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._reader = threading.Thread(target=self._read, name=f"output of {name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if self.ready.is_set() and self.after_ready is not None:
                self.after_ready(line)
            self.lines.append(line)
            if self.keep_lines is not None and len(self.lines) > 2 * self.keep_lines:
                del self.lines[: -self.keep_lines]
            if self.ready_line is not None and line.startswith(self.ready_line):
                self.ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once the ready line has come; :class:`NodeNotReady` when the child exits first or
        ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.1):
            if self.process.poll() is not None:
                self._reader.join(timeout=5)  # its last lines, the ready line perhaps among them
                if self.ready.is_set():
                    return
                raise NodeNotReady(
                    f"{self.name} exited with code {self.process.returncode} before printing "
                    f"{self.ready_line!r}:\n{self.output[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise NodeNotReady(
                    f"{self.name} did not print {self.ready_line!r} within {timeout_s:g} s:\n"
                    f"{self.output[-4000:]}"
                )

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def peak_rss_mb(self) -> float | None:
        """High-water resident set of the process so far (Linux VmHWM), None where unknown."""
        return peak_rss_mb(self.process.pid)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout_s``; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.process.returncode


def _proc_status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` line of /proc/<pid>/status (Linux), None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """High-water resident set of ``pid`` in MiB (VmHWM), None where unknown."""
    kb = _proc_status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024.0


def cpu_seconds(pid: int | str = "self") -> float | None:
    """CPU time (user + system, all threads) ``pid`` has used so far (Linux /proc), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After "pid (comm)": state is field 3 of proc(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> dict[str, float]:
    """The machine's CPU time so far by kind, all cores summed (Linux /proc/stat): busy, idle and
    steal (time a virtual machine's cores waited for the host), empty where unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": (idle + iowait) / tick,
            "steal": steal / tick}


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (psutil when installed, else /proc); nan when it is gone."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 1e6
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess and friends
        return float("nan")
    kb = _proc_status_kb(pid, "VmRSS")
    return float("nan") if kb is None else kb * 1024 / 1e6


def runner_command(
    nodes: str = "perception,reasoning", *, model_dir: str, device: str = "auto", params: Sequence[str] = ()
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
