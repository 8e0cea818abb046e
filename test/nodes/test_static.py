"""Launch files, parameter files and parameter tables agree with each other and with setup.py.

launch_ros is not installable here, so the launch files are checked as source (ast): every
executable they start is a console script of setup.py, and every parameter in the YAML files is one
the nodes declare, with a compatible type.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import yaml

from frozen_vlm_perception import overlay
from frozen_vlm_perception.config import FusionConfig, LanguageConfig, SyncConfig
from frozen_vlm_perception.nodes import perception_node, reasoning_node

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
PARAM_FILES = sorted((ROOT / "config").glob("*.yaml"))
NODES = {"perception": perception_node.PARAMS, "reasoning": reasoning_node.PARAMS}
# Declared by rclpy itself for every node.
BUILTIN_PARAMS = {"use_sim_time", "start_type_description_service"}


def console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in value.elts]
                    return dict(tuple(part.strip() for part in e.split("=", 1)) for e in entries)
    raise AssertionError("setup.py has no console_scripts")


def keyword_values(tree: ast.AST, name: str) -> list:
    return [ast.literal_eval(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords if kw.arg == name and isinstance(kw.value, ast.Constant)]


def flatten(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def test_there_are_launch_and_parameter_files():
    assert {p.name for p in LAUNCH_FILES} >= {"perception.launch.py", "replay.launch.py"}
    assert {p.name for p in PARAM_FILES} >= {"perception.yaml", "paper_vitl14.yaml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_start_only_installed_executables(path):
    tree = ast.parse(path.read_text())
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    scripts = console_scripts()
    for executable in keyword_values(tree, "executable"):
        assert executable in scripts, f"{path.name} starts {executable!r}, not a console script of setup.py"
        module = scripts[executable].split(":")[0]
        assert importlib.util.find_spec(module) is not None
    assert set(keyword_values(tree, "name")) <= {"perception", "reasoning", "bag_player"}
    for node in ast.walk(tree):  # python -m targets (the bag player) must exist too
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").endswith("_MODULE"):
            assert importlib.util.find_spec(ast.literal_eval(node.value)) is not None


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_parameter_files_set_only_declared_parameters(path):
    document = yaml.safe_load(path.read_text())
    seen = set()
    for key, section in document.items():
        node = key.rsplit("/", 1)[-1]
        assert node in NODES, f"{path.name}: {key!r} names no node of this package"
        seen.add(node)
        specs = {s.name: s for s in NODES[node]}
        for name, value in flatten(section["ros__parameters"]).items():
            if name in BUILTIN_PARAMS:
                continue
            assert name in specs, f"{path.name}: {node} declares no parameter {name!r}"
            default = specs[name].default
            ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            assert ok and not (isinstance(value, bool) and not isinstance(default, bool)), (
                f"{path.name}: {node}.{name} = {value!r} but the parameter is a {type(default).__name__}")
            assert specs[name].check(value) is None
    assert seen == set(NODES)


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_parameter_files_parse_with_rcl(path):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(args=["test", "--ros-args", "--params-file", str(path)], context=context)
    rclpy.try_shutdown(context=context)


# The pairing policy's defaults as config/perception.yaml states them, written out here
# rather than read from SyncConfig, so that a changed default in either place fails.
SYNC_DEFAULTS = {"buffer_s": 10.0, "max_wait_s": 0.05, "max_lag_s": 0.02, "max_gap_s": 0.25,
                 "min_coverage": 0.9, "imu_silence_s": 0.5}


def commented_sync_block(path: Path) -> dict:
    """The ``# sync:`` block config/perception.yaml documents as comments, parsed as YAML."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# sync:")
    block = []
    for line in lines[start + 1 :]:
        if not line.strip().startswith("#   "):
            break
        block.append(line.strip()[1:].strip())
    return yaml.safe_load("\n".join(block))


def test_parameter_defaults_are_the_documented_values():
    specs = {s.name: s.default for s in perception_node.PARAMS}
    sync_specs = {name.split(".", 1)[1]: value for name, value in specs.items() if name.startswith("sync.")}
    assert sync_specs == SYNC_DEFAULTS
    assert all(type(value) is float for value in sync_specs.values())
    assert dataclasses.asdict(SyncConfig()) == SYNC_DEFAULTS
    assert commented_sync_block(ROOT / "config" / "perception.yaml") == SYNC_DEFAULTS
    # Fusion is the model folder's unless set: the defaults say so rather than repeat FusionConfig's.
    assert specs["fusion.mode"] == perception_node.FROM_MODEL == "model"
    assert specs["fusion.alpha"] == perception_node.ALPHA_FROM_MODEL == -1.0
    assert specs["overlay.scale"] == overlay.DEFAULT_SCALE  # one home: frozen_vlm_perception/overlay.py
    reasoning = {s.name: s.default for s in reasoning_node.PARAMS}
    assert reasoning["max_new_tokens"] == LanguageConfig().max_new_tokens == 32
    shipped = yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())
    assert shipped["/**/reasoning"]["ros__parameters"]["max_new_tokens"] == 32


def test_nodes_declare_every_parameter_with_a_description_before_any_entity():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        for cls, specs in ((perception_node.PerceptionNode, perception_node.PARAMS),
                           (reasoning_node.ReasoningNode, reasoning_node.PARAMS)):
            node = cls(context=context)
            try:
                declared = set(node._parameters)
                assert {s.name for s in specs} <= declared
                for spec in specs:
                    descriptor = node.describe_parameter(spec.name)
                    assert descriptor.description
                    if spec.value_range is not None:
                        ranges = list(descriptor.floating_point_range) + list(descriptor.integer_range)
                        assert ranges and ranges[0].from_value == spec.value_range[0]
                # Unconfigured: no subscription, no publisher beyond rclpy's own parameter events.
                assert not list(node.subscriptions)
                assert [p.topic_name for p in node.publishers] == ["/parameter_events"]
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_params_dicts_become_ros_parameter_files(tmp_path):
    from frozen_vlm_perception.nodes.runner import params_file_from

    path = params_file_from({"perception": {"sync": {"max_wait_s": 0.1}},
                             "/robot/reasoning": {"ros__parameters": {"queue_size": 3}}}, str(tmp_path))
    document = yaml.safe_load(Path(path).read_text())
    assert document == {"/**/perception": {"ros__parameters": {"sync": {"max_wait_s": 0.1}}},
                        "/robot/reasoning": {"ros__parameters": {"queue_size": 3}}}


def test_effective_fusion_takes_the_model_values_unless_set():
    from frozen_vlm_perception.config import ConfigError

    model = FusionConfig(mode="fused", alpha=0.3)
    effective = perception_node.effective_fusion
    assert effective({"mode": "model", "alpha": -1.0}, model) == model
    assert effective({"mode": "vision", "alpha": -1.0}, model) == FusionConfig(mode="vision", alpha=0.3)
    assert effective({"mode": "model", "alpha": 0.8}, model) == FusionConfig(mode="fused", alpha=0.8)
    with pytest.raises(ConfigError):
        effective({"mode": "both", "alpha": -1.0}, model)
