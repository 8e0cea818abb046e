"""Tiny generated recordings and the tiny model config that reads them, so data and training tests
run in seconds (the ``tiny_bags`` fixture in test/conftest.py writes two of them once per session).

The tiny bag is designed to be learnable in a few epochs: every segment kind has its own IMU
signature (gravity direction, oscillation frequency and amplitude) and is always seen in its own
place (one real photo per kind), so the frame of a place and the IMU of a segment co-vary. Different
seeds give different activity orders, noise, phases and camera jitter: a second bag is held-out data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frozen_vlm_perception.config import AdapterConfig, FusionConfig, ImuConfig, LanguageConfig, ModelConfig
from frozen_vlm_perception.config import VisionConfig as _VisionConfig
from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, CAMERA_TOPIC, IMU_TOPIC, PLACE_TOPIC, BagWriter
from frozen_vlm_perception.data.config import DataConfig

EPOCH_NS = 1_700_000_000 * 10**9
IMU_HZ = 50.0
CAMERA_HZ = 2.5
SEGMENT_S = 4.0
FRAME_W, FRAME_H = 64, 48


@dataclass(frozen=True)
class Signature:
    """One kind of segment: an activity label, how the IMU moves, and the place the camera sees."""

    label: str
    place: str  # a scikit-image photo (shipped with the package)
    gravity: tuple[float, float, float]  # unit direction of gravity in the IMU frame
    hz: float  # oscillation frequency (0: still)
    accel_amp: float  # m/s^2
    gyro_amp: float  # rad/s


# Twelve signatures (each activity twice, the phone worn the other way up), twelve places. With one
# pass in the held-out bag (~10 frames per place), matching the place alone gives R@1 ~ 0.1, about
# 12x chance: a clear margin that only needs the IMU -> place association to be learned.
SIGNATURES = tuple(
    Signature(label, place, gravity, hz, amp, gyro)
    for (label, hz, amp, gyro, up), (place, down) in zip(
        [
            ("walking", 2.0, 2.0, 0.5, (1, 0, 0)),
            ("walking upstairs", 1.4, 3.5, 1.0, (1, 0, 0)),
            ("walking downstairs", 2.6, 4.0, 0.8, (1, 0, 0)),
            ("sitting", 0.0, 0.0, 0.0, (0.7, 0, 0.7)),
            ("standing", 0.0, 0.0, 0.0, (1, 0, 0)),
            ("lying", 0.0, 0.0, 0.0, (0, 0, 1)),
        ],
        [
            ("astronaut", "chelsea"),
            ("coffee", "rocket"),
            ("stereo_motorcycle", "colorwheel"),
            ("hubble_deep_field", "immunohistochemistry"),
            ("retina", "camera"),
            ("coins", "brick"),
        ],
        strict=True,
    )
    for place, gravity in ((place, up), (down, tuple(-g for g in up)))
)


def write_tiny_bag(path: Path, *, seed: int, passes: int, one_place: str = "") -> Path:
    """A rosbag2 folder: `passes` x (every signature once, 4 s each, shuffled), IMU 50 Hz, 64x48
    frames at 2.5 Hz of the signature's place with a random camera jitter, activity labels, places.
    ``one_place``: every segment is seen in this place instead (a camera that says nothing)."""
    rng = np.random.default_rng(seed)
    order = [SIGNATURES[i] for _ in range(passes) for i in rng.permutation(len(SIGNATURES))]
    if one_place:
        order = [dataclasses.replace(sig, place=one_place) for sig in order]
    photos = {sig.place: _photo(sig.place) for sig in order}
    total_s = len(order) * SEGMENT_S

    def at(t: float) -> Signature:
        return order[min(int(t // SEGMENT_S), len(order) - 1)]

    events = []  # (time s, kind, payload): written in time order, ground truth first at equal times
    for k, sig in enumerate(order):
        for t in np.arange(k * SEGMENT_S, (k + 1) * SEGMENT_S, 1.0):
            events.append((t, 0, sig))
    phase = rng.uniform(0, 2 * np.pi)
    for i in range(int(total_s * IMU_HZ)):
        t = i / IMU_HZ
        sig = at(t)
        wave = np.sin(2 * np.pi * sig.hz * t + phase)
        accel = (
            9.81 * np.array(sig.gravity)
            + sig.accel_amp * wave * np.array([1.0, 0.3, 0.5])
            + rng.normal(0, 0.2, 3)
        )
        swing = sig.gyro_amp * np.cos(2 * np.pi * sig.hz * t + phase)
        gyro = swing * np.array([0.2, 0.5, 1.0]) + rng.normal(0, 0.02, 3)
        events.append((t, 1, (accel, gyro)))
    for i in range(int(total_s * CAMERA_HZ)):
        events.append((i / CAMERA_HZ, 2, None))
    with BagWriter(path) as writer:
        for t, kind, payload in sorted(events, key=lambda e: (e[0], e[1])):
            ns = EPOCH_NS + int(round(t * 1e9))
            if kind == 0:
                writer.write_activity(ACTIVITY_TOPIC, ns, payload.label)
                writer.write_string(PLACE_TOPIC, payload.place, ns)
            elif kind == 1:
                writer.write_imu(
                    IMU_TOPIC, ns, payload[0], payload[1], accel_variance=0.04, gyro_variance=4e-4
                )
            else:
                writer.write_image(CAMERA_TOPIC, _jittered_view(photos[at(t).place], rng), ns)
    return path


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def _jittered_view(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random 80% crop of the photo, subsampled to FRAME_W x FRAME_H (a shaky camera)."""
    h, w = photo.shape[:2]
    ch, cw = int(h * 0.8), int(w * 0.8)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    rows = top + (np.arange(FRAME_H) * ch / FRAME_H).astype(int)
    cols = left + (np.arange(FRAME_W) * cw / FRAME_W).astype(int)
    return np.ascontiguousarray(photo[rows][:, cols])


def tiny_model_config(lm_folder: Path | str, *, adapter: str = "resampler") -> ModelConfig:
    return ModelConfig(
        # Real ImageNet MobileNetV2 at 64 px: 2 x 2 = 4 tokens of width 1280, a few ms per frame.
        vision=_VisionConfig(image_size=64),
        imu=ImuConfig(window_samples=64, patch_size=16, width=32, depth=2, heads=2, dropout=0.0),
        fusion=FusionConfig(alpha=0.5),
        adapter=AdapterConfig(
            kind=adapter, dim=32, depth=1, heads=2, dim_head=16, num_latents=4, num_tokens=2
        ),
        language=LanguageConfig(source=str(lm_folder), max_new_tokens=8),
    )


def tiny_data_config(bag: Path, val_bag: Path, cache_dir: Path) -> DataConfig:
    return DataConfig(bag=str(bag), val_bag=str(val_bag), cache_dir=str(cache_dir), encode_batch_size=16)
