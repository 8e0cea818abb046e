"""`fvp demo`'s output: one status line a second while the recording plays (every label with --verbose),
and the summary with its per-family question tally."""

from __future__ import annotations

import re

from frozen_vlm_perception.tools.demo import Progress, Tally, summarize

FAMILY_LINE = re.compile(r"^\s+(activity|place|activity_place|yes_no)\s+\d+/\d+$")


def truth(stamp_ns: int):
    """Walking for the first 10 s of the recording, sitting afterwards."""
    return ("walking" if stamp_ns < 10 * 10**9 else "sitting"), "kitchen", True


def play(progress: Progress, seconds: float = 20.0, hz: float = 30.0) -> None:
    """Frames at ``hz`` on a fake clock, each labelled 40 ms later ("walking" throughout: wrong after
    10 s), a status tick after each, as the demo's status thread would."""
    progress.tick(0.0)
    for i in range(int(seconds * hz)):
        now, stamp = i / hz, int(i * 1e9 / hz)
        progress.on_frame(stamp, now)
        progress.on_label(stamp, "walking", 0.9, "fused", now + 0.040)
        progress.tick(now + 0.040)


def test_one_status_line_a_second_not_one_per_frame():
    lines: list[str] = []
    progress = Progress(truth, out=lambda text, **_: lines.append(text))
    play(progress, seconds=20.0)
    assert 18 <= len(lines) <= 21, lines  # 600 labels, one line per second of play
    last = lines[-1]
    labels = int(re.search(r"labels +(\d+) ", last).group(1))
    assert 540 <= labels <= 600  # the labels so far, at the last whole second
    assert f"accuracy {300 / labels:.3f}" in last  # right for the first 10 s only
    assert "latency p50 40 ms" in last
    assert "latest walking (truth sitting)" in last


def test_verbose_prints_every_label():
    lines: list[str] = []
    progress = Progress(truth, verbose=True, out=lambda text, **_: lines.append(text))
    play(progress, seconds=2.0)
    assert len(lines) == 60 and all("label walking" in line for line in lines)
    assert lines[0].lstrip().startswith("ok t=  0.00s") and "truth walking" in lines[0]


def test_the_summary_keeps_the_per_family_tally(capsys):
    tally = Tally()
    tally.frames_seen = {0: 0.0, 10**9: 1.0}
    tally.labels = [(0, "walking", 0.9, "fused", 0.05), (10**9, "walking", 0.9, "fused", 1.05)]
    answers = [
        {"family": "activity", "correct": True, "success": True},
        {"family": "activity", "correct": False, "success": True},
        {"family": "yes_no", "correct": False, "success": False},
    ]
    assert summarize(tally, answers, None, truth) == 0
    out = capsys.readouterr().out
    assert "questions answered        2/3" in out
    families = [line.split() for line in out.splitlines() if FAMILY_LINE.match(line)]
    assert families == [["activity", "1/2"], ["yes_no", "0/1"]]
    assert "label latency             p50 50 ms" in out


def test_the_demo_takes_verbose():
    from frozen_vlm_perception.cli import build_parser

    assert build_parser().parse_args(["demo", "--verbose"]).verbose
    assert not build_parser().parse_args(["demo"]).verbose
