"""`fvp bench`'s system part: the real nodes in their own processes against a live sensor stream.

No timing is asserted (machines differ); what must hold is that every phase measured something, the
ratios are computed from those measurements, and the answer through the service is the very answer
the frozen LM gives in process for the same scene latents.
"""

from __future__ import annotations

import math

import pytest

from frozen_vlm_perception.paths import DEFAULT_MODEL_DIR, resolve_model_dir
from frozen_vlm_perception.tools.system_bench import SystemSettings, format_system, measure_system


@pytest.mark.slow
def test_system_bench_measures_every_phase(ros_env, torch_threads):
    settings = SystemSettings(
        model_dir=str(resolve_model_dir(DEFAULT_MODEL_DIR)),
        seconds=4.0,
        warmup_s=2.0,
        camera_hz=15.0,
        imu_hz=100.0,
        width=320,
        height=240,
        questions=1,
        max_new_tokens=6,
        answering_s=3.0,
        # A bound on a hang: beside another make test a 6-token answer took over the node's default 60 s.
        answer_timeout_s=240.0,
    )
    result = measure_system(settings, log=lambda line: None)

    assert result["transport"]["frames_received"] > 0.5 * result["transport"]["frames_published"] > 0
    assert result["labels"]["frames_received"] > 0
    (answer,) = result["reference"]["answers"]
    assert answer["success"] and answer["answer"], answer  # a failed answer says why ("message")
    for name in ("ros_overhead_ratio", "answer_overhead_ratio", "answer_overhead_ratio_quiet"):
        assert math.isfinite(result[name]) and result[name] > 0, name
    assert answer["identical"], answer  # service answer == in-process generate on the same latents
    assert result["peak_rss_mb"]["perception_node"] > 100
    assert result["peak_rss_mb"]["reasoning_node"] > result["peak_rss_mb"]["stamp_echo"]
    # Idle and answering side by side, each with the perception node's own view of that phase.
    for phase in ("labels", "labels_while_answering"):
        inside = result[phase]["perception_node"]
        assert inside["periods"] >= 1, phase
        assert 0 < inside["latency_ms_p50"] <= inside["latency_ms_max"], phase
        assert inside["gc_collections"] >= inside["gc_full_collections"] >= 0, phase
    assert result["labels_while_answering"]["answers"] >= 1
    for phase in ("labels", "labels_while_answering"):
        cpu = result[phase]["cpu_percent"]
        assert cpu["perception_node"] > 1.0 and cpu["bench_process"] > 1.0, cpu  # both were working
        processes = sum(v for k, v in cpu.items() if k != "cores" and not k.startswith("machine_"))
        assert processes <= cpu["machine_busy"] * 1.1 + 5, cpu  # the machine was at least that busy
        assert cpu["machine_busy"] + cpu["machine_idle"] + cpu["machine_steal"] <= 100 * cpu["cores"] * 1.1
    idle, answering = result["labels"], result["labels_while_answering"]
    comparison = result["answering_vs_idle"]
    assert comparison["p99_ratio"] == answering["latency_ms"]["p99"] / idle["latency_ms"]["p99"]
    assert comparison["labelled_points_lost"] == pytest.approx(
        100 * (idle["share_received"] - answering["share_received"]))
    text = format_system(result)
    assert "ros_overhead_ratio" in text and "answering vs idle: p99_ratio" in text
    assert "Inside the perception node" in text and "CPU per process" in text
