"""An honest demo recording: real IMU of real people, real photos, a virtual camera tying them together.

No paired camera + IMU data exists offline, so the demo bag is assembled:

* REAL: the IMU stream is UCI HAPT (waist-worn smartphone, 50 Hz accel + gyro) of the subjects of
  one split, with their real activity labels. The camera content is real photographs (scikit-image).
* GENERATED: the camera motion. A virtual camera looks at the photo of the current "place"; its
  roll follows the gravity direction in the (low-passed) accelerometer, its yaw/pitch pan follows
  the (leakily) integrated gyroscope, its shake follows the high-passed accelerometer and its motion
  blur the pose change during the exposure. So the video moves with the very IMU stream that is
  in the bag: lying rolls the view (by 30-90 degrees, per person), walking sways and blurs it,
  sitting keeps it still.
  Which place each activity segment is "seen in" is drawn by a seeded RNG, independently of the
  activity; the time line is synthetic (segments back to back from a fixed epoch).

Topics: /camera/image_raw (Image rgb8), /imu/data (Imu, 50 Hz), /ground_truth/activity
(ActivityLabel, at every segment change and at 1 Hz), /ground_truth/place (String place key, same
times). Header stamps equal receive stamps. A ``demo_manifest.json`` (also in metadata.yaml's
custom_data) inside the bag folder lists what is real, what is generated, subjects, segments, seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import DEFAULT_ACTIVITY_LABELS
from . import hapt, photos
from .bags import ACTIVITY_TOPIC, CAMERA_TOPIC, IMU_TOPIC, PLACE_TOPIC, BagWriter

DEMO_EPOCH_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z: a fixed, plausible ROS time
MANIFEST_NAME = "demo_manifest.json"
MANIFEST_KEY = "frozen_vlm_perception.demo_manifest"
MANIFEST_FORMAT = 1

IMU_PERIOD_NS = int(round(1e9 / hapt.HAPT_RATE_HZ))  # 20 ms, exact
# Nominal smartphone IMU noise for the Imu covariances (not measured on HAPT's phone).
ACCEL_VAR = 0.02**2  # (m/s^2)^2
GYRO_VAR = 0.005**2  # (rad/s)^2

# Virtual camera.
HFOV_DEG = 60.0
GRAVITY_TAU_S = 0.3  # low-pass of the accelerometer that estimates gravity (roll)
PAN_TAU_S = 1.0  # leak of the gyro integrator: pans return to centre instead of drifting
SHAKE_TAU_S = 0.1  # high-pass of the accelerometer that drives shake
SHAKE_PX_PER_MS2 = 0.4  # shake in pixels (at 160 px width) per m/s^2 of high-passed accel
MAX_PAN = 0.15  # pan + shake clipped to this fraction of the image width
EXPOSURE_S = 1 / 60
# imu: the camera moves with the IMU stream (the demo). still: a fixed camera that sees only the
# place, so the video carries nothing of the activity (a recording where the camera says little).
CAMERA_MOTIONS = ("imu", "still")
BLUR_SUBSAMPLES = 3


@dataclass
class DemoSegment:
    """One activity segment of the bag: HAPT samples [hapt_start, hapt_stop) of one recording."""

    subject: int
    recording: int
    activity: str
    place: str
    hapt_start: int
    hapt_stop: int
    start_ns: int = 0  # bag time of the first sample
    end_ns: int = 0  # bag time just after the last sample (= next segment's start)


@dataclass
class DemoBagInfo:
    path: Path
    duration_s: float
    num_frames: int
    num_imu: int
    size_bytes: int
    generation_s: float
    manifest: dict = field(repr=False)


# --------------------------------------------------------------------------------------------------
# Plan: which HAPT samples, in which order, in which place


def plan_segments(
    split: str = "test",
    *,
    seconds_per_segment: float = 5.0,
    max_subjects: int | None = None,
    max_segments: int | None = None,
    activities: tuple[str, ...] | None = None,
    seed: int = 0,
) -> tuple[list[DemoSegment], list[hapt.HaptRecording]]:
    """For each subject of ``split``: the first segment of each activity (the middle
    ``seconds_per_segment`` of it), in recording order; each segment gets a random place."""
    activities = tuple(activities or DEFAULT_ACTIVITY_LABELS)
    unknown = set(activities) - set(DEFAULT_ACTIVITY_LABELS)
    if unknown:
        raise ValueError(f"unknown activities {sorted(unknown)}; known: {list(DEFAULT_ACTIVITY_LABELS)}")
    if seconds_per_segment <= 0:
        raise ValueError("seconds_per_segment must be > 0")
    subjects = hapt.split_subjects(split)[: max_subjects or None]
    recordings = hapt.load_hapt(subjects)
    by_key = {(r.subject, r.index): r for r in recordings}
    cap = max(1, int(round(seconds_per_segment * hapt.HAPT_RATE_HZ)))

    chosen: list[hapt.HaptSegment] = []
    for subject in subjects:
        first: dict[str, hapt.HaptSegment] = {}
        for rec in (r for r in recordings if r.subject == subject):
            for seg in hapt.activity_segments(rec):
                if seg.activity in activities and seg.activity not in first:
                    first[seg.activity] = seg
        chosen += sorted(first.values(), key=lambda s: (s.recording, s.start))
    chosen = chosen[: max_segments or None]

    rng = np.random.default_rng(seed)
    place_keys = photos.place_keys()
    place_draws = rng.integers(len(place_keys), size=len(chosen))  # independent of the activity
    segments = []
    for seg, draw in zip(chosen, place_draws, strict=True):
        take = min(cap, seg.num_samples)
        start = seg.start + (seg.num_samples - take) // 2  # the middle: away from the transitions
        segments.append(
            DemoSegment(seg.subject, seg.recording, seg.activity, place_keys[int(draw)], start, start + take)
        )
    return segments, [by_key[k] for k in sorted({(s.subject, s.recording) for s in segments})]


def assemble_imu(
    segments: list[DemoSegment], recordings: list[hapt.HaptRecording], epoch_ns: int = DEMO_EPOCH_NS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate the segments back to back on the synthetic clock (sets start_ns/end_ns).

    Returns stamps_ns (N,) int64, imu (N, 6) float32 (accel m/s^2, gyro rad/s), segment index (N,).
    """
    by_key = {(r.subject, r.index): r for r in recordings}
    parts, owners = [], []
    n = 0
    for i, seg in enumerate(segments):
        rec = by_key[(seg.subject, seg.recording)]
        sl = slice(seg.hapt_start, seg.hapt_stop)
        parts.append(np.concatenate([rec.acc[sl], rec.gyro[sl]], axis=1))
        owners.append(np.full(seg.hapt_stop - seg.hapt_start, i, dtype=np.int32))
        seg.start_ns = epoch_ns + n * IMU_PERIOD_NS
        n += seg.hapt_stop - seg.hapt_start
        seg.end_ns = epoch_ns + n * IMU_PERIOD_NS
    stamps = epoch_ns + np.arange(n, dtype=np.int64) * IMU_PERIOD_NS
    return stamps, np.concatenate(parts).astype(np.float32), np.concatenate(owners)


# --------------------------------------------------------------------------------------------------
# Virtual camera


def _first_order(x: np.ndarray, b: float, r: float, y0: np.ndarray) -> np.ndarray:
    """y[n] = r * y[n-1] + b * x[n] along axis 0 with y[-1] = y0: a first-order IIR filter.

    A plain loop over python floats: it runs once per bag (~0.1 us a sample), and scipy.signal
    would cost seconds of import time.
    """
    x2 = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = np.empty_like(x2)
    for j, (column, y) in enumerate(zip(x2.T.tolist(), np.ravel(y0).tolist(), strict=True)):
        filtered = []
        for value in column:
            y = r * y + b * value
            filtered.append(y)
        out[:, j] = filtered
    return out.reshape(x.shape)


def _lowpass(x: np.ndarray, tau_s: float, dt: float) -> np.ndarray:
    """First-order low-pass along axis 0, started at the first value (no start-up transient)."""
    a = dt / (tau_s + dt)
    return _first_order(x, a, 1 - a, x[:1])


def _leaky_integral(x: np.ndarray, tau_s: float, dt: float) -> np.ndarray:
    """Integral of x (per second) that forgets with time constant tau_s: a high-passed angle."""
    return _first_order(x, dt, 1 - dt / tau_s, np.zeros(x.shape[1:]))


@dataclass
class CameraPath:
    """Camera pose per IMU sample: roll (rad), dx/dy (pixels at the output size)."""

    t_ns: np.ndarray
    roll: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    def at(self, t_ns: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rel = (np.asarray(t_ns, dtype=np.int64) - self.t_ns[0]).astype(np.float64)
        base = (self.t_ns - self.t_ns[0]).astype(np.float64)
        return np.interp(rel, base, self.roll), np.interp(rel, base, self.dx), np.interp(rel, base, self.dy)


def camera_path(stamps_ns: np.ndarray, imu: np.ndarray, width: int) -> CameraPath:
    """Derive the virtual camera's motion from the IMU stream (see the module docstring).

    The camera looks along the phone's z axis with image-up = phone +x (HAPT's phone is worn
    upright on the waist: +x points up when standing), so roll = atan2(g_y, g_x) of gravity.
    """
    dt = 1.0 / hapt.HAPT_RATE_HZ
    accel, gyro = imu[:, :3].astype(np.float64), imu[:, 3:].astype(np.float64)
    gravity = _lowpass(accel, GRAVITY_TAU_S, dt)
    roll = np.arctan2(gravity[:, 1], gravity[:, 0])
    focal = (width / 2) / math.tan(math.radians(HFOV_DEG) / 2)
    yaw = _leaky_integral(gyro[:, 0], PAN_TAU_S, dt)  # about the up axis: horizontal pan
    pitch = _leaky_integral(gyro[:, 1], PAN_TAU_S, dt)  # about the sideways axis: vertical pan
    shake = (accel - _lowpass(accel, SHAKE_TAU_S, dt)) * SHAKE_PX_PER_MS2 * (width / 160)
    limit = MAX_PAN * width
    dx = np.clip(focal * np.tan(np.clip(yaw, -1.0, 1.0)) + shake[:, 1], -limit, limit)
    dy = np.clip(focal * np.tan(np.clip(pitch, -1.0, 1.0)) + shake[:, 2], -limit, limit)
    return CameraPath(stamps_ns, roll, dx, dy)


def prepare_photo(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale a photo once so that one output pixel ~ one photo pixel and any roll stays inside it.

    The shorter side becomes the output's longer side plus the pan margin on both sides, so a roll
    of 0 or 90 degrees stays inside the photo; at diagonal rolls with a large pan a corner may fall
    outside and repeats the photo's edge (zooming out further would make the places tiny).
    Returns float32 (h, w, 3).
    """
    from skimage.transform import resize

    need = max(width, height) + 2 * MAX_PAN * width
    scale = need / min(photo.shape[:2])
    size = (max(1, round(photo.shape[0] * scale)), max(1, round(photo.shape[1] * scale)))
    return resize(photo, size, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)


def render_frame(
    photo: np.ndarray, roll: np.ndarray, dx: np.ndarray, dy: np.ndarray, width: int, height: int
) -> np.ndarray:
    """(H, W, 3) uint8 view of a prepared photo, averaged over the K sub-poses (roll, dx, dy: (K,)).

    Bilinear sampling, vectorised over pixels and sub-poses (np.take along axis 0 gathers rows
    several times faster than fancy indexing).
    """
    ph, pw = photo.shape[:2]
    flat = photo.reshape(-1, photo.shape[2])
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (u - (width - 1) / 2).reshape(1, -1)
    v = (v - (height - 1) / 2).reshape(1, -1)
    c = np.cos(roll).astype(np.float32)[:, None]
    s = np.sin(roll).astype(np.float32)[:, None]
    # Output pixel -> photo pixel: rotate by the roll, shift by the pan/shake, around the centres.
    x = c * u - s * v + (dx[:, None] + (pw - 1) / 2).astype(np.float32)
    y = s * u + c * v + (dy[:, None] + (ph - 1) / 2).astype(np.float32)
    np.clip(x, 0, pw - 1.001, out=x)  # outside the photo: repeat its edge
    np.clip(y, 0, ph - 1.001, out=y)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = (x - x0).reshape(-1, 1), (y - y0).reshape(-1, 1)
    i = (y0 * pw + x0).reshape(-1)
    p00, p01 = np.take(flat, i, axis=0), np.take(flat, i + 1, axis=0)
    p10, p11 = np.take(flat, i + pw, axis=0), np.take(flat, i + pw + 1, axis=0)
    top = p00 + (p01 - p00) * fx
    bottom = p10 + (p11 - p10) * fx
    pixels = (top + (bottom - top) * fy).reshape(len(roll), -1, 3).mean(axis=0)  # blur: mean of poses
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)


def exposure_poses(path: CameraPath, t_ns: int, width: int, height: int):
    """Poses (roll, dx, dy), each (K,), spread over the exposure ending at t_ns.

    K = 1 when the image moves less than a pixel during the exposure (no visible blur, a third of
    the rendering cost), else up to BLUR_SUBSAMPLES.
    """
    offsets = (np.linspace(-EXPOSURE_S, 0.0, BLUR_SUBSAMPLES) * 1e9).astype(np.int64)
    roll, dx, dy = path.at(t_ns + offsets)
    radius = math.hypot(width, height) / 2  # the corners move most under roll
    moved = abs(dx[-1] - dx[0]) + abs(dy[-1] - dy[0]) + abs(roll[-1] - roll[0]) * radius
    if moved < 1.0:
        return roll[-1:], dx[-1:], dy[-1:]
    return roll, dx, dy


# --------------------------------------------------------------------------------------------------
# The bag


def make_demo_bag(
    out_path: str | Path,
    *,
    split: str = "test",
    seconds_per_segment: float = 5.0,
    camera_rate_hz: float = 30.0,
    image_width: int = 160,
    image_height: int = 120,
    max_subjects: int | None = None,
    max_segments: int | None = None,
    activities: tuple[str, ...] | None = None,
    seed: int = 0,
    storage: str = "mcap",
    compress: bool = True,
    epoch_ns: int = DEMO_EPOCH_NS,
    camera_motion: str = "imu",
) -> DemoBagInfo:
    """Write the demo rosbag2 folder ``out_path`` (must not exist) and return what was written.

    Defaults (test split: 5 subjects x 6 activities x 5 s = 2.5 min): 160x120 rgb8 at 30 Hz, zstd
    mcap chunks. 160x120 because the frozen encoders resize to 224 px anyway and the bag must stay
    small enough for CI (a 320x240 frame costs 4x the disk for detail the encoder mostly discards).
    """
    began = time.perf_counter()
    if camera_rate_hz <= 0 or image_width < 8 or image_height < 8:
        raise ValueError("camera_rate_hz must be > 0 and images at least 8x8")
    if camera_motion not in CAMERA_MOTIONS:
        raise ValueError(f"camera_motion must be one of {CAMERA_MOTIONS}, got {camera_motion!r}")
    out_path = Path(out_path)
    segments, recordings = plan_segments(
        split,
        seconds_per_segment=seconds_per_segment,
        max_subjects=max_subjects,
        max_segments=max_segments,
        activities=activities,
        seed=seed,
    )
    if not segments:
        raise ValueError(f"no activity segments for split {split!r} with these settings")
    stamps, imu, _ = assemble_imu(segments, recordings, epoch_ns)
    path = camera_path(stamps, imu, image_width)
    if camera_motion == "still":  # a camera that says little: the place, nothing of the activity
        path = CameraPath(path.t_ns, np.zeros_like(path.roll), np.zeros_like(path.dx), np.zeros_like(path.dy))
    prepared = {
        key: prepare_photo(photos.load_place_image(key), image_width, image_height)
        for key in sorted({s.place for s in segments})
    }

    # Every message time on one line: camera frames on their own grid up to the last IMU sample;
    # ground truth at every segment start and on every whole second.
    frame_ns = epoch_ns + np.round(
        np.arange(int((stamps[-1] - epoch_ns) * 1e-9 * camera_rate_hz) + 1) * (1e9 / camera_rate_hz)
    ).astype(np.int64)
    starts = np.array([s.start_ns for s in segments], dtype=np.int64)
    seconds = epoch_ns + np.arange(0, stamps[-1] - epoch_ns + 1, 10**9, dtype=np.int64)
    truth_ns = np.union1d(starts, seconds)

    settings = {
        "split": split,
        "seed": seed,
        "epoch_ns": epoch_ns,
        "camera_rate_hz": camera_rate_hz,
        "image_size": [image_width, image_height],
        "seconds_per_segment": seconds_per_segment,
        "camera_motion": camera_motion,
    }
    manifest = _manifest(segments, settings, stamps, frame_ns)
    with BagWriter(out_path, storage=storage, compress=compress) as writer:
        writer.set_custom_data(MANIFEST_KEY, json.dumps(manifest, sort_keys=True))
        # At equal times: ground truth first, then IMU, then the frame (a reader sees the label and
        # the sample of a frame's instant before the frame itself).
        kinds = np.concatenate([np.zeros(truth_ns.size), np.ones(stamps.size), np.full(frame_ns.size, 2)])
        index = np.concatenate([np.arange(truth_ns.size), np.arange(stamps.size), np.arange(frame_ns.size)])
        times = np.concatenate([truth_ns, stamps, frame_ns])
        for k in np.lexsort((kinds, times)):
            t, i = int(times[k]), int(index[k])
            if kinds[k] == 0:
                seg = segments[int(np.searchsorted(starts, t, side="right")) - 1]
                writer.write_activity(ACTIVITY_TOPIC, t, seg.activity)
                writer.write_string(PLACE_TOPIC, seg.place, t)
            elif kinds[k] == 1:
                accel, gyro = imu[i, :3], imu[i, 3:]
                writer.write_imu(IMU_TOPIC, t, accel, gyro, accel_variance=ACCEL_VAR, gyro_variance=GYRO_VAR)
            else:
                seg = segments[int(np.searchsorted(starts, t, side="right")) - 1]
                roll, dx, dy = exposure_poses(path, t, image_width, image_height)
                frame = render_frame(prepared[seg.place], roll, dx, dy, image_width, image_height)
                writer.write_image(CAMERA_TOPIC, frame, t)
    (out_path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    size = sum(p.stat().st_size for p in out_path.rglob("*") if p.is_file())
    return DemoBagInfo(
        path=out_path,
        duration_s=float((stamps[-1] - epoch_ns) * 1e-9),
        num_frames=int(frame_ns.size),
        num_imu=int(stamps.size),
        size_bytes=size,
        generation_s=time.perf_counter() - began,
        manifest=manifest,
    )


def make_small_bag(
    path: str | Path,
    *,
    seconds: float = 6.0,
    num_segments: int = 2,
    camera_rate_hz: float = 10.0,
    image_width: int = 32,
    image_height: int = 24,
    split: str = "test",
    activities: tuple[str, ...] | None = None,
    seed: int = 0,
    storage: str = "mcap",
) -> DemoBagInfo:
    """The demo generator with tiny settings (one subject, a few seconds, small frames) for tests."""
    return make_demo_bag(
        path,
        split=split,
        seconds_per_segment=seconds / num_segments,
        camera_rate_hz=camera_rate_hz,
        image_width=image_width,
        image_height=image_height,
        max_subjects=1,
        max_segments=num_segments,
        activities=activities,
        seed=seed,
        storage=storage,
        compress=False,
    )


def _manifest(segments: list[DemoSegment], settings: dict, stamps: np.ndarray, frame_ns: np.ndarray) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "what_is_real": [
            "IMU: UCI HAPT accelerometer (converted from g to m/s^2) and gyroscope (rad/s) of real "
            "people, 50 Hz, unchanged sample values",
            "activity labels: HAPT's own annotations",
            "photos: scikit-image's data images",
        ],
        "what_is_generated": [
            "the time line: segments placed back to back from a fixed epoch",
            "which place each segment is seen in (seeded RNG, independent of the activity)",
            "the camera motion: roll from the low-passed accelerometer's gravity direction, pan "
            "from the leakily integrated gyroscope, shake from the high-passed accelerometer, "
            "motion blur from the pose change during the exposure",
        ],
        **settings,
        "subjects": sorted({s.subject for s in segments}),
        "subject_splits": {k: list(v) for k, v in hapt.SUBJECT_SPLITS.items()},
        "imu_rate_hz": hapt.HAPT_RATE_HZ,
        "duration_s": float((stamps[-1] - settings["epoch_ns"]) * 1e-9),
        "num_frames": int(frame_ns.size),
        "num_imu": int(stamps.size),
        "topics": {
            "camera": CAMERA_TOPIC,
            "imu": IMU_TOPIC,
            "activity": ACTIVITY_TOPIC,
            "place": PLACE_TOPIC,
        },
        "labels": list(DEFAULT_ACTIVITY_LABELS),
        "places": {
            p.key: {"phrase": p.phrase, "photo": f"skimage.data.{p.loader}", "shows": p.credit}
            for p in photos.PLACES
        },
        "segments": [asdict(s) for s in segments],
    }


def read_demo_manifest(bag_path: str | Path) -> dict:
    """The manifest of a demo bag: the sidecar JSON in the folder, else metadata.yaml's custom_data."""
    bag_path = Path(bag_path)
    sidecar = (bag_path if bag_path.is_dir() else bag_path.parent) / MANIFEST_NAME
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    from .bags import BagReader

    with BagReader(bag_path) as reader:
        text = reader.custom_data.get(MANIFEST_KEY)
    if text is None:
        raise FileNotFoundError(f"{bag_path} has no {MANIFEST_NAME} and no {MANIFEST_KEY} custom data")
    return json.loads(text)


# --------------------------------------------------------------------------------------------------
# Command line (`fvp make-demo-bag`)


def add_make_demo_bag_arguments(p) -> None:
    """Flags of ``fvp make-demo-bag`` (p: an argparse parser)."""
    p.add_argument("out", help="rosbag2 folder to create (must not exist unless --force)")
    p.add_argument(
        "--split", default="test", choices=sorted(hapt.SUBJECT_SPLITS), help="HAPT subjects to use"
    )
    p.add_argument("--seconds-per-segment", type=float, default=5.0, help="cap per (subject, activity)")
    p.add_argument("--camera-rate", type=float, default=30.0, help="camera frames per second")
    p.add_argument("--width", type=int, default=160, help="image width (px)")
    p.add_argument("--height", type=int, default=120, help="image height (px)")
    p.add_argument(
        "--max-subjects", type=int, default=None, help="use only the first N subjects of the split"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the place assignment")
    p.add_argument(
        "--camera-motion",
        choices=CAMERA_MOTIONS,
        default="imu",
        help="imu: the virtual camera moves with the IMU (the demo); still: a fixed camera that sees only "
        "the place (a recording whose camera says little about the activity)",
    )
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--no-compress", action="store_true", help="no zstd chunk compression (mcap)")
    p.add_argument("--force", action="store_true", help="replace an existing demo bag (one with a manifest)")


def main_make_demo_bag(args) -> int:
    """``fvp make-demo-bag``: write the bag, print what was written. Returns the exit status."""
    import shutil
    import sys

    out = Path(args.out)
    if out.exists():
        if not (args.force and (out / MANIFEST_NAME).is_file()):
            why = (
                "it is not a demo bag (no demo_manifest.json)" if args.force else "pass --force to replace it"
            )
            print(f"error: {out} exists; {why}", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    info = make_demo_bag(
        out,
        split=args.split,
        seconds_per_segment=args.seconds_per_segment,
        camera_rate_hz=args.camera_rate,
        image_width=args.width,
        image_height=args.height,
        max_subjects=args.max_subjects,
        seed=args.seed,
        storage=args.storage,
        compress=not args.no_compress,
        camera_motion=args.camera_motion,
    )
    manifest = info.manifest
    print(
        f"wrote {info.path}: {info.duration_s:.1f} s, {info.num_frames} frames, {info.num_imu} IMU samples, "
        f"{info.size_bytes / 1e6:.1f} MB in {info.generation_s:.1f} s\n"
        f"split {manifest['split']}: subjects {manifest['subjects']}; "
        f"{len(manifest['segments'])} segments; manifest {info.path / MANIFEST_NAME}"
    )
    return 0
