"""Replay a rosbag2 recording's camera, IMU and ground-truth topics with the recorded timing.

    python -m frozen_vlm_perception.nodes.player BAG [--rate 1.0] [--clock] [--loop] [--topics ...]

What ``ros2 bag play`` does, for machines without rosbag2_py (docs/ARCHITECTURE.md section 6). Messages are
read with ``rosbags`` (:mod:`frozen_vlm_perception.data.bags`) and published as the CDR bytes stored
in the bag (rclpy publishes serialized messages as they are: nothing is deserialized or re-encoded,
so a 640x480 frame costs one copy). Header stamps are the recorded ones. With ``publish_clock``,
``/clock`` follows the bag's receive times, so nodes with ``use_sim_time`` see the recording's
time. With ``loop`` the recording starts over; stamps then jump back (the IMU buffer treats that as
a clock reset and starts over).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frozen_vlm_perception.data.bags import (
    ACTIVITY_TOPIC,
    CAMERA_TOPIC,
    IMU_TOPIC,
    PLACE_TOPIC,
    BagError,
    BagReader,
)

DEFAULT_TOPICS = (CAMERA_TOPIC, IMU_TOPIC, ACTIVITY_TOPIC, PLACE_TOPIC)
CLOCK_HZ = 100.0  # /clock ticks at least this often while waiting for the next message


@dataclass
class PlayStats:
    """What was published: messages per topic, passes over the bag, wall time, and lateness."""

    published: collections.Counter = field(default_factory=collections.Counter)
    passes: int = 0
    seconds: float = 0.0
    max_late_s: float = 0.0  # how far behind the schedule publishing fell at worst


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class (the package must be installed)."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise BagError(f"cannot publish {msgtype}: its Python message package is missing ({err})") from err


def play_bag(
    bag: str | Path,
    *,
    rate: float = 1.0,
    publish_clock: bool = False,
    topics: Sequence[str] | None = None,
    loop: bool = False,
    stop: threading.Event | None = None,
    node_name: str = "fvp_player",
    ros_args: Sequence[str] = (),
    delay: float = 1.0,
    handle_signals: bool = True,
) -> PlayStats:
    """Publish ``topics`` of ``bag`` (default: camera, IMU and ground truth, those it has) in real time.

    ``rate``: 2.0 plays twice as fast. Returns when the bag ends (never with ``loop``), on Ctrl-C /
    SIGTERM, or when ``stop`` is set. ``delay``: seconds between creating the publishers and the
    first message, for discovery (like ``ros2 bag play --delay``): messages published before the
    subscribers have matched are lost. Runs in a private rclpy Context.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    from frozen_vlm_perception.nodes.lifecycle import install_stop_handlers, restore_signal_handlers

    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    stop = stop or threading.Event()
    stats = PlayStats()
    with BagReader(bag) as reader:
        available = reader.topics
    wanted = [t for t in (topics or DEFAULT_TOPICS) if t in available]
    missing = [t for t in (topics or ()) if t not in available]
    if missing:
        raise BagError(f"{bag} has no topic(s) {missing}; it has {sorted(available)}")
    if not wanted:
        raise BagError(f"{bag} has none of {list(DEFAULT_TOPICS)}; it has {sorted(available)}")

    restore = install_stop_handlers(stop) if handle_signals else {}
    context = Context()
    rclpy.init(args=["fvp-player", "--ros-args", *ros_args], context=context)  # never sys.argv
    node = rclpy.create_node(node_name, context=context)
    try:
        # Depth 100 for the high-rate topics; images are large and only the newest matters.
        publishers = {
            topic: node.create_publisher(message_class(available[topic]), topic,
                                         QoSProfile(depth=10 if available[topic].endswith("/Image") else 100))
            for topic in wanted
        }
        clock_pub = node.create_publisher(Clock, "/clock", 10) if publish_clock else None
        node.get_logger().info(f"playing {bag} ({', '.join(wanted)}) at rate {rate}")
        if stop.wait(delay):
            return stats
        start = time.monotonic()
        while not stop.is_set() and context.ok():
            schedule = None  # set by the first message of each pass
            with BagReader(bag) as reader:
                for topic, _msgtype, receive_ns, raw in reader.raw_messages(wanted):
                    schedule = schedule or _Schedule(receive_ns, rate)
                    due = schedule.due(receive_ns)
                    if not _wait_until(due, stop, clock_pub, schedule, receive_ns):
                        break
                    stats.max_late_s = max(stats.max_late_s, time.monotonic() - due)
                    if clock_pub is not None:
                        clock_pub.publish(_clock(receive_ns))
                    publishers[topic].publish(bytes(raw))  # serialized CDR, published as is
                    stats.published[topic] += 1
            stats.passes += 1
            if not loop or schedule is None:
                break
        stats.seconds = time.monotonic() - start
        return stats
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        restore_signal_handlers(restore)


def _clock(ns: int):
    from rosgraph_msgs.msg import Clock

    from frozen_vlm_perception.conversions import to_time_msg

    return Clock(clock=to_time_msg(int(ns)))


class _Schedule:
    """Bag receive times -> monotonic wall times for one pass."""

    def __init__(self, first_ns: int, rate: float):
        self.first_ns, self.rate, self.start = first_ns, rate, time.monotonic()

    def due(self, receive_ns: int) -> float:
        return self.start + (receive_ns - self.first_ns) * 1e-9 / self.rate

    def bag_ns_now(self) -> int:
        return self.first_ns + int((time.monotonic() - self.start) * self.rate * 1e9)


def _wait_until(due: float, stop: threading.Event, clock_pub, schedule: _Schedule, next_ns: int) -> bool:
    """Sleep until ``due`` (monotonic), ticking /clock meanwhile (never past the next message's
    time, so the clock never runs backwards); False when stopped."""
    while True:
        remaining = due - time.monotonic()
        if remaining <= 0:
            return not stop.is_set()
        if stop.wait(remaining if clock_pub is None else min(remaining, 1.0 / CLOCK_HZ)):
            return False
        if clock_pub is not None:
            clock_pub.publish(_clock(min(schedule.bag_ns_now(), next_ns)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m frozen_vlm_perception.nodes.player",
                                     description="Replay a bag's camera, IMU and ground-truth topics.")
    add_play_arguments(parser)
    args = parser.parse_args(argv)
    return main_play(args, ros_args=ros_args)


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    """The player's flags, for this module's command line and ``fvp play`` alike."""
    parser.add_argument("bag", help="rosbag2 folder or .mcap/.db3 file")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time)")
    parser.add_argument("--loop", action="store_true", help="play again from the start when done")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds to wait for discovery first")
    parser.add_argument("--topics", nargs="+", default=None, help=f"default: those of {list(DEFAULT_TOPICS)}")


def main_play(args: argparse.Namespace, ros_args: Sequence[str] = ()) -> int:
    """``fvp play``: the flags of :func:`add_play_arguments`."""
    try:
        stats = play_bag(args.bag, rate=args.rate, publish_clock=args.clock, loop=args.loop,
                         topics=args.topics, delay=args.delay, ros_args=ros_args)
    except (BagError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"published {dict(stats.published)} in {stats.seconds:.1f} s "
          f"(worst lateness {stats.max_late_s * 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
