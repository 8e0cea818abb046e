"""What a user can hit that test_end_to_end.py leaves out, through a real runner process over Fast DDS:
the answer timeout, latents of the wrong width, questions waiting at deactivation, max_new_tokens=0,
a frame that waits for late IMU samples (sync.max_wait_s), and a run-time fusion.alpha change.

One runner (both nodes) with settings that make these cheap: a short answer_timeout_s (set at run
time), a tiny max_new_tokens default, a long sync.max_wait_s. The reasoning tests publish their own
scene latents (the perception node gets no frames until the perception tests), so the latest scene is
known.
"""

from __future__ import annotations

import array
import time

import numpy as np
import pytest
from node_harness import (
    RosClient,
    call,
    diagnostics_of,
    set_parameter,
    stamp_ns,
    start_runner,
    wait_future,
    wait_until,
)

from frozen_vlm_perception.conversions import rgb_to_image, to_time_msg
from frozen_vlm_perception.tools.latency_probe import SensorStream

pytestmark = pytest.mark.slow

QUESTION = "What is the person doing?"
# SmolLM2 answers this with a list of numbers and no end-of-turn token for well over 300 tokens (about
# 16 tokens/s on one thread here): a question that outlasts the answer timeout.
LONG_QUESTION = "Write the numbers from one to five hundred."
ANSWER_TIMEOUT_S = 8.0  # set at run time by the timeout test
# The node's answer_timeout_s otherwise, and how long a test waits for an answer: a bound on a hang, not a
# latency (beside another make test the first answer after a reload took over 8 s; idle: about 1 s).
HANG_TIMEOUT_S = 240.0
DEFAULT_TOKENS = 3  # reasoning max_new_tokens: what a request asking for 0 gets
MAX_WAIT_S = 2.0  # perception sync.max_wait_s
LM_WIDTH, NUM_LATENTS = 576, 8  # SmolLM2-135M (the model_dir fixture)


@pytest.fixture(scope="module")
def system(model_dir, tmp_path_factory):
    params = {
        "perception": {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5,
                       "sync": {"max_wait_s": MAX_WAIT_S}},
        "reasoning": {"model_dir": str(model_dir), "torch_threads": 1, "diagnostics_period_s": 0.5,
                      "max_new_tokens": DEFAULT_TOKENS, "queue_size": 2,
                      "answer_timeout_s": HANG_TIMEOUT_S},
    }
    child = start_runner(tmp_path_factory.mktemp("runner"), params)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def ros(system):
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.srv import ChangeState
    from rclpy.action import ActionClient
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image, Imu

    from frozen_vlm_perception_interfaces.action import AskScene
    from frozen_vlm_perception_interfaces.msg import ActivityLabel, SceneLatents
    from frozen_vlm_perception_interfaces.srv import QueryScene

    client = RosClient("user_paths_client")
    node = client.node
    client.labels = client.collect(ActivityLabel, "/perception/activity")
    client.diagnostics = client.collect(DiagnosticArray, "/diagnostics")
    client.query = node.create_client(QueryScene, "/reasoning/query")
    client.ask = ActionClient(node, AskScene, "/reasoning/ask")
    client.change_state = node.create_client(ChangeState, "/reasoning/change_state")
    client.latents_pub = node.create_publisher(SceneLatents, "/perception/latents", 10)
    client.camera_pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=10))
    client.imu_pub = node.create_publisher(Imu, "/imu/data", QoSProfile(depth=1000))
    assert client.ask.wait_for_server(timeout_sec=20)
    wait_until(lambda: client.latents_pub.get_subscription_count() >= 1, 20, "reasoning subscribes")
    wait_until(lambda: client.camera_pub.get_subscription_count() >= 1
               and client.imu_pub.get_subscription_count() >= 1, 20, "perception subscribes")
    yield client
    client.ask.destroy()
    client.close()


def wait_status(ros, node: str, predicate, timeout: float = 15.0) -> dict[str, str]:
    """The first status of ``node`` published from now on for which ``predicate`` holds."""
    since = time.time()
    return wait_until(lambda: next((d for d in diagnostics_of(ros, node, since) if predicate(d)), None),
                      timeout, f"a {node} status as wanted")


def scene_latents(stamp_s: float, dim: int = LM_WIDTH, seed: int = 0):
    from frozen_vlm_perception_interfaces.msg import SceneLatents

    values = np.random.default_rng(seed).normal(0.0, 0.02, (NUM_LATENTS, dim)).astype(np.float32)
    msg = SceneLatents(num_latents=NUM_LATENTS, dim=dim, modalities=["vision"])
    msg.header.stamp = to_time_msg(stamp_s)
    msg.data = array.array("f", values.tobytes())
    msg.pooled = array.array("f", bytes(4 * 1280))
    return msg


def ask(ros, max_new_tokens: int, timeout: float = HANG_TIMEOUT_S):
    """The action: (feedback list, result, wall seconds)."""
    from frozen_vlm_perception_interfaces.action import AskScene

    feedback: list = []
    start = time.monotonic()
    goal = AskScene.Goal(question=QUESTION, max_new_tokens=max_new_tokens)
    sent = ros.ask.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback))
    handle = wait_future(sent, 20)
    assert handle.accepted
    result = wait_future(handle.get_result_async(), timeout).result
    return feedback, result, time.monotonic() - start


def query(ros, max_new_tokens: int = DEFAULT_TOKENS, timeout: float = HANG_TIMEOUT_S,
          question: str = QUESTION, **kwargs):
    from frozen_vlm_perception_interfaces.srv import QueryScene

    return call(ros.query, QueryScene.Request(question=question, max_new_tokens=max_new_tokens), timeout,
                **kwargs)


GOOD_STAMP = 1000.0  # the one valid scene of the reasoning tests


# --------------------------------------------------------------------------------------------------
# Reasoning


def test_latents_of_the_wrong_width_are_dropped_counted_and_the_node_keeps_answering(ros):
    ros.latents_pub.publish(scene_latents(GOOD_STAMP))
    wait_status(ros, "reasoning", lambda d: int(d.get("scenes_kept", 0)) == 1)
    for k in range(3):  # newer than the good scene: were they kept, a question would get one of them
        ros.latents_pub.publish(scene_latents(GOOD_STAMP + 1 + k, dim=LM_WIDTH // 2, seed=k))
    status = wait_status(ros, "reasoning", lambda d: int(d.get("drop:wrong_dim", 0)) >= 3)
    assert int(status["drop:wrong_dim"]) == 3 and int(status["scenes_kept"]) == 1, status
    reply = query(ros)
    assert reply.success, reply.message
    assert reply.answer.strip()
    assert stamp_ns(reply.scene_stamp) == int(GOOD_STAMP * 1e9)  # the good scene, the latest one kept


def test_max_new_tokens_zero_falls_back_to_the_parameter(ros):
    default_fb, default, _ = ask(ros, 0)
    explicit_fb, explicit, _ = ask(ros, DEFAULT_TOKENS)
    assert default.success and explicit.success, (default.message, explicit.message)
    # Greedy decoding of the same scene: asking for 0 is asking for the parameter's count.
    assert default.answer == explicit.answer and default.answer.strip()
    assert max(f.tokens_generated for f in default_fb) == max(f.tokens_generated for f in explicit_fb)
    assert max(f.tokens_generated for f in default_fb) <= DEFAULT_TOKENS


def test_a_resent_query_joins_its_question_and_is_never_answered_twice(ros):
    from frozen_vlm_perception_interfaces.srv import QueryScene

    def counts() -> dict[str, str]:
        return wait_status(ros, "reasoning", lambda d: d.get("questions_waiting") == "0"
                           and d.get("answering") == "False")

    before = counts()
    # What a client whose reply was late sends: the same request (same request_id) again, here three
    # times at once. queue_size is 2, so three new questions would be one answered, two waiting ...
    request = QueryScene.Request(question=QUESTION, max_new_tokens=DEFAULT_TOKENS, request_id="resent-1")
    replies = [wait_future(f, HANG_TIMEOUT_S) for f in [ros.query.call_async(request) for _ in range(3)]]
    assert all(r.success for r in replies), [r.message for r in replies]
    assert len({r.answer for r in replies}) == 1 and replies[0].answer.strip()
    # ... but it is one question: one generation, the other two attempts joined it.
    replayed = wait_future(ros.query.call_async(request), 20)  # answered already: the same answer again
    assert replayed.success and replayed.answer == replies[0].answer
    after = counts()
    assert int(after["answered"]) == int(before["answered"]) + 1, (before, after)
    assert int(after["retries_joined"]) == int(before.get("retries_joined", 0)) + 3, (before, after)
    # A careless client reusing the id for another question gets a clear refusal, not the old answer.
    other = QueryScene.Request(question="Where is the person?", max_new_tokens=DEFAULT_TOKENS,
                               request_id="resent-1")
    refused = wait_future(ros.query.call_async(other), 20)
    assert not refused.success and "different question" in refused.message, refused.message


def test_a_resent_goal_is_followed_not_asked_again(ros):
    import uuid

    from unique_identifier_msgs.msg import UUID

    from frozen_vlm_perception.nodes import query_client
    from frozen_vlm_perception_interfaces.action import AskScene

    def idle() -> dict[str, str]:
        return wait_status(ros, "reasoning", lambda d: d.get("questions_waiting") == "0"
                           and d.get("answering") == "False")

    before = idle()
    # The first attempt of a goal reached the node, its acceptance did not reach the client (here: a
    # goal sent from another client with the id the call then uses). The call's own attempt carries the
    # same id, so the node refuses it as a duplicate and the call follows the goal the node has.
    goal_id = uuid.uuid4().bytes
    goal = AskScene.Goal(question=QUESTION, max_new_tokens=12)
    first = wait_future(ros.ask.send_goal_async(goal, goal_uuid=UUID(uuid=list(goal_id))), 20)
    assert first.accepted
    partials: list[str] = []
    followed = query_client.ask(QUESTION, max_new_tokens=12, timeout=HANG_TIMEOUT_S, goal_id=goal_id,
                                on_partial=partials.append)
    original = wait_future(first.get_result_async(), HANG_TIMEOUT_S).result
    assert followed.success and followed.answer == original.answer and original.answer.strip()
    assert all(original.answer.startswith(p) for p in partials), (partials, original.answer)
    after = idle()
    assert int(after["answered"]) == int(before["answered"]) + 1, (before, after)  # one generation


def test_the_answer_timeout_fires_with_a_clear_error(ros):
    # Set at run time (applies to the next question); a value outside its range is refused.
    assert not set_parameter(ros, "reasoning", "answer_timeout_s", 0.0).successful
    assert set_parameter(ros, "reasoning", "answer_timeout_s", ANSWER_TIMEOUT_S).successful
    # 4000 tokens of SmolLM2 on one CPU thread take minutes: the timeout ends it.
    try:
        start = time.monotonic()
        reply = query(ros, max_new_tokens=4000, timeout=60.0, question=LONG_QUESTION, attempt_timeout=60.0)
        waited = time.monotonic() - start
    finally:
        assert set_parameter(ros, "reasoning", "answer_timeout_s", HANG_TIMEOUT_S).successful
    assert not reply.success and reply.answer == ""
    assert reply.message == f"timed out after {ANSWER_TIMEOUT_S} s", reply.message
    assert ANSWER_TIMEOUT_S * 0.9 <= waited <= ANSWER_TIMEOUT_S + 20.0, waited  # generous: 2 shared cores
    assert query(ros).success  # and the worker is free again


def test_questions_waiting_at_deactivation_are_answered_not_lost(ros):
    from action_msgs.msg import GoalStatus
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    from frozen_vlm_perception_interfaces.action import AskScene
    from frozen_vlm_perception_interfaces.srv import QueryScene

    # One question being answered (long: it would run into the timeout), two waiting behind it.
    answering = []
    goal = AskScene.Goal(question=LONG_QUESTION, max_new_tokens=4000)
    handle = wait_future(ros.ask.send_goal_async(goal, feedback_callback=answering.append), 20)
    assert handle.accepted
    wait_until(lambda: answering, 60.0, "the long answer started")
    waiting = [ros.query.call_async(QueryScene.Request(question=f"{QUESTION} ({i})", max_new_tokens=2))
               for i in range(2)]
    wait_status(ros, "reasoning", lambda d: d.get("questions_waiting") == "2", timeout=30.0)
    deactivate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
    assert call(ros.change_state, deactivate, 30, attempt_timeout=30).success
    try:
        for future in waiting:
            reply = wait_future(future, 60)
            assert not reply.success and reply.message == "the node was deactivated", reply.message
        outcome = wait_future(handle.get_result_async(), 60)
        assert outcome.status == GoalStatus.STATUS_ABORTED
        assert outcome.result.message == "the node was deactivated"
    finally:
        activate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))
        assert call(ros.change_state, activate, 60, attempt_timeout=60).success
    assert query(ros).success  # the scenes were kept; the reloaded model answers


# --------------------------------------------------------------------------------------------------
# Perception


def imu_msg(t: float):
    from sensor_msgs.msg import Imu

    msg = Imu()
    msg.header.stamp = to_time_msg(t)
    phase = 2 * np.pi * 1.8 * t
    msg.linear_acceleration.x = 0.3 * np.sin(phase)
    msg.linear_acceleration.z = 9.81 + 2.0 * np.sin(phase)
    msg.angular_velocity.y = 0.2 * np.cos(phase)
    return msg


def publish_imu(ros, start: float, end: float, rate_hz: float = 200.0) -> None:
    for k in range(int(round((end - start) * rate_hz)) + 1):
        ros.imu_pub.publish(imu_msg(start + k / rate_hz))
        if k % 50 == 49:
            time.sleep(0.01)  # paced a little: the node's IMU subscription keeps 100


def test_a_frame_waits_for_late_imu_samples_within_max_wait(ros):
    frame_t = time.time() - 50.0  # older than the live stream of the next test: no clock jump back
    since = time.time()
    publish_imu(ros, frame_t - 3.0, frame_t - 0.2)  # the window up to the frame is not complete yet
    ros.camera_pub.publish(rgb_to_image(np.full((60, 80, 3), 90, np.uint8), stamp=frame_t, frame_id="camera"))
    time.sleep(0.5)  # the frame waits at the node (for at most MAX_WAIT_S) while the IMU is late
    publish_imu(ros, frame_t - 0.195, frame_t + 0.05)
    labels = ros.labels.wait_for(
        lambda msgs: any(stamp_ns(m.header.stamp) == stamp_ns(to_time_msg(frame_t)) for m in msgs),
        timeout=MAX_WAIT_S + 15, since=since)
    (label,) = [m for m in labels if stamp_ns(m.header.stamp) == stamp_ns(to_time_msg(frame_t))]
    assert label.source == "fused"  # it waited for the late samples instead of falling back to vision


def test_a_fusion_alpha_change_applies_to_the_next_frames(ros):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = ros.node.create_client(SetParameters, "/perception/set_parameters")

    def set_alpha(value: float) -> None:
        param = Parameter("fusion.alpha", value=value).to_parameter_msg()
        assert call(client, SetParameters.Request(parameters=[param]), 10).results[0].successful

    stream = SensorStream(ros.node, camera_hz=15.0, imu_hz=200.0, width=160, height=120).start()
    try:
        ros.labels.wait_for(lambda msgs: sum(m.source == "fused" for m in msgs) >= 3, timeout=40,
                            since=time.time())
        before = wait_status(ros, "perception", lambda d: "period_vision_weight_mean" in d)
        assert float(before["fusion_alpha"]) == pytest.approx(0.5)  # the model folder's alpha
        set_alpha(0.3)
        changed = time.time()
        status = wait_status(ros, "perception", lambda d: "period_vision_weight_mean" in d
                             and float(d["fusion_alpha"]) == pytest.approx(0.3))
        # Every fused frame of a period after the change was weighed with the new alpha.
        after = wait_status(ros, "perception", lambda d: "period_vision_weight_mean" in d)
        for key in ("period_vision_weight_min", "period_vision_weight_max"):
            assert float(after[key]) == pytest.approx(0.3, abs=1e-3), (key, after)
        assert status["fusion_weighting"] == "fixed"
        ros.labels.wait_for(lambda msgs: sum(m.source == "fused" for m in msgs) >= 3, timeout=20,
                            since=changed)
    finally:
        set_alpha(-1.0)  # back to the model folder's
        stream.stop()
        ros.node.destroy_client(client)
