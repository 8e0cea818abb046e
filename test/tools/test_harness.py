"""The tools' child-process harness: ready line, output kept, what comes after ready, stop."""

from __future__ import annotations

import sys
import time

import pytest

from frozen_vlm_perception.tools.harness import NodeNotReady, NodeProcess, percentiles, runner_command


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_then_lines_after_ready_then_stop():
    seen: list[str] = []
    code = "import time\nprint('starting')\nprint('up: ready')\nprint('a warning')\ntime.sleep(60)\n"
    with NodeProcess(python(code), "up:", "the sleeper", after_ready=seen.append) as child:
        child.wait_ready(30.0)
        assert "starting" in child.output
        deadline = time.monotonic() + 30.0
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["a warning\n"]  # neither the lines before ready nor the ready line itself
    assert child.process.returncode is not None  # stopped on leaving the block


def test_exit_before_ready_is_an_error_with_the_output():
    child = NodeProcess(python("print('no model here'); raise SystemExit(3)"), "up:", "the broken node")
    with pytest.raises(NodeNotReady, match=r"the broken node exited with code 3(.|\n)*no model here"):
        child.wait_ready(30.0)
    assert child.stop() == 3


def test_no_ready_line_in_time():
    child = NodeProcess(python("import time; time.sleep(60)"), "up:", "the slow node")
    try:
        with pytest.raises(NodeNotReady, match="did not print 'up:' within 0.5 s"):
            child.wait_ready(0.5)
    finally:
        assert child.stop(timeout_s=10) is not None


def test_only_the_tail_is_kept_unless_asked():
    code = "for i in range(1000): print(i)"
    bounded = NodeProcess(python(code), keep_lines=10)
    everything = NodeProcess(python(code), keep_lines=None)
    for child in (bounded, everything):
        child.process.wait(timeout=30)
        assert child.stop() == 0  # the output read to its end
    assert bounded.output.endswith("999\n") and len(bounded.lines) <= 20
    assert len(everything.lines) == 1000


def test_runner_command_and_percentiles():
    command = runner_command(model_dir="/m", params=["torch_threads:=1"])
    assert command[1:5] == ["-m", "frozen_vlm_perception.nodes.runner", "--nodes", "perception,reasoning"]
    params = ["-p", "model_dir:=/m", "-p", "device:=auto", "-p", "torch_threads:=1"]
    assert command[5:] == ["--ros-args", *params, "--log-level", "warn"]
    assert percentiles([]) == {"n": 0}
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0
