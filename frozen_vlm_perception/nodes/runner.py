"""Both nodes in one process, for machines without ``ros2 launch`` (and for tests and the demo).

    python -m frozen_vlm_perception.nodes.runner [--params-file config/perception.yaml]
        [--nodes perception,reasoning] [--namespace /robot1] [--ros-args -r /camera/image_raw:=/cam ...]

Each node gets its own single-threaded executor spinning in its own thread (docs/ARCHITECTURE.md
section 5: a shared multi-threaded executor made label latency ten times worse here), and is brought to
``active`` through the real lifecycle transitions (configure, activate) when its ``autostart``
parameter is true. Ctrl-C or SIGTERM runs shutdown through the lifecycle too (workers stopped,
models freed) before the ROS context goes down. The rejected arrangement (a MultiThreadedExecutor per
node with blocking service callbacks) is gone from the code; its numbers are in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

NODE_NAMES = ("perception", "reasoning")
READY_LINE = "fvp-runner: ready"
DEFAULT_PARAMS_FILE = "config/perception.yaml"


class RunnerError(RuntimeError):
    """Bad arguments or a parameters file that cannot be used."""


def params_file_from(params: Mapping[str, Any] | str | os.PathLike | None, tmp_dir: str) -> str | None:
    """A ROS parameters YAML file for ``params``.

    ``params`` is a path (used as is), or a dict either in the ROS layout
    (``{"/**/perception": {"ros__parameters": {...}}}``) or the short one
    (``{"perception": {"model_dir": ..., "sync": {"max_wait_s": 0.1}}}``), which applies to the node
    of that name in any namespace.
    """
    import yaml

    if params is None:
        return None
    if isinstance(params, (str, os.PathLike)):
        path = Path(params)
        if not path.is_file():
            raise RunnerError(f"parameters file {path} not found")
        return str(path)
    document: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(value, Mapping):
            raise RunnerError(f"parameters for {key!r} must be a mapping, got {type(value).__name__}")
        if "ros__parameters" in value:
            document[key] = dict(value)
        else:
            document[key if key.startswith("/") else f"/**/{key}"] = {"ros__parameters": dict(value)}
    path = Path(tmp_dir) / "params.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(path)


def _make_node(name: str, *, context, namespace: str):
    if name == "perception":
        from frozen_vlm_perception.nodes.perception_node import PerceptionNode

        return PerceptionNode(context=context, namespace=namespace)
    if name == "reasoning":
        from frozen_vlm_perception.nodes.reasoning_node import ReasoningNode

        return ReasoningNode(context=context, namespace=namespace)
    raise RunnerError(f"unknown node {name!r}; known: {list(NODE_NAMES)}")


def run_nodes(
    params: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    nodes: Sequence[str] = NODE_NAMES,
    namespace: str = "",
    ros_args: Sequence[str] = (),
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    handle_signals: bool = True,
) -> int:
    """Run ``nodes`` until Ctrl-C / SIGTERM (or ``stop`` is set); 0 on a clean run, 1 if bring-up failed.

    ``params``: a ROS parameters YAML path or a dict (see :func:`params_file_from`).
    ``ros_args``: extra ROS arguments (remaps ``-r from:=to``, ``-p name:=value``, log levels).
    ``on_ready``: called with ``{name: node}`` once every autostarting node is active.
    Uses its own rclpy Context, so it can run next to other rclpy code in the same process.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from frozen_vlm_perception.nodes.lifecycle import bring_up, install_stop_handlers, restore_signal_handlers
    from frozen_vlm_perception.nodes.parameters import ParameterError

    unknown = [n for n in nodes if n not in NODE_NAMES]
    if unknown or not nodes:
        raise RunnerError(f"unknown node(s) {unknown}; known: {list(NODE_NAMES)}")
    stop = stop or threading.Event()
    restore = install_stop_handlers(stop) if handle_signals else {}
    context = Context()
    created: dict[str, Any] = {}
    spinners: list[tuple[Any, threading.Thread]] = []
    code = 0
    with tempfile.TemporaryDirectory(prefix="fvp-runner-") as tmp:
        args = ["fvp-runner", "--ros-args"]
        params_file = params_file_from(params, tmp)
        if params_file:
            args += ["--params-file", params_file]
        args += list(ros_args)
        try:
            rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
        except Exception as err:  # e.g. a parameters file rcl cannot parse
            restore_signal_handlers(restore)
            raise RunnerError(f"cannot start ROS with {args[1:]}: {err}") from err
        try:
            for name in nodes:
                try:
                    node = _make_node(name, context=context, namespace=namespace)
                except ParameterError as err:
                    raise RunnerError(str(err)) from None
                except Exception as err:  # rcl/DDS refused the node, e.g. DDS security (fails closed)
                    raise RunnerError(f"cannot create the {name} node: {err}") from err
                created[name] = node
                ex = SingleThreadedExecutor(context=context)
                ex.add_node(node)
                thread = threading.Thread(target=_spin, args=(ex, ExternalShutdownException),
                                          name=f"executor-{name}", daemon=True)
                thread.start()
                spinners.append((ex, thread))
            # Transitions after the executors run: lifecycle services answer (get_state) while models load.
            for node in created.values():
                if node.get_parameter("autostart").value and not bring_up(node):
                    code = 1
            if code == 0:
                print(f"{READY_LINE}: {', '.join(n.get_fully_qualified_name() for n in created.values())}",
                      flush=True)
                if on_ready is not None:
                    on_ready(dict(created))
                while not stop.wait(0.2) and context.ok():
                    pass
        finally:
            for node in created.values():
                _shutdown_node(node)
            for ex, _ in spinners:
                ex.shutdown(timeout_sec=2.0)
            for _, thread in spinners:
                thread.join(timeout=5.0)
            for node in created.values():
                node.destroy_node()
            rclpy.try_shutdown(context=context)
            restore_signal_handlers(restore)
    return code


def _spin(executor, external_shutdown: type[BaseException]) -> None:
    try:
        executor.spin()
    except external_shutdown:
        pass


def _shutdown_node(node) -> None:
    """The lifecycle shutdown transition (stops workers, frees models), or a plain release."""
    try:
        node.trigger_shutdown()  # from unconfigured, inactive or active; raises when already finalized
    except Exception as err:  # already finalized, or the context is gone: still free what the node holds
        print(f"fvp-runner: shutdown transition of {node.get_name()} failed: {err}", file=sys.stderr)
    node.release()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m frozen_vlm_perception.nodes.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file",
                        help=f"ROS parameters YAML (default: the shipped {DEFAULT_PARAMS_FILE})")
    parser.add_argument("--nodes", default=",".join(NODE_NAMES), help="comma-separated: perception,reasoning")
    parser.add_argument("--namespace", default="", help="namespace of both nodes, e.g. /robot1")
    args = parser.parse_args(argv)
    return main_run(args, ros_args=ros_args)


def main_run(args: argparse.Namespace, ros_args: Sequence[str] = ()) -> int:
    """``fvp run``: args.params (or params_file; default the shipped config/perception.yaml), and
    optionally nodes and namespace."""
    from frozen_vlm_perception.paths import package_file

    params = getattr(args, "params", None) or getattr(args, "params_file", None)
    if params is None:
        try:
            params = package_file(DEFAULT_PARAMS_FILE)
        except FileNotFoundError:
            params = None  # the nodes' declared defaults
    nodes = [n for n in getattr(args, "nodes", ",".join(NODE_NAMES)).split(",") if n]
    try:
        return run_nodes(params, nodes=nodes, namespace=getattr(args, "namespace", ""), ros_args=ros_args)
    except RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
