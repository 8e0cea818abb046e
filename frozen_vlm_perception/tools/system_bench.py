"""The whole-system part of ``fvp bench``: what the ROS nodes add on top of the model and the wire.

All in one run, with one synthetic sensor stream published from this process (camera frames stamped
with the wall clock at publishing, IMU at its own rate):

1. **transport**: a node that only echoes camera stamps (:mod:`.tools.stamp_echo`) runs in a child
   process; camera stamp -> echoed header received here is the bare transport of those images.
2. **nodes**: the perception and reasoning nodes run as two child processes, as the launch file
   starts them; camera stamp -> ``ActivityLabel`` received here is the label latency. While the
   stream goes on, questions go through the ``QueryScene`` service one at a time.
3. **reference**, once the children are gone: the same model in this process, with the nodes' torch
   thread count, encodes the stream's frame with an IMU window (the pipeline's own encode time), and
   the pipeline answers each question about the very latents the reasoning node used (kept from
   ``/perception/latents`` by stamp), through the model's question reader as the node does, so the
   answers must come out identical.

Phase 2 measures labels twice, side by side: **idle** (no question) for ``seconds``, then
**answering** for ``answering_s``, with questions asked back to back through the service, so a
generation is running nearly all the time. ``answering_vs_idle`` compares the two (share of frames
labelled, p99). The perception node's own /diagnostics are kept per phase too: the time from taking
a frame to publishing its label inside the node, and Python's garbage-collector pauses there, so a
spike in the label latency can be placed (wire, node, collector).

``ros_overhead_ratio`` = label latency p50 / (encode p50 + transport p50): 1.0 means the nodes add
nothing to model + transport. ``answer_overhead_ratio`` = service round trips / raw generate time
for the same questions and scenes. Peak memory is each process's high-water resident set (VmHWM).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from frozen_vlm_perception.conversions import stamp_to_ns
from frozen_vlm_perception.questions import STANDARD_QUESTION
from frozen_vlm_perception.tools.harness import (
    READY_TIMEOUT_S,
    NodeProcess,
    cpu_seconds,
    machine_cpu_seconds,
    peak_rss_mb,
    percentiles,
    runner_command,
)
from frozen_vlm_perception.tools.latency_probe import SensorStream

LATENTS_KEPT = 600  # scenes kept by stamp for the reference answers (20 s at 30 Hz)


@dataclass
class SystemSettings:
    model_dir: str
    device: str = "cpu"
    torch_threads: int = 1  # per node process, as config/perception.yaml; the reference uses the same
    seconds: float = 20.0  # measured streaming through the nodes (the transport phase gets half)
    warmup_s: float = 4.0
    camera_hz: float = 30.0
    imu_hz: float = 200.0
    width: int = 640
    height: int = 480
    questions: int = 3  # at least this many; the first ones also get the in-process reference
    max_new_tokens: int = 24
    answering_s: float | None = None  # labels measured while answering (None: as long as ``seconds``)
    # The reasoning node's answer_timeout_s and this client's wait for each answer: a bound on a hang,
    # not a latency (a machine shared with other jobs can take minutes for the first answer).
    answer_timeout_s: float = 120.0
    node_params: tuple[str, ...] = ()  # extra NAME:=VALUE for both node processes (A/B runs)
    ready_timeout_s: float = READY_TIMEOUT_S


def _runner(nodes: str, settings: SystemSettings) -> list[str]:
    params = [f"torch_threads:={settings.torch_threads}"]
    if "reasoning" in nodes:
        params.append(f"answer_timeout_s:={float(settings.answer_timeout_s)}")
    return runner_command(
        nodes, model_dir=settings.model_dir, device=settings.device, params=[*params, *settings.node_params]
    )


class Listener:
    """This process's view: echoed stamps, labels and latents as they arrive (wall-clock receive times)."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile
        from std_msgs.msg import Header

        from frozen_vlm_perception_interfaces.msg import ActivityLabel, SceneLatents

        self.echoed: dict[int, float] = {}
        self.labelled: dict[int, float] = {}
        self.latents: OrderedDict[int, np.ndarray] = OrderedDict()
        self.perception_periods: list[tuple[float, dict[str, float]]] = []  # (received, numeric values)
        self._lock = threading.Lock()
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50))
        node.create_subscription(Header, "/stamp_echo/stamps", self._on_echo, QoSProfile(depth=50))
        node.create_subscription(ActivityLabel, "/perception/activity", self._on_label, QoSProfile(depth=50))
        node.create_subscription(SceneLatents, "/perception/latents", self._on_latents, QoSProfile(depth=50))

    def _on_echo(self, msg) -> None:
        self.echoed[stamp_to_ns(msg.stamp)] = time.time()

    def _on_label(self, msg) -> None:
        self.labelled[stamp_to_ns(msg.header.stamp)] = time.time()

    def _on_latents(self, msg) -> None:
        data = np.frombuffer(msg.data, dtype=np.float32).reshape(msg.num_latents, msg.dim).copy()
        with self._lock:
            self.latents[stamp_to_ns(msg.header.stamp)] = data
            while len(self.latents) > LATENTS_KEPT:
                self.latents.popitem(last=False)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(": perception"):
                values = {}
                for item in status.values:
                    try:
                        values[item.key] = float(item.value)
                    except ValueError:
                        pass
                self.perception_periods.append((time.time(), values))

    def perception_between(self, t0: float, t1: float) -> dict[str, float]:
        """The perception node's diagnostics periods that ended in [t0, t1], summarised."""
        periods = [v for t, v in self.perception_periods if t0 < t <= t1]
        out: dict[str, float] = {"periods": len(periods)}
        for key, how in (("period_latency_ms_p50", max), ("period_latency_ms_p99", max),
                         ("period_latency_ms_max", max), ("period_gc_ms_max", max),
                         ("period_gc_ms_total", sum), ("period_gc_collections", sum),
                         ("period_gc_full_collections", sum)):
            seen = [v[key] for v in periods if key in v]
            if seen:
                out[key.removeprefix("period_")] = float(how(seen))
        for key in sorted({k for v in periods for k in v if k.startswith("period_stage_ms_mean:")}):
            seen = [v[key] for v in periods if key in v]  # per labelled frame, each period's mean
            out[key.removeprefix("period_")] = float(np.mean(seen))
        return out

    def latents_at(self, stamp_ns: int) -> np.ndarray | None:
        with self._lock:
            return self.latents.get(stamp_ns)


class _CpuMeter:
    """CPU each process used between laps, in % of one core, and the machine's ``cores`` (so 200 on
    a busy 2-core machine). Linux /proc; empty where it cannot be read."""

    def __init__(self, pids: dict[str, int | str]):
        self._pids = pids
        self._start = self._read()

    def _read(self) -> tuple[float, dict[str, float | None]]:
        machine = {f"machine_{kind}": seconds for kind, seconds in machine_cpu_seconds().items()}
        return time.monotonic(), {**{name: cpu_seconds(pid) for name, pid in self._pids.items()}, **machine}

    def lap(self) -> dict[str, float]:
        (t0, before), (t1, after) = self._start, self._read()
        self._start = (t1, after)
        out = {name: 100.0 * (after[name] - before[name]) / (t1 - t0)
               for name in after if before.get(name) is not None and after[name] is not None}
        if out:
            out["cores"] = float(os.cpu_count() or 1)
        return out


def _latency_between(
    published: dict[int, float], received: dict[int, float], t0: float, t1: float, windows: int = 1
):
    """Latency of the frames published in [t0, t1]; with ``windows`` > 1 also per equal time slice
    (``over_time``: a backlog shows as a p99 that climbs from slice to slice)."""
    frames = {s: t for s, t in published.items() if t0 <= t <= t1}
    latencies = [(received[s] - t) * 1000.0 for s, t in frames.items() if s in received]
    out: dict[str, Any] = {
        "frames_published": len(frames),
        "frames_received": len(latencies),
        "share_received": len(latencies) / max(len(frames), 1),
        "latency_ms": percentiles(latencies),
    }
    if windows > 1:
        width = (t1 - t0) / windows
        out["over_time"] = [
            {
                "start_s": i * width,
                **_latency_between(published, received, t0 + i * width, t0 + (i + 1) * width),
            }
            for i in range(windows)
        ]
    return out


def _ask(client, question: str, max_new_tokens: int, timeout_s: float):
    """(response or None, round trip ms); retried when an answer is lost (nodes/service_call.py; a
    query is read-only, so a second attempt is harmless)."""
    from frozen_vlm_perception.nodes.service_call import ServiceTimeout, call_service
    from frozen_vlm_perception_interfaces.srv import QueryScene

    start = time.perf_counter()
    try:
        response = call_service(
            client, QueryScene.Request(question=question, max_new_tokens=max_new_tokens), timeout=timeout_s
        )
    except ServiceTimeout:
        response = None
    return response, (time.perf_counter() - start) * 1000.0


def measure_system(settings: SystemSettings, *, pipeline=None, log=print) -> dict[str, Any]:
    """Run the three phases (module doc) and return every number as a dict.

    ``pipeline``: the reference, already loaded from ``settings.model_dir`` (with its LM when questions
    are asked); None loads it here first.
    """
    import rclpy
    import torch
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from frozen_vlm_perception.nodes.runner import READY_LINE
    from frozen_vlm_perception.nodes.service_call import wait_until_ready
    from frozen_vlm_perception.pipeline import PerceptionPipeline
    from frozen_vlm_perception.tools.stamp_echo import READY_LINE as ECHO_READY_LINE
    from frozen_vlm_perception_interfaces.srv import QueryScene

    if pipeline is None:
        pipeline = PerceptionPipeline.from_model_dir(
            settings.model_dir, device=settings.device, load_language=settings.questions > 0
        )
    result: dict[str, Any] = {"settings": asdict(settings), "peak_rss_mb": {}, "reference": {}}
    context = Context()
    rclpy.init(args=["fvp-bench"], context=context)
    node = rclpy.create_node(f"fvp_bench_{os.getpid()}", context=context)
    listener = Listener(node)
    query = node.create_client(QueryScene, "/reasoning/query")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    stream = SensorStream(
        node,
        camera_hz=settings.camera_hz,
        imu_hz=settings.imu_hz,
        width=settings.width,
        height=settings.height,
    )
    children: list[NodeProcess] = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)  # every reference runs as the nodes do
    try:
        stream.start()
        transport_s = max(5.0, settings.seconds / 2)
        log(f"[bench] transport: camera -> stamp echo node, {transport_s:.0f} s ...")
        echo = NodeProcess(
            [sys.executable, "-m", "frozen_vlm_perception.tools.stamp_echo"],
            ECHO_READY_LINE,
            "the stamp echo node",
        )
        children.append(echo)
        echo.wait_ready(settings.ready_timeout_s)
        time.sleep(settings.warmup_s)
        t0 = time.time()
        time.sleep(transport_s)
        result["transport"] = _latency_between(stream.stamps(), listener.echoed, t0, time.time())
        result["peak_rss_mb"]["stamp_echo"] = echo.peak_rss_mb()
        echo.stop()

        log(f"[bench] nodes: perception + reasoning (two processes), {settings.seconds:.0f} s ...")
        perception = NodeProcess(_runner("perception", settings), READY_LINE, "the perception node")
        reasoning = NodeProcess(_runner("reasoning", settings), READY_LINE, "the reasoning node")
        children += [perception, reasoning]
        perception.wait_ready(settings.ready_timeout_s)
        reasoning.wait_ready(settings.ready_timeout_s)
        if settings.questions and not wait_until_ready(query.service_is_ready, time.monotonic() + 30.0):
            raise RuntimeError("the reasoning node's /reasoning/query service did not appear")
        time.sleep(settings.warmup_s)
        processes = {"perception_node": perception.process.pid, "reasoning_node": reasoning.process.pid,
                     "bench_process": "self"}
        cpu = _CpuMeter(processes)
        t0 = time.time()
        time.sleep(settings.seconds)
        t1 = time.time()
        result["labels"] = _latency_between(stream.stamps(), listener.labelled, t0, t1, windows=5)
        result["labels"]["perception_node"] = listener.perception_between(t0, t1)
        result["labels"]["cpu_percent"] = cpu.lap()
        answers: list[tuple[Any, float]] = []
        if settings.questions:
            answering_s = settings.seconds if settings.answering_s is None else settings.answering_s
            log(f"[bench] questions back to back through /reasoning/query for {answering_s:.0f} s "
                f"(at least {settings.questions}) while the sensors stream")
            while len(answers) < settings.questions or time.time() - t1 < answering_s:
                answers.append(
                    _ask(query, STANDARD_QUESTION, settings.max_new_tokens, settings.answer_timeout_s)
                )
            t2 = time.time()
            result["labels_while_answering"] = _latency_between(stream.stamps(), listener.labelled, t1, t2)
            result["labels_while_answering"]["perception_node"] = listener.perception_between(t1, t2)
            result["labels_while_answering"]["answers"] = len(answers)
            result["labels_while_answering"]["cpu_percent"] = cpu.lap()
        result["peak_rss_mb"].update(
            perception_node=perception.peak_rss_mb(), reasoning_node=reasoning.peak_rss_mb()
        )
        reasoning.stop()
        if answers:
            log("[bench] the same answers in this process, perception node and sensors still running ...")
            result["reference"]["answers"] = [_answer_entry(*item) for item in answers[: settings.questions]]
            result["service_round_trip_ms"] = percentiles([ms for _, ms in answers])
            _generate_reference(settings, pipeline, result["reference"]["answers"], listener, "loaded")
    finally:
        stream.stop()
        for child in children:
            child.stop()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        torch.set_num_threads(previous_threads)

    log("[bench] the same encode and answers in this process, quiet ...")
    torch.set_num_threads(settings.torch_threads)
    try:
        result["reference"]["encode_ms"] = _encode_reference(pipeline, stream.rgb)
        if result["reference"].get("answers"):
            _generate_reference(settings, pipeline, result["reference"]["answers"], listener, "quiet")
        if pipeline.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pipeline.device) / 2**20
            result["reference"]["cuda_peak_allocated_mb"] = peak
    finally:
        torch.set_num_threads(previous_threads)
    result["peak_rss_mb"]["bench_process"] = peak_rss_mb()
    _ratios(result)
    return result


def _encode_reference(pipeline, frame: np.ndarray, repeats: int = 30) -> dict[str, float]:
    """The pipeline's own encode time: the stream's frame and an IMU window, in this process."""
    imu = pipeline.config.imu
    window = np.random.default_rng(0).normal(size=(imu.window_samples, imu.channels)).astype(np.float32)
    for _ in range(3):
        pipeline.encode_one(frame, window)
    encode_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline.encode_one(frame, window)
        encode_ms.append((time.perf_counter() - start) * 1000.0)
    return percentiles(encode_ms)


def _answer_entry(response, round_trip_ms: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "round_trip_ms": round_trip_ms,
        "success": bool(response is not None and response.success),
    }
    if response is None:
        entry["message"] = "no response in time"
    elif not response.success:
        entry["message"] = response.message
    else:
        entry.update(
            answer=response.answer,
            server_latency_ms=1000.0 * response.latency,
            stamp_ns=stamp_to_ns(response.scene_stamp),
        )
    return entry


def _generate_reference(settings: SystemSettings, pipeline, entries, listener: Listener, condition: str):
    """The pipeline's answer on the very latents each service answer used, as the reasoning node
    makes it (through the model's question reader and its decision, if any): adds
    ``raw_generate_<condition>_ms``."""
    from frozen_vlm_perception.pipeline import Scene

    pipeline.answer(None, STANDARD_QUESTION, max_new_tokens=4)  # warm-up
    for entry in entries:
        latents = listener.latents_at(entry["stamp_ns"]) if entry["success"] else None
        if latents is None:
            continue
        scene = Scene(latents=latents, pooled=np.zeros(0, np.float32), scores=np.zeros(0, np.float32),
                      labels=(), modalities=())
        generation = pipeline.answer(scene, STANDARD_QUESTION, max_new_tokens=settings.max_new_tokens)
        entry[f"raw_generate_{condition}_ms"] = 1000.0 * generation.seconds
        entry["tokens"] = generation.num_tokens
        same = generation.text.strip() == entry["answer"].strip()
        entry["identical"] = entry.get("identical", True) and same


def _ratios(result: dict[str, Any]) -> None:
    labels = result["labels"]["latency_ms"]
    transport = result["transport"]["latency_ms"]
    encode = result["reference"]["encode_ms"]
    slices = [w["latency_ms"] for w in result["labels"].get("over_time", ()) if w["latency_ms"].get("n")]
    if len(slices) >= 2:
        result["label_p99_growth"] = slices[-1]["p99"] / slices[0]["p99"]  # last slice over first
    if labels.get("n") and transport.get("n"):
        result["ros_overhead_ratio"] = labels["p50"] / (encode["p50"] + transport["p50"])
        result["ros_overhead_ratio_p99"] = labels["p99"] / (encode["p99"] + transport["p99"])
    answering = result.get("labels_while_answering", {})
    if labels.get("n") and answering.get("latency_ms", {}).get("n"):
        lost = result["labels"]["share_received"] - answering["share_received"]
        result["answering_vs_idle"] = {
            "labelled_points_lost": 100.0 * lost,  # percentage points of the published frames
            "p99_ratio": answering["latency_ms"]["p99"] / labels["p99"],
            "p50_ratio": answering["latency_ms"]["p50"] / labels["p50"],
        }
    timed = [a for a in result["reference"].get("answers", ()) if "raw_generate_quiet_ms" in a]
    if timed:
        service = sum(a["round_trip_ms"] for a in timed)
        # Against generate under the same load (perception node + sensors running): what the reasoning
        # node adds. Against a quiet machine: that plus the CPU the perception node takes meanwhile.
        result["answer_overhead_ratio"] = service / sum(a["raw_generate_loaded_ms"] for a in timed)
        result["answer_overhead_ratio_quiet"] = service / sum(a["raw_generate_quiet_ms"] for a in timed)
        result["answers_identical"] = all(a["identical"] for a in timed)


def format_system(result: dict[str, Any]) -> str:
    """The tables ``fvp bench`` prints for the system part."""
    from frozen_vlm_perception.tables import format_table

    nan = float("nan")
    s = result["settings"]
    lines = [
        f"\n## Through the nodes ({s['camera_hz']:.0f} Hz camera {s['width']}x{s['height']} + "
        f"{s['imu_hz']:.0f} Hz IMU, {s['torch_threads']} torch thread(s) per node, device {s['device']})\n"
    ]
    rows = []
    paths = (
        ("camera -> stamp echo (transport)", "transport"),
        ("camera -> ActivityLabel, idle", "labels"),
        ("camera -> ActivityLabel, answering", "labels_while_answering"),
    )
    for name, key in paths:
        if key in result:
            lat, share = result[key]["latency_ms"], result[key]["share_received"]
            rows.append([name, f"{share:.0%}", lat.get("p50", nan), lat.get("p99", nan), lat.get("max", nan)])
    encode = result["reference"]["encode_ms"]
    rows.append(["pipeline encode (in process, quiet)", "-", encode["p50"], encode["p99"], encode["max"]])
    lines.append(format_table(["path", "frames", "p50 ms", "p99 ms", "max ms"], rows))
    shares = [(name, result[key]["cpu_percent"]) for name, key in paths[1:]
              if result.get(key, {}).get("cpu_percent")]
    if shares:
        cores = int(shares[0][1]["cores"])
        lines.append(f"\n## CPU per process (% of one core; the machine has {cores})\n")
        names = [n for n in shares[0][1] if n != "cores" and not n.startswith("machine_")]
        machine = [n for n in shares[0][1] if n.startswith("machine_")]  # busy, idle, steal: all cores
        rows = [[name.split(", ")[-1], *(d.get(n, nan) for n in names), sum(d.get(n, 0.0) for n in names),
                 *(d.get(n, nan) for n in machine)] for name, d in shares]
        lines.append(format_table(["phase", *names, "together", *machine], rows))
    inside = [(name, result[key]["perception_node"]) for name, key in paths[1:]
              if result.get(key, {}).get("perception_node", {}).get("periods")]
    if inside:
        lines.append("\n## Inside the perception node (its /diagnostics: frame taken -> label published)\n")
        headers = ["phase", "worst period p50 ms", "worst period p99 ms", "max ms", "GC collections",
                   "GC full", "GC ms total", "GC max pause ms"]
        rows = [[name.split(", ")[-1], d.get("latency_ms_p50", nan), d.get("latency_ms_p99", nan),
                 d.get("latency_ms_max", nan), int(d.get("gc_collections", 0)),
                 int(d.get("gc_full_collections", 0)), d.get("gc_ms_total", nan), d.get("gc_ms_max", nan)]
                for name, d in inside]
        lines.append(format_table(headers, rows))
    over_time = result["labels"].get("over_time", ())
    if over_time:
        lines.append("\n## Label latency over the measured run (a backlog would climb)\n")
        rows = [
            [
                f"{w['start_s']:.0f}",
                f"{w['share_received']:.0%}",
                w["latency_ms"].get("p50", nan),
                w["latency_ms"].get("p99", nan),
                w["latency_ms"].get("max", nan),
            ]
            for w in over_time
        ]
        lines.append(format_table(["from s", "frames labelled", "p50 ms", "p99 ms", "max ms"], rows))
    timed = [a for a in result["reference"].get("answers", ()) if "raw_generate_quiet_ms" in a]
    if timed:
        lines.append("\n## Answers: QueryScene round trip vs raw generate on the same latents\n")
        headers = ["tokens", "service ms", "raw, same load ms", "raw, quiet ms", "ratio", "same answer"]
        rows = [
            [
                a["tokens"],
                a["round_trip_ms"],
                a["raw_generate_loaded_ms"],
                a["raw_generate_quiet_ms"],
                a["round_trip_ms"] / a["raw_generate_loaded_ms"],
                "yes" if a["identical"] else "NO",
            ]
            for a in timed
        ]
        lines.append(format_table(headers, rows))
    lines.append("\n## Ratios and memory\n")
    names = (
        "ros_overhead_ratio",
        "ros_overhead_ratio_p99",
        "answer_overhead_ratio",
        "answer_overhead_ratio_quiet",
    )
    rows = [[name, result[name]] for name in names if name in result]
    for name, value in result.get("answering_vs_idle", {}).items():
        rows.append([f"answering vs idle: {name}", value])
    if "service_round_trip_ms" in result:
        trip = result["service_round_trip_ms"]
        rows.append([f"QueryScene round trip p50 ms ({trip['n']} answers)", trip["p50"]])
    rows += [[f"peak RSS MB: {name}", mb] for name, mb in result["peak_rss_mb"].items() if mb is not None]
    if "cuda_peak_allocated_mb" in result["reference"]:
        rows.append(["peak CUDA allocated MB (reference)", result["reference"]["cuda_peak_allocated_mb"]])
    lines.append(format_table(["measure", "value"], rows))
    return "\n".join(lines)
