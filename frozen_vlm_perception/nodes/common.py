"""What both nodes share: parameter tables, QoS from parameters, counters, diagnostics, model paths.

The parameter tables (:data:`ParamSpec` lists in each node module) are plain data so that the node
declares exactly them and the static tests (YAML files, launch files) check against the same list
without starting ROS. Defaults that belong to the model or the pairing policy are read from the
dataclasses in :mod:`frozen_vlm_perception.config` (the one place they live), never repeated here.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frozen_vlm_perception.paths import MODEL_CONFIG_FILE

PACKAGE = "frozen_vlm_perception"
# The shipped trained model, relative to the package data folder (repo root or share/<package>).
DEFAULT_MODEL_DIR = "models/demo"

RELIABILITY_CHOICES = ("reliable", "best_effort")
# Subscriptions may also follow the publishers on their topic (see resolve_reliability).
RELIABILITY_AUTO = "auto"
SUBSCRIPTION_RELIABILITY_CHOICES = (RELIABILITY_AUTO, *RELIABILITY_CHOICES)


# --------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: its name, default (its type is the default's type) and documentation.

    ``value_range``: (low, high) inclusive, turned into a Floating/IntegerRange in the descriptor.
    ``choices``: allowed strings (checked by the node; the descriptor lists them in
    additional_constraints, ROS has no enum parameter type).
    """

    name: str
    default: Any
    description: str
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    def descriptor(self):
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

        types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                 float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
        descriptor = ParameterDescriptor(
            name=self.name, type=types[type(self.default)], description=self.description
        )
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.value_range is not None:
            low, high = self.value_range
            if isinstance(self.default, int) and not isinstance(self.default, bool):
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
            else:
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)
                ]
        return descriptor

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable (None when it is). Ranges are also enforced by rclpy."""
        if self.choices and value not in self.choices:
            return f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}"
        return None


class ParameterError(ValueError):
    """A parameter given to the node (params file, -p) has the wrong type."""


def declare_parameters(node, specs: Sequence[ParamSpec]) -> None:
    """Declare every spec with its descriptor (before any publisher or subscription exists).

    ``alpha: 1`` in a YAML file is an integer, and rclpy refuses it for a double parameter; such
    whole numbers are accepted as doubles here. Any other type mismatch raises ParameterError
    naming the parameter and the expected type.
    """
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.parameter import Parameter

    overrides = getattr(node, "_parameter_overrides", None)  # rclpy's {name: Parameter} from files/-p
    if isinstance(overrides, dict):
        for spec in specs:
            given = overrides.get(spec.name)
            if isinstance(spec.default, float) and getattr(given, "type_", None) == Parameter.Type.INTEGER:
                overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(given.value))
    for spec in specs:
        try:
            node.declare_parameter(spec.name, spec.default, spec.descriptor())
        except InvalidParameterTypeException as err:
            raise ParameterError(
                f"parameter {spec.name!r} of node {node.get_name()!r} must be a "
                f"{type(spec.default).__name__} (default {spec.default!r}): {err}"
            ) from None


def check_topic_names(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Raise ValueError naming the parameter when a topic name parameter is not a valid ROS name."""
    from rclpy.exceptions import NameValidationException
    from rclpy.validate_topic_name import validate_topic_name

    for key in keys:
        try:
            validate_topic_name(values[key])
        except NameValidationException as err:
            raise ValueError(f"parameter {key!r}: {err}") from None


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


def parameter_values(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Current values of ``specs``; raises ValueError naming the first one that is not acceptable."""
    values = {s.name: node.get_parameter(s.name).value for s in specs}
    for spec in specs:
        problem = spec.check(values[spec.name])
        if problem:
            raise ValueError(problem)
    return values


def section(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"sync.buffer_s": 1.0, ...}``, "sync" -> ``{"buffer_s": 1.0}`` (for config.from_dict)."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in values.items() if k.startswith(head)}


def dataclass_specs(
    prefix: str, cls: type, docs: Mapping[str, tuple[str, tuple[float, float] | None]]
) -> list[ParamSpec]:
    """One ParamSpec per field of config dataclass ``cls``, its default taken from ``cls()``.

    ``docs`` maps every field to (description, range); a field without an entry is an error here,
    so a setting added to config.py cannot be silently missing from the node.
    """
    defaults = cls()
    specs = []
    for f in dataclasses.fields(cls):
        if f.name not in docs:
            raise KeyError(f"{cls.__name__}.{f.name} has no parameter description in the node")
        description, value_range = docs[f.name]
        specs.append(ParamSpec(f"{prefix}.{f.name}", getattr(defaults, f.name), description, value_range))
    return specs


def torch_threads_spec() -> ParamSpec:
    return ParamSpec(
        "torch_threads", 0,
        "Torch intra-op CPU threads for the whole process (0: torch's default, one per core). On a "
        "2-core machine 1 labelled 66% instead of 41% of 30 Hz frames (latency_probe).", (0, 1024))


def apply_torch_threads(node, threads: int) -> None:
    """torch.set_num_threads for the process (both nodes share it when they share a process)."""
    if threads > 0:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            node.get_logger().info(f"torch uses {threads} CPU thread(s)")


# --------------------------------------------------------------------------------------------------
# QoS


def qos_profile(depth: int, reliability: str):
    """Keep-last ``depth`` with the given reliability ('reliable' or 'best_effort'), volatile."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policies = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
    policy = policies[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy)


def resolve_reliability(setting: str, offered: Iterable[str]) -> str:
    """The reliability a subscription should use: ``setting`` unless it is 'auto'; for 'auto',
    'best_effort' when any publisher in ``offered`` (their reliabilities, 'reliable' | 'best_effort')
    is best effort, else 'reliable' (also with no publisher yet).

    A best-effort subscription receives from reliable and best-effort publishers alike, a reliable
    one from reliable publishers only; reliable is kept whenever it reaches every publisher because
    large images over loopback lose samples under best effort.
    """
    if setting != RELIABILITY_AUTO:
        return setting
    return "best_effort" if "best_effort" in set(offered) else "reliable"


def offered_reliabilities(node, topic: str) -> list[str]:
    """'reliable' | 'best_effort' for each publisher on ``topic`` (a resolved topic name) now."""
    from rclpy.qos import ReliabilityPolicy

    return ["best_effort" if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT else "reliable"
            for info in node.get_publishers_info_by_topic(topic)]


def incompatible_qos_warning(node, topic: str, parameter: str | None = None, on_lost=None,
                             auto_reliability=None):
    """Event callbacks that say loudly, once, when a publisher's QoS cannot reach our subscription.

    The classic case: a camera driver publishing best-effort (SensorDataQoS) and a subscription
    explicitly set to reliable; DDS then delivers nothing at all and, without this, nothing says why.
    The error is logged once per policy for the life of the subscription and names ``parameter``
    (e.g. 'camera.qos_reliability'), the setting that fixes it.
    ``auto_reliability()``: True while the subscription follows its publishers ('auto'); a reliability
    mismatch is then transient (:class:`FollowingSubscription` switches within its check period) and
    only logged at debug level.
    ``on_lost(n)``: called with the number of messages DDS reports lost on the way (a best-effort
    sample that never arrived, a reliable one its writer gave up on), which no callback ever sees.
    """
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.qos import QoSPolicyKind

    logged: set[int] = set()
    name = parameter or "*.qos_reliability"

    def on_incompatible(event) -> None:
        kind = int(event.last_policy_kind)
        try:
            policy = QoSPolicyKind(kind).name
        except ValueError:
            policy = str(kind)
        if kind == QoSPolicyKind.RELIABILITY and auto_reliability is not None and auto_reliability():
            node.get_logger().debug(f"{topic}: a best-effort publisher appeared; switching to best_effort")
            return
        if kind in logged:
            return
        logged.add(kind)
        if kind == QoSPolicyKind.RELIABILITY:
            fix = f"set parameter {name} to auto (or best_effort)"
        else:
            fix = f"the publisher must offer a compatible {policy} policy"
        node.get_logger().error(
            f"{topic}: a publisher's QoS is incompatible with this subscription (policy {policy}); "
            f"no message from it will arrive; {fix}"
        )

    def on_message_lost(event) -> None:
        if event.total_count_change > 0:
            on_lost(int(event.total_count_change))

    return SubscriptionEventCallbacks(
        incompatible_qos=on_incompatible, message_lost=on_message_lost if on_lost is not None else None
    )


class FollowingSubscription:
    """A keep-last subscription whose reliability is a parameter, 'auto' included.

    With 'reliable' or 'best_effort' it is an ordinary subscription. With 'auto' it starts with what
    :func:`resolve_reliability` picks for the publishers on the topic at creation, and ``check()``
    (the node calls it from a timer, every ``AUTO_QOS_CHECK_S``) looks at the publishers again and
    recreates the subscription when the pick changes, so a driver started after the node, or
    restarted with another profile, is still heard. The choice is logged when made and changed.
    """

    def __init__(self, node, msg_type, topic: str, callback, depth: int, setting: str, parameter: str,
                 on_lost=None):
        self.node, self.msg_type, self.callback = node, msg_type, callback
        self.depth, self.setting, self.parameter, self.on_lost = int(depth), setting, parameter, on_lost
        self.subscription = None
        self.reliability = ""
        self.topic_name = node.resolve_topic_name(topic)  # namespace and remaps applied
        offered = offered_reliabilities(node, self.topic_name) if self.auto else []
        self._create(resolve_reliability(setting, offered))
        self._log_choice(offered)

    @property
    def auto(self) -> bool:
        return self.setting == RELIABILITY_AUTO

    def _create(self, reliability: str) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.subscription = None
        self.subscription = self.node.create_subscription(
            self.msg_type, self.topic_name, self.callback, qos_profile(self.depth, reliability),
            event_callbacks=incompatible_qos_warning(
                self.node, self.topic_name, self.parameter, on_lost=self.on_lost,
                auto_reliability=lambda: self.auto,
            ),
        )
        self.reliability = reliability

    def check(self) -> bool:
        """Follow the publishers ('auto' only); True when the subscription was recreated."""
        if not self.auto or self.subscription is None:
            return False
        offered = offered_reliabilities(self.node, self.topic_name)
        wanted = resolve_reliability(self.setting, offered)
        if wanted == self.reliability:
            return False
        self._create(wanted)
        self._log_choice(offered)
        return True

    def _log_choice(self, offered: list[str]) -> None:
        if self.auto:
            counts = {r: offered.count(r) for r in sorted(set(offered))}
            why = f"{self.parameter} auto; publishers now: {counts or 'none yet'}"
        else:
            why = f"{self.parameter} {self.setting}"
        self.node.get_logger().info(f"{self.topic_name}: subscribed {self.reliability} ({why})")

    def destroy(self) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
        self.subscription = None


# Period of FollowingSubscription.check for 'auto' subscriptions (a graph query, cheap).
AUTO_QOS_CHECK_S = 0.5


# --------------------------------------------------------------------------------------------------
# Model folders


def package_data_dirs() -> list[Path]:
    """Where the package's data (models/, config/, launch/) lives: the source checkout, then the
    ament share folder of an installed package (see frozen_vlm_perception.paths)."""
    from frozen_vlm_perception.paths import share_dir, source_root

    return [d for d in dict.fromkeys((source_root(), share_dir())) if d is not None]




def resolve_model_dir(value: str) -> Path:
    """The model_dir parameter -> a model folder: absolute as given; relative to the working directory
    if it exists there, else relative to the package data folder (so the default 'models/demo' finds the
    shipped model from anywhere).

    A parameter is input from outside, so it is checked before anything is read from it: a NUL byte
    or a value that is not a string raises ValueError; a path that is a file, or a folder without
    config.json, raises FileNotFoundError saying so; nothing found raises FileNotFoundError listing
    where it looked."""
    if not isinstance(value, str):
        raise ValueError(f"model_dir must be a string path, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"model_dir contains a NUL byte: {value!r}")
    path = Path(value or DEFAULT_MODEL_DIR).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / path] + [base / path for base in package_data_dirs()]))
    for candidate in candidates:
        if candidate.is_dir() and (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    for candidate in candidates:  # nothing usable: say what is wrong with what is there
        if candidate.is_dir():
            raise FileNotFoundError(
                f"model_dir {str(value)!r}: {candidate} is a folder without {MODEL_CONFIG_FILE}, not a model "
                f"folder ({MODEL_CONFIG_FILE} + model.safetensors)"
            )
        if candidate.exists():
            raise FileNotFoundError(
                f"model_dir {str(value)!r}: {candidate} is a file, not a model folder "
                f"({MODEL_CONFIG_FILE} + model.safetensors)"
            )
    raise FileNotFoundError(
        f"model folder {str(value)!r} not found; looked in: " + ", ".join(str(c) for c in candidates)
    )


def default_ros_domain() -> None:
    """Unless the user chose them, keep this run's ROS traffic on this host and off other runs' domains.

    Sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID derived from the pid (50..89) in
    os.environ, so child processes started afterwards inherit the same values.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(50 + os.getpid() % 40))


def package_file(relative: str) -> Path:
    """A file shipped with the package (e.g. 'config/perception.yaml'), source checkout first."""
    for base in package_data_dirs():
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"{relative} not found in " + ", ".join(str(d) for d in package_data_dirs()))


# --------------------------------------------------------------------------------------------------
# Out of memory


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error and for the CPU allocator's equivalent."""
    import torch  # already imported by the pipeline whenever a worker can raise this

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)  # DefaultCPUAllocator


def free_cuda_cache(device) -> None:
    """torch.cuda.empty_cache() when ``device`` is a CUDA device (cached blocks back to the driver)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Counters and diagnostics


class Counters:
    """Thread-safe event counters (drops by reason, frames, ...) shared by callbacks and workers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


def diagnostic_array(stamp, name: str, level: str, message: str, values: Iterable[tuple[str, Any]]):
    """A DiagnosticArray with one status. ``level``: 'ok' | 'warn' | 'error'."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    levels = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}
    status = DiagnosticStatus(level=levels[level], name=name, message=message, hardware_id=PACKAGE)
    status.values = [KeyValue(key=str(k), value=_format(v)) for k, v in values]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Counts that grew since ``before`` (for 'what happened in the last period')."""
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


# --------------------------------------------------------------------------------------------------
# Lifecycle helpers


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
