"""`fvp soak`'s verdict on hand-made samples: what counts as a question answered."""

from __future__ import annotations

from frozen_vlm_perception.tools.soak import verdict


def samples(asked_answered: list[tuple[int, int]]) -> list[dict]:
    """Flat, healthy samples every 3 s with the given (asked, answered) counts."""
    return [
        {"t_s": 3.0 * (i + 1), "node_rss_mb": 1000.0, "player_rss_mb": 100.0, "labels_per_s": 10.0,
         "latency_p50_ms": 50.0, "latency_p99_ms": 90.0, "asked": asked, "answered": answered}
        for i, (asked, answered) in enumerate(asked_answered)
    ]


def test_questions_are_judged_by_the_final_counts_not_the_last_sample():
    # The run's only question was still being answered at the last sample and was answered after it.
    run = samples([(0, 0), (1, 0), (1, 0), (1, 0), (1, 0)])
    final = verdict(run, rss_slope_limit=5.0, bounds={}, questions=(1, 1))
    assert final["ok"] and final["details"]["questions"] == {"asked": 1, "answered": 1}, final
    unanswered = verdict(run, rss_slope_limit=5.0, bounds={}, questions=(2, 0))
    assert unanswered["problems"] == ["none of 2 questions was answered"]
