"""sync: the IMU ring buffer and the window ending at a frame's stamp."""

from __future__ import annotations

import threading

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
    assert reason(buf, T0 + 3.01) == "not_yet"


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
    buf = ImuBuffer(6, buffer_s=5.0, max_samples=400)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                latest = buf.latest_stamp
                if latest is None:
                    continue
                try:
                    win = buf.window(latest, IMU, SYNC)
                    np.testing.assert_allclose(
                        win.data[:, 0], np.linspace(win.start, win.end, 128) - T0, atol=1e-3
                    )
                except WindowUnavailable:
                    pass
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    times = T0 + np.arange(3000) / 200.0
    for t, x in zip(times, linear(times), strict=True):
        buf.add(t, x)
    stop.set()
    thread.join()
    assert not errors
    assert len(buf) <= 400
