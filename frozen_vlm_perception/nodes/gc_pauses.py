"""Python's garbage-collector pauses, timed, so /diagnostics can tell a latency spike from a collection.

A collection stops every Python thread of the process (it runs holding the GIL), so a long one delays
the image callback and the worker alike. :class:`GcPauses` hooks ``gc.callbacks`` and keeps the pause
of every collection since the last :meth:`take`; the nodes report them per diagnostics period.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Pause:
    generation: int  # 0, 1 or 2 (2: a full collection, the one that walks every tracked object)
    ms: float


class GcPauses:
    """Every collection's pause since the last :meth:`take` (bounded: the oldest are forgotten)."""

    def __init__(self, keep: int = 10_000):
        self._keep = keep
        self._lock = threading.Lock()
        self._pauses: list[Pause] = []
        self._started: float | None = None
        self._installed = False

    def install(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True
        return self

    def remove(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict) -> None:
        # Collections never overlap (each holds the GIL from start to stop), so one start time serves.
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            pause = Pause(int(info.get("generation", 0)), (time.perf_counter() - self._started) * 1000.0)
            self._started = None
            with self._lock:
                if len(self._pauses) < self._keep:
                    self._pauses.append(pause)

    def take(self) -> list[Pause]:
        with self._lock:
            pauses, self._pauses = self._pauses, []
        return pauses

    @staticmethod
    def summary(pauses: list[Pause]) -> list[tuple[str, float | int]]:
        """Diagnostics key/values for one period's pauses."""
        return [
            ("period_gc_collections", len(pauses)),
            ("period_gc_full_collections", sum(1 for p in pauses if p.generation == 2)),
            ("period_gc_ms_total", float(sum(p.ms for p in pauses))),
            ("period_gc_ms_max", float(max((p.ms for p in pauses), default=0.0))),
        ]
