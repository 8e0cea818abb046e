"""Time-indexed IMU ring buffer and the IMU window that ends at a camera frame's stamp.

A subscription callback calls :meth:`ImuBuffer.add` (cheap, under a lock) while a worker thread
calls :meth:`ImuBuffer.window` for the newest frame. The window is resampled by linear
interpolation to the encoder's fixed rate, so an IMU at 50, 100 or 200 Hz feeds the same model.

Failures are values, not crashes: bad samples are counted in ``ImuBuffer.drops`` by reason, and a
window that cannot be trusted raises :class:`WindowUnavailable` with a reason the caller counts
(and, for ``not_yet``, may wait for).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

from .config import ImuConfig, SyncConfig

# A stamp this far behind the newest one is a clock reset (a bag looping, a restarted driver),
# not a late sample: clear the buffer and start over instead of rejecting everything after it.
DEFAULT_CLOCK_RESET_S = 1.0
# Hard cap on stored samples, whatever buffer_s says: 10 s at 2 kHz.
DEFAULT_MAX_SAMPLES = 20_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class WindowUnavailable(Exception):
    """No trustworthy window. ``reason``: no_data | not_yet | insufficient_coverage | gap."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class ImuWindow:
    """A resampled IMU window.

    data: (T, C) float32, row k at time ``start + k / rate_hz``; the last row is at ``end``.
    start, end: times (seconds, the IMU header clock) of the first and last resampled rows.
    num_source_samples: raw samples that fell inside ``[start, end]``.
    """

    data: np.ndarray
    start: float
    end: float
    num_source_samples: int


class ImuBuffer:
    """Thread-safe buffer of ``(t, sample (C,))``, bounded in time (``buffer_s``) and in count.

    Samples live in one preallocated array of twice the cap; the live range ``[lo, hi)`` slides
    forward and is compacted to the front when it reaches the end, so appends are amortised O(1)
    and the live samples are always one contiguous, time-sorted slice (searchsorted works on it).
    """

    def __init__(
        self,
        channels: int = ImuConfig.channels,
        *,
        buffer_s: float = SyncConfig.buffer_s,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        clock_reset_s: float = DEFAULT_CLOCK_RESET_S,
    ):
        if channels < 1 or max_samples < 2 or buffer_s <= 0:
            raise ValueError("ImuBuffer needs channels >= 1, max_samples >= 2, buffer_s > 0")
        self.channels = channels
        self.buffer_s = float(buffer_s)
        self.max_samples = int(max_samples)
        self.clock_reset_s = float(clock_reset_s)
        self.drops: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._t = np.empty(2 * self.max_samples, dtype=np.float64)
        self._x = np.empty((2 * self.max_samples, channels), dtype=np.float32)
        self._lo = 0
        self._hi = 0

    @classmethod
    def from_config(cls, imu_config: ImuConfig, sync_config: SyncConfig, **kwargs) -> ImuBuffer:
        return cls(imu_config.channels, buffer_s=sync_config.buffer_s, **kwargs)

    # ---------------------------------------------------------------------------------------------
    # Writing

    def add(self, t: float, sample) -> bool:
        """Append one sample (t: seconds; sample: (C,)). Returns False (and counts why) if dropped."""
        sample = np.asarray(sample, dtype=np.float64)
        if sample.shape != (self.channels,):
            return self._drop("bad_shape")
        t = float(t)
        # Checked in float64, before the float32 cast would turn 1e300 into inf with a warning.
        if not (np.isfinite(t) and np.isfinite(sample).all() and np.abs(sample).max() < _FLOAT32_MAX):
            return self._drop("nonfinite")
        with self._lock:
            if self._hi > self._lo:
                newest = self._t[self._hi - 1]
                if t == newest:
                    self.drops["duplicate_stamp"] += 1
                    return False
                if t < newest:
                    if newest - t <= self.clock_reset_s:
                        self.drops["out_of_order"] += 1
                        return False
                    self._lo = self._hi = 0
                    self.drops["clock_reset"] += 1
            if self._hi == len(self._t):  # compact the live range to the front
                n = self._hi - self._lo
                self._t[:n] = self._t[self._lo : self._hi]
                self._x[:n] = self._x[self._lo : self._hi]
                self._lo, self._hi = 0, n
            self._t[self._hi] = t
            self._x[self._hi] = sample
            self._hi += 1
            # Forget what is older than buffer_s (one searchsorted), then enforce the count cap.
            self._lo += int(np.searchsorted(self._t[self._lo : self._hi], t - self.buffer_s, side="left"))
            self._lo = max(self._lo, self._hi - self.max_samples)
        return True

    def _drop(self, reason: str) -> bool:
        with self._lock:  # never call with the lock held (it is not reentrant)
            self.drops[reason] += 1
        return False

    def drop_counts(self) -> dict[str, int]:
        """A consistent copy of ``drops`` (for a thread other than the one calling add)."""
        with self._lock:
            return dict(self.drops)

    def clear(self) -> None:
        """Forget all samples (drop counters are kept)."""
        with self._lock:
            self._lo = self._hi = 0

    # ---------------------------------------------------------------------------------------------
    # Reading

    def __len__(self) -> int:
        with self._lock:
            return self._hi - self._lo

    @property
    def latest_stamp(self) -> float | None:
        """Stamp of the newest sample (seconds), or None when empty."""
        with self._lock:
            return float(self._t[self._hi - 1]) if self._hi > self._lo else None

    @property
    def oldest_stamp(self) -> float | None:
        with self._lock:
            return float(self._t[self._lo]) if self._hi > self._lo else None

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of all live samples: times (N,) float64 and samples (N, C) float32."""
        with self._lock:
            return self._t[self._lo : self._hi].copy(), self._x[self._lo : self._hi].copy()

    def window(self, t_end: float, imu_config: ImuConfig, sync_config: SyncConfig) -> ImuWindow:
        """The window of ``imu_config.window_samples`` rows at ``imu_config.rate_hz`` ending at t_end.

        Rows are at ``t_end - (T - 1 - k) / rate_hz``, linearly interpolated from the raw samples
        (no anti-alias filter: from 200 Hz input, frequencies above 25 Hz fold into a 50 Hz window).
        Raises WindowUnavailable:
          no_data: the buffer is empty;
          not_yet: the newest sample is more than ``max_lag_s`` older than t_end (samples may still be
            on their way); within ``max_lag_s`` the newest sample's value is held up to t_end;
          insufficient_coverage: samples cover less than ``min_coverage`` of the window;
          gap: two consecutive samples inside the window are more than ``max_gap_s`` apart.
        """
        num = imu_config.window_samples
        rate = imu_config.rate_hz
        start = t_end - (num - 1) / rate
        targets = start + np.arange(num, dtype=np.float64) / rate
        targets[-1] = t_end  # exact, whatever the float rounding of the sum above
        with self._lock:
            times = self._t[self._lo : self._hi]
            if times.size == 0:
                raise WindowUnavailable("no_data", "no IMU samples buffered")
            newest, oldest = float(times[-1]), float(times[0])
            if newest < t_end - sync_config.max_lag_s:
                raise WindowUnavailable(
                    "not_yet", f"newest IMU sample {newest:.3f} is older than the frame {t_end:.3f} by more "
                               f"than {sync_config.max_lag_s} s"
                )
            # The samples bracketing the window: one before start (if any) up to one after t_end.
            i0 = max(int(np.searchsorted(times, start, side="right")) - 1, 0)
            i1 = int(np.searchsorted(times, t_end, side="left")) + 1
            t_src = times[i0:i1].copy()
            x_src = self._x[self._lo + i0 : self._lo + i1].copy()

        span = t_end - start
        coverage = 1.0 if span <= 0 else (t_end - max(oldest, start)) / span
        if coverage < sync_config.min_coverage:
            raise WindowUnavailable(
                "insufficient_coverage",
                f"IMU samples cover {coverage:.0%} of the window, need {sync_config.min_coverage:.0%}",
            )
        if t_src.size > 1:
            largest = float(np.diff(t_src).max())
            if largest > sync_config.max_gap_s:
                raise WindowUnavailable(
                    "gap", f"{largest:.3f} s between IMU samples in the window (max {sync_config.max_gap_s})"
                )
        eps = 1e-6  # stamps on the resampling grid count as inside despite float rounding
        inside = int(np.count_nonzero((t_src >= start - eps) & (t_src <= t_end + eps)))
        return ImuWindow(_interpolate(t_src, x_src, targets), float(start), float(t_end), inside)


def _interpolate(t_src: np.ndarray, x_src: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Linear interpolation of (N, C) samples at sorted times to (T, C); edges hold their value."""
    if t_src.size == 1:
        return np.repeat(x_src, targets.size, axis=0).astype(np.float32)
    idx = np.clip(np.searchsorted(t_src, targets, side="right") - 1, 0, t_src.size - 2)
    t0, t1 = t_src[idx], t_src[idx + 1]
    w = np.clip((targets - t0) / (t1 - t0), 0.0, 1.0)[:, None]  # clip = hold before the first sample
    return ((1.0 - w) * x_src[idx] + w * x_src[idx + 1]).astype(np.float32)
