"""`fvp soak`: run the nodes on a looping bag for a while and say whether anything grows.

    fvp soak [--bag BAG] [--minutes 5] [--report soak.json]

A perception node runs for days next to flaky drivers; what kills it there is slow growth: a leak of
a few MB a minute, a buffer that is bounded in theory but not in practice, a latency that creeps. This
starts both nodes (the runner, as a child process), loops a bag with the player (another child:
every loop makes the stamps jump back, as a looping bag does), asks a question every ~10 s, and every
few seconds samples:

- the resident memory (RSS) of the node process (and of the player);
- from /diagnostics: frames received and labelled, drops by reason, superseded frames, the IMU
  buffer, the reasoning node's scene history, activities and question queue, clock resets;
- the label latency seen here: a camera frame received by this process -> its label received here.

It prints a table as it goes and a verdict at the end: memory grows when the least-squares slope of
the node's RSS over the second half of the run exceeds ``rss_slope_limit`` MB/min (the first half
is warm-up: allocator pools, caches); a buffer grows when it exceeds its configured bound or its
second-half slope is positive beyond noise; labels stall when a sample period had none. ``--report``
writes settings, samples and verdict as JSON. Exit code: 0 no growth found, 1 something grew or
stalled, 2 the soak could not run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frozen_vlm_perception.conversions import stamp_to_ns
from frozen_vlm_perception.questions import STANDARD_QUESTION
from frozen_vlm_perception.tools.harness import READY_TIMEOUT_S, NodeNotReady, NodeProcess, rss_mb

DEFAULT_SAMPLE_S = 5.0
DEFAULT_QUESTION_S = 10.0
# Second-half RSS slope above which memory counts as growing. A leak of 5 MB/min is 7 GB a day.
DEFAULT_RSS_SLOPE_LIMIT_MB_PER_MIN = 5.0
# Second-half median p99 over first-half median p99 above which the latency counts as creeping
# (--latency-growth-limit; a machine whose other load changes between the halves needs more).
LATENCY_GROWTH_LIMIT = 1.5
# How long a question may take, waiting included (--question-timeout; also the reasoning node's
# answer_timeout_s): a bound on a hang. A machine shared with other jobs needs more.
QUESTION_TIMEOUT_S = 30.0
MAX_NEW_TOKENS = 16
HISTORY_SIZE = 300  # reasoning history_size (the node's default), the bound its scenes are held to
QUEUE_SIZE = 2  # reasoning queue_size (the node's default)
IMU_BUFFER_S = 10.0  # perception sync.buffer_s (the default)

COLUMNS = (
    ("t_s", "{:7.0f}"),
    ("node_rss_mb", "{:11.1f}"),
    ("player_rss_mb", "{:13.1f}"),
    ("labels_per_s", "{:12.1f}"),
    ("latency_p50_ms", "{:14.1f}"),
    ("latency_p99_ms", "{:14.1f}"),
    ("latency_max_ms", "{:14.1f}"),
    ("drops", "{:6d}"),
    ("superseded", "{:10d}"),
    ("clock_resets", "{:12d}"),
    ("imu_buffer", "{:10d}"),
    ("scenes_kept", "{:11d}"),
    ("activities", "{:10d}"),
    ("questions_waiting", "{:17d}"),
    ("answered", "{:8d}"),
    ("asked", "{:5d}"),
)


class SoakError(RuntimeError):
    """The soak could not be set up (bag, model, nodes not ready)."""


# --------------------------------------------------------------------------------------------------
# What this process observes over ROS


@dataclass
class Observer:
    """Frames and labels (for latency), the newest /diagnostics of each node, questions asked."""

    frames: collections.OrderedDict = field(default_factory=collections.OrderedDict)  # stamp ns -> time
    latencies_ms: list[float] = field(default_factory=list)  # since the last sample
    labels: int = 0  # since the last sample
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> newest key/values
    asked: int = 0
    answered: int = 0
    question_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_frame(self, msg) -> None:
        with self.lock:
            self.frames[stamp_to_ns(msg.header.stamp)] = time.monotonic()
            while len(self.frames) > 2000:  # bounded: the soak must not grow either
                self.frames.popitem(last=False)

    def on_label(self, msg) -> None:
        now = time.monotonic()
        with self.lock:
            self.labels += 1
            seen = self.frames.get(stamp_to_ns(msg.header.stamp))
            if seen is not None:
                self.latencies_ms.append((now - seen) * 1000.0)

    def on_diagnostics(self, msg) -> None:
        for status in msg.status:
            node = status.name.split(":")[0]
            if node in ("perception", "reasoning"):
                with self.lock:
                    self.diagnostics[node] = {kv.key: kv.value for kv in status.values}

    def take_period(self) -> tuple[int, list[float], dict[str, dict[str, str]]]:
        with self.lock:
            labels, latencies = self.labels, self.latencies_ms
            self.labels, self.latencies_ms = 0, []
            return labels, latencies, {k: dict(v) for k, v in self.diagnostics.items()}


def _int(values: dict[str, str], key: str) -> int:
    try:
        return int(values.get(key, 0))
    except ValueError:
        return 0


def sample_row(
    t: float, period_s: float, node_pid: int, player_pid: int, observer: Observer
) -> dict[str, Any]:
    labels, latencies, diag = observer.take_period()
    perception, reasoning = diag.get("perception", {}), diag.get("reasoning", {})
    drops = sum(_int(perception, k) for k in perception if k.startswith("drop:") and k != "drop:superseded")
    drops += sum(_int(reasoning, k) for k in reasoning if k.startswith("drop:"))
    return {
        "t_s": t,
        "node_rss_mb": rss_mb(node_pid),
        "player_rss_mb": rss_mb(player_pid),
        "labels_per_s": labels / period_s if period_s > 0 else 0.0,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "latency_max_ms": float(np.max(latencies)) if latencies else float("nan"),
        "drops": drops,
        "superseded": _int(perception, "drop:superseded"),
        "clock_resets": _int(perception, "drop:imu:clock_reset"),
        "imu_buffer": _int(perception, "imu_buffer_samples"),
        "scenes_kept": _int(reasoning, "scenes_kept"),
        "activities": _int(reasoning, "activities_kept"),
        "questions_waiting": _int(reasoning, "questions_waiting"),
        "answered": observer.answered,
        "asked": observer.asked,
        "drops_by_reason": {k: _int(perception, k) for k in perception if k.startswith("drop:")}
        | {f"reasoning/{k}": _int(reasoning, k) for k in reasoning if k.startswith("drop:")},
    }


def format_header() -> str:
    return " ".join(name.rjust(len(fmt.format(0))) for name, fmt in COLUMNS)


def format_row(row: dict[str, Any]) -> str:
    cells = []
    for name, fmt in COLUMNS:
        value = row[name]
        if isinstance(value, float) and not np.isfinite(value):
            cells.append("-".rjust(len(fmt.format(0))))
        else:
            cells.append(fmt.format(value))
    return " ".join(cells)


# --------------------------------------------------------------------------------------------------
# Verdict


def slope_per_min(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per minute; 0 with fewer than 3 finite points."""
    t, y = np.asarray(ts, dtype=float), np.asarray(ys, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(t[keep]) == 0:
        return 0.0
    return float(np.polyfit(t[keep], y[keep], 1)[0] * 60.0)


def verdict(
    samples: list[dict[str, Any]],
    *,
    rss_slope_limit: float,
    bounds: dict[str, float],
    latency_growth_limit: float = LATENCY_GROWTH_LIMIT,
    questions: tuple[int, int],
) -> dict[str, Any]:
    """Memory, buffers, labels and questions over the run: what grew, what stalled.

    ``questions``: (asked, answered) at the end, once the last question was waited for (the last
    sample's counts miss a question answered after it).
    """
    if len(samples) < 4:
        return {"ok": False, "problems": [f"only {len(samples)} samples: run longer"], "details": {}}
    t_end = samples[-1]["t_s"]
    second = [s for s in samples if s["t_s"] >= t_end / 2]
    first = [s for s in samples if s["t_s"] < t_end / 2]
    details: dict[str, Any] = {}
    problems: list[str] = []

    ts = [s["t_s"] for s in second]
    for key in ("node_rss_mb", "player_rss_mb"):
        slope = slope_per_min(ts, [s[key] for s in second])
        values = [s[key] for s in second if np.isfinite(s[key])]
        details[key] = {
            "first": samples[0][key],
            "last": samples[-1][key],
            "second_half_slope_mb_per_min": slope,
            "second_half_growth_mb": (max(values) - min(values)) if values else float("nan"),
        }
        if slope > rss_slope_limit:
            problems.append(f"{key} grows {slope:.1f} MB/min over the second half (limit {rss_slope_limit})")

    for key, bound in bounds.items():
        values = [s[key] for s in samples]
        slope = slope_per_min(ts, [s[key] for s in second])
        # Every buffer here has a bound: above it is growth. Climbing below it is warm-up (a history
        # filling up): reported, not a problem.
        details[key] = {
            "max": max(values),
            "bound": bound,
            "first_half_max": max((s[key] for s in first), default=0),
            "second_half_max": max(s[key] for s in second),
            "second_half_slope_per_min": slope,
            "still_filling": slope > 0.05 * bound,
        }
        if max(values) > bound:
            problems.append(f"{key} reached {max(values)}, above its bound {bound:g}")

    stalled = [s["t_s"] for s in samples[1:] if s["labels_per_s"] == 0]
    details["labels"] = {
        "periods_without_labels": stalled,
        "labels_per_s_mean": float(np.mean([s["labels_per_s"] for s in samples[1:]])),
    }
    if stalled:
        problems.append(f"no labels in {len(stalled)} sample period(s), at t = {stalled}")
    for key in ("latency_p50_ms", "latency_p99_ms"):
        values = [s[key] for s in samples if np.isfinite(s[key])]
        halves = [
            float(np.median([s[key] for s in half if np.isfinite(s[key])] or [np.nan]))
            for half in (first, second)
        ]
        details[key] = {
            "first_half": halves[0],
            "second_half": halves[1],
            "max": max(values, default=np.nan),
            "growth": halves[1] / halves[0] if halves[0] > 0 else float("nan"),
        }
    # A backlog shows as a tail that keeps growing: the second half's typical p99 well above the first's.
    growth = details["latency_p99_ms"]["growth"]
    details["latency_p99_ms"]["limit"] = latency_growth_limit
    if np.isfinite(growth) and growth > latency_growth_limit:
        problems.append(f"label latency p99 grew {growth:.2f}x from the first half to the second "
                        f"(limit {latency_growth_limit:g}x: a backlog)")
    asked, answered = questions
    details["questions"] = {"asked": asked, "answered": answered}
    if asked and not answered:
        problems.append(f"none of {asked} questions was answered")
    return {"ok": not problems, "problems": problems, "details": details}


# --------------------------------------------------------------------------------------------------
# The soak


def default_bag(folder: Path) -> Path:
    """A small generated recording (real HAPT IMU, real photos) to loop: 12 s, 15 Hz, 128x96."""
    from frozen_vlm_perception.data.demo_bag import make_small_bag

    path = folder / "soak-bag"
    make_small_bag(path, seconds=12.0, num_segments=2, camera_rate_hz=15.0, image_width=128, image_height=96)
    return path


def imu_rate_hz(bag: str | Path, max_messages: int = 2000) -> float:
    """The IMU rate of a bag, from its first ``max_messages`` IMU messages (0 when it has none)."""
    from frozen_vlm_perception.data.bags import IMU_TOPIC, BagReader

    stamps = []
    with BagReader(bag) as reader:
        for _topic, _type, receive_ns, _raw in reader.raw_messages([IMU_TOPIC]):
            stamps.append(receive_ns)
            if len(stamps) >= max_messages:
                break
    if len(stamps) < 2 or stamps[-1] == stamps[0]:
        return 0.0
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) * 1e-9)


def run_soak(
    *,
    bag: str | Path | None = None,
    minutes: float = 5.0,
    model: str | None = None,
    sample_s: float = DEFAULT_SAMPLE_S,
    question_s: float = DEFAULT_QUESTION_S,
    rss_slope_limit: float = DEFAULT_RSS_SLOPE_LIMIT_MB_PER_MIN,
    latency_growth_limit: float = LATENCY_GROWTH_LIMIT,
    question_timeout_s: float = QUESTION_TIMEOUT_S,
    out=None,
) -> dict[str, Any]:
    """Run the soak; returns {"settings", "samples", "verdict"} (see the module docstring). ``out``:
    where the table goes (None: sys.stdout at call time, so a replaced stdout gets it)."""
    out = sys.stdout if out is None else out
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from frozen_vlm_perception.nodes.query_client import QueryError, query
    from frozen_vlm_perception.nodes.runner import READY_LINE, params_file_from
    from frozen_vlm_perception.tools.latency_probe import ensure_model
    from frozen_vlm_perception_interfaces.msg import ActivityLabel

    if not minutes > 0 or not sample_s > 0 or not question_timeout_s > 0:
        raise SoakError("minutes, the sample period and the question timeout must be positive")
    with tempfile.TemporaryDirectory(prefix="fvp-soak-") as tmp:
        bag_path = Path(bag) if bag else default_bag(Path(tmp))
        if not bag_path.exists():
            raise SoakError(f"bag {bag_path} not found")
        model_dir = ensure_model(model, tmp)
        imu_hz = imu_rate_hz(bag_path)
        settings = {
            "bag": str(bag_path),
            "model": model_dir,
            "minutes": minutes,
            "sample_s": sample_s,
            "bag_imu_rate_hz": imu_hz,
            "question_s": question_s,
            "rss_slope_limit_mb_per_min": rss_slope_limit,
            "latency_growth_limit": latency_growth_limit,
            "question_timeout_s": question_timeout_s,
            "ros_domain_id": os.environ.get("ROS_DOMAIN_ID", "0"),
        }
        params = {
            "perception": {
                "model_dir": model_dir,
                "torch_threads": 1,
                "diagnostics_period_s": 1.0,
                "sync": {"buffer_s": IMU_BUFFER_S},
            },
            "reasoning": {
                "model_dir": model_dir,
                "torch_threads": 1,
                "diagnostics_period_s": 1.0,
                "max_new_tokens": MAX_NEW_TOKENS,
                "history_size": HISTORY_SIZE,
                "queue_size": QUEUE_SIZE,
                "answer_timeout_s": float(question_timeout_s),
            },
        }
        params_file = params_file_from(params, tmp)
        print(f"soak: {minutes:g} min on {bag_path}, model {model_dir}", file=out, flush=True)

        runner = NodeProcess(
            [sys.executable, "-m", "frozen_vlm_perception.nodes.runner", "--params-file", params_file],
            READY_LINE,
            "the nodes",
            keep_lines=400,
        )
        player = None
        context = Context()
        executor = spin = None
        stop_questions = threading.Event()
        asker: threading.Thread | None = None
        observer = Observer()
        samples: list[dict[str, Any]] = []
        try:
            try:
                runner.wait_ready(READY_TIMEOUT_S)
            except NodeNotReady as err:
                raise SoakError(str(err)) from None
            rclpy.init(args=["fvp-soak"], context=context)
            node = rclpy.create_node(f"fvp_soak_{os.getpid()}", context=context)
            node.create_subscription(Image, "/camera/image_raw", observer.on_frame, QoSProfile(depth=10))
            node.create_subscription(
                ActivityLabel, "/perception/activity", observer.on_label, QoSProfile(depth=50)
            )
            node.create_subscription(
                DiagnosticArray, "/diagnostics", observer.on_diagnostics, QoSProfile(depth=20)
            )
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            spin = threading.Thread(target=executor.spin, name="soak-executor", daemon=True)
            spin.start()
            player = NodeProcess(
                [sys.executable, "-m", "frozen_vlm_perception.nodes.player", str(bag_path), "--loop"],
                name="the player",
                keep_lines=400,
            )

            def ask_one() -> None:
                observer.asked += 1
                try:
                    reply = query(
                        STANDARD_QUESTION, timeout=question_timeout_s, max_new_tokens=MAX_NEW_TOKENS
                    )
                except QueryError as err:
                    observer.question_failures.append(str(err))
                    return
                if reply.success:
                    observer.answered += 1
                else:
                    observer.question_failures.append(reply.message)

            start = time.monotonic()
            end = start + minutes * 60.0
            next_sample, next_question = start + sample_s, start + question_s / 2
            last_sample = start
            print(format_header(), file=out, flush=True)
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_question and (asker is None or not asker.is_alive()):
                    asker = threading.Thread(target=ask_one, name="soak-question", daemon=True)
                    asker.start()
                    next_question = now + question_s
                if now >= next_sample:
                    row = sample_row(
                        now - start, now - last_sample, runner.process.pid, player.process.pid, observer
                    )
                    samples.append(row)
                    print(format_row(row), file=out, flush=True)
                    last_sample, next_sample = now, next_sample + sample_s
                for child, name in ((runner, "nodes"), (player, "player")):
                    code = child.process.poll()
                    if code is not None:
                        raise SoakError(f"the {name} process exited with {code}:\n{child.output[-3000:]}")
                time.sleep(min(0.2, max(0.0, min(next_sample, next_question) - time.monotonic())))
        finally:
            stop_questions.set()
            if asker is not None:
                asker.join(timeout=question_timeout_s + 5)
            if player is not None:
                player.stop()
            runner_code = runner.stop()
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if spin is not None:
                spin.join(timeout=5.0)
            rclpy.try_shutdown(context=context)
        # The IMU buffer holds buffer_s of samples (stamps, not arrival: allow twice that).
        bounds = {
            "imu_buffer": max(2 * IMU_BUFFER_S * imu_hz, 100.0),
            "scenes_kept": HISTORY_SIZE,
            "activities": 2 * HISTORY_SIZE,
            "questions_waiting": QUEUE_SIZE,
        }
        # The last question was waited for (asker.join above): count its answer too.
        result = verdict(samples, rss_slope_limit=rss_slope_limit, bounds=bounds,
                         latency_growth_limit=latency_growth_limit,
                         questions=(observer.asked, observer.answered))
        result["details"]["runner_exit_code"] = runner_code
        result["details"]["question_failures"] = observer.question_failures[-10:]
        return {"settings": settings, "samples": samples, "verdict": result}


def print_verdict(result: dict[str, Any], out=None) -> None:
    out = sys.stdout if out is None else out
    v, d = result["verdict"], result["verdict"]["details"]
    rss = d.get("node_rss_mb", {})
    print("", file=out)
    if rss:
        print(
            f"node RSS {rss['first']:.0f} -> {rss['last']:.0f} MB; second half: slope "
            f"{rss['second_half_slope_mb_per_min']:+.1f} MB/min, range {rss['second_half_growth_mb']:.1f} MB "
            f"(limit {result['settings']['rss_slope_limit_mb_per_min']} MB/min)",
            file=out,
        )
    for key in ("imu_buffer", "scenes_kept", "activities", "questions_waiting"):
        if key in d:
            note = " (still filling: run longer to see it level off)" if d[key]["still_filling"] else ""
            print(
                f"{key}: max {d[key]['max']} (bound {d[key]['bound']:g}), first half max "
                f"{d[key]['first_half_max']}, second half max {d[key]['second_half_max']}{note}",
                file=out,
            )
    if "questions" in d:
        print(f"questions: {d['questions']['answered']} answered of {d['questions']['asked']}", file=out)
    if result["settings"]["minutes"] < 5:
        print(
            "note: a short run, where warm-up (model pages touched by the first answer, caches) can "
            "dominate; use --minutes 30 or more for a leak verdict",
            file=out,
        )
    print(
        "verdict: " + ("no growth, no stall" if v["ok"] else "PROBLEMS: " + "; ".join(v["problems"])),
        file=out,
        flush=True,
    )


def main_soak(args: argparse.Namespace) -> int:
    """``fvp soak``: args.bag, minutes, report (and optionally model, sample_s, question_s,
    rss_slope_limit, latency_growth_limit, question_timeout)."""
    try:
        result = run_soak(
            bag=args.bag,
            minutes=args.minutes,
            model=getattr(args, "model", None),
            sample_s=getattr(args, "sample_s", DEFAULT_SAMPLE_S),
            question_s=getattr(args, "question_s", DEFAULT_QUESTION_S),
            rss_slope_limit=getattr(args, "rss_slope_limit", DEFAULT_RSS_SLOPE_LIMIT_MB_PER_MIN),
            latency_growth_limit=getattr(args, "latency_growth_limit", None) or LATENCY_GROWTH_LIMIT,
            question_timeout_s=getattr(args, "question_timeout", None) or QUESTION_TIMEOUT_S,
        )
    except SoakError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_verdict(result)
    if args.report:
        Path(args.report).write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
        print(f"report written to {args.report}")
    return 0 if result["verdict"]["ok"] else 1


def _finite(value: Any) -> Any:
    """The result as plain JSON: numpy scalars as Python numbers, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
