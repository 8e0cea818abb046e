"""The demo recording: real HAPT IMU + real photos + a virtual camera driven by the same IMU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frozen_vlm_perception.data import demo_bag, hapt
from frozen_vlm_perception.data.bags import (
    ACTIVITY_TOPIC,
    PLACE_TOPIC,
    BagReader,
    LabelInterval,
    read_paired_samples,
    save_labels_csv,
)

EPOCH_S = demo_bag.DEMO_EPOCH_NS * 1e-9


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "small"
    info = demo_bag.make_small_bag(path, seconds=6.0, num_segments=2, activities=("standing", "walking"))
    return info


def segment_at(manifest: dict, stamp: float) -> dict:
    """The planned segment at a stamp (the last one also owns the bag's final instant)."""
    for seg in manifest["segments"]:
        if seg["start_ns"] * 1e-9 <= stamp < seg["end_ns"] * 1e-9:
            return seg
    return manifest["segments"][-1]


def test_small_bag_contents_and_manifest(small_bag):
    manifest = demo_bag.read_demo_manifest(small_bag.path)
    assert manifest == small_bag.manifest
    assert manifest["split"] == "test" and manifest["subjects"] == [hapt.SUBJECT_SPLITS["test"][0]]
    assert [s["activity"] for s in manifest["segments"]] == ["standing", "walking"]
    assert set(manifest["places"]) >= {s["place"] for s in manifest["segments"]}
    assert manifest["what_is_real"] and manifest["what_is_generated"]
    assert small_bag.num_imu == 300 and small_bag.num_frames == 60
    with BagReader(small_bag.path) as reader:
        assert json.loads(reader.custom_data[demo_bag.MANIFEST_KEY]) == manifest


def test_read_back_pairs_frames_windows_and_labels(small_bag):
    manifest = small_bag.manifest
    samples = read_paired_samples(small_bag.path, label_topic=ACTIVITY_TOPIC, place_topic=PLACE_TOPIC)
    out = list(samples)
    assert len(out) == small_bag.num_frames
    assert set(samples.drops) <= {"no_window:insufficient_coverage"}  # only the first ~2.3 s
    assert out[0].stamp == EPOCH_S and out[0].frame.shape == (24, 32, 3)

    # IMU windows end at the frame stamps and hold HAPT's own samples (10 Hz frames lie on the
    # 50 Hz sample grid, so the resampled rows are the raw rows).
    segs = manifest["segments"]
    recs = {(r.subject, r.index): r for r in hapt.load_hapt(manifest["subjects"])}
    raw = np.concatenate(
        [recs[(s["subject"], s["recording"])].imu[s["hapt_start"] : s["hapt_stop"]] for s in segs]
    )
    windows = [s for s in out if s.imu_window is not None]
    assert len(windows) >= 30
    for s in windows:
        assert s.imu_window.end == s.stamp
        last = round((s.stamp - EPOCH_S) * 50)
        covered = min(last + 1, 128)  # near the start the window's head holds the first sample
        np.testing.assert_allclose(
            s.imu_window.data[-covered:], raw[last + 1 - covered : last + 1], atol=1e-4
        )

    # Labels and places are the plan's at every frame (HAPT's labels for those samples).
    for s in out:
        seg = segment_at(manifest, s.stamp)
        assert (s.label, s.place) == (seg["activity"], seg["place"])
    assert len({s.place for s in out}) == 2  # seed 0 happens to give the two segments two places
    hapt_ids = {s["activity"]: hapt.DEFAULT_ACTIVITY_LABELS.index(s["activity"]) + 1 for s in segs}
    for s in segs:
        labels = recs[(s["subject"], s["recording"])].label[s["hapt_start"] : s["hapt_stop"]]
        assert (labels == hapt_ids[s["activity"]]).all()


def test_labels_from_csv_match_the_topic(small_bag, tmp_path):
    segs = small_bag.manifest["segments"]
    csv_path = tmp_path / "labels.csv"
    save_labels_csv(
        csv_path, [LabelInterval(s["start_ns"] * 1e-9, s["end_ns"] * 1e-9, s["activity"]) for s in segs]
    )
    from_topic = [
        s.label for s in read_paired_samples(small_bag.path, label_topic=ACTIVITY_TOPIC, imu_topic=None)
    ]
    from_csv = [s.label for s in read_paired_samples(small_bag.path, labels_csv=csv_path, imu_topic=None)]
    assert from_csv == from_topic


def test_frames_move_with_the_imu(small_bag):
    frames = [s.frame.astype(np.float32) for s in read_paired_samples(small_bag.path, imu_topic=None)]
    diffs = np.array([np.abs(a - b).mean() for a, b in zip(frames, frames[1:], strict=False)])
    standing, walking = diffs[:25], diffs[31:]  # the cut between the segments is at 3 s
    assert walking.mean() > 2 * standing.mean()


def test_lying_rolls_the_view():
    segments, recordings = demo_bag.plan_segments("test", max_subjects=1, activities=("standing", "lying"))
    stamps, imu, owner = demo_bag.assemble_imu(segments, recordings)
    path = demo_bag.camera_path(stamps, imu, 160)
    standing = np.median(path.roll[(owner == 0)][100:])
    lying = np.median(path.roll[(owner == 1)][100:])
    assert abs(lying - standing) > np.radians(30)
    assert np.abs(path.dx).max() <= demo_bag.MAX_PAN * 160 + 1e-9


def test_plan_is_deterministic_and_places_follow_the_seed():
    a, _ = demo_bag.plan_segments("val", seconds_per_segment=2.0, seed=3)
    b, _ = demo_bag.plan_segments("val", seconds_per_segment=2.0, seed=3)
    c, _ = demo_bag.plan_segments("val", seconds_per_segment=2.0, seed=4)
    assert a == b
    assert [s.place for s in a] != [s.place for s in c]
    assert [(s.subject, s.activity) for s in a] == [(s.subject, s.activity) for s in c]
    assert {s.subject for s in a} == set(hapt.SUBJECT_SPLITS["val"])
    assert all(s.hapt_stop - s.hapt_start <= 100 for s in a)


def test_render_frame_identity_is_the_photo_centre():
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype(np.float32)
    zero = np.zeros(1)
    out = demo_bag.render_frame(photo, zero, zero, zero, 20, 10)
    np.testing.assert_array_equal(out, np.round(photo[15:25, 20:40]).astype(np.uint8))


def test_command_line_writes_and_refuses_to_overwrite(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    demo_bag.add_make_demo_bag_arguments(parser)
    out = tmp_path / "cli_bag"
    argv = [
        str(out),
        "--max-subjects",
        "1",
        "--seconds-per-segment",
        "1",
        "--camera-rate",
        "2",
        "--width",
        "16",
    ]
    argv += ["--height", "12"]
    assert demo_bag.main_make_demo_bag(parser.parse_args(argv)) == 0
    assert "6 segments" in capsys.readouterr().out
    assert demo_bag.main_make_demo_bag(parser.parse_args(argv)) == 2
    assert "--force" in capsys.readouterr().err
    assert demo_bag.main_make_demo_bag(parser.parse_args([*argv, "--force"])) == 0
