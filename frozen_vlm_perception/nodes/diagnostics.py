"""Counters and diagnostics: thread-safe event counters, what grew in a period, and the
DiagnosticArray the nodes publish."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from frozen_vlm_perception.paths import PACKAGE_NAME


class Counters:
    """Thread-safe event counters (drops by reason, frames, ...) shared by callbacks and workers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


def diagnostic_array(stamp, name: str, level: str, message: str, values: Iterable[tuple[str, Any]]):
    """A DiagnosticArray with one status. ``level``: 'ok' | 'warn' | 'error'."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    levels = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}
    status = DiagnosticStatus(level=levels[level], name=name, message=message, hardware_id=PACKAGE_NAME)
    status.values = [KeyValue(key=str(k), value=_format(v)) for k, v in values]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Counts that grew since ``before`` (for 'what happened in the last period')."""
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
