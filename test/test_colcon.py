"""The colcon path, as a robot engineer takes it (README, "Building on a robot that has ROS 2").

A copy of the checkout (what a clone holds: the files git tracks, plus the ones it does not ignore
yet, plus models/) goes into a fresh workspace ``ws/src/frozen_vlm_perception``; ``colcon build``
builds both packages against this venv's ROS 2 wheels (the venv is the ament prefix; ``make setup``
has already pointed the wheels' CMake files at it, see tools/build_interfaces.sh). Then, in the
environment ``source install/setup.bash`` makes:

* the *installed* ``perception_node`` (what ``ros2 run frozen_vlm_perception perception_node``
  starts) with the *installed* params file comes up active by itself (``autostart``) and loads the
  *installed* model (the share folder's models/demo: the workspace, their working directory,
  holds no models/);
* the installed ``reasoning_node`` with ``autostart:=false`` waits unconfigured and is brought up
  through its lifecycle services (``ros2 lifecycle set /reasoning configure``, then ``activate``);
* this process publishes camera frames + IMU, receives ActivityLabels on /perception/activity and
  an answer from /reasoning/query (QueryScene);
* Ctrl-C (SIGINT) ends both nodes with exit status 0.

ROS_DOMAIN_ID 200-214 (claimed, nodes/ros_domain.py): test/nodes uses 1-99, the root ``ros_env`` 100-199,
test/reliability 215-232. Every wait is bounded; both nodes are always stopped.
Measured on the 2-core machine: about 3 min (2 of them the interface package's C build).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the venv's bin/ (not resolved: the venv's python is a link)
PACKAGE = "frozen_vlm_perception"
BUILD_TIMEOUT_S = 600  # the interface package's C build: about 2 min on 2 cores
UP_TIMEOUT_S = 240  # a node process from start to a lifecycle state (imports + model load)
QUESTION = "What is the person doing?"


def clone_files() -> list[str]:
    """What a clone of this checkout holds once the working tree is committed, relative to ROOT."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the files a clone would hold are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]  # deleted but tracked: left out


def make_workspace(ws: Path) -> Path:
    src = ws / "src" / PACKAGE
    for rel in clone_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    shutil.copytree(ROOT / "models", src / "models", dirs_exist_ok=True)
    return src


def colcon_build(ws: Path) -> None:
    """README: ``colcon build --base-paths ...`` with the venv as the ament / CMake prefix."""
    venv = VENV_BIN.parent
    env = dict(
        os.environ,
        AMENT_PREFIX_PATH=str(venv),
        CMAKE_PREFIX_PATH=str(venv),
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    cmd = [
        str(VENV_BIN / "colcon"), "build",
        "--base-paths", f"src/{PACKAGE}", f"src/{PACKAGE}/interfaces",
        "--cmake-args", f"-DPython3_EXECUTABLE={VENV_BIN / 'python'}", "-DBUILD_TESTING=OFF",
    ]
    log = ws / "colcon_build.log"
    with open(log, "w") as out:
        try:
            code = subprocess.run(cmd, cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = f"a timeout ({BUILD_TIMEOUT_S} s)"
    assert code == 0, f"colcon build ended with {code}:\n{log.read_text(errors='replace')[-6000:]}"


def sourced_env(ws: Path) -> dict[str, str]:
    """This process's environment after ``source install/setup.bash``."""
    out = subprocess.run(
        ["bash", "-c", 'source install/setup.bash && env -0'],
        cwd=ws, capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


class Node:
    """An installed executable started the way ``ros2 run`` does, in the sourced environment."""

    def __init__(self, ws: Path, log_dir: Path, name: str, *ros_args: str):
        self.name = name
        self.log = log_dir / f"{name}.log"
        exe = ws / "install" / PACKAGE / "lib" / PACKAGE / name
        assert exe.is_file(), f"colcon installed no {exe}"
        argv = " ".join([str(exe), "--ros-args", *ros_args])
        script = f"source {ws / 'install' / 'setup.bash'} && exec {argv}"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["bash", "-c", script], cwd=ws, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")

    def interrupt(self, timeout: float = 30.0) -> int | None:
        """Ctrl-C; SIGKILL to its process group after ``timeout``. The exit status (None: killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return None


def call_until(client, request, per_call: float, timeout: float):
    """A service call sent again when unanswered: with Fast DDS a server can answer a client it has
    just discovered before it matched the client's response reader, and that answer is lost."""
    from node_harness import call

    deadline = time.monotonic() + timeout
    if not client.wait_for_service(timeout_sec=timeout):
        raise AssertionError(f"no {client.srv_name} within {timeout} s")
    time.sleep(0.5)  # discovery: let the server match this client's response reader
    while True:
        try:
            return call(client, request, min(per_call, max(deadline - time.monotonic(), 1.0)))
        except AssertionError:  # no response in time
            if time.monotonic() > deadline:
                raise


def state_of(get_state) -> int:
    from lifecycle_msgs.srv import GetState

    return call_until(get_state, GetState.Request(), 5, 30).current_state.id


def wait_for_state(get_state, node: Node, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (get_state.service_is_ready() and state_of(get_state) == wanted):
        node.check_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.name} not in state {wanted} within {timeout} s:\n{node.output()}")
        time.sleep(0.5)


def transition(change_state, get_state, node: Node, transition_id: int, goal: int, timeout: float) -> None:
    """A lifecycle transition (not sent twice: a second configure would be refused); an unanswered
    call counts when the node reached ``goal`` anyway."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from node_harness import call

    node.check_running()
    assert change_state.wait_for_service(timeout_sec=30), f"no {change_state.srv_name}"
    time.sleep(0.5)
    try:
        ok = call(change_state, ChangeState.Request(transition=Transition(id=transition_id)), timeout).success
    except AssertionError:
        ok = state_of(get_state) == goal
    assert ok, f"{node.name}: transition {transition_id} failed:\n{node.output()}"


@pytest.fixture
def colcon_domain(monkeypatch):
    from frozen_vlm_perception.nodes.ros_domain import claim_ros_domain, release_ros_domain

    domain = claim_ros_domain(200, 15)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    yield
    release_ros_domain(domain)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 3 * UP_TIMEOUT_S)
def test_colcon_build_then_installed_nodes_label_and_answer(tmp_path, colcon_domain):
    if not (VENV_BIN / "colcon").is_file():
        pytest.skip("colcon is not installed in this venv (requirements-dev.txt; make setup)")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    unfixed = [f for f in (VENV_BIN.parent / "share").rglob("*.cmake")
               if "/opt/python/cp311-cp311/" in f.read_text(errors="replace")]
    # tools/build_interfaces.sh (make setup) points them at this venv's Python and numpy
    assert not unfixed, f"the wheels' CMake files still name the wheel builder's paths: {unfixed[:3]}"
    ws = tmp_path / "ws"
    src = make_workspace(ws)
    colcon_build(ws)

    # The install space holds everything the nodes read: executables, params file, model.
    share = ws / "install" / PACKAGE / "share" / PACKAGE
    params = share / "config" / "perception.yaml"
    assert params.is_file()
    for name in ("config.json", "model.safetensors"):
        installed, source = share / "models" / "demo" / name, src / "models" / "demo" / name
        assert installed.read_bytes() == source.read_bytes(), name
    env = sourced_env(ws)
    install = str(ws / "install")
    assert env["AMENT_PREFIX_PATH"].startswith(install), env["AMENT_PREFIX_PATH"]
    probe = subprocess.run(
        [str(VENV_BIN / "python"), "-c",
         "import frozen_vlm_perception.paths as p, frozen_vlm_perception_interfaces as i\n"
         "print(p.__file__); print(i.__file__); print(p.default_model_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,  # not ROOT: -c imports from cwd
    )
    assert probe.returncode == 0, probe.stderr
    package_file, interfaces_file, model = probe.stdout.split()
    # The installed copies, not this checkout's editable install nor the venv's interfaces.
    assert package_file.startswith(install) and interfaces_file.startswith(install), probe.stdout
    assert model == str(share / "models" / "demo"), probe.stdout

    sys.path.insert(0, str(ROOT / "test" / "nodes"))  # node_harness: RosClient, call
    try:
        run_and_query(ws, tmp_path, params)
    finally:
        sys.path.remove(str(ROOT / "test" / "nodes"))


def run_and_query(ws: Path, log_dir: Path, params: Path) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from node_harness import Collector, RosClient

    from frozen_vlm_perception.tools.latency_probe import SensorStream
    from frozen_vlm_perception_interfaces.msg import ActivityLabel
    from frozen_vlm_perception_interfaces.srv import QueryScene

    assert not (ws / "models").exists()  # else the nodes' relative model_dir would find it there
    perception = Node(ws, log_dir, "perception_node", "--params-file", str(params))
    reasoning = Node(ws, log_dir, "reasoning_node", "--params-file", str(params), "-p", "autostart:=false")
    client = stream = None
    try:
        client = RosClient("colcon_test")
        node = client.node
        labels: Collector = client.collect(ActivityLabel, "/perception/activity", depth=100)
        get_state = {n: node.create_client(GetState, f"/{n}/get_state") for n in ("perception", "reasoning")}
        change_reasoning = node.create_client(ChangeState, "/reasoning/change_state")
        query = node.create_client(QueryScene, "/reasoning/query")

        # The reasoning node waits unconfigured; a lifecycle manager (here: this test) brings it up.
        wait_for_state(get_state["reasoning"], reasoning, State.PRIMARY_STATE_UNCONFIGURED,
                       UP_TIMEOUT_S)
        transition(change_reasoning, get_state["reasoning"], reasoning, Transition.TRANSITION_CONFIGURE,
                   State.PRIMARY_STATE_INACTIVE, UP_TIMEOUT_S)
        transition(change_reasoning, get_state["reasoning"], reasoning, Transition.TRANSITION_ACTIVATE,
                   State.PRIMARY_STATE_ACTIVE, 60)
        wait_for_state(get_state["perception"], perception, State.PRIMARY_STATE_ACTIVE, UP_TIMEOUT_S)

        stream = SensorStream(node, camera_hz=10.0, imu_hz=200.0, width=320, height=240).start()
        got = labels.wait_for(lambda msgs: len(msgs) >= 3, timeout=120)
        assert all(m.label in m.candidate_labels for m in got), got[:3]
        assert {m.source for m in got} <= {"fused", "vision", "imu"}

        request = QueryScene.Request(question=QUESTION, max_new_tokens=12)
        response = call_until(query, request, 60, 180)
        assert response.success, response.message
        assert response.answer.strip(), response
        assert response.activity in ("", *got[0].candidate_labels), response
    finally:
        if stream is not None:
            stream.stop()
        if client is not None:
            client.close()
        codes = {n.name: n.interrupt() for n in (reasoning, perception)}
    assert codes == {"reasoning_node": 0, "perception_node": 0}, (
        f"{codes}\n--- perception\n{perception.output()}\n--- reasoning\n{reasoning.output()}"
    )
