"""`fvp`: every subcommand listed with one line of help; bench writes the documented JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from frozen_vlm_perception.cli import build_parser, main

SUBCOMMANDS = ("demo", "make-demo-bag", "train", "eval", "bench", "run", "play", "query", "soak", "inspect")


def test_help_lists_every_subcommand_with_a_line():
    result = subprocess.run(
        [sys.executable, "-m", "frozen_vlm_perception.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = {
        line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()
    }
    assert set(SUBCOMMANDS) <= listed, result.stdout
    parser = build_parser()
    actions = next(a for a in parser._subparsers._group_actions)  # the subcommand table
    for choice in actions._choices_actions:
        assert choice.help and "\n" not in choice.help, choice.dest


def test_bench_writes_stage_timings_as_json(tmp_path, torch_threads):
    out = tmp_path / "bench.json"
    code = main(
        ["bench", "--repeats", "2", "--batch-sizes", "1", "--no-lm", "--no-system", "--json", str(out)]
    )
    assert code == 0
    numbers = json.loads(out.read_text())
    assert set(numbers["stages_ms"]) == {"preprocess", "vision", "imu", "fusion_resampler", "head"}
    assert all(value >= 0 for value in numbers["stages_ms"].values())
    assert numbers["stages_ms"]["vision"] > 0


@pytest.mark.slow
def test_bench_reports_first_token_and_stage2_step_speed(tmp_path, torch_threads):
    out = tmp_path / "bench.json"
    code = main(["bench", "--repeats", "3", "--batch-sizes", "1", "--no-system", "--json", str(out)])
    assert code == 0
    numbers = json.loads(out.read_text())
    first, step = numbers["first_token"], numbers["stage2"]
    assert first["prompt_tokens"] > 30 and first["full_prompt_ms"] > 0 and first["cached_prefix_ms"] > 0
    for prompt in ("full_prompt", "cached_prefix"):
        assert step[f"{prompt}_samples_per_s"] == pytest.approx(
            step["lm_batch_size"] * step[f"{prompt}_steps_per_s"]
        )
