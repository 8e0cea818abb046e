"""`fvp`: the one user-facing command. Each subcommand is thin: flags -> config -> package code.

The subcommands' own flags come from the modules that use them (one place for each flag); the
work itself (models, rclpy) is imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _demo(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.tools.demo import run_demo

    return run_demo(args)


def _make_demo_bag(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.data.demo_bag import main_make_demo_bag

    return main_make_demo_bag(args)


def _train_align(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.training.align import main_align

    return main_align(args)


def _train_adapter(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.training.adapter import main_adapter

    return main_adapter(args)


def _train_fusion(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.training.fusion import main_fusion

    return main_fusion(args)


def _eval(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.evaluation.evaluate import main_eval

    return main_eval(args)


def _bench(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.tools.bench import main_bench

    return main_bench(args)


def _run(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.nodes.runner import main_run

    return main_run(args)


def _play(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.nodes.player import main_play

    return main_play(args)


def _query(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.nodes.query_client import main_query

    return main_query(args)


def _soak(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.tools.soak import main_soak

    return main_soak(args)


def _inspect(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.inspection import main_inspect

    return main_inspect(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvp",
        description="frozen_vlm_perception: camera + IMU perception for frozen vision-language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help_line: str, handler: Handler, epilog: str | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_line, description=help_line, epilog=epilog)
        p.set_defaults(handler=handler)
        return p

    p = add(
        "demo",
        "make the demo recording if missing, run the nodes on its test split, print labels and answers",
        _demo,
    )
    p.add_argument("--bag", default=None, help="demo bag folder (default: made under ~/.cache if missing)")
    p.add_argument("--model", default=None, help="model folder (default: the shipped models/demo)")
    p.add_argument("--seconds", type=float, default=60.0, help="how much of the test split to play")
    p.add_argument(
        "--verbose", action="store_true", help="print every label as it comes back (default: a line a second)"
    )

    p = add(
        "make-demo-bag", "write the demo rosbag2 from real HAPT IMU streams and real photos", _make_demo_bag
    )
    _add_make_demo_bag_arguments(p)

    p = add("train", "train the IMU encoder (align) or the adapter and activity head (adapter)", lambda a: 2)
    train_sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    align = train_sub.add_parser("align", help="stage 1: InfoNCE + supervised alignment of the IMU encoder")
    align.set_defaults(handler=_train_align)
    adapter = train_sub.add_parser(
        "adapter", help="stage 2: resampler/adapter + head with the frozen LM's loss"
    )
    adapter.set_defaults(handler=_train_adapter)
    fusion = train_sub.add_parser(
        "fusion", help="choose a finished model's fusion weight alpha on a validation bag (no retraining)"
    )
    fusion.set_defaults(handler=_train_fusion)
    _add_train_arguments(align, adapter, fusion)

    p = add(
        "eval", "score a model on a bag: accuracy, macro-F1, retrieval, QA, latency; writes a report", _eval
    )
    _add_eval_arguments(p)

    p = add("bench", "time every stage of the pipeline on this machine and print tables", _bench)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--model", default=None, help="model folder (default: models/demo, else fresh trainable parts)"
    )
    p.add_argument("--repeats", type=int, default=15, help="timed repetitions per measurement")
    p.add_argument(
        "--batch-sizes", default="1,4,8", help="comma-separated batch sizes for the throughput table"
    )
    p.add_argument("--no-lm", action="store_true", help="skip the language model")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("--no-system", action="store_true", help="skip the part that runs the real nodes")
    p.add_argument("--seconds", type=float, default=20.0, help="system part: seconds of streaming measured")
    p.add_argument("--camera-hz", type=float, default=30.0, help="system part: camera rate (640x480 rgb8)")
    p.add_argument("--imu-hz", type=float, default=200.0, help="system part: IMU rate")
    p.add_argument("--questions", type=int, default=3, help="system part: questions through the service")
    p.add_argument("--answering-seconds", type=float, default=None,
                   help="system part: seconds of questions asked back to back (default: --seconds)")
    p.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                   help="system part: a parameter for both node processes (repeatable; for A/B runs)")
    p.add_argument(
        "--node-threads",
        type=int,
        default=None,
        help="torch threads per node (default: as config/perception.yaml)",
    )

    p = add("run", "run the perception and reasoning nodes in this process (no `ros2 launch` needed)", _run)
    p.add_argument(
        "--params", default=None, metavar="FILE", help="ROS parameters YAML (config/perception.yaml)"
    )

    from frozen_vlm_perception.nodes.player import add_play_arguments
    from frozen_vlm_perception.nodes.query_client import EPILOG as QUERY_EPILOG
    from frozen_vlm_perception.nodes.query_client import add_query_arguments

    p = add("play", "publish a bag's camera and IMU with the recorded timing", _play)
    add_play_arguments(p)

    p = add("query", "ask the running reasoning node a question and print the answer", _query, QUERY_EPILOG)
    add_query_arguments(p)

    p = add("soak", "replay a bag in a loop for a while; report memory, buffers, drops and latency", _soak)
    p.add_argument("--bag", default=None, help="bag to loop (default: a small generated one)")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--report", default=None, metavar="FILE", help="write the samples as JSON")
    p.add_argument("--latency-growth-limit", type=float, default=None, metavar="X",
                   help="second-half over first-half label latency p99 that counts as a backlog "
                        "(default 1.5; more where other jobs share the machine)")
    p.add_argument("--question-timeout", type=float, default=None, metavar="S",
                   help="seconds a question may take, waiting included, before it counts as unanswered "
                        "(default 30; more where other jobs share the machine)")

    p = add(
        "inspect",
        "what the frozen LM reads: each pseudo-token's nearest vocabulary tokens and cosines, per scene",
        _inspect,
    )
    _add_inspect_arguments(p)
    return parser


def _add_make_demo_bag_arguments(p: argparse.ArgumentParser) -> None:
    from frozen_vlm_perception.data.demo_bag import add_make_demo_bag_arguments

    add_make_demo_bag_arguments(p)


def _add_train_arguments(
    align: argparse.ArgumentParser, adapter: argparse.ArgumentParser, fusion: argparse.ArgumentParser
) -> None:
    from frozen_vlm_perception.training.cli_args import (
        add_adapter_arguments,
        add_align_arguments,
        add_fusion_arguments,
    )

    add_align_arguments(align)
    add_adapter_arguments(adapter)
    add_fusion_arguments(fusion)


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from frozen_vlm_perception.evaluation.evaluate import add_eval_arguments

    add_eval_arguments(p)


def _add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    from frozen_vlm_perception.inspection import add_inspect_arguments

    add_inspect_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
