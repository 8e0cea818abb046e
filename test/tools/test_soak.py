"""`fvp soak`, short form: about a minute on the default generated bag, looping."""

from __future__ import annotations

import argparse
import json

import pytest

pytestmark = pytest.mark.slow


def test_short_soak_keeps_buffers_bounded_and_memory_flat(ros_env, model_dir, tmp_path, capsys):
    from frozen_vlm_perception.tools.soak import (
        DEFAULT_RSS_SLOPE_LIMIT_MB_PER_MIN,
        LATENCY_GROWTH_LIMIT,
        main_soak,
    )

    report = tmp_path / "soak.json"
    args = argparse.Namespace(
        bag=None, minutes=1.0, report=str(report), model=str(model_dir), sample_s=3.0, question_s=10.0
    )
    code = main_soak(args)
    printed = capsys.readouterr().out
    print(printed)
    result = json.loads(report.read_text())
    samples, verdict = result["samples"], result["verdict"]
    details = verdict["details"]

    assert len(samples) >= 15
    assert "node_rss_mb" in printed.splitlines()[1]  # the table header, then one row per sample
    # Buffers stay within their configured bounds for the whole run.
    for key in ("imu_buffer", "scenes_kept", "activities", "questions_waiting"):
        assert details[key]["max"] <= details[key]["bound"], (key, details[key])
    assert max(s["scenes_kept"] for s in samples) <= 300 and max(s["questions_waiting"] for s in samples) <= 2
    # Memory: the tool's own bound on the second half's slope (`fvp soak --minutes 60` is the long check).
    rss = details["node_rss_mb"]
    assert rss["second_half_slope_mb_per_min"] <= DEFAULT_RSS_SLOPE_LIMIT_MB_PER_MIN, rss
    # Latency: measured in both halves, and the second half's p99 no more than the tool's growth limit
    # above the first's (a backlog).
    p99 = details["latency_p99_ms"]
    assert p99["first_half"] and p99["second_half"], p99  # None in the JSON when nothing was measured
    assert p99["growth"] <= LATENCY_GROWTH_LIMIT, p99
    # The bag looped (its stamps jumped back) and labels kept coming in every period.
    assert samples[-1]["clock_resets"] >= 1
    assert not details["labels"]["periods_without_labels"], details["labels"]
    assert details["questions"]["answered"] >= 1, details
    assert details["runner_exit_code"] == 0
    # The tool's verdict: no growth, no stall (exit code 0).
    assert verdict["ok"] and not verdict["problems"], verdict["problems"]
    assert code == 0
