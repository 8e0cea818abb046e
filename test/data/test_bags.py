"""rosbag2 writing/reading with rosbags, label CSVs, and bad messages counted rather than fatal."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from frozen_vlm_perception.config import ImuConfig, SyncConfig
from frozen_vlm_perception.conversions import image_fields, image_to_rgb, imu_to_sample
from frozen_vlm_perception.data import bags
from frozen_vlm_perception.data.bags import (
    ACTIVITY_TOPIC,
    CAMERA_TOPIC,
    IMU_TOPIC,
    PLACE_TOPIC,
    BagError,
    BagWriter,
    LabelInterval,
    load_labels_csv,
    read_messages,
    read_paired_samples,
    save_labels_csv,
)

T0_NS = 1_000 * 10**9
IMU_NS = 20_000_000  # 50 Hz
FRAME_NS = 100_000_000  # 10 Hz: every 5th IMU stamp, so windows land on raw samples


def frame_for(k: int) -> np.ndarray:
    return np.full((6, 8, 3), k % 256, dtype=np.uint8)


def write_bag(path, *, seconds=4.0, storage="mcap", bad=False):
    """IMU at 50 Hz with accel x = seconds since start; frames at 10 Hz; labels at 0 s and 2 s.

    bad=True also writes, at known times, an image with a wrong step, one with a bad encoding, a
    NaN IMU sample, an IMU sample without accel (REP-145) and a duplicate IMU stamp.
    """
    n_imu = int(seconds * 50) + 1
    with BagWriter(path, storage=storage) as w:
        w.write_activity(ACTIVITY_TOPIC, T0_NS, "standing")
        w.write_string(PLACE_TOPIC, "coffee", T0_NS)
        w.write_activity(ACTIVITY_TOPIC, T0_NS + 2 * 10**9, "walking")
        w.write_string(PLACE_TOPIC, "cat", T0_NS + 2 * 10**9)
        events = [(T0_NS + i * IMU_NS, 1, i) for i in range(n_imu)]
        events += [(T0_NS + k * FRAME_NS, 2, k) for k in range(int(seconds * 10) + 1)]
        for t, kind, i in sorted(events):
            if kind == 1:
                if bad and i == 60:
                    w.write_imu(IMU_TOPIC, t, [np.nan, 0.0, 9.8], [0, 0, 0])
                    continue
                w.write_imu(IMU_TOPIC, t, [(t - T0_NS) * 1e-9, 1.0, 9.8], [0.1, 0.2, 0.3])
                if bad and i == 70:
                    w.write_imu(IMU_TOPIC, t, [0.0, 0.0, 0.0], [0, 0, 0])  # duplicate stamp
            else:
                fields = image_fields(frame_for(i))
                if bad and i == 25:
                    fields["step"] = 23  # wrong step
                if bad and i == 26:
                    fields["encoding"] = "yuv422"
                w.write_image_fields(CAMERA_TOPIC, fields, t, frame_id="camera")
    return path


def test_writer_reader_round_trip_all_types(tmp_path):
    bag = write_bag(tmp_path / "bag", seconds=1.0)
    with bags.BagReader(bag) as reader:
        assert reader.topics == {
            ACTIVITY_TOPIC: bags.ACTIVITY_TYPE,
            PLACE_TOPIC: bags.STRING_TYPE,
            IMU_TOPIC: bags.IMU_TYPE,
            CAMERA_TOPIC: bags.IMAGE_TYPE,
        }
    msgs = list(read_messages(bag))
    times = [rx for _, rx, _ in msgs]
    assert times == sorted(times)
    by_topic = collections.defaultdict(list)
    for topic, rx, msg in msgs:
        by_topic[topic].append((rx, msg))
    assert len(by_topic[IMU_TOPIC]) == 51 and len(by_topic[CAMERA_TOPIC]) == 11
    rx, imu = by_topic[IMU_TOPIC][10]
    t, sample = imu_to_sample(imu)
    assert rx == T0_NS + 10 * IMU_NS and t == pytest.approx(1000.2)
    np.testing.assert_allclose(sample, [0.2, 1.0, 9.8, 0.1, 0.2, 0.3], rtol=1e-6)
    assert imu.orientation_covariance[0] == -1.0
    _, image = by_topic[CAMERA_TOPIC][3]
    np.testing.assert_array_equal(image_to_rgb(image), frame_for(3))
    _, label = by_topic[ACTIVITY_TOPIC][0]
    assert label.label == "standing" and label.confidence == 1.0 and label.source == "fused"
    assert list(label.candidate_labels)[4] == "standing" and label.scores[4] == 1.0
    assert by_topic[PLACE_TOPIC][1][1].data == "cat"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_folder_and_lone_file_read_alike(tmp_path, storage):
    bag = write_bag(tmp_path / "bag", seconds=0.5, storage=storage)
    (lone,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    from_folder = [(t, rx) for t, rx, _ in read_messages(bag, [IMU_TOPIC])]
    from_file = [(t, rx) for t, rx, _ in read_messages(lone, [IMU_TOPIC])]
    assert from_folder == from_file and len(from_folder) == 26


def test_bag_path_errors_are_clear(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        bags.resolve_bag_path(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BagError, match="not a rosbag2 folder"):
        bags.resolve_bag_path(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="without metadata.yaml"):
        bags.resolve_bag_path(tmp_path / "empty")
    write_bag(tmp_path / "bag", seconds=0.2)
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "bag")


def test_paired_samples_windows_end_at_frames(tmp_path):
    bag = write_bag(tmp_path / "bag", seconds=4.0)
    samples = read_paired_samples(bag, label_topic=ACTIVITY_TOPIC, place_topic=PLACE_TOPIC)
    out = list(samples)
    assert len(out) == 41
    with_window = [s for s in out if s.imu_window is not None]
    assert with_window and all(s.stamp >= 1002.54 - 0.26 for s in with_window)
    for s in with_window:
        assert s.imu_window.end == s.stamp
        # accel x is the time since the start: the last row is the frame's own time.
        assert s.imu_window.data[-1, 0] == pytest.approx(s.stamp - 1000.0, abs=1e-4)
        assert s.imu_window.data.shape == (128, 6)
    first = out[0]
    assert first.imu_window is None and first.window_reason == "insufficient_coverage"
    assert np.array_equal(out[7].frame, frame_for(7))
    assert [s.label for s in out[19:22]] == ["standing", "walking", "walking"]
    assert [s.place for s in out[19:22]] == ["coffee", "cat", "cat"]
    assert sum(v for k, v in samples.drops.items() if not k.startswith("no_window")) == 0


def test_bad_messages_are_counted_and_the_rest_kept(tmp_path):
    bag = write_bag(tmp_path / "bag", seconds=4.0, bad=True)
    samples = read_paired_samples(bag, label_topic=ACTIVITY_TOPIC)
    out = list(samples)
    assert len(out) == 41 - 2
    assert samples.drops["camera:bad_step"] == 1
    assert samples.drops["camera:unknown_encoding"] == 1
    assert samples.drops["imu:nonfinite"] == 1
    assert samples.drops["imu:duplicate_stamp"] == 1
    stamps = {round(s.stamp - 1000, 1) for s in out}
    assert 2.5 not in stamps and 2.6 not in stamps and 2.7 in stamps
    later = [s for s in out if s.stamp > 1003.0]
    assert later and all(s.imu_window is not None for s in later)  # one lost sample is no gap
    early = read_paired_samples(bag, limit=30)
    assert len(list(early)) == 30
    assert early.drops["imu:duplicate_stamp"] == 1  # counted although the pass stopped early


def test_frame_stride_limit_and_missing_topics(tmp_path):
    bag = write_bag(tmp_path / "bag", seconds=2.0)
    out = list(read_paired_samples(bag, frame_stride=5))
    assert [round(s.stamp - 1000, 1) for s in out] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert len(list(read_paired_samples(bag, limit=3))) == 3
    samples = read_paired_samples(bag, imu_topic="/other/imu", label_topic="/nothing")
    out = list(samples)
    assert len(out) == 21 and all(s.imu_window is None and s.label is None for s in out)
    assert samples.drops["missing_topic:/other/imu"] == 1
    assert samples.drops["no_window:no_data"] == 21
    with pytest.raises(BagError, match="no topic /cam"):
        list(read_paired_samples(bag, camera_topic="/cam"))


def test_window_waits_for_late_imu(tmp_path):
    """IMU samples recorded after the frame they belong to (a late driver) still pair with it."""
    path = tmp_path / "late"
    with BagWriter(path) as w:
        for i in range(200):
            t = T0_NS + i * IMU_NS
            w.write_imu(IMU_TOPIC, t, [i, 0, 0], [0, 0, 0], receive_ns=t + 100_000_000)  # 100 ms late
            if i % 5 == 0:
                w.write_image(CAMERA_TOPIC, frame_for(i), t)
    out = list(read_paired_samples(path, sync_config=SyncConfig(max_wait_s=0.2)))
    ok = [s for s in out if s.imu_window is not None]
    assert len(out) == 40 and len(ok) == 17  # every frame from 2.3 s on (90% window coverage)
    assert all(s.stamp >= 1002.3 - 1e-6 for s in ok)
    for s in ok:
        assert s.imu_window.data[-1, 0] == pytest.approx((s.stamp - 1000.0) * 50, abs=1e-3)


def test_labels_csv_round_trip_and_use(tmp_path):
    intervals = [LabelInterval(1000.0, 1002.0, "standing"), LabelInterval(1002.0, 1004.5, "walking upstairs")]
    path = tmp_path / "labels.csv"
    save_labels_csv(path, intervals)
    assert load_labels_csv(path) == intervals
    bag = write_bag(tmp_path / "bag", seconds=2.5)
    out = list(read_paired_samples(bag, labels_csv=path, imu_config=ImuConfig()))
    assert out[19].label == "standing" and out[20].label == "walking upstairs"
    with pytest.raises(ValueError, match="not both"):
        read_paired_samples(bag, labels_csv=path, label_topic=ACTIVITY_TOPIC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "first line"),
        ("begin,end,label\n1,2,x\n", "first line"),
        ("start,end,label\n1,2\n", "3 columns"),
        ("start,end,label\n1,two,x\n", "must be numbers"),
        ("start,end,label\n2,1,x\n", "start < end"),
        ("start,end,label\nnan,1,x\n", "start < end"),
        ("start,end,label\n1,2, \n", "empty label"),
        ("start,end,label\n1,3,a\n2,4,b\n", "overlap"),
    ],
)
def test_malformed_labels_csv(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_labels_csv(path)


def test_typestore_has_kilted_and_our_messages():
    store = bags.make_typestore()
    assert bags.ACTIVITY_TYPE in store.types and bags.IMAGE_TYPE in store.types
    assert bags.interfaces_msg_dir().joinpath("ActivityLabel.msg").is_file()
