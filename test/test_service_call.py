"""frozen_vlm_perception/nodes/service_call.py's retry loop, on fake futures (no ROS): a lost answer is
asked again, a retry's "busy" does not hide the first attempt's answer, and nothing waits past the
deadline. test_ros_interfaces.py runs the same against a real server process that drops answers."""

from __future__ import annotations

import time

import pytest

from frozen_vlm_perception.nodes.service_call import ServiceTimeout, retry_future


class FakeFuture:
    def __init__(self, answer_at: float | None, result):
        self.answer_at, self._result, self.cancelled = answer_at, result, False

    def done(self) -> bool:
        return self.answer_at is not None and time.monotonic() >= self.answer_at

    def result(self):
        return self._result

    def cancel(self) -> None:
        self.cancelled = True


class FakeExecutor:
    def spin_once(self, timeout_sec: float) -> None:
        time.sleep(min(timeout_sec, 0.01))


def attempts(*plan):
    """start() for retry_future: the n-th attempt is answered ``delay`` s after it is sent (None:
    never) with ``result``; the futures made are kept in ``start.made``."""
    made: list[FakeFuture] = []

    def start() -> FakeFuture:
        delay, result = plan[len(made)]
        made.append(FakeFuture(None if delay is None else time.monotonic() + delay, result))
        return made[-1]

    start.made = made
    return start


def test_a_lost_answer_is_asked_again():
    start = attempts((None, "lost"), (0.05, "answer"))
    t0 = time.monotonic()
    forgotten = []
    done = retry_future(start, deadline=t0 + 5, attempt_timeout=0.3, executor=FakeExecutor(),
                        forget=forgotten.append)
    assert done.result() == "answer" and 0.3 <= time.monotonic() - t0 < 1.0
    assert len(start.made) == 2 and forgotten == [start.made[0]] and start.made[0].cancelled


def test_a_slow_first_answer_still_counts_after_a_retry():
    start = attempts((0.5, "first"), *[(None, "lost")] * 20)
    done = retry_future(start, deadline=time.monotonic() + 5, attempt_timeout=0.2, executor=FakeExecutor())
    assert done.result() == "first" and len(start.made) >= 2


def test_a_busy_retry_waits_for_the_queued_first_attempt():
    start = attempts((0.6, "answer"), (0.05, "busy"))
    done = retry_future(start, deadline=time.monotonic() + 5, attempt_timeout=0.2, executor=FakeExecutor(),
                        accept=lambda r: r != "busy")
    assert done.result() == "answer"
    assert len(start.made) == 2  # once an answer got through, no third attempt


def test_a_busy_first_attempt_is_returned_at_once():
    start = attempts((0.05, "busy"))
    t0 = time.monotonic()
    done = retry_future(start, deadline=t0 + 5, attempt_timeout=1, executor=FakeExecutor(),
                        accept=lambda r: r != "busy")
    assert done.result() == "busy" and time.monotonic() - t0 < 0.5


def test_nothing_waits_past_the_deadline():
    start = attempts(*[(None, "lost")] * 10)
    t0 = time.monotonic()
    with pytest.raises(ServiceTimeout, match="3 attempts"):
        retry_future(start, deadline=t0 + 0.9, attempt_timeout=0.3, executor=FakeExecutor())
    assert time.monotonic() - t0 < 1.5 and all(f.cancelled for f in start.made)


def test_every_attempt_of_a_call_carries_one_request_id():
    from frozen_vlm_perception.nodes.service_call import call_service
    from frozen_vlm_perception_interfaces.srv import QueryScene

    class LosingClient:
        """The first two replies are lost; the ids each attempt carried are kept."""

        srv_name = "/reasoning/query"

        def __init__(self):
            self.sent: list[str] = []

        def service_is_ready(self) -> bool:
            return True

        def call_async(self, request) -> FakeFuture:
            self.sent.append(request.request_id)
            answer_at = None if len(self.sent) < 3 else time.monotonic()
            return FakeFuture(answer_at, QueryScene.Response(success=True))

        def remove_pending_request(self, future) -> None:
            pass

    client = LosingClient()
    assert call_service(client, QueryScene.Request(question="q?"), timeout=5, attempt_timeout=0.1,
                        executor=FakeExecutor()).success
    assert len(client.sent) == 3 and len(set(client.sent)) == 1 and len(client.sent[0]) == 32, client.sent
    other = LosingClient()  # a new call is a new question: a new id; an id the caller chose is kept
    call_service(other, QueryScene.Request(question="q?"), timeout=5, attempt_timeout=0.1,
                 executor=FakeExecutor())
    assert other.sent[0] != client.sent[0]
    mine = LosingClient()
    call_service(mine, QueryScene.Request(question="q?", request_id="mine"), timeout=5, attempt_timeout=0.1,
                 executor=FakeExecutor())
    assert set(mine.sent) == {"mine"}
