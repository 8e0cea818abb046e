"""`fvp demo` (`make demo`): the whole system on the demo recording, as a robot would run it.

1. makes the demo recording's test split if it is missing (held-out HAPT subjects),
2. starts the perception and reasoning nodes as a real separate process (the runner),
3. plays the recording into them over Fast DDS, printing once a second the labels so far, their
   accuracy against the ground truth and the label latency p50 (``--verbose``: every activity label
   that comes back, beside the ground truth),
4. asks questions of every family (activity, place, activity + place, yes/no; trained and held-out
   wordings mixed) through the QueryScene service while the recording plays, prints each answer
   beside the ground truth of the scene the node used and whether it is right (the rules of
   ``fvp eval``: ``evaluation/qa.py``),
5. prints a summary (accuracy, label latency p50/p99, frames labelled and dropped, and per family
   the answers that were right out of those asked) and exits 0.

Label latency is measured in this process as (ActivityLabel received) - (the same camera frame
received here); both travel the same loopback, so this is the node's own delay plus one hop.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frozen_vlm_perception.paths import MODEL_CONFIG_FILE, cache_dir, default_model_dir
from frozen_vlm_perception.questions import FAMILIES, FAMILY_NAMES, wordings
from frozen_vlm_perception.tools.harness import READY_TIMEOUT_S, NodeNotReady, NodeProcess, runner_command

STATUS_PERIOD_S = 1.0  # one status line per second while the recording plays (unless --verbose)
# Moments (share of the played time) at which every family is asked; a round takes several seconds
# (one answer per family), so the last one starts well before the end. Rounds the playback did not
# reach are asked right after it (the nodes keep the latest scene).
ASK_AT = (0.2, 0.45, 0.7)


def demo_questions(moment: int) -> list[tuple[str, bool, str]]:
    """(family, held_out, question) asked at the ``moment``-th ask: one wording per family, trained
    and held-out alternating between families and moments, each list cycled by moment."""
    out = []
    for k, family in enumerate(FAMILY_NAMES):
        held_out = (moment + k) % 2 == 1
        options = wordings(family, held_out=held_out)
        out.append((family, held_out, options[moment % len(options)]))
    return out


@dataclass
class Tally:
    """What came back from the nodes, keyed by camera stamp (ns)."""

    frames_seen: dict[int, float] = field(default_factory=dict)  # stamp -> wall time received here
    labels: list[tuple[int, str, float, str, float]] = field(
        default_factory=list
    )  # stamp, label, conf, src, t
    lock: threading.Lock = field(default_factory=threading.Lock)


class Progress:
    """What the demo prints while the recording plays, and the Tally it keeps.

    Without ``verbose``, one status line per ``period`` seconds (``tick``): labels so far, their accuracy
    against the ground truth, label latency p50, the latest label. With ``verbose``, one line per label
    as it comes back (about 30 a second). ``now`` is time.monotonic() (passed in: testable).
    """

    def __init__(self, truth, *, verbose: bool = False, period: float = STATUS_PERIOD_S, out=print):
        self.tally = Tally()
        self.truth = truth
        self.verbose = verbose
        self.period = period
        self.out = out
        self.first_stamp: int | None = None
        self.started: float | None = None
        self.last_status: float | None = None
        self.right = 0
        self.scored = 0
        self.latencies_ms: list[float] = []

    def on_frame(self, stamp: int, now: float) -> None:
        with self.tally.lock:
            if self.first_stamp is None:
                self.first_stamp = stamp
            self.tally.frames_seen[stamp] = now

    def on_label(self, stamp: int, label: str, confidence: float, source: str, now: float) -> None:
        activity, _, _ = self.truth(stamp)
        with self.tally.lock:
            self.tally.labels.append((stamp, label, confidence, source, now))
            if activity is not None:
                self.scored += 1
                self.right += label == activity
            if stamp in self.tally.frames_seen:
                self.latencies_ms.append(1000.0 * (now - self.tally.frames_seen[stamp]))
            t = (stamp - self.first_stamp) / 1e9 if self.first_stamp is not None else 0.0
        if self.verbose:
            mark = "ok " if label == activity else "   "
            self.out(
                f"  {mark}t={t:6.2f}s  label {label:<19} {confidence:.2f} ({source:<6})  truth {activity}",
                flush=True,
            )

    def status_line(self, now: float) -> str:
        with self.tally.lock:
            labels = len(self.tally.labels)
            latest = self.tally.labels[-1] if labels else None
            accuracy = f"{self.right / self.scored:.3f}" if self.scored else "-"
            p50 = f"{np.percentile(self.latencies_ms, 50):.0f} ms" if self.latencies_ms else "-"
        elapsed = 0.0 if self.started is None else now - self.started
        line = f"[demo] {elapsed:4.0f} s  labels {labels:5d}  accuracy {accuracy}  latency p50 {p50}"
        if latest is not None:
            line += f"  latest {latest[1]} (truth {self.truth(latest[0])[0]})"
        return line

    def tick(self, now: float) -> bool:
        """Print the status line when ``period`` has passed since the last one (never when verbose)."""
        if self.started is None:
            self.started = self.last_status = now
            return False
        if self.verbose or now - self.last_status < self.period:
            return False
        self.last_status = max(self.last_status + self.period, now - self.period)  # on the second, no drift
        self.out(self.status_line(now), flush=True)
        return True


def ensure_demo_bag(bag: str | None) -> Path:
    if bag:
        path = Path(bag)
        if not path.exists():
            raise SystemExit(f"demo bag {path} not found")
        return path
    path = cache_dir("demo") / "test"
    if not (path / "demo_manifest.json").is_file():
        from frozen_vlm_perception.data.demo_bag import make_demo_bag

        print(f"[demo] making the demo recording (test split, held-out subjects) in {path} ...", flush=True)
        make_demo_bag(path, split="test")
    return path


def start_nodes(model_dir: Path) -> NodeProcess:
    """Both nodes in one runner process, up; once up, what they print that looks like an error or a
    warning is shown here."""
    from frozen_vlm_perception.nodes.runner import READY_LINE

    def show(line: str) -> None:
        if "error" in line.lower() or "warn" in line.lower():
            print(f"[nodes] {line.rstrip()}", flush=True)

    nodes = NodeProcess(runner_command(model_dir=str(model_dir)), READY_LINE, "the nodes", after_ready=show)
    try:
        nodes.wait_ready(READY_TIMEOUT_S)
    except NodeNotReady as err:
        nodes.stop()
        raise SystemExit(str(err)) from None
    return nodes


def truth_lookup(manifest: dict):
    """stamp (ns) -> (activity, place, settled); settled: the IMU window lies inside the segment."""
    starts = [s["start_ns"] for s in manifest["segments"]]
    window_ns = int(2.56e9)

    def lookup(stamp_ns: int) -> tuple[str | None, str | None, bool]:
        i = bisect_right(starts, stamp_ns) - 1
        if i < 0 or stamp_ns > manifest["segments"][i]["end_ns"]:
            return None, None, False
        segment = manifest["segments"][i]
        return segment["activity"], segment["place"], stamp_ns - segment["start_ns"] >= window_ns

    return lookup


def run_demo(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.data.demo_bag import read_demo_manifest

    model_dir = Path(args.model) if args.model else default_model_dir()
    if model_dir is None or not (model_dir / MODEL_CONFIG_FILE).is_file():
        raise SystemExit("no model folder: pass --model or restore the shipped models/demo")
    bag = ensure_demo_bag(args.bag)
    manifest = read_demo_manifest(bag)
    truth = truth_lookup(manifest)
    from frozen_vlm_perception.nodes.ros_domain import default_ros_domain

    default_ros_domain()

    print(
        f"[demo] model {model_dir}, recording {bag} ({manifest['duration_s']:.0f} s, subjects "
        f"{manifest['subjects']}), playing {args.seconds:.0f} s",
        flush=True,
    )
    print("[demo] starting the perception and reasoning nodes ...", flush=True)
    nodes = start_nodes(model_dir)
    progress = Progress(truth, verbose=getattr(args, "verbose", False))
    try:
        answers, stats = play_and_listen(bag, args.seconds, truth, progress)
    finally:
        nodes.stop()
    return summarize(progress.tally, answers, stats, truth)


def play_and_listen(bag: Path, seconds: float, truth, progress: Progress):
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from frozen_vlm_perception.conversions import stamp_to_ns
    from frozen_vlm_perception.nodes.player import play_bag
    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    context = Context()
    rclpy.init(args=["fvp-demo"], context=context)
    node = rclpy.create_node("fvp_demo", context=context)

    def on_frame(msg: Image) -> None:
        progress.on_frame(stamp_to_ns(msg.header.stamp), time.monotonic())

    def on_label(msg: ActivityLabel) -> None:
        progress.on_label(
            stamp_to_ns(msg.header.stamp), msg.label, float(msg.confidence), msg.source, time.monotonic()
        )

    node.create_subscription(Image, "/camera/image_raw", on_frame, QoSProfile(depth=10))
    node.create_subscription(ActivityLabel, "/perception/activity", on_label, QoSProfile(depth=50))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    stop = threading.Event()
    status_stop = threading.Event()

    def status() -> None:  # its own thread: the status goes on while a question is being answered
        progress.tick(time.monotonic())
        while not status_stop.wait(0.1):
            progress.tick(time.monotonic())

    status_thread = threading.Thread(target=status, daemon=True)
    status_thread.start()
    stats_box: list = []
    player = threading.Thread(
        target=lambda: stats_box.append(play_bag(bag, stop=stop, handle_signals=False, delay=2.0)),
        daemon=True,
    )
    player.start()
    answers = []
    started = time.monotonic()
    ask_at = [seconds * f for f in ASK_AT]
    moment = 0
    try:
        while player.is_alive() and time.monotonic() - started < seconds + 2.0:
            if ask_at and time.monotonic() - started >= ask_at[0]:
                ask_at.pop(0)
                for family, held_out, question in demo_questions(moment):
                    answers.append(ask_one(family, held_out, question, truth))
                moment += 1
            time.sleep(0.1)
        for late in range(moment, len(ASK_AT)):
            for family, held_out, question in demo_questions(late):
                answers.append(ask_one(family, held_out, question, truth))
    finally:
        stop.set()
        player.join(timeout=10)
        time.sleep(1.0)  # labels of the last frames still in flight
        status_stop.set()
        status_thread.join(timeout=5)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return answers, (stats_box[0] if stats_box else None)


def ask_one(family: str, held_out: bool, question: str, truth) -> dict:
    """Ask one question through QueryScene, print it beside the truth of the scene used, score it."""
    from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS
    from frozen_vlm_perception.conversions import stamp_to_ns
    from frozen_vlm_perception.evaluation.qa import place_keys_for, score_answer
    from frozen_vlm_perception.nodes.query_client import QueryError, query

    entry = {"family": family, "held_out": held_out, "question": question, "correct": False}
    kind = "held-out" if held_out else "trained"
    try:
        response = query(question, timeout=60.0)
    except QueryError as err:
        print(f"[demo] question failed: {err}", flush=True)
        return entry
    stamp = stamp_to_ns(response.scene_stamp)
    activity, place, _ = truth(stamp)
    entry.update(success=bool(response.success), answer=response.answer, activity=activity, place=place)
    verdict = "not scored (no truth for this scene)"
    if response.success and activity is not None and (place is not None or not FAMILIES[family].needs_place):
        scored = score_answer(
            family,
            question,
            response.answer,
            label=activity,
            place=place,
            labels=DEFAULT_ACTIVITY_LABELS,
            place_keys=place_keys_for([place]),
        )
        entry["correct"] = scored.correct
        verdict = "right" if scored.correct else "wrong"
        if scored.names_absent:
            verdict += ", names something not in the scene"
    elif not response.success:
        verdict = "not answered"
    print(
        f"\n  Q [{family}, {kind} wording]: {question}\n  A: {response.answer or response.message}\n"
        f"     ({verdict}; truth {activity} at the {place}; scene {response.activity} "
        f"{response.confidence:.2f}; {response.latency:.2f} s)\n",
        flush=True,
    )
    return entry


def summarize(tally: Tally, answers, stats, truth) -> int:
    with tally.lock:
        labels = list(tally.labels)
        frames = dict(tally.frames_seen)
    scored = [(label, *truth(stamp)) for stamp, label, *_ in labels]
    correct_all = [label == activity for label, activity, _, _ in scored if activity is not None]
    correct_settled = [label == activity for label, activity, _, settled in scored if settled]
    latencies = [1000.0 * (t - frames[stamp]) for stamp, *_, t in labels if stamp in frames]
    published = stats.published.get("/camera/image_raw", 0) if stats else len(frames)
    print("\n[demo] summary")
    print(f"  frames published          {published}")
    print(
        f"  frames labelled           {len(labels)} ({100.0 * len(labels) / max(published, 1):.0f}%; "
        "the rest"
        " were superseded by newer frames, never queued)"
    )
    if correct_all:
        print(
            f"  activity accuracy         {np.mean(correct_all):.3f} over all labelled frames, "
            f"{np.mean(correct_settled) if correct_settled else float('nan'):.3f} once the IMU window lies "
            "inside one activity"
        )
    if latencies:
        print(
            f"  label latency             p50 {np.percentile(latencies, 50):.0f} ms, "
            f"p99 {np.percentile(latencies, 99):.0f} ms (frame received -> label received, another process)"
        )
    if answers:
        answered = sum(bool(a.get("success")) for a in answers)
        print(f"  questions answered        {answered}/{len(answers)}; answers right / asked, per family:")
        for family in FAMILY_NAMES:
            mine = [a for a in answers if a["family"] == family]
            if mine:
                print(f"    {family:<22}  {sum(a['correct'] for a in mine)}/{len(mine)}")
    if not labels:
        print("[demo] no labels came back: is another process using this ROS_DOMAIN_ID?", file=sys.stderr)
        return 1
    return 0
