"""Calling a ROS service (or an action's goal and result services) so that a lost answer is retried.

Every client of ours goes through here: ``fvp query`` (``query_client.py``), the demo, soak, bench and
eval tools, the latency probe and the tests' helpers. Three things, all inside one overall timeout:

1. **wait for the server**, polling ``service_is_ready()`` (bounded; no executor needs to spin);
2. **give discovery a moment** when the server was not there at the first look: "ready" means this
   client has discovered the server's endpoints, not that the server has matched this client's
   response reader yet. With Fast DDS a server that answers before that match drops the answer
   ("failed to send response (timeout): client will not receive response"), so a fresh client waits
   ``SETTLE_S`` before its first request;
3. **retry** a request whose future did not complete within ``attempt_timeout``: send it again and
   wait for whichever attempt answers first (earlier attempts stay live, so a slow answer still
   counts). Retrying is only for read-only or idempotent requests: QueryScene and AskScene only read
   the scene, a goal's result may be fetched any number of times, and GetState / SetParameters with
   the same values are idempotent. A request with a ``request_id`` field (QueryScene) gets a fresh
   random id when it has none, and every attempt carries that id: the reasoning node lets a resent
   request join the question it is already answering (or replays its answer), so an answer slower
   than ``attempt_timeout`` is not generated twice and a retry never takes another caller's queue
   slot. A server that handles requests in order (one executor thread, e.g. lifecycle transitions)
   answers the first attempt first, so a retry only wins when that answer was lost.

Two ways to wait: pass the ``executor`` that this thread may spin (a private session, as
``query_client`` has), or leave it None when an executor spins the node in another thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

SETTLE_S = 0.3  # after a server first appears: time for it to match our response reader (loopback: ms)
POLL_S = 0.05  # readiness polling and the longest wait between checks of the futures


class ServiceTimeout(RuntimeError):
    """No attempt was answered within the overall timeout."""


class ServiceUnavailable(ServiceTimeout):
    """The server did not appear within the overall timeout."""


def wait_until_ready(is_ready: Callable[[], bool], deadline: float, *, settle_s: float = SETTLE_S) -> bool:
    """Poll ``is_ready`` until it is true or ``deadline`` (time.monotonic()) passes; True when ready.

    When it was not ready at the first look (a server or client that just appeared), sleep ``settle_s``
    more (never past the deadline) so the server can match this client's response reader too.
    """
    if is_ready():
        return True
    while not is_ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_S, remaining))
    time.sleep(max(0.0, min(settle_s, deadline - time.monotonic())))
    return True


def default_attempt_timeout(timeout: float) -> float:
    """Three attempts fit in the overall timeout."""
    return timeout / 3.0


def retry_future(
    start: Callable[[], Any],
    *,
    deadline: float,
    attempt_timeout: float,
    executor: Any = None,
    forget: Callable[[Any], None] | None = None,
    accept: Callable[[Any], bool] | None = None,
    what: str = "the service",
) -> Any:
    """Start an attempt (``start()`` returns an rclpy Future), and another each ``attempt_timeout``
    until one of them is done or ``deadline`` passes; returns the first done future.

    ``executor``: spun here (spin_once) while waiting; None when another thread spins the node.
    ``forget(future)``: called for every attempt still pending at the end (e.g. the client's
    ``remove_pending_request``), so a late answer is dropped quietly. ``accept(result)``: False for a
    result that should not end the wait while an earlier attempt may still bring a better one (a retry
    refused as "busy" because the first attempt is still queued); such a future is returned only when
    no attempt is pending any more or at the deadline. Raises ServiceTimeout.
    """
    woken = threading.Event()
    futures: list[Any] = []
    fallback: list[Any] = []  # done but not accepted
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                if fallback:
                    return fallback[0]
                raise ServiceTimeout(f"no answer from {what} within the timeout ({len(futures)} attempts)")
            if fallback:  # answers get through: no more attempts, only wait for the pending ones
                attempt_end = deadline
            else:
                future = start()
                futures.append(future)
                if executor is None and not future.done():
                    future.add_done_callback(lambda _: woken.set())
                attempt_end = min(deadline, now + attempt_timeout)
            while True:
                for done in [f for f in futures if f.done()]:
                    if accept is None or accept(done.result()):
                        return done
                    futures.remove(done)
                    fallback.append(done)
                if fallback and not futures:
                    return fallback[0]
                remaining = attempt_end - time.monotonic()
                if remaining <= 0:
                    break
                if executor is not None:
                    executor.spin_once(timeout_sec=min(remaining, POLL_S * 2))
                else:
                    woken.wait(min(remaining, POLL_S))
                    woken.clear()
    finally:
        for future in futures:
            if not future.done():
                if forget is not None:
                    forget(future)
                future.cancel()


def call_service(
    client: Any,
    request: Any,
    *,
    timeout: float,
    attempt_timeout: float | None = None,
    executor: Any = None,
    settle_s: float = SETTLE_S,
    accept: Callable[[Any], bool] | None = None,
) -> Any:
    """The response of ``client`` (an rclpy Client) to ``request``: wait for the service, then send,
    resending each ``attempt_timeout`` (default: a third of ``timeout``) until an attempt is answered.

    The request must be read-only or idempotent (module doc); an empty ``request_id`` field, where the
    type has one, is set to a random id (the caller's request object is changed). ``accept``: see
    ``retry_future``. Raises ServiceUnavailable when the service does not appear, ServiceTimeout when
    no attempt is answered, both within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    name = client.srv_name
    if getattr(request, "request_id", None) == "":
        request.request_id = uuid.uuid4().hex  # the same id on every attempt: the server joins them
    if not wait_until_ready(client.service_is_ready, deadline, settle_s=settle_s):
        raise ServiceUnavailable(f"service {name} is not available (waited {timeout:g} s)")
    future = retry_future(
        lambda: client.call_async(request),
        deadline=deadline,
        attempt_timeout=attempt_timeout or default_attempt_timeout(timeout),
        executor=executor,
        forget=client.remove_pending_request,
        accept=accept,
        what=name,
    )
    return future.result()
