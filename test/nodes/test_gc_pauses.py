"""The collector pauses the perception node reports, and the generating thread's lowered priority."""

from __future__ import annotations

import gc
import os
import sys
import threading

import pytest

from frozen_vlm_perception.nodes.gc_pauses import GcPauses
from frozen_vlm_perception.nodes.reasoning_node import lower_this_thread


def test_every_collection_is_timed_until_removed():
    pauses = GcPauses().install()
    try:
        pauses.take()
        gc.collect()  # a full collection
        gc.collect(0)
        taken = pauses.take()
        assert [p.generation for p in taken][-2:] == [2, 0]
        assert all(p.ms >= 0.0 for p in taken)
        summary = dict(GcPauses.summary(taken))
        assert summary["period_gc_collections"] == len(taken)
        assert summary["period_gc_full_collections"] == sum(p.generation == 2 for p in taken)
        assert summary["period_gc_ms_max"] == max(p.ms for p in taken)
        assert pauses.take() == []  # take() empties
    finally:
        pauses.remove()
    gc.collect()
    assert pauses.take() == []  # removed: nothing is recorded any more
    assert pauses._on_gc not in gc.callbacks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_only_the_calling_thread_gets_nicer():
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        seen["returned"] = lower_this_thread(3)
        seen["before"], seen["after"] = before, os.getpriority(os.PRIO_PROCESS, tid)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["after"] == min(19, seen["before"] + 3) == seen["returned"]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before  # this thread: as it was
