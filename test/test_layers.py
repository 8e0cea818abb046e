"""The package's layers (docs/ARCHITECTURE.md): no import cycles, and a core that loads no ROS."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import frozen_vlm_perception

PACKAGE_DIR = Path(frozen_vlm_perception.__file__).parent
ROOT = PACKAGE_DIR.name

# Usable from plain Python, without ROS installed (docs/ARCHITECTURE.md section 1).
CORE = (
    "frozen_vlm_perception.config",
    "frozen_vlm_perception.checkpoint",
    "frozen_vlm_perception.pipeline",
    "frozen_vlm_perception.sync",
    "frozen_vlm_perception.questions",
    "frozen_vlm_perception.answers",
    "frozen_vlm_perception.overlay",
    "frozen_vlm_perception.nn.model",
    "frozen_vlm_perception.nn.language",
    "frozen_vlm_perception.nn.vision",
    "frozen_vlm_perception.training.align",
    "frozen_vlm_perception.training.adapter",
    "frozen_vlm_perception.training.fusion",
)
ROS_PREFIXES = ("rclpy", "rosidl", "rpyutils", "sensor_msgs", "std_msgs", "builtin_interfaces",
                "diagnostic_msgs", "frozen_vlm_perception_interfaces", "launch", "rosbag2")


def module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(PACKAGE_DIR.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of every module, including the ones inside functions (a cycle through a lazy
    import is still a cycle of responsibilities)."""
    modules = {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["frozen_vlm_perception.pipeline"]  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_importing_the_core_loads_no_ros_module():
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in CORE)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(CORE) <= set(loaded)
    ros = [m for m in loaded if m.split(".")[0] in ROS_PREFIXES]
    assert not ros, f"the core pulled in ROS modules: {ros[:10]}"


def reached_from(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    reached, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    return reached


def test_the_robot_nodes_import_no_measuring_tool():
    graph = import_graph()
    nodes = sorted(m for m in graph if m.startswith(f"{ROOT}.nodes."))
    robot = ("perception_node", "reasoning_node", "parameters", "lifecycle", "qos", "diagnostics", "device",
             "ros_domain", "runner", "player", "query_client", "gc_pauses")
    assert {f"{ROOT}.nodes.{n}" for n in robot} <= set(nodes)  # the walk sees them
    tools = {m for m in graph if m.startswith((f"{ROOT}.tools", f"{ROOT}.evaluation", f"{ROOT}.training"))}
    tools |= {f"{ROOT}.cli"}
    assert f"{ROOT}.tools.harness" in tools and f"{ROOT}.tools.bench" in tools
    for node in nodes:
        reached = reached_from(graph, node)
        assert not reached & tools, f"{node} reaches {sorted(reached & tools)}"


def test_only_the_cli_and_eval_through_ros_import_the_tools():
    """The tools drive the nodes from outside; nothing else depends on them. ``evaluation/through_ros.py``
    (``fvp eval --through-ros``) starts the nodes with the tools' harness, and nothing else of theirs."""
    graph = import_graph()
    tools = {m for m in graph if m == f"{ROOT}.tools" or m.startswith(f"{ROOT}.tools.")}
    allowed = {f"{ROOT}.cli": tools, f"{ROOT}.evaluation.through_ros": {f"{ROOT}.tools.harness"}}
    for name, imports in sorted(graph.items()):
        if name in tools:
            continue
        used = imports & tools
        assert used <= allowed.get(name, set()), f"{name} imports {sorted(used)}"


def in_package(graph: dict[str, set[str]], name: str) -> set[str]:
    return {m for m in graph if m == f"{ROOT}.{name}" or m.startswith(f"{ROOT}.{name}.")}


def test_evaluation_reaches_no_training_module():
    """Training and evaluation share their data and task code through data/ (DataConfig, the recording
    flags, the embedding cache); evaluation runs no training code."""
    graph = import_graph()
    training = in_package(graph, "training")
    assert f"{ROOT}.training.align" in training and f"{ROOT}.evaluation.evaluate" in graph
    for module in sorted(in_package(graph, "evaluation")):
        reached = reached_from(graph, module) & training
        assert not reached, f"{module} reaches {sorted(reached)}"


def test_data_reaches_no_layer_above_it():
    graph = import_graph()
    above = set().union(*(in_package(graph, p) for p in ("training", "evaluation", "nodes", "tools", "cli")))
    assert f"{ROOT}.data.embeddings" in graph
    for module in sorted(in_package(graph, "data")):
        reached = reached_from(graph, module) & above
        assert not reached, f"{module} reaches {sorted(reached)}"
