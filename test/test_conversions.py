"""conversions: Image/Imu <-> numpy, every malformed input a ConversionError with a stable reason."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frozen_vlm_perception.conversions import (
    IMAGE_ENCODINGS,
    MAX_IMAGE_SIDE,
    ConversionError,
    image_fields,
    image_to_rgb,
    imu_to_sample,
    ns_to_stamp,
    seconds_to_stamp,
    stamp_to_ns,
    stamp_to_seconds,
)


def image_msg(**fields):
    """A duck-typed Image: what rosbags deserializes has the same attributes."""
    return SimpleNamespace(**fields)


def random_rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_round_trip_rgb_and_bgr(encoding):
    rgb = random_rgb()
    out = image_to_rgb(image_msg(**image_fields(rgb, encoding)))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgba8", "bgra8"])
def test_round_trip_with_alpha_drops_alpha(encoding):
    rgba = np.random.default_rng(1).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    out = image_to_rgb(image_msg(**image_fields(rgba, encoding)))
    np.testing.assert_array_equal(out, rgba[:, :, :3])


def test_bgr_bytes_are_reordered():
    # One pure red pixel stored as bgr8: bytes B, G, R = 0, 0, 255.
    msg = image_msg(height=1, width=1, encoding="bgr8", is_bigendian=0, step=3, data=bytes([0, 0, 255]))
    np.testing.assert_array_equal(image_to_rgb(msg)[0, 0], [255, 0, 0])
    fields = image_fields(np.array([[[255, 0, 0]]], dtype=np.uint8), "bgr8")
    assert fields["data"] == bytes([0, 0, 255])


def test_mono8_is_repeated_into_three_channels():
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = image_to_rgb(image_msg(**image_fields(mono, "mono8")))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], mono)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_keeps_high_byte_in_either_byte_order(bigendian):
    mono = np.array([[0x0000, 0x01FF, 0xAB12, 0xFFFF]], dtype=np.uint16)
    data = mono.astype(">u2" if bigendian else "<u2").tobytes()
    msg = image_msg(height=1, width=4, encoding="mono16", is_bigendian=bigendian, step=8, data=data)
    np.testing.assert_array_equal(image_to_rgb(msg)[0, :, 0], [0x00, 0x01, 0xAB, 0xFF])


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_padded_step_is_honoured(encoding):
    channels = IMAGE_ENCODINGS[encoding][0]
    rgb = random_rgb(4, 5, seed=2)
    pixels = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, rgb[:, :, :1]]),
        "mono8": rgb[:, :, 0],
    }
    rows = pixels[encoding].reshape(4, 5 * channels)
    step = 5 * channels + 11  # odd padding, filled with garbage
    padded = np.full((4, step), 0xEE, dtype=np.uint8)
    padded[:, : 5 * channels] = rows
    msg = image_msg(height=4, width=5, encoding=encoding, is_bigendian=0, step=step, data=padded.tobytes())
    out = image_to_rgb(msg)
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(out, expected)


def test_data_as_numpy_list_and_array_module():
    import array

    rgb = random_rgb(2, 3)
    fields = image_fields(rgb)
    for data in (
        np.frombuffer(fields["data"], np.uint8),
        list(fields["data"]),
        array.array("B", fields["data"]),
    ):
        np.testing.assert_array_equal(image_to_rgb(image_msg(**{**fields, "data": data})), rgb)


def test_output_does_not_alias_message_buffer():
    rgb = random_rgb()
    data = bytearray(image_fields(rgb)["data"])
    out = image_to_rgb(image_msg(**{**image_fields(rgb), "data": data}))
    data[0] ^= 0xFF
    assert out[0, 0, 0] == rgb[0, 0, 0]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encoding": "yuv422"}, "unknown_encoding"),
        ({"encoding": "32FC1"}, "unknown_encoding"),
        ({"height": 0}, "empty"),
        ({"width": 0}, "empty"),
        ({"width": MAX_IMAGE_SIDE + 1}, "too_large"),
        ({"step": 20}, "bad_step"),  # smaller than 7 px * 3 bytes
        ({"step": 10_000}, "bad_step"),
        ({"data": b"\x00" * 104}, "bad_size"),
        ({"data": b""}, "bad_size"),
        ({"data": np.zeros(105, dtype=np.float32)}, "bad_size"),
    ],
)
def test_bad_images_raise_their_reason(change, reason):
    msg = image_msg(**{**image_fields(random_rgb()), **change})
    with pytest.raises(ConversionError) as info:
        image_to_rgb(msg)
    assert info.value.reason == reason
    assert reason in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    encoding=st.sampled_from([*IMAGE_ENCODINGS, "bayer_rggb8", ""]),
    height=st.integers(-2, 40),
    width=st.integers(-2, 40),
    step=st.integers(-5, 200),
    size=st.integers(0, 3000),
    bigendian=st.integers(0, 1),
)
def test_random_headers_never_crash_with_anything_else(encoding, height, width, step, size, bigendian):
    msg = image_msg(
        height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step, data=bytes(size)
    )
    try:
        out = image_to_rgb(msg)
    except ConversionError as err:
        assert err.reason in {"unknown_encoding", "empty", "too_large", "bad_step", "bad_size"}
    else:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8


def test_image_fields_rejects_wrong_shapes():
    with pytest.raises(ConversionError, match="bad_shape"):
        image_fields(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ConversionError, match="bad_shape"):
        image_fields(np.zeros((4, 4, 3), np.float32), "rgb8")
    with pytest.raises(ConversionError, match="unknown_encoding"):
        image_fields(np.zeros((4, 4, 3), np.uint8), "jpeg")


def test_rgb_to_image_builds_a_ros_message():
    pytest.importorskip("sensor_msgs.msg")
    from frozen_vlm_perception.conversions import rgb_to_image

    rgb = random_rgb(6, 8)
    msg = rgb_to_image(rgb, stamp=1_700_000_000.25, frame_id="cam", encoding="bgr8")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert msg.header.frame_id == "cam" and msg.step == 24 and msg.encoding == "bgr8"
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    msg = rgb_to_image(rgb, stamp=1_700_000_000_123_456_789)  # int: nanoseconds
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)


# ------------------------------------------------------------------------------------------------
# IMU


def imu_msg(
    accel=(0.1, 0.2, 9.8), gyro=(0.01, -0.02, 0.03), sec=12, nanosec=500_000_000, cov=(0.0, 0.0, 0.0)
):
    vec = lambda v: SimpleNamespace(x=v[0], y=v[1], z=v[2])
    orientation_cov, accel_cov, gyro_cov = ([c] + [0.0] * 8 for c in cov)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id="imu"),
        orientation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0),
        orientation_covariance=np.array(orientation_cov),
        linear_acceleration=vec(accel),
        linear_acceleration_covariance=np.array(accel_cov),
        angular_velocity=vec(gyro),
        angular_velocity_covariance=np.array(gyro_cov),
    )


def test_imu_sample_order_and_units_untouched():
    t, sample = imu_to_sample(imu_msg())
    assert t == 12.5
    assert sample.dtype == np.float32 and sample.shape == (6,)
    np.testing.assert_allclose(sample, [0.1, 0.2, 9.8, 0.01, -0.02, 0.03], rtol=1e-6)


def test_orientation_unavailable_is_fine():
    imu_to_sample(imu_msg(cov=(-1.0, 0.0, 0.0)))


@pytest.mark.parametrize(
    ("cov", "reason"), [((0.0, -1.0, 0.0), "accel_unavailable"), ((0.0, 0.0, -1.0), "gyro_unavailable")]
)
def test_rep145_unavailable_quantities(cov, reason):
    with pytest.raises(ConversionError) as info:
        imu_to_sample(imu_msg(cov=cov))
    assert info.value.reason == reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300])
def test_nonfinite_imu(bad):
    for msg in (imu_msg(accel=(0.0, bad, 9.8)), imu_msg(gyro=(bad, 0.0, 0.0))):
        with pytest.raises(ConversionError) as info:
            imu_to_sample(msg)
        assert info.value.reason == "nonfinite"


def test_imu_from_rclpy_message():
    msgs = pytest.importorskip("sensor_msgs.msg")
    msg = msgs.Imu()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 3, 20_000_000
    msg.linear_acceleration.z = 9.81
    msg.angular_velocity.x = 0.5
    msg.orientation_covariance[0] = -1.0
    t, sample = imu_to_sample(msg)
    assert t == pytest.approx(3.02)
    np.testing.assert_allclose(sample, [0, 0, 9.81, 0.5, 0, 0], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Stamps


@given(st.integers(0, 2**62))
def test_ns_stamp_round_trip_is_exact(ns):
    sec, nanosec = ns_to_stamp(ns)
    assert 0 <= nanosec < 1_000_000_000
    assert stamp_to_ns(SimpleNamespace(sec=sec, nanosec=nanosec)) == ns


@given(st.floats(0, 4e9, allow_nan=False))
def test_seconds_stamp_round_trip_within_float_precision(t):
    sec, nanosec = seconds_to_stamp(t)
    assert 0 <= nanosec < 1_000_000_000
    back = stamp_to_seconds(SimpleNamespace(sec=sec, nanosec=nanosec))
    assert abs(back - t) <= max(1e-9, abs(t) * 4e-16)


def test_seconds_to_stamp_carries_and_rejects_nonfinite():
    assert seconds_to_stamp(1.9999999999) == (2, 0)
    assert seconds_to_stamp(1_700_000_000.5) == (1_700_000_000, 500_000_000)
    assert seconds_to_stamp(-0.25) == (-1, 750_000_000)
    with pytest.raises(ValueError):
        seconds_to_stamp(float("nan"))
