"""Measure the nodes from another process: label latency, share of frames labelled, answer latency.

    python -m frozen_vlm_perception.tools.latency_probe [--duration 20] [--param torch_threads:=0]

Starts the runner (both nodes) as a child process, publishes a synthetic camera (640x480 rgb8 at
30 Hz) and IMU (200 Hz) from this process, stamped with the wall clock at publishing, and measures:

* label latency: camera stamp -> ActivityLabel received here (p50/p90/p99/max), and the share of
  published frames that got a label (the rest were superseded while the model was busy);
* the perception node's own per-stage times (from its /diagnostics);
* answers: QueryScene round trips one at a time and two at once, and while an AskScene goal is
  being generated, how the reasoning node's executor keeps up (get_state round trip, scenes per
  second it still receives) - the point of its executor arrangement.

:func:`probe` returns everything as a dict (what the bench calls); :func:`main` prints a table.

It chose the nodes' executor arrangement; the rejected one (a MultiThreadedExecutor per node with
blocking callbacks) has left the code. Measured then on the 2-core development machine (untrained
model of the default config: MobileNetV2 + resampler, SmolLM2-135M; 30 s per arrangement; the
machine was shared, so absolute numbers vary by run, the ordering did not in four paired runs):

    arrangement                         labelled  p50 ms  p99 ms  2 questions at once  scenes/s at reasoning
    SingleThreadedExecutor per node     67%       68      175     2.5 / 5.6 s           9-13 while answering
    MultiThreadedExecutor(2) per node   27%       133     591     4.3 / 9.4 s           4-6 while answering
    (both with torch_threads 1; with torch's default of 2 threads: 41% / 102 / 240 and 17% / 145 / 1016)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from frozen_vlm_perception.config import STANDARD_GRAVITY
from frozen_vlm_perception.conversions import stamp_to_ns
from frozen_vlm_perception.nodes.runner import READY_LINE
from frozen_vlm_perception.questions import STANDARD_QUESTION
from frozen_vlm_perception.tools.harness import READY_TIMEOUT_S, NodeProcess, percentiles, runner_command


def ensure_model(model_dir: str | None, tmp: str) -> str:
    """``model_dir``, else the shipped models/demo, else a freshly initialised model (same compute cost)."""
    from frozen_vlm_perception.paths import DEFAULT_MODEL_DIR, resolve_model_dir

    try:
        return str(resolve_model_dir(model_dir or DEFAULT_MODEL_DIR))
    except FileNotFoundError:
        if model_dir:
            raise
    from frozen_vlm_perception.config import ModelConfig
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    path = Path(tmp) / "untrained-model"
    PerceptionPipeline.from_config(ModelConfig(), device="cpu", lm_dim=576).save(path)
    return str(path)


class SensorStream:
    """Publishes camera frames and IMU samples on a schedule from a thread of its own.

    Every message is stamped with the wall clock when it is published, so (receive time - stamp)
    in another process on the same machine is the end-to-end latency. ``camera_qos`` / ``imu_qos``:
    the publishers' QoS profiles (default reliable, depth 2 / 100), e.g. SensorDataQoS like a driver.
    """

    def __init__(self, node, *, camera_hz: float = 30.0, imu_hz: float = 200.0, width: int = 640,
                 height: int = 480, camera_topic: str = "/camera/image_raw", imu_topic: str = "/imu/data",
                 camera_qos=None, imu_qos=None):
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image, Imu

        from frozen_vlm_perception.conversions import rgb_to_image

        self.camera_hz, self.imu_hz = camera_hz, imu_hz
        self.camera = node.create_publisher(Image, camera_topic, camera_qos or QoSProfile(depth=2))
        self.imu = node.create_publisher(Imu, imu_topic, imu_qos or QoSProfile(depth=100))
        yy, xx = np.mgrid[0:height, 0:width]
        rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                        np.full_like(xx, 128)], axis=-1).astype(np.uint8)
        self.rgb = rgb  # the frame every camera message carries
        self._image = rgb_to_image(rgb, stamp=0.0, frame_id="camera")  # one message, re-stamped each time
        self._imu_msg = Imu()
        self._imu_msg.header.frame_id = "imu"
        self.published: dict[int, float] = {}  # camera stamp (ns) -> publish time
        self.imu_count = 0
        self.imu_enabled = True  # False: the IMU goes silent (camera frames continue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-stream", daemon=True)

    def stamps(self) -> dict[int, float]:
        """A copy of {camera stamp ns: publish time} (safe while the stream runs)."""
        return self.published.copy()

    def start(self) -> SensorStream:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop publishing (a stream never started has nothing to stop)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        from frozen_vlm_perception.conversions import to_time_msg

        start = time.time()
        next_cam, next_imu = start, start
        while not self._stop.is_set():
            due = min(next_cam, next_imu)
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            stamp = to_time_msg(now)
            if next_imu <= next_cam:
                msg = self._imu_msg
                msg.header.stamp = stamp
                phase = 2 * np.pi * 1.8 * now  # a walking-like 1.8 Hz bounce
                msg.linear_acceleration.x = 0.3 * np.sin(phase)
                msg.linear_acceleration.z = STANDARD_GRAVITY + 2.0 * np.sin(phase)
                msg.angular_velocity.y = 0.2 * np.cos(phase)
                if self.imu_enabled:
                    self.imu.publish(msg)
                    self.imu_count += 1
                next_imu += 1.0 / self.imu_hz
            else:
                self._image.header.stamp = stamp
                self.published[stamp_to_ns(stamp)] = now
                self.camera.publish(self._image)
                next_cam += 1.0 / self.camera_hz


def probe(
    *,
    duration_s: float = 20.0,
    warmup_s: float = 4.0,
    camera_hz: float = 30.0,
    imu_hz: float = 200.0,
    width: int = 640,
    height: int = 480,
    model_dir: str | None = None,
    questions: bool = True,
    params: Sequence[str] = (),
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> dict[str, Any]:
    """Run the runner in a child process and measure it (see the module doc).

    The runner reads the shipped config/perception.yaml; ``params`` are extra ``name:=value``
    overrides for both nodes (e.g. ``torch_threads:=0``).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    result: dict[str, Any] = {"params": list(params), "camera_hz": camera_hz,
                              "imu_hz": imu_hz, "image": f"{width}x{height} rgb8", "duration_s": duration_s}
    with tempfile.TemporaryDirectory(prefix="fvp-probe-") as tmp:
        model = ensure_model(model_dir, tmp)
        child = NodeProcess(runner_command(model_dir=model, params=params), READY_LINE, "the runner")
        context = Context()
        rclpy.init(args=["fvp-probe"], context=context)
        node = rclpy.create_node(f"fvp_probe_{os.getpid()}", context=context)
        spin = SingleThreadedExecutor(context=context)
        spin.add_node(node)
        spin_thread = threading.Thread(target=spin.spin, daemon=True)
        stream = None
        try:
            child.wait_ready(ready_timeout_s)
            received: dict[int, float] = {}
            sources: dict[str, int] = {}
            diagnostics: dict[str, dict[str, str]] = {}
            reasoning_periods: list[tuple[float, int]] = []

            def on_label(msg) -> None:
                received[stamp_to_ns(msg.header.stamp)] = time.time()
                sources[msg.source] = sources.get(msg.source, 0) + 1

            def on_diagnostics(msg) -> None:
                for status in msg.status:
                    values = {kv.key: kv.value for kv in status.values}
                    diagnostics[status.name] = values
                    if status.name.endswith(": reasoning"):
                        scenes = int(values.get("period_scenes_received", 0))
                        reasoning_periods.append((time.monotonic(), scenes))

            node.create_subscription(ActivityLabel, "/perception/activity", on_label, 50)
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
            spin_thread.start()
            time.sleep(1.0)  # discovery
            stream = SensorStream(node, camera_hz=camera_hz, imu_hz=imu_hz, width=width, height=height)
            stream.start()
            time.sleep(warmup_s)

            def labels_between(t0: float, t1: float) -> dict[str, Any]:
                frames = {s: t for s, t in stream.stamps().items() if t0 <= t <= t1}
                latencies = [(received[s] - t) * 1000.0 for s, t in frames.items() if s in received]
                return {"frames_published": len(frames), "frames_labelled": len(latencies),
                        "share_labelled": len(latencies) / max(len(frames), 1),
                        "label_latency_ms": percentiles(latencies)}

            t0 = time.time()
            time.sleep(duration_s)
            t1 = time.time()
            if questions:
                result["questions"] = _probe_questions(node, reasoning_periods)
            t2 = time.time()
            stream.stop()
            time.sleep(1.0)  # the last labels in flight
            result.update(labels_between(t0, t1))
            if questions:
                result["while_answering"] = labels_between(t1, t2)
            result.update({
                "sources": sources,
                "perception_diagnostics": diagnostics.get("perception: perception", {}),
                "reasoning_diagnostics": diagnostics.get("reasoning: reasoning", {}),
            })
        finally:
            if stream is not None:
                stream.stop()
            spin.shutdown(timeout_sec=1.0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            child.stop()
    return result


def _call(client, request, timeout: float):
    """Call a service from a thread other than the executor's; (response or None, seconds).

    Through service_call.py: waits for the service and resends a request whose answer was lost (the
    probe only sends read-only requests: QueryScene, GetState).
    """
    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, call_service

    start = time.perf_counter()
    try:
        response = call_service(client, request, timeout=timeout)
    except ServiceTimeout:
        response = None
    return response, time.perf_counter() - start


def _probe_questions(node, reasoning_periods: list[tuple[float, int]]) -> dict[str, Any]:
    from lifecycle_msgs.srv import GetState
    from rclpy.action import ActionClient

    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, retry_future, wait_until_ready
    from frozen_vlm_perception_interfaces.action import AskScene
    from frozen_vlm_perception_interfaces.srv import QueryScene

    query = node.create_client(QueryScene, "/reasoning/query")
    get_state = node.create_client(GetState, "/reasoning/get_state")
    ask = ActionClient(node, AskScene, "/reasoning/ask")
    out: dict[str, Any] = {}
    deadline = time.monotonic() + 10.0
    if not all(wait_until_ready(ready, deadline) for ready in (query.service_is_ready, ask.server_is_ready,
                                                               get_state.service_is_ready)):
        return {"error": "reasoning node not reachable"}

    one = []
    for _ in range(3):
        response, seconds = _call(query, QueryScene.Request(question=STANDARD_QUESTION), 60)
        one.append(seconds * 1000.0)
        out["answer"] = response.answer if response is not None else None
        out["answer_server_latency_s"] = response.latency if response is not None else None
    out["query_one_at_a_time_ms"] = percentiles(one)

    pair: list[tuple[bool, float]] = []

    def ask_once() -> None:
        response, seconds = _call(query, QueryScene.Request(question=STANDARD_QUESTION), 60)
        pair.append((bool(response is not None and response.success), seconds * 1000.0))

    threads = [threading.Thread(target=ask_once) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["query_two_at_once"] = {"both_answered": len(pair) == 2 and all(ok for ok, _ in pair),
                                "ms": sorted(ms for _, ms in pair)}

    # While a long answer is generated: does the node's executor still serve other work?
    goal_done = threading.Event()
    started = time.monotonic()
    goal = AskScene.Goal(question="Describe the scene in detail.", max_new_tokens=64)
    try:  # the goal's acceptance comes back at once; resent if it was lost (service_call.py)
        sent = retry_future(lambda: ask.send_goal_async(goal), deadline=time.monotonic() + 30.0,
                            attempt_timeout=5.0, what="/reasoning/ask")
        sent.result().get_result_async().add_done_callback(lambda _: goal_done.set())
    except ServiceTimeout:
        goal_done.set()
    state_ms = []
    time.sleep(0.3)
    while not goal_done.is_set() and time.monotonic() - started < 60:
        _, seconds = _call(get_state, GetState.Request(), 10)
        state_ms.append(seconds * 1000.0)
        time.sleep(0.2)
    goal_done.wait(60)
    generation_s = time.monotonic() - started
    during = [n for t, n in reasoning_periods if started + 1.0 <= t <= started + generation_s]
    out["during_generation"] = {
        "generation_s": generation_s,
        "get_state_ms": percentiles(state_ms),
        "scenes_per_diagnostics_period": during,
    }
    ask.destroy()
    return out


def format_table(results: Sequence[dict[str, Any]]) -> str:
    nan = float("nan")
    header = ("parameters", "labelled", "label p50 ms", "label p99 ms", "label max ms",
              "while answering: labelled, p50/p99 ms", "query alone ms", "2 at once ms",
              "get_state while answering p50/max ms", "scenes/s at reasoning while answering")
    rows = [header]
    for r in results:
        lat = r.get("label_latency_ms", {})
        q = r.get("questions", {})
        dg = q.get("during_generation", {})
        gs = dg.get("get_state_ms", {})
        wa = r.get("while_answering", {})
        wl = wa.get("label_latency_ms", {})
        rows.append((
            " ".join(r.get("params", [])) or "defaults",
            f"{r.get('share_labelled', 0):.0%} ({r.get('frames_labelled')}/{r.get('frames_published')})",
            f"{lat.get('p50', nan):.1f}", f"{lat.get('p99', nan):.1f}", f"{lat.get('max', nan):.1f}",
            f"{wa.get('share_labelled', 0):.0%}, {wl.get('p50', nan):.0f}/{wl.get('p99', nan):.0f}",
            f"{q.get('query_one_at_a_time_ms', {}).get('p50', nan):.0f}",
            "/".join(f"{ms:.0f}" for ms in q.get("query_two_at_once", {}).get("ms", [])),
            f"{gs.get('p50', nan):.1f}/{gs.get('max', nan):.1f}",
            str(dg.get("scenes_per_diagnostics_period", "")),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frozen_vlm_perception.tools.latency_probe",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--no-questions", action="store_true")
    parser.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="parameter override for both nodes, e.g. torch_threads:=0 (repeatable)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = [probe(duration_s=args.duration, model_dir=args.model_dir, questions=not args.no_questions,
                     params=args.param)]
    print(f"result: {results[-1]}", flush=True)
    print(format_table(results))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
