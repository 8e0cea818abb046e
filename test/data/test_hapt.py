"""UCI HAPT loaded offline through the restricted unpickler: shapes, units, segments, splits."""

from __future__ import annotations

import io
import pickle
import sys

import numpy as np
import pytest

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS
from frozen_vlm_perception.data import hapt


@pytest.fixture(scope="module")
def recordings():
    return hapt.load_hapt()


def test_loads_all_subjects_without_importing_the_package(recordings):
    assert len(recordings) == 61
    assert {r.subject for r in recordings} == set(range(1, 31))
    assert sum(len(r) for r in recordings) == 1_122_772
    assert hapt.HAPT_TOP_LEVEL not in sys.modules  # its module was never executed


def test_arrays_and_time_base(recordings):
    rec = recordings[0]
    n = len(rec)
    assert rec.acc.shape == (n, 3) and rec.gyro.shape == (n, 3) and rec.label.shape == (n,)
    assert rec.acc.dtype == np.float32 and rec.gyro.dtype == np.float32
    assert rec.imu.shape == (n, 6)
    np.testing.assert_allclose(np.diff(rec.t), 1 / hapt.HAPT_RATE_HZ)
    assert not rec.acc.flags.writeable  # shared by the in-memory cache
    assert set(np.unique(rec.label)) <= {-1, *range(1, 13)}


def test_units_static_accel_is_one_g_and_gyro_is_rad_per_s(recordings):
    for activity in ("standing", "sitting", "lying"):
        hid = DEFAULT_ACTIVITY_LABELS.index(activity) + 1
        acc = np.concatenate([r.acc[r.label == hid] for r in recordings])
        gyro = np.concatenate([r.gyro[r.label == hid] for r in recordings])
        assert 9.5 < np.linalg.norm(acc, axis=1).mean() < 10.6, activity  # m/s^2, not g
        assert np.abs(gyro).mean() < 0.1, activity  # at rest: rad/s noise, not deg/s
    walking = np.concatenate([r.gyro[r.label == 1] for r in recordings])
    assert 0.2 < np.abs(walking).mean() < 2.0


def test_segments_are_the_six_basic_activities(recordings):
    segments = [s for r in recordings for s in hapt.activity_segments(r)]
    assert {s.activity for s in segments} == set(DEFAULT_ACTIVITY_LABELS)
    by_key = {(r.subject, r.index): r for r in recordings}
    for seg in segments[:50]:
        labels = by_key[(seg.subject, seg.recording)].label[seg.start : seg.stop]
        assert (labels == seg.label_index + 1).all()
        imu = hapt.segment_imu(by_key[(seg.subject, seg.recording)], seg)
        assert imu.shape == (seg.num_samples, 6)
    per_sample = hapt.activity_labels_per_sample(recordings[0])
    assert per_sample.min() == -1 and per_sample.max() == 5


def test_splits_are_disjoint_and_cover_everyone():
    splits = {name: set(hapt.split_subjects(name)) for name in ("train", "val", "test")}
    assert [len(splits[n]) for n in ("train", "val", "test")] == [21, 4, 5]
    assert not (
        splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"]
    )
    assert set.union(*splits.values()) == set(range(1, 31))
    with pytest.raises(ValueError, match="unknown split"):
        hapt.split_subjects("holdout")


def test_load_split_and_unknown_subject(recordings):
    test = hapt.load_split("test")
    assert {r.subject for r in test} == set(hapt.SUBJECT_SPLITS["test"])
    with pytest.raises(hapt.HaptError, match="no subject"):
        hapt.load_hapt([31])


def test_unpickler_refuses_anything_else():
    payload = pickle.dumps(print, protocol=2)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        hapt._HaptUnpickler(io.BytesIO(payload)).load()
