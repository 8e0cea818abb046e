"""Faults a perception node meets when it runs for days: a peer process killed, an IMU that goes silent
and a bag clock that jumps back, a bad model folder, the GPU out of memory.

(a) and (b) run against the split system (perception and reasoning in two runner processes, over Fast
DDS); (c) starts a runner of its own; (d) calls the node in this process (there is no GPU here, so
out-of-memory is injected into the pipeline's encode).
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
from node_harness import ChildProcess, RosClient, call, start_runner, wait_until
from reliability_harness import ANSWER_TIMEOUT_S, BagLoop, count, fresh_diagnostics, grew, statuses, write_bag

from frozen_vlm_perception.tools.latency_probe import SensorStream

pytestmark = pytest.mark.slow

QUESTION = "What is the person doing?"


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# --------------------------------------------------------------------------------------------------
# (a) the reasoning node killed mid-answer


def test_reasoning_killed_mid_answer_fails_clients_in_time_and_a_restart_serves(split, ros):
    from frozen_vlm_perception.nodes.query_client import QueryError, query

    timeout = 10.0
    stream = SensorStream(ros.node, camera_hz=15.0, imu_hz=200.0, width=160, height=120).start()
    try:
        ros.labels.wait_for(lambda msgs: len(msgs) >= 5, timeout=30, since=time.time())
        ros.diagnostics.wait_for(
            lambda _: any(count(d, "scenes_kept") > 0 for d in statuses(ros, "reasoning")), timeout=20
        )

        # Three clients keep the reasoning worker busy (one answering, two waiting, the rest "busy")
        # until each of them gets a failure; each records its calls as (start, end, outcome).
        calls: list[list[tuple[float, float, str]]] = [[] for _ in range(3)]
        stop = threading.Event()

        def client(i: int) -> None:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    reply = query(f"{QUESTION} ({i})", timeout=timeout, max_new_tokens=200)  # a long answer
                    outcome = "answered" if reply.success else f"refused: {reply.message}"
                except QueryError as err:
                    calls[i].append((start, time.monotonic(), f"QueryError: {err}"))
                    return
                calls[i].append((start, time.monotonic(), outcome))
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        since = time.time()
        ros.diagnostics.wait_for(
            lambda _: any(d.get("answering") == "True" for d in statuses(ros, "reasoning", since)), timeout=30
        )
        split.reasoning.proc.kill()  # SIGKILL: no cleanup, no goodbye to DDS
        split.reasoning.proc.wait(timeout=10)
        killed = time.monotonic()
        killed_wall = time.time()
        # The command-line client, started now, says so with exit code 2 (node not reachable).
        cli = ChildProcess(["-m", "frozen_vlm_perception.nodes.query_client", QUESTION, "--timeout", "5"])
        for t in threads:
            t.join(timeout=2 * timeout + 10)
        stop.set()
        assert not any(t.is_alive() for t in threads), "a client hangs after the reasoning node was killed"
        for i, record in enumerate(calls):
            start, end, outcome = record[-1]
            assert outcome.startswith("QueryError"), (i, record)
            # The client's own timeout must fire: a generous margin (two shared cores), far below a hang.
            assert end - start <= timeout + 10.0, f"client {i} waited {end - start:.1f} s, timeout {timeout}"
            assert "within the timeout" in outcome or "not available" in outcome, outcome
        in_flight = [r[-1] for r in calls if r[-1][0] < killed]
        # The one being answered (and any queued behind it) was sent and never answered; clients that had
        # not discovered the service yet when it died never see it ("not available").
        unanswered = [r for r in in_flight if "within the timeout" in r[2]]
        assert unanswered, f"no question was waiting for its answer when the node was killed: {calls}"
        assert cli.proc.wait(timeout=40) == 2, cli.output
        assert "error:" in cli.output
        print(
            f"\nkilled mid-answer: {len(unanswered)} question(s) sent and unanswered; last calls "
            + "; ".join(f"{r[-1][2][:60]}... after {r[-1][1] - r[-1][0]:.1f} s" for r in calls)
            + f"; earlier outcomes {[o[:20] for r in calls for _, _, o in r[:-1]]}; cli: {cli.output.strip()}"
        )

        # The perception node (the other process) never noticed: labels keep coming.
        ros.labels.wait_for(lambda msgs: len(msgs) >= 10, timeout=20, since=killed_wall)

        split.restart_reasoning()
        ros.diagnostics.wait_for(
            lambda _: any(count(d, "scenes_kept") > 0 for d in statuses(ros, "reasoning", time.time() - 1)),
            timeout=20,
        )
        reply = query(QUESTION, timeout=ANSWER_TIMEOUT_S, max_new_tokens=12)  # a bound on a hang
        assert reply.success, reply.message
        assert reply.answer.strip()
        after_kill = len(ros.labels.messages(killed_wall))
        print(
            f"labels from the perception process since the kill: {after_kill}; restarted node answered "
            f"{reply.answer!r} in {reply.latency:.2f} s"
        )
    finally:
        stream.stop()


# --------------------------------------------------------------------------------------------------
# (b) the IMU silent for longer than a window, and the bag clock jumping back (a looping bag)


def test_imu_gap_longer_than_a_window_and_a_looping_bag_clock(split, ros, tmp_path):
    # 14 s recording, IMU missing from 6.5 s to 9.5 s (longer than the 2.54 s window); played at twice
    # the speed and looped, so the stamps jump back 14 s at every loop. Fused labels are possible from
    # 2.54 s to 6.5 s and from 12.04 s on: ~2 s and ~1 s of wall time, enough for a loaded machine that
    # labels a fraction of the frames (with 0.9 s before the gap, a pair of make tests saw none fused).
    gap = (6.5, 9.5)
    bag = write_bag(tmp_path / "bag", seconds=14.0, camera_hz=15.0, imu_hz=100.0, imu_gaps=(gap,))
    base = bag["base_ns"]

    def rel(msg) -> float:
        return (stamp_ns(msg.header.stamp) - base) * 1e-9

    def passes(msgs) -> list[list]:
        """Labels of the bag split where the stamps jump back (one list per pass)."""
        out: list[list] = []
        for m in msgs:
            if not 0 <= rel(m) <= bag["seconds"]:
                continue  # a label of a frame from before the bag
            if not out or rel(m) < rel(out[-1][-1]):
                out.append([])
            out[-1].append(m)
        return out

    before = fresh_diagnostics(ros, "perception")
    since = time.time()
    with BagLoop(tmp_path / "bag", rate=2.0):
        # Three passes seen = the second one (which began with a clock jump) was played in full.
        ros.labels.wait_for(lambda msgs: len(passes(msgs)) >= 3, timeout=90, since=since)
    after = fresh_diagnostics(ros, "perception")
    received = [(t, m) for t, m in ros.labels.items if t >= since]
    labels = [m for _, m in received]
    second = passes(labels)[1]
    sources = [(round(rel(m), 2), m.source) for m in second]

    # Labels keep coming through the gap and across the jump (the gap itself is checked below by stamps:
    # labels inside it); the wall-clock hole bound is only a generous stall check (the gap lasts 1.5 s).
    times = [t for t, m in received if 0 <= rel(m) <= bag["seconds"]]
    assert max(np.diff(times)) < 5.0, f"labels stopped for {max(np.diff(times)):.1f} s"
    # After the jump back the buffer starts over: vision-only until a window is covered, then fused.
    assert any(m.source == "fused" and rel(m) < gap[0] for m in second), sources
    # Inside the gap: vision-only. After the gap: fused again once the window no longer spans it.
    in_gap = [m for m in second if gap[0] + 0.6 < rel(m) < gap[1]]
    assert in_gap and {m.source for m in in_gap} == {"vision"}, sources
    assert any(m.source == "fused" and rel(m) > gap[1] for m in second), sources

    # /diagnostics tells the truth: every jump back is a clock reset, and each fallback has its reason.
    loops = len(passes(labels)) - 1
    resets = count(after, "drop:imu:clock_reset") - count(before, "drop:imu:clock_reset")
    assert loops <= resets <= loops + 2, (loops, grew(before, after, "drop:"))
    fallbacks = grew(before, after, "vision_fallback:")
    for reason in ("imu_silent", "gap", "insufficient_coverage"):
        assert fallbacks.get(f"vision_fallback:{reason}", 0) > 0, fallbacks
    assert count(after, "frames_labelled") > count(before, "frames_labelled")
    assert any(d["_message"].startswith("IMU unusable") for d in statuses(ros, "perception", since))
    print(
        f"\n{len(labels)} labels over {loops} loop(s), longest pause {max(np.diff(times)):.2f} s; "
        f"clock resets {resets}; fallbacks {fallbacks}; sources in pass 2: "
        f"{dict(zip(*np.unique([m.source for m in second], return_counts=True), strict=True))}"
    )


# --------------------------------------------------------------------------------------------------
# (c) a corrupted or mismatched model folder: configure fails clearly, nothing half-started


def bad_model_folders(model_dir, tmp_path) -> dict:
    corrupted = tmp_path / "corrupted"
    shutil.copytree(model_dir, corrupted)
    weights = corrupted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    mismatched = tmp_path / "mismatched"
    shutil.copytree(model_dir, mismatched)
    document = json.loads((mismatched / "config.json").read_text())
    document["model"]["labels"] = ["sitting", "standing", "walking"]  # another head than the weights
    (mismatched / "config.json").write_text(json.dumps(document))
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"corrupted": corrupted, "mismatched": mismatched, "file": weights, "empty": empty}


def test_bad_checkpoint_fails_configure_cleanly_and_a_good_one_works(ros_env, model_dir, tmp_path):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    bad = bad_model_folders(model_dir, tmp_path)
    params = {"perception": {"model_dir": str(bad["corrupted"]), "autostart": False, "torch_threads": 1}}
    child = start_runner(tmp_path, params, "--nodes", "perception")  # ros_env: a domain of its own
    client = RosClient("checkpoint_client")
    stream = None
    try:
        node = client.node
        change = node.create_client(ChangeState, "/perception/change_state")
        get = node.create_client(GetState, "/perception/get_state")
        setp = node.create_client(SetParameters, "/perception/set_parameters")
        for c in (change, get, setp):
            assert c.wait_for_service(timeout_sec=20)
        labels = client.collect(ActivityLabel, "/perception/activity")

        def configure_with(folder) -> tuple[bool, str]:
            if folder is not None:
                param = Parameter("model_dir", value=str(folder)).to_parameter_msg()
                assert call(setp, SetParameters.Request(parameters=[param]), 10).results[0].successful
            mark = len(child.lines)
            ok = call(
                change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)), 60
            ).success
            return ok, mark

        def log_since(mark: int, *needles: str) -> str:
            """The child's output from ``mark`` once it holds every needle (the log may trail the
            response; bounded), else as it is."""
            try:
                wait_until(lambda: all(n in "".join(child.lines[mark:]) for n in needles), 10, "log lines")
            except AssertionError:
                pass  # the caller's assert shows what is there
            return "".join(child.lines[mark:])

        expected = {
            None: "is corrupted or not a safetensors file",  # the corrupted folder, from the params file
            "mismatched": "does not match: num_labels: checkpoint 6, model 3",
            "file": "is a file, not a model folder",
            "empty": "a folder without config.json",
        }
        for name, message in expected.items():
            ok, mark = configure_with(None if name is None else bad[name])
            assert not ok, f"{name}: configure succeeded"
            log = log_since(mark, "[ERROR]", message)
            assert "[ERROR]" in log and message in log, f"{name}: {log}"
            state = call(get, GetState.Request(), 10).current_state.id
            assert state == State.PRIMARY_STATE_UNCONFIGURED
            # Nothing half-started: no publisher, no subscription, the process still there.
            assert node.count_publishers("/perception/activity") == 0
            assert node.count_subscribers("/camera/image_raw") == 0
            assert child.proc.poll() is None

        ok, mark = configure_with(model_dir)
        assert ok, log_since(mark)
        # The same graph query now sees the publisher (it can see).
        wait_until(lambda: node.count_publishers("/perception/activity") > 0, 10, "publisher after configure")
        activate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))
        assert call(change, activate, 30).success
        assert call(get, GetState.Request(), 10).current_state.id == State.PRIMARY_STATE_ACTIVE
        stream = SensorStream(node, camera_hz=15.0, imu_hz=200.0, width=160, height=120).start()
        labels.wait_for(lambda msgs: len(msgs) >= 3, timeout=30)
    finally:
        if stream is not None:
            stream.stop()
        client.close()
        assert child.stop() == 0, child.output[-3000:]


def test_an_unexpected_error_mid_configure_is_logged_and_leaves_nothing_behind(ros_env, model_dir, capfd):
    """rclpy turns an exception in a transition into ERROR silently; the node logs it and on_error
    cleans up: no publisher, no subscription, no model; a later configure works."""
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode

    context = Context()
    rclpy.init(context=context)
    node = PerceptionNode(context=context, parameter_overrides=[Parameter("model_dir", value=str(model_dir))])
    try:
        real = node.create_subscription
        node.create_subscription = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no more handles"))
        assert node.trigger_configure() == R.ERROR  # the publishers exist by then, the model is loaded
        assert node.pipeline is None and node._pub_activity is None
        assert [p.topic_name for p in node.publishers] == ["/parameter_events"] and not list(
            node.subscriptions
        )
        log = capfd.readouterr().err
        assert "on_configure failed: RuntimeError: no more handles" in log, log
        node.create_subscription = real
        assert node.trigger_configure() == R.SUCCESS
        assert len(list(node.subscriptions)) == 3  # camera, IMU, answered questions (for the overlay)
    finally:
        node.release()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


# --------------------------------------------------------------------------------------------------
# (d) GPU out of memory, injected


OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"


def fail_first(pipeline, times: int) -> list:
    """Make the pipeline's next ``times`` encodes raise out-of-memory; returns the calls made."""
    import torch

    real, calls = pipeline.encode, []

    def encode(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise torch.OutOfMemoryError(OOM)
        return real(*args, **kwargs)

    pipeline.encode = encode
    return calls


IN_PROCESS_WAIT_S = 120.0  # a bound on a hang for the in-process workers below, not a latency


def in_process_node(node_class, context, **params):
    from rclpy.parameter import Parameter

    return node_class(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


class FrameFeeder:
    """Hands the perception node one frame at a time, each taken by the worker before the next."""

    def __init__(self, node):
        self.node, self.stamp = node, 1.0
        self.frame = np.zeros((48, 64, 3), np.uint8)

    def handled(self) -> int:
        return self.node.counters.get("frames_labelled") + self.node.counters.get("drop:inference_error:oom")

    def feed(self, frames: int = 1) -> None:
        from frozen_vlm_perception.conversions import rgb_to_image

        for _ in range(frames):
            done = self.handled()
            self.stamp += 0.1
            self.node._on_image(rgb_to_image(self.frame, stamp=self.stamp))
            wait_until(lambda done=done: self.handled() > done, IN_PROCESS_WAIT_S)


def test_out_of_memory_is_counted_and_repeated_cuda_oom_falls_back_to_the_cpu(
    context, model_dir, monkeypatch, capfd
):
    import torch
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    node = in_process_node(PerceptionNode, context, model_dir=str(model_dir), device="cpu",
                           **{"fusion.mode": "vision", "oom_cpu_fallback_after": 3})  # fmt: skip
    frames = FrameFeeder(node)
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS

        # On the CPU: two frames run out of memory; counted, logged, and the next frames are served.
        fail_first(node.pipeline, 2)
        frames.feed(4)
        assert node.counters.get("drop:inference_error:oom") == 2
        assert node.counters.get("frames_labelled") == 2
        assert node.counters.get("drop:inference_error") == 0  # not lumped with other errors
        assert node.pipeline.device.type == "cpu" and not emptied  # nothing to empty on the CPU
        level, message, values = node.diagnostics()
        assert level == "error" and "out of memory" in message
        assert dict(values)["drop:inference_error:oom"] == 2

        # "On CUDA" (the device is faked: no GPU here): every OOM empties the cache; the third in a row
        # moves the model to the CPU, and frames are labelled again.
        cuda_pipeline = node.pipeline
        cuda_pipeline.device = torch.device("cuda")
        fail_first(cuda_pipeline, 1000)
        frames.feed(3)
        wait_until(lambda: node.counters.get("device_fallback:cpu") == 1, IN_PROCESS_WAIT_S)
        assert len(emptied) >= 3
        assert node.pipeline is not cuda_pipeline and node.pipeline.device.type == "cpu"
        labelled = node.counters.get("frames_labelled")
        frames.feed()
        assert node.counters.get("frames_labelled") == labelled + 1
        assert node.counters.get("drop:inference_error:oom") == 5
        node.diagnostics()  # the period with the OOMs
        frames.feed()
        level, message, values = node.diagnostics()
        assert level == "warn" and "CPU after repeated out-of-memory" in message, message
        assert dict(values)["device"] == "cpu" and dict(values)["device_fallback:cpu"] == 1
    finally:
        node.release()
        node.destroy_node()
    log = capfd.readouterr().err
    assert "out of memory on cpu" in log and "out of memory on cuda" in log, log[-3000:]
    assert "reloading the model on the CPU" in log, log[-3000:]


def test_a_failed_cpu_fallback_is_counted_and_tried_again_after_another_round(
    context, model_dir, monkeypatch, capfd
):
    """The host is short of memory too: loading the CPU copy fails. The node says so, counts it, keeps
    the CUDA model (frames keep being tried there) and attempts the fallback again only after another
    ``oom_cpu_fallback_after`` errors in a row; once the host has room, the fallback succeeds."""
    import torch
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    node = in_process_node(PerceptionNode, context, model_dir=str(model_dir), device="cpu",
                           **{"fusion.mode": "vision", "oom_cpu_fallback_after": 3})  # fmt: skip
    frames = FrameFeeder(node)
    real_load, host_full, loads = PerceptionPipeline.from_model_dir, [True], []

    def load(*args, **kwargs):
        loads.append(kwargs.get("device"))
        if host_full[0]:
            raise MemoryError("host out of memory (injected)")
        return real_load(*args, **kwargs)

    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        monkeypatch.setattr(PerceptionPipeline, "from_model_dir", load)
        cuda_pipeline = node.pipeline
        cuda_pipeline.device = torch.device("cuda")
        fail_first(cuda_pipeline, 1000)

        frames.feed(3)  # the third OOM in a row tries the CPU, which fails
        wait_until(lambda: node.counters.get("device_fallback_failed") == 1, IN_PROCESS_WAIT_S)
        assert loads == ["cpu"]
        assert node.pipeline is cuda_pipeline and node.counters.get("device_fallback:cpu") == 0
        assert "cannot fall back to the CPU (MemoryError: host out of memory" in capfd.readouterr().err
        frames.feed(2)  # a new round: no attempt before its third OOM
        assert loads == ["cpu"]
        frames.feed()
        wait_until(lambda: node.counters.get("device_fallback_failed") == 2, IN_PROCESS_WAIT_S)
        assert loads == ["cpu", "cpu"]

        host_full[0] = False
        frames.feed(3)
        wait_until(lambda: node.counters.get("device_fallback:cpu") == 1, IN_PROCESS_WAIT_S)
        assert node.pipeline is not cuda_pipeline and node.pipeline.device.type == "cpu"
        assert node.counters.get("drop:inference_error:oom") == 9
        labelled = node.counters.get("frames_labelled")
        frames.feed()  # labelled on the CPU copy
        assert node.counters.get("frames_labelled") == labelled + 1
    finally:
        node.release()
        node.destroy_node()


def test_out_of_memory_while_answering_fails_that_question_and_the_next_is_answered(
    context, model_dir, monkeypatch, capfd
):
    """The LM runs out of memory mid-answer: that caller gets a clear failure at once, the error is
    counted and logged, CUDA's cache is emptied, and the worker lives on to answer the next question."""
    import torch
    from builtin_interfaces.msg import Time
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from frozen_vlm_perception.nodes.reasoning_node import ReasoningNode
    from frozen_vlm_perception_interfaces.msg import SceneLatents

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    # The generating thread runs at nice 19: beside another make test 4 tokens outlasted 60 s, so the
    # node's own deadline and the wait below bound a hang, not a latency.
    node = in_process_node(ReasoningNode, context, model_dir=str(model_dir), device="cpu",
                           answer_timeout_s=float(ANSWER_TIMEOUT_S))  # fmt: skip
    try:
        assert node.trigger_configure() == R.SUCCESS
        assert node.trigger_activate() == R.SUCCESS
        pipeline = node.pipeline
        width = pipeline.language.hidden_size
        scene = SceneLatents(num_latents=8, dim=width, data=np.zeros(8 * width, np.float32).tolist())
        scene.header.stamp = Time(sec=5)
        node._on_latents(scene)
        real_answer = pipeline.answer

        def out_of_memory(*args, **kwargs):
            pipeline.device = torch.device("cuda")  # as if it ran there ("no GPU here": faked)
            raise torch.OutOfMemoryError(OOM)

        def ask():
            job = node._prepare(QUESTION, Time(), 4)
            assert not isinstance(job, str), job
            assert node._submit(job) == ""
            wait_until(lambda: job.outcome is not None, ANSWER_TIMEOUT_S, "the answer")
            return job.outcome

        pipeline.answer = out_of_memory
        failed = ask()
        assert not failed.success
        assert failed.message.startswith("failed: OutOfMemoryError: CUDA out of memory"), failed.message
        assert node.counters.get("failed:oom") == 1
        wait_until(lambda: emptied, IN_PROCESS_WAIT_S, "CUDA cache emptied after the failed answer")
        pipeline.device, pipeline.answer = torch.device("cpu"), real_answer
        answered = ask()
        assert answered.success and answered.answer.strip(), answered
        assert node.counters.get("failed:oom") == 1 and node._worker.is_alive()
    finally:
        node.release()
        node.destroy_node()
    assert "out of memory while answering: CUDA out of memory" in capfd.readouterr().err
