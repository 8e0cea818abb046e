"""Helpers for the node tests: child processes, an rclpy client in the test process, bounded waits.

Every wait is bounded; ChildProcess.stop() always ends the child (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from frozen_vlm_perception.nodes.runner import READY_LINE
from frozen_vlm_perception.tools.harness import READY_TIMEOUT_S, NodeProcess


class ChildProcess(NodeProcess):
    """A child Python process, through the tools' harness (frozen_vlm_perception/tools/harness.py), with
    every line of its output kept (``lines``, ``output``) for READY and for failures."""

    def __init__(self, args: list[str], ready_line: str = READY_LINE):
        name = f"the child ({' '.join(args[:2])})"
        super().__init__([sys.executable, *args], ready_line, name, keep_lines=None)

    @property
    def proc(self):
        return self.process


def start_runner(tmp_path, params: dict[str, Any], *extra: str) -> ChildProcess:
    """``python -m frozen_vlm_perception.nodes.runner`` with ``params`` (short layout), ready."""
    from frozen_vlm_perception.nodes.runner import params_file_from

    params_file = params_file_from(params, str(tmp_path))
    child = ChildProcess(["-m", "frozen_vlm_perception.nodes.runner", "--params-file", params_file, *extra])
    try:
        child.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        child.stop()
        raise
    return child


class RosClient:
    """rclpy in the test process: its own context, one node, a single-threaded executor in a thread."""

    def __init__(self, name: str = "test_client"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def collect(self, msg_type, topic: str, depth: int = 100) -> Collector:
        collector = Collector()
        self.node.create_subscription(msg_type, topic, collector.add, depth)
        return collector

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)


class Collector:
    """Messages of one subscription, with a bounded wait for a condition over them."""

    def __init__(self):
        self.items: list[tuple[float, Any]] = []  # (receive time, msg)
        self._cond = threading.Condition()

    def add(self, msg) -> None:
        with self._cond:
            self.items.append((time.time(), msg))
            self._cond.notify_all()

    def messages(self, since: float = 0.0) -> list:
        with self._cond:
            return [m for t, m in self.items if t >= since]

    def wait_for(self, predicate: Callable[[list], bool], timeout: float, since: float = 0.0) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                msgs = [m for t, m in self.items if t >= since]
                if predicate(msgs):
                    return msgs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"condition not met within {timeout} s ({len(msgs)} messages)")
                self._cond.wait(remaining)


def call(client, request, timeout: float, *, attempt_timeout: float | None = None):
    """A service call from the test thread while the executor spins elsewhere; the response.

    Through frozen_vlm_perception/nodes/service_call.py: waits for the service (within ``timeout``) and
    resends a request not answered within ``attempt_timeout`` (default a third of ``timeout``), as an
    answer sent right after discovery can be lost. The tests call read-only services (QueryScene,
    GetState), idempotent ones (SetParameters) and lifecycle transitions, which the node handles in
    order: the first attempt is answered first, so a retry only wins when that answer was lost.
    """
    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, call_service

    try:
        return call_service(client, request, timeout=timeout, attempt_timeout=attempt_timeout)
    except ServiceTimeout as err:
        raise AssertionError(f"no response from {client.srv_name} within {timeout} s ({err})") from None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition", poll: float = 0.05):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` seconds pass (an
    AssertionError naming ``what``): the bounded wait that replaces a fixed sleep before an assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(min(poll, remaining))


def wait_future(future, timeout: float):
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        raise AssertionError(f"future not done within {timeout} s")
    return future.result()


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def diagnostics_of(ros, node: str, since: float = 0.0) -> list[dict[str, str]]:
    """Key/values of ``node``'s /diagnostics statuses received since ``since`` (oldest first)."""
    out = []
    for msg in ros.diagnostics.messages(since):
        for status in msg.status:
            if status.name == f"{node}: {node}":
                out.append({kv.key: kv.value for kv in status.values})
    return out


def set_parameter(ros, node: str, name: str, value):
    """SetParameters on a node of the runner; its SetParametersResult."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = ros.node.create_client(SetParameters, f"/{node}/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=10)
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return call(client, request, 10).results[0]
    finally:
        ros.node.destroy_client(client)
