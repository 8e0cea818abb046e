"""`fvp eval --through-ros`: play the bag into the running nodes and score what they publish.

The offline evaluation scores every frame; a robot gets a label only for the frames the perception
node had time for, after the transport and the node's own queueing. This part measures that:

1. the perception and reasoning nodes start in their own processes (as ``ros2 launch`` runs them,
   with the shipped config/perception.yaml and the model under test);
2. the bag's camera and IMU topics are played with their recorded timing (``--rate`` to speed up);
3. this process receives the frames and the ``ActivityLabel`` messages and scores each label against
   the bag's ground truth at that frame's stamp (the same label source as training); at evenly spaced
   moments it asks ``QueryScene`` every question family (a trained and a held-out wording each,
   cycled by moment) and scores the answers against the truth of the scene the node used, with the
   rules of the offline evaluation (``qa.py``);
4. frames that got no label are counted, and the perception node's own drop counters (superseded
   while busy, no IMU window, bad input) come from its ``/diagnostics``.

Latency here is frame received in this process -> its label received in this process: the node's
own delay plus one hop (the stamps in a bag are the recording's, not the playback's).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS
from frozen_vlm_perception.data.bags import read_paired_samples
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.evaluation import qa as qa_eval
from frozen_vlm_perception.evaluation.metrics import accuracy, macro_f1
from frozen_vlm_perception.questions import FAMILIES, FAMILY_NAMES, wordings
from frozen_vlm_perception.tools.harness import percentiles

STAMP_TOLERANCE_NS = 1_000_000  # a label's stamp is the frame's, exactly; 1 ms covers float round trips
QUESTION_TIMEOUT_S = 60.0


@dataclass
class Truth:
    """Ground truth per camera frame of the bag, sorted by stamp."""

    stamps_ns: np.ndarray  # (F,) int64
    activity: list[str | None]
    place: list[str | None]

    def at(self, stamp_ns: int) -> int | None:
        """Index of the frame with this stamp (within STAMP_TOLERANCE_NS), None when no frame has it."""
        i = bisect_left(self.stamps_ns, stamp_ns - STAMP_TOLERANCE_NS)
        if i < len(self.stamps_ns) and abs(int(self.stamps_ns[i]) - stamp_ns) <= STAMP_TOLERANCE_NS:
            return i
        return None


def read_truth(data: DataConfig) -> Truth:
    """Activity and place at every camera frame, from the label topic or CSV training would use."""
    samples = read_paired_samples(
        data.bag,
        camera_topic=data.camera_topic,
        imu_topic=None,  # only the labels are needed here
        label_topic=data.label_topic or None,
        labels_csv=data.labels_csv or None,
        place_topic=data.place_topic or None,
    )
    rows = sorted((round(s.stamp * 1e9), s.label, s.place) for s in samples)
    return Truth(
        stamps_ns=np.array([r[0] for r in rows], dtype=np.int64),
        activity=[r[1] for r in rows],
        place=[r[2] for r in rows],
    )


@dataclass
class Observed:
    """What this process saw while the bag played (receive times from time.monotonic)."""

    frames: dict[int, float] = field(default_factory=dict)
    labels: dict[int, tuple[str, str, float]] = field(default_factory=dict)  # stamp -> label, source, t
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def evaluate_through_ros(
    *,
    data: DataConfig,
    model_dir: str | Path,
    device: str = "auto",
    rate: float = 1.0,
    questions: int = 6,
    labels: tuple[str, ...] = DEFAULT_ACTIVITY_LABELS,
    window_s: float | None = None,
    max_new_tokens: int = qa_eval.MAX_NEW_TOKENS,
    log=print,
) -> dict[str, Any]:
    """Play ``data.bag`` into the nodes and return the ``through_ros`` section of the report.

    ``window_s``: the model's IMU window length, for marking settled scenes (None: none is settled).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from frozen_vlm_perception.conversions import stamp_to_ns
    from frozen_vlm_perception.nodes.player import play_bag
    from frozen_vlm_perception.nodes.ros_domain import default_ros_domain
    from frozen_vlm_perception.nodes.runner import READY_LINE
    from frozen_vlm_perception.tools.harness import READY_TIMEOUT_S, NodeProcess, runner_command
    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    default_ros_domain()
    truth = read_truth(data)
    if not len(truth.stamps_ns):
        raise ValueError(f"{data.bag}: no camera frames on {data.camera_topic}")
    timeline = qa_eval.read_label_timeline(data) if window_s and questions > 0 else None

    def settled(stamp_ns: int) -> bool | None:
        return timeline.settled(stamp_ns / 1e9, window_s) if timeline is not None else None

    seen = Observed()

    def on_frame(msg) -> None:
        with seen.lock:
            seen.frames[stamp_to_ns(msg.header.stamp)] = time.monotonic()

    def on_label(msg) -> None:
        with seen.lock:
            seen.labels[stamp_to_ns(msg.header.stamp)] = (msg.label, msg.source, time.monotonic())

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            seen.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    play_s = (truth.stamps_ns[-1] - truth.stamps_ns[0]) / 1e9 / rate
    log(f"[eval --through-ros] starting the nodes, then playing {data.bag} ({play_s:.0f} s, rate {rate:g})")
    command = runner_command("perception,reasoning", model_dir=str(model_dir), device=device)
    with NodeProcess(command, READY_LINE, "the perception and reasoning nodes") as nodes:
        nodes.wait_ready(READY_TIMEOUT_S)
        context = Context()
        rclpy.init(args=["fvp-eval"], context=context)
        node = rclpy.create_node("fvp_eval_through_ros", context=context)
        node.create_subscription(Image, data.camera_topic, on_frame, QoSProfile(depth=10))
        node.create_subscription(ActivityLabel, "/perception/activity", on_label, QoSProfile(depth=100))
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        stop = threading.Event()
        stats_box: list = []
        player = threading.Thread(
            target=lambda: stats_box.append(
                play_bag(
                    data.bag,
                    rate=rate,
                    topics=(data.camera_topic, data.imu_topic),
                    stop=stop,
                    handle_signals=False,
                    delay=2.0,
                )
            ),
            daemon=True,
        )
        answers: list[dict[str, Any]] = []
        try:
            player.start()
            answers = _ask_while_playing(player, play_s, questions, truth, log, settled, max_new_tokens)
            player.join(timeout=play_s + 60.0)
            time.sleep(1.5)  # labels of the last frames still in flight, and a last /diagnostics
        finally:
            stop.set()
            player.join(timeout=10.0)
            executor.shutdown(timeout_sec=2.0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)
    stats = stats_box[0] if stats_box else None
    published = stats.published.get(data.camera_topic, 0) if stats else len(seen.frames)
    return score(truth, seen, answers, published=published, labels=labels)


def _ask_while_playing(
    player: threading.Thread,
    play_s: float,
    questions: int,
    truth: Truth,
    log,
    settled,
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    has_places = any(p is not None for p in truth.place)
    families = [f for f in FAMILY_NAMES if has_places or not FAMILIES[f].needs_place]
    # Evenly spaced over the playback, after a warm-up (the first scenes have no IMU window yet).
    start = time.monotonic()
    times = [2.0 + play_s * (i + 1) / (questions + 1) for i in range(questions)]
    for moment, at in enumerate(times):
        while player.is_alive() and time.monotonic() - start < at:
            time.sleep(0.1)
        if not player.is_alive():
            break
        for family in families:
            for held_out in (False, True):
                options = wordings(family, held_out=held_out)
                question = options[moment % len(options)]
                entry = _ask(family, held_out, question, truth, settled, max_new_tokens)
                answers.append(entry)
                log(
                    f"  Q [{family}, {'held-out' if held_out else 'trained'}]: {question}  "
                    f"A: {entry.get('answer') or entry.get('message')}  (truth {entry.get('truth_activity')}"
                    f" at the {entry.get('truth_place')})"
                )
    return answers


def _ask(
    family: str, held_out: bool, question: str, truth: Truth, settled, max_new_tokens: int
) -> dict[str, Any]:
    """One QueryScene call about the latest scene, with the truth of the scene the node used."""
    from frozen_vlm_perception.conversions import stamp_to_ns
    from frozen_vlm_perception.nodes.query_client import QueryError, query

    entry: dict[str, Any] = {"family": family, "held_out": held_out, "question": question}
    try:
        response = query(question, timeout=QUESTION_TIMEOUT_S, max_new_tokens=max_new_tokens)
    except QueryError as err:
        entry.update(success=False, message=str(err))
        return entry
    stamp_ns = stamp_to_ns(response.scene_stamp)
    index = truth.at(stamp_ns)
    entry.update(
        success=bool(response.success),
        answer=response.answer,
        message=response.message,
        latency_s=float(response.latency),
        head_label=response.activity or None,
        grounding=getattr(response, "grounding", ""),  # the node's own check, where it has one
        truth_activity=truth.activity[index] if index is not None else None,
        truth_place=truth.place[index] if index is not None else None,
        settled=settled(stamp_ns) if index is not None else None,
    )
    return entry


def score(
    truth: Truth, seen: Observed, answers: list[dict[str, Any]], *, published: int, labels: tuple[str, ...]
) -> dict[str, Any]:
    """The report section: accuracy of what was published, what got no label and why, latency, QA."""
    with seen.lock:
        received = dict(seen.labels)
        frames = dict(seen.frames)
    index = {name: i for i, name in enumerate(labels)}
    target, predicted, by_source, latencies = [], [], Counter(), []
    correct_by_source: Counter = Counter()
    unmatched = 0
    for stamp, (label, source, t) in received.items():
        i = truth.at(stamp)
        if i is None:
            unmatched += 1
            continue
        if stamp in frames:
            latencies.append(1000.0 * (t - frames[stamp]))
        activity = truth.activity[i]
        if activity not in index or label not in index:
            continue
        target.append(index[activity])
        predicted.append(index[label])
        by_source[source] += 1
        correct_by_source[source] += int(label == activity)
    perception = next((v for k, v in seen.diagnostics.items() if k.endswith(": perception")), {})
    node_drops = {k: int(v) for k, v in perception.items() if k.startswith("drop:") and v.isdigit()}
    section: dict[str, Any] = {
        "frames_in_bag": int(len(truth.stamps_ns)),
        "frames_published": int(published),
        "frames_received_here": len(frames),
        "labels_received": len(received),
        "share_labelled": len(received) / max(published, 1),
        "labels_not_matching_a_frame": unmatched,
        "n_scored": len(target),
        "accuracy": accuracy(np.array(target), np.array(predicted)) if target else float("nan"),
        "macro_f1": macro_f1(np.array(target), np.array(predicted), len(labels)) if target else float("nan"),
        "accuracy_by_source": {s: correct_by_source[s] / n for s, n in by_source.items()},
        "labels_by_source": dict(by_source),
        "node_drops": node_drops,
        "latency_ms": percentiles(latencies),
    }
    section["qa"] = _score_answers(answers, labels)
    return section


def _score_answers(answers: list[dict[str, Any]], labels: tuple[str, ...]) -> dict[str, Any]:
    """Per-family accuracy of the answers with the offline rules (``qa.summarize``); an answer is
    scored when it succeeded and the truth of its scene is known (the place too, for place families)."""
    place_keys = qa_eval.place_keys_for(a.get("truth_place") for a in answers)
    records = []
    for entry in answers:
        family = entry.get("family", "activity")
        if not entry.get("success") or not entry.get("truth_activity"):
            continue
        if FAMILIES[family].needs_place and not entry.get("truth_place"):
            continue
        scored = qa_eval.record(
            family,
            entry["question"],
            entry["answer"],
            held_out=bool(entry.get("held_out")),
            label=entry["truth_activity"],
            place=entry.get("truth_place"),
            settled=entry.get("settled"),
            labels=labels,
            place_keys=place_keys,
            head_label=entry.get("head_label"),
        )
        entry.update(correct=scored["correct"], names_absent=scored["names_absent"])
        records.append(scored)
    return {
        "asked": len(answers),
        "answered": sum(bool(a.get("success")) for a in answers),
        "n_scored": len(records),
        **qa_eval.summarize(records),
        "answers": answers,
    }
