"""Running a lifecycle node: transition callbacks that log their errors, the teardown both nodes share,
configure + activate in-process, a node's console-script main, and the Ctrl-C / SIGTERM handlers."""

from __future__ import annotations

import functools
import os
import signal
import threading


def log_transition_errors(callback):
    """Decorator for lifecycle transition callbacks: rclpy turns an exception raised in one into
    ERROR without a word (then on_error cleans up); this logs it first, naming the transition."""

    @functools.wraps(callback)
    def wrapper(self, state):
        try:
            return callback(self, state)
        except Exception as err:
            self.get_logger().error(f"{callback.__name__} failed: {type(err).__name__}: {err}")
            raise

    return wrapper


class TeardownReleases:
    """Lifecycle teardown both nodes share: cleanup, shutdown and error each stop the worker and
    free the model (the node's ``release``), then destroy its publishers and subscriptions
    (``_destroy_entities``). Mix in before LifecycleNode."""

    @log_transition_errors
    def on_cleanup(self, state):
        self.release()
        self._destroy_entities()
        return super().on_cleanup(state)

    @log_transition_errors
    def on_shutdown(self, state):
        self.release()
        self._destroy_entities()
        return super().on_shutdown(state)

    def on_error(self, state):
        from rclpy.lifecycle import TransitionCallbackReturn

        self.release()
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS


def bring_up(node) -> bool:
    """configure then activate a LifecycleNode in-process; False (and logged) when a step fails."""
    from rclpy.lifecycle import TransitionCallbackReturn

    for name, step in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
        if step() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error(f"lifecycle transition {name} failed; the node stays inactive")
            return False
    return True


def spin_lifecycle_main(node_factory, args: list[str] | None = None) -> int:
    """The body of a node's console script, in the style of ros2/demos.

    init, create the node, configure + activate it when its ``autostart`` parameter is true (the
    default), spin one single-threaded executor, and on Ctrl-C / SIGTERM stop the node's worker,
    free its model and shut down cleanly.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = node_factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if node.get_parameter("autostart").value and not bring_up(node):
            code = 1
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.release()  # the context may already be shut down: no lifecycle transition here
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def install_stop_handlers(stop: threading.Event) -> dict:
    """SIGINT/SIGTERM set ``stop`` (a second one exits at once); only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop.is_set():
            os._exit(128 + signum)  # a second Ctrl-C: the user does not want to wait for cleanup
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_signal_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
