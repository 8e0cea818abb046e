"""ROS parameter tables: :class:`ParamSpec`, declaring them on a node, reading and checking their values.

The parameter tables (:data:`ParamSpec` lists in each node module) are plain data so that the node
declares exactly them and the static tests (YAML files, launch files) check against the same list
without starting ROS. Defaults that belong to the model or the pairing policy are read from the
dataclasses in :mod:`frozen_vlm_perception.config` (the one place they live), never repeated here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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


def refusal(params, specs: Sequence[ParamSpec]) -> str | None:
    """Why run-time changes ``params`` (rclpy Parameters) are refused, or None (a node's
    on-set-parameters callback)."""
    by_name = {spec.name: spec for spec in specs}
    for param in params:
        problem = by_name[param.name].check(param.value) if param.name in by_name else None
        if problem:
            return problem
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


def dataclass_specs(prefix: str, cls: type, docs: Mapping[str, str]) -> list[ParamSpec]:
    """One ParamSpec per field of config dataclass ``cls``: its default from ``cls()``, its range from
    ``cls.RANGES`` (where the config checks it), its description from ``docs``.

    A field without a description is an error here, so a setting added to config.py cannot be
    silently missing from the node.
    """
    defaults = cls()
    ranges = getattr(cls, "RANGES", {})
    specs = []
    for f in dataclasses.fields(cls):
        if f.name not in docs:
            raise KeyError(f"{cls.__name__}.{f.name} has no parameter description in the node")
        default = getattr(defaults, f.name)
        specs.append(ParamSpec(f"{prefix}.{f.name}", default, docs[f.name], ranges.get(f.name)))
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
