"""Ask the reasoning node a question from another process (what ``fvp query`` calls).

    response = query("What is the person doing?")              # QueryScene.Response
    result = ask("What is the person doing?", on_partial=print)  # AskScene.Result, answer streamed

Both run in a private rclpy Context, so they work inside programs that use rclpy themselves, and
raise :class:`QueryError` when the service/action is not there or does not answer in time; a
question the node refuses comes back as a response with ``success`` false and a ``message``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_SERVICE = "/reasoning/query"
DEFAULT_ACTION = "/reasoning/ask"
NOT_THERE = "is the reasoning node running and active, in the same ROS_DOMAIN_ID?"
EPILOG = (
    "Prints the answer, then its grounding (agrees / contradicts / unchecked against the activity head "
    "of the same scene) and a WARNING line when the answer is flagged: it names an activity the head "
    "gave less than the node's grounding_min_probability. Exit status: 0 answered (also when the answer "
    "is flagged: it is still an answer), 1 refused or failed, 2 the node could not be reached."
)
_sessions = itertools.count()  # node names unique per call, also for concurrent calls from threads


class QueryError(RuntimeError):
    """The service or action could not be reached or did not answer within the timeout."""


def _time_msg(stamp: Any):
    from frozen_vlm_perception.conversions import to_time_msg

    return to_time_msg(0 if stamp is None else stamp)


class _Session:
    """rclpy context + node for one call, torn down whatever happens."""

    def __init__(self, ros_args: Sequence[str] = ()):
        import rclpy
        from rclpy.context import Context

        self.rclpy = rclpy
        self.context = Context()
        rclpy.init(args=["fvp-query", "--ros-args", *ros_args], context=self.context)  # never sys.argv
        self.node = rclpy.create_node(f"fvp_query_{os.getpid()}_{next(_sessions)}", context=self.context)
        self._executor = None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.remove_node(self.node)
            self._executor.shutdown(timeout_sec=0.1)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)

    def executor(self):
        """A single-threaded executor for this session's node, spun by the caller (service_call)."""
        from rclpy.executors import SingleThreadedExecutor

        if self._executor is None:
            self._executor = SingleThreadedExecutor(context=self.context)
            self._executor.add_node(self.node)
        return self._executor


def _no_answer(what: str, timeout: float) -> QueryError:
    return QueryError(f"no answer from {what} within the timeout ({timeout:g} s): the node may have stopped "
                      "or crashed, or it is overloaded")


def _not_busy(response) -> bool:
    """A retry refused as "busy" while the first attempt still waits in the node's queue ends nothing:
    the first attempt's answer is still to come (a refusal is returned when nothing else is)."""
    return response.success or not response.message.startswith("busy")


def query(
    question: str,
    *,
    stamp: Any = None,
    timeout: float = 10.0,
    max_new_tokens: int = 0,
    service: str = DEFAULT_SERVICE,
    ros_args: Sequence[str] = (),
    attempt_timeout: float | None = None,
):
    """Call QueryScene; returns its response. ``stamp``: None/0 = latest scene, else seconds or a Time.

    Waits for the service, then asks; a request not answered within ``attempt_timeout`` (default a
    third of ``timeout``) is sent again (``service_call.py``: an answer can be lost right after
    discovery). Safe: a query only reads the scene, so the node answering it twice changes nothing.
    """
    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, ServiceUnavailable, call_service
    from frozen_vlm_perception_interfaces.srv import QueryScene

    with _Session(ros_args) as session:
        client = session.node.create_client(QueryScene, service)
        request = QueryScene.Request(question=question, stamp=_time_msg(stamp), max_new_tokens=max_new_tokens)
        try:
            return call_service(client, request, timeout=timeout, attempt_timeout=attempt_timeout,
                                executor=session.executor(), accept=_not_busy)
        except ServiceUnavailable as err:
            raise QueryError(f"service {service} is not available ({NOT_THERE})") from err
        except ServiceTimeout as err:
            raise _no_answer(service, timeout) from err


def ask(
    question: str,
    *,
    stamp: Any = None,
    timeout: float = 30.0,
    max_new_tokens: int = 0,
    on_partial: Callable[[str], None] | None = None,
    action: str = DEFAULT_ACTION,
    ros_args: Sequence[str] = (),
    attempt_timeout: float | None = None,
    goal_id: bytes | None = None,
):
    """Send an AskScene goal; returns its result (``on_partial`` gets the answer so far as it grows).

    The goal and the result request are retried like ``query`` (``service_call.py``). Every attempt
    carries one goal id (``goal_id``, 16 bytes, or a random one), so a retry whose first attempt did
    reach the node is not a second question: the action server refuses a goal id it already has, and
    this call then follows that goal (its feedback and result). A refusal of an id the node does not
    hold raises QueryError. A goal that runs past ``timeout`` is canceled before QueryError is raised.
    """
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient
    from rclpy.action.client import ClientGoalHandle
    from unique_identifier_msgs.msg import UUID

    from frozen_vlm_perception.nodes.service_call import (
        ServiceTimeout,
        default_attempt_timeout,
        retry_future,
        wait_until_ready,
    )
    from frozen_vlm_perception_interfaces.action import AskScene

    deadline = time.monotonic() + timeout
    attempt_timeout = attempt_timeout or default_attempt_timeout(timeout)
    goal_uuid = UUID(uuid=list(goal_id if goal_id is not None else uuid.uuid4().bytes))
    with _Session(ros_args) as session:
        client = ActionClient(session.node, AskScene, action)
        executor = session.executor()
        try:
            if not wait_until_ready(client.server_is_ready, deadline):
                raise QueryError(f"action {action} is not available ({NOT_THERE})")
            goal = AskScene.Goal(question=question, stamp=_time_msg(stamp), max_new_tokens=max_new_tokens)

            def feedback(msg) -> None:  # the client passes on only this goal id's feedback
                if on_partial is not None:
                    on_partial(msg.feedback.partial_answer)

            try:
                sent = retry_future(
                    lambda: client.send_goal_async(goal, feedback_callback=feedback, goal_uuid=goal_uuid),
                    deadline=deadline, attempt_timeout=attempt_timeout, executor=executor, what=action)
            except ServiceTimeout as err:
                raise _no_answer(action, timeout) from err
            handle = sent.result()
            # The reasoning node accepts every goal (refusals come back as a result with a message);
            # rclpy's action server refuses one whose id it already holds. Follow that goal: its result
            # request answers STATUS_UNKNOWN when the node holds no such goal.
            refused = not handle.accepted
            if refused:
                held = AskScene.Impl.SendGoalService.Response(accepted=True)
                handle = ClientGoalHandle(client, goal_uuid, held)
            try:
                # Fetching a goal's result again is idempotent: the server keeps it for a while.
                done = retry_future(handle.get_result_async, deadline=deadline,
                                    attempt_timeout=attempt_timeout, executor=executor, what=action)
            except ServiceTimeout as err:
                handle.cancel_goal_async()
                raise _no_answer(action, timeout) from err
            if refused and done.result().status == GoalStatus.STATUS_UNKNOWN:
                raise QueryError(f"{action} rejected the goal")
            return done.result().result
        finally:
            client.destroy()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frozen_vlm_perception.nodes.query_client",
                                     description="Ask the reasoning node a question about the scene.",
                                     epilog=EPILOG)
    add_query_arguments(parser)
    return main_query(parser.parse_args(argv))


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    """The query's flags, for this module's command line and ``fvp query`` alike."""
    parser.add_argument("question")
    parser.add_argument("--stamp", type=float, default=None,
                        help="scene nearest this time (s); default latest")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the node's default")
    parser.add_argument("--stream", action="store_true",
                        help="use the action and print the answer as it grows")


def grounding_lines(reply: Any) -> list[str]:
    """What ``fvp query`` prints after an answer (a QueryScene response or an AskScene result)::

        grounding: agrees (names walking (p 0.93))
        grounding: contradicts (names walking (p 0.02), below 0.10)
        WARNING: answer flagged: it names an activity the activity head of the scene finds unlikely
    """
    lines = [f"grounding: {reply.grounding} ({reply.grounding_note})" if reply.grounding_note
             else f"grounding: {reply.grounding}"]
    if reply.flagged:
        lines.append("WARNING: answer flagged: it names an activity the activity head of the scene finds "
                     "unlikely")
    return lines


def main_query(args: argparse.Namespace) -> int:
    """``fvp query``: print the answer and its grounding (stdout); exit 0 answered (also when the
    answer is flagged: it is an answer), 1 refused or failed, 2 node not reachable.

    ``args``: the flags of :func:`add_query_arguments`.
    """
    try:
        if args.stream:
            printed = [0]

            def show(text: str) -> None:
                print(text[printed[0]:], end="", flush=True)
                printed[0] = len(text)

            reply = ask(args.question, stamp=args.stamp, timeout=args.timeout,
                        max_new_tokens=args.max_new_tokens, on_partial=show)
            print()
        else:
            reply = query(args.question, stamp=args.stamp, timeout=args.timeout,
                          max_new_tokens=args.max_new_tokens)
            if reply.success:
                print(reply.answer)
    except QueryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not reply.success:
        print(f"error: {reply.message}", file=sys.stderr)
        return 1
    print("\n".join(grounding_lines(reply)), flush=True)
    print(f"(activity: {reply.activity} {reply.confidence:.2f}, scene stamp "
          f"{reply.scene_stamp.sec}.{reply.scene_stamp.nanosec:09d}, {reply.latency:.2f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
