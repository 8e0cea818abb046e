"""sync: the IMU ring buffer and the window ending at a frame's stamp."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frozen_vlm_perception.config import ImuConfig, SyncConfig
from frozen_vlm_perception.sync import ImuBuffer, WindowUnavailable

IMU = ImuConfig()  # 128 samples at 50 Hz
SYNC = SyncConfig()
T0 = 1_700_000_000.0  # present-day epoch: float64 stamps must still work


def linear(t: np.ndarray) -> np.ndarray:
    """(N, 6) signal that linear interpolation reproduces exactly: channel c = (c + 1) * (t - T0)."""
    return (np.asarray(t)[:, None] - T0) * np.arange(1, 7)


def filled(rate_hz: float, seconds: float, start: float = T0, **kwargs) -> ImuBuffer:
    buf = ImuBuffer(6, **kwargs)
    times = start + np.arange(int(seconds * rate_hz) + 1) / rate_hz
    for t, x in zip(times, linear(times), strict=True):
        assert buf.add(t, x)
    return buf


@pytest.mark.parametrize("rate_hz", [50.0, 200.0, 37.0])
def test_window_interpolates_a_linear_signal_exactly(rate_hz):
    buf = filled(rate_hz, 5.0)
    t_end = T0 + 4.0123  # not on any sample grid
    win = buf.window(t_end, IMU, SYNC)
    assert win.data.shape == (128, 6) and win.data.dtype == np.float32
    assert win.end == t_end
    assert win.start == pytest.approx(t_end - 127 / 50.0, abs=1e-6)
    expected_times = t_end - (127 - np.arange(128)) / 50.0
    np.testing.assert_allclose(win.data, linear(expected_times), rtol=1e-5, atol=2e-5)
    assert win.num_source_samples == pytest.approx(2.54 * rate_hz, abs=1.5)


def test_window_resamples_to_the_configured_rate():
    buf = filled(200.0, 5.0)
    config = ImuConfig(rate_hz=100.0, window_samples=64, patch_size=16)
    win = buf.window(T0 + 3.0, config, SYNC)
    assert win.data.shape == (64, 6)
    assert win.end - win.start == pytest.approx(63 / 100.0, abs=1e-6)
    np.testing.assert_allclose(win.data[:, 0], np.linspace(win.start, win.end, 64) - T0, atol=2e-5)


def test_window_at_the_newest_sample_is_available():
    buf = filled(50.0, 3.0)
    win = buf.window(buf.latest_stamp, IMU, SYNC)
    assert win.data[-1, 0] == pytest.approx(3.0, abs=1e-5)


def reason(buf: ImuBuffer, t_end: float, sync: SyncConfig = SYNC) -> str:
    with pytest.raises(WindowUnavailable) as info:
        buf.window(t_end, IMU, sync)
    return info.value.reason


def test_reasons_no_data_and_not_yet():
    assert reason(ImuBuffer(6), T0) == "no_data"
    buf = filled(50.0, 3.0)
    assert reason(buf, T0 + 3.03) == "not_yet"  # 30 ms after the newest sample: more than max_lag_s


def test_a_frame_just_after_the_newest_sample_holds_it_within_max_lag():
    buf = filled(50.0, 3.0)
    newest = buf.latest_stamp
    win = buf.window(newest + 0.015, IMU, SYNC)  # 15 ms after the newest sample, within 20 ms
    assert win.end == newest + 0.015
    _, data = buf.snapshot()
    np.testing.assert_allclose(win.data[-1], data[-1], rtol=1e-6)  # the last row holds the newest sample
    assert reason(buf, newest + 0.025) == "not_yet"  # beyond max_lag_s: the frame waits
    assert reason(buf, newest + 0.001, SyncConfig(max_lag_s=0.0)) == "not_yet"  # 0: the old strict rule


def test_reason_insufficient_coverage():
    buf = filled(50.0, 2.0)  # 2 s of data, window 2.54 s: 79%
    assert reason(buf, T0 + 2.0) == "insufficient_coverage"
    relaxed = SyncConfig(min_coverage=0.75)
    win = buf.window(T0 + 2.0, IMU, relaxed)  # the uncovered head holds the first sample
    np.testing.assert_allclose(win.data[:10, 0], 0.0, atol=1e-6)


def test_reason_gap():
    buf = ImuBuffer(6)
    times = np.concatenate([T0 + np.arange(0, 1.5, 0.02), T0 + np.arange(1.9, 6.0, 0.02)])  # 0.42 s hole
    for t, x in zip(times, linear(times), strict=True):
        buf.add(t, x)
    assert reason(buf, T0 + 3.0) == "gap"
    assert buf.window(T0 + 3.0, IMU, SyncConfig(max_gap_s=0.5)).data.shape == (128, 6)
    assert buf.window(T0 + 5.0, IMU, SYNC).num_source_samples == 128  # the hole has left the window


def test_drops_are_counted_by_reason():
    buf = ImuBuffer(6)
    assert buf.add(T0, np.zeros(6))
    assert not buf.add(T0, np.ones(6))  # duplicate stamp
    assert not buf.add(T0 - 0.5, np.ones(6))  # out of order (less than the reset threshold)
    assert not buf.add(T0 + 1, [0, 0, np.nan, 0, 0, 0])
    assert not buf.add(float("inf"), np.zeros(6))
    assert not buf.add(T0 + 1, [1e300, 0, 0, 0, 0, 0])  # finite in float64, inf in float32
    assert not buf.add(T0 + 1, np.zeros(5))
    assert dict(buf.drops) == {"duplicate_stamp": 1, "out_of_order": 1, "nonfinite": 3, "bad_shape": 1}
    assert len(buf) == 1


def test_clock_jump_backwards_resets_instead_of_rejecting_forever():
    buf = filled(50.0, 5.0)
    assert buf.add(T0 - 100.0, np.zeros(6))  # a bag looping
    assert buf.drops["clock_reset"] == 1
    assert len(buf) == 1 and buf.latest_stamp == T0 - 100.0
    for k in range(1, 200):  # the new clock runs normally from here
        assert buf.add(T0 - 100.0 + k / 50, np.zeros(6))
    assert buf.drops["out_of_order"] == 0


def test_buffer_bounded_in_time_and_count():
    buf = filled(50.0, 30.0, buffer_s=10.0)
    assert buf.latest_stamp - buf.oldest_stamp <= 10.0
    assert len(buf) == 501
    capped = filled(200.0, 30.0, buffer_s=10.0, max_samples=300)
    assert len(capped) == 300
    times, data = capped.snapshot()
    expected = T0 + np.arange(6001)[-300:] / 200.0
    np.testing.assert_allclose(times, expected)
    np.testing.assert_allclose(data, linear(expected), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.one_of(st.floats(0.0, 0.05), st.floats(-2.0, 0.0), st.floats(0.5, 20.0), st.just(0.0)),
        min_size=1,
        max_size=300,
    ),
    buffer_s=st.floats(0.5, 5.0),
    max_samples=st.integers(2, 50),
)
def test_bounded_and_sorted_under_any_stream(steps, buffer_s, max_samples):
    buf = ImuBuffer(6, buffer_s=buffer_s, max_samples=max_samples)
    t = T0
    accepted = 0
    for step in steps:
        t += step
        accepted += buf.add(t, np.full(6, t - T0))
        times, data = buf.snapshot()
        assert len(times) <= max_samples
        assert times[-1] - times[0] <= buffer_s + 1e-6  # float rounding of large stamps
        assert np.all(np.diff(times) > 0)
        np.testing.assert_allclose(data[:, 0], times - T0, rtol=1e-6, atol=1e-3)
    assert accepted + sum(buf.drops.values()) - buf.drops["clock_reset"] == len(steps)


def test_clear_and_latest_stamp():
    buf = filled(50.0, 1.0)
    assert buf.latest_stamp == pytest.approx(T0 + 1.0)
    buf.clear()
    assert len(buf) == 0 and buf.latest_stamp is None and buf.oldest_stamp is None


def test_concurrent_add_and_window():
    """A reader takes windows while the writer appends, forgets old samples and compacts the array.

    200 Hz into a 600-sample cap (3 s, more than the 2.54 s window needs): every window at or just
    before the newest stamp is available unless the writer ran past its head while the reader was
    preempted, and each window read is checked against the exact linear signal. The
    writer waits for a read after every compaction (the live range moved to the front of the array)
    and every 50 samples, so reads really interleave with compaction and forgetting.
    """
    buf = ImuBuffer(6, buffer_s=5.0, max_samples=600)
    # Each compaction is one chance to catch a read that races it: with 6000 samples (9 of them) a
    # window copied outside the lock was caught in 3 of 8 runs (tools/deliberate_breaks.py).
    SAMPLES = 24000  # noqa: N806
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]  # successful windows checked against the signal
    unavailable: list[str] = []

    def reader():
        try:
            while not stop.is_set():
                latest = buf.latest_stamp
                if latest is None or latest - T0 < 3.0:  # until 3 s are buffered nothing is promised
                    time.sleep(0)
                    continue
                for t_end in (latest, latest - 0.3):
                    try:
                        win = buf.window(t_end, IMU, SYNC)
                    except WindowUnavailable as err:
                        # Only right when the writer ran ahead far enough (a preempted reader on a busy
                        # machine) that the window's head is gone by now; anything else is a bug.
                        oldest = buf.oldest_stamp
                        start = t_end - (IMU.window_samples - 1) / IMU.rate_hz
                        allowed = (1 - SYNC.min_coverage) * (t_end - start)
                        if err.reason != "insufficient_coverage" or oldest - start <= allowed:
                            unavailable.append(f"{err.reason} (oldest {oldest - start:+.3f} s past start)")
                        continue
                    assert win.end == t_end
                    # The writer may have forgotten the window's head meanwhile (it never waits for
                    # the reader): rows before the oldest sample then hold its value, within the
                    # coverage the policy accepts. Everything else is the exact signal.
                    rows = t_end - (127 - np.arange(128)) / 50.0
                    first = T0 + float(win.data[0, 0])
                    assert first - win.start <= (1 - SYNC.min_coverage) * (win.end - win.start) + 1e-3
                    np.testing.assert_allclose(
                        win.data, linear(np.maximum(rows, first)), rtol=1e-5, atol=1e-3
                    )
                    reads[0] += 1
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    def wait_for_a_read():
        before = reads[0]
        deadline = time.monotonic() + 5.0
        while reads[0] == before and not errors and time.monotonic() < deadline:
            time.sleep(0.0005)

    thread = threading.Thread(target=reader)
    thread.start()
    compactions = 0
    try:
        times = T0 + np.arange(SAMPLES) / 200.0
        for i, (t, x) in enumerate(zip(times, linear(times), strict=True)):
            lo_before = buf._lo
            assert buf.add(t, x)
            if buf._lo < lo_before:  # the live range was moved to the front
                compactions += 1
            if t - T0 >= 3.0 and (buf._lo < lo_before or i % 50 == 0):
                wait_for_a_read()
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert not unavailable, sorted(set(unavailable))
    assert compactions >= 30  # 24000 samples through a 1200-row array
    assert reads[0] >= 100
    assert len(buf) == 600
    times, data = buf.snapshot()
    np.testing.assert_allclose(times, T0 + np.arange(SAMPLES - 600, SAMPLES) / 200.0)
    np.testing.assert_allclose(data, linear(times), rtol=1e-5, atol=1e-3)


def test_frame_older_than_the_whole_buffer_is_insufficient_coverage():
    buf = filled(50.0, 12.0, buffer_s=5.0)  # holds T0 + 7 .. T0 + 12
    assert buf.oldest_stamp == pytest.approx(T0 + 7.0)
    assert reason(buf, T0 + 3.0) == "insufficient_coverage"  # newer samples exist: not "not_yet"
    # Coverage is negative, not 0: even a policy that accepts no coverage at all refuses it.
    assert reason(buf, T0 + 3.0, SyncConfig(min_coverage=0.0)) == "insufficient_coverage"
    assert reason(buf, T0 + 6.99, SyncConfig(min_coverage=0.0)) == "insufficient_coverage"
    # A window reaching just past the oldest sample is available once its coverage is accepted.
    win = buf.window(T0 + 7.5, IMU, SyncConfig(min_coverage=0.1))
    np.testing.assert_allclose(win.data[-26:, 0], np.linspace(7.0, 7.5, 26), atol=2e-5)
    np.testing.assert_allclose(win.data[:-26, 0], 7.0, atol=2e-5)  # held before the first sample


def test_single_sample_buffer():
    buf = ImuBuffer(6)
    sample = np.arange(1.0, 7.0)
    assert buf.add(T0, sample)
    assert len(buf) == 1 and buf.latest_stamp == buf.oldest_stamp == T0
    assert reason(buf, T0) == "insufficient_coverage"  # covers nothing of the window
    assert reason(buf, T0 + 0.03) == "not_yet"
    assert reason(buf, T0 - 1.0, SyncConfig(min_coverage=0.0)) == "insufficient_coverage"
    win = buf.window(T0, IMU, SyncConfig(min_coverage=0.0))  # a window that accepts no coverage
    assert win.data.shape == (128, 6) and win.num_source_samples == 1
    np.testing.assert_array_equal(win.data, np.tile(sample.astype(np.float32), (128, 1)))
