"""sensor_msgs Image/Imu <-> numpy, validated (the cv_bridge role).

cv_bridge for ROS 2 cannot be installed here (docs/ARCHITECTURE.md section 6), and a perception node must
never crash on a malformed message anyway, so conversion lives in the package. Every input a
publisher can get wrong raises :class:`ConversionError` whose ``reason`` is a short stable code
(used as a drop-counter key) and whose message says what was wrong.

The functions are duck-typed: they take rclpy messages (``sensor_msgs.msg.Image``) or anything with
the same attribute names, e.g. messages deserialized by ``rosbags``. ROS is imported lazily, only by
:func:`rgb_to_image` and :func:`to_time_msg`, so this module is importable without ROS.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Largest accepted image side: a 8192 x 8192 rgb8 frame is already 200 MB. Anything larger is a
# corrupt header, not a camera.
MAX_IMAGE_SIDE = 8192

# encoding -> (channels, bytes per channel). Only encodings that have an unambiguous RGB meaning.
IMAGE_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
}

NS_PER_S = 1_000_000_000


class ConversionError(ValueError):
    """A message cannot be converted. ``reason`` is a short stable code for drop counters.

    Reasons: ``unknown_encoding``, ``empty``, ``too_large``, ``bad_step``, ``bad_size``,
    ``bad_shape``, ``nonfinite``, ``accel_unavailable``, ``gyro_unavailable``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Time stamps


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (anything with ``sec`` and ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_to_seconds(stamp: Any) -> float:
    """``builtin_interfaces/Time`` -> float seconds (float64: about 0.2 us resolution at 2024 epochs)."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> ``(sec, nanosec)`` with ``0 <= nanosec < 1e9`` (exact)."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


def seconds_to_stamp(t: float) -> tuple[int, int]:
    """Float seconds -> ``(sec, nanosec)``, rounded to the nearest nanosecond.

    Splits off the integer part first: ``t * 1e9`` in float64 would already lose nanoseconds at
    present-day epochs (1.7e18 > 2**53).
    """
    if not math.isfinite(t):
        raise ValueError(f"time stamp must be finite, got {t!r}")
    sec = math.floor(t)
    nanosec = round((t - sec) * NS_PER_S)
    if nanosec >= NS_PER_S:  # rounding carried into the next second
        sec, nanosec = sec + 1, nanosec - NS_PER_S
    return int(sec), int(nanosec)


def to_time_msg(stamp: Any):
    """Float seconds, integer nanoseconds, ``(sec, nanosec)`` or a Time-like -> rclpy ``Time`` msg."""
    from builtin_interfaces.msg import Time

    sec, nanosec = _stamp_parts(stamp)
    return Time(sec=sec, nanosec=nanosec)


def _stamp_parts(stamp: Any) -> tuple[int, int]:
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec), int(stamp.nanosec)
    if isinstance(stamp, tuple):
        sec, nanosec = stamp
        return int(sec), int(nanosec)
    if isinstance(stamp, (int, np.integer)):
        return ns_to_stamp(int(stamp))  # an int is nanoseconds: seconds would be a float
    return seconds_to_stamp(float(stamp))


# --------------------------------------------------------------------------------------------------
# Images


def image_to_rgb(msg: Any, *, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """A ``sensor_msgs/Image`` -> ``(H, W, 3)`` uint8 RGB array (a copy, never a view of ``msg``).

    Honours ``step`` (rows may be padded) and ``is_bigendian`` (for mono16). Alpha is dropped;
    mono is repeated into three channels; mono16 keeps its 8 most significant bits.
    Raises :class:`ConversionError` for anything malformed.
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            "unknown_encoding",
            f"image encoding {encoding!r} is not supported; expected one of {sorted(IMAGE_ENCODINGS)}",
        )
    channels, depth = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError("empty", f"image has no pixels ({width}x{height})")
    if height > max_side or width > max_side:
        raise ConversionError("too_large", f"image {width}x{height} exceeds {max_side}x{max_side}")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ConversionError(
            "bad_step", f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})"
        )
    if step > 4 * row_bytes + 64:  # generous alignment padding; more is a corrupt header
        raise ConversionError("bad_step", f"step {step} is implausibly large for {width} px of {encoding}")
    buf = _as_bytes(msg.data)
    if buf.size != step * height:
        raise ConversionError(
            "bad_size", f"data has {buf.size} bytes, expected step*height = {step}*{height} = {step * height}"
        )

    rows = buf.reshape(height, step)[:, :row_bytes]  # drop row padding
    if depth == 2:
        order = ">" if msg.is_bigendian else "<"
        mono = rows.copy().view(f"{order}u2").reshape(height, width)
        return np.repeat((mono >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    pixels = rows.reshape(height, width, channels)
    # Always copy: the message's buffer may be reused or freed after the callback returns.
    if encoding in ("rgb8", "rgba8"):
        return np.array(pixels[:, :, :3], order="C", copy=True)
    if encoding in ("bgr8", "bgra8"):
        return np.array(pixels[:, :, 2::-1], order="C", copy=True)
    return np.repeat(pixels, 3, axis=2)  # mono8


def _as_bytes(data: Any) -> np.ndarray:
    """The ``data`` field (bytes, array.array('B'), numpy uint8, list of ints) as a flat uint8 view."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ConversionError("bad_size", f"image data has dtype {data.dtype}, expected uint8")
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as err:
            raise ConversionError("bad_size", f"image data is not a byte sequence: {err}") from None


def image_fields(array: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """``(H, W, 3)`` (or ``(H, W, 4)``/``(H, W)`` per encoding) array -> the fields of an Image msg.

    ROS-free: returns ``height, width, encoding, is_bigendian, step, data`` (data as bytes), so
    rclpy messages and rosbags messages can both be built from it. The array is RGB(A) for the
    rgb/bgr encodings (it is reordered for bgr*).
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError("unknown_encoding", f"cannot encode {encoding!r}")
    channels, depth = IMAGE_ENCODINGS[encoding]
    array = np.asarray(array)
    want_dtype = np.uint16 if depth == 2 else np.uint8
    want_shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
    ok_shape = array.ndim == 2 if channels == 1 else (array.ndim == 3 and array.shape[2] == channels)
    if not ok_shape or array.dtype != want_dtype:
        raise ConversionError(
            "bad_shape",
            f"{encoding} needs a {want_shape} {np.dtype(want_dtype).name} array, "
            f"got {array.shape} {array.dtype}",
        )
    height, width = array.shape[:2]
    if height <= 0 or width <= 0:
        raise ConversionError("empty", f"image has no pixels ({width}x{height})")
    if encoding.startswith("bgr"):
        array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
    if depth == 2:
        array = array.astype("<u2")  # we always write little-endian
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * channels * depth),
        "data": np.ascontiguousarray(array).tobytes(),
    }


def rgb_to_image(array: np.ndarray, *, stamp: Any, frame_id: str = "", encoding: str = "rgb8"):
    """``(H, W, 3)`` uint8 RGB array -> rclpy ``sensor_msgs.msg.Image``.

    ``stamp``: float seconds, integer nanoseconds, ``(sec, nanosec)`` or a Time message.
    """
    from sensor_msgs.msg import Image

    fields = image_fields(array, encoding)
    msg = Image()
    msg.header.stamp = to_time_msg(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.step = fields["height"], fields["width"], fields["step"]
    msg.encoding, msg.is_bigendian = fields["encoding"], fields["is_bigendian"]
    msg.data = fields["data"]  # bytes: rclpy copies them into its array.array quickly
    return msg


# --------------------------------------------------------------------------------------------------
# IMU


def imu_to_sample(msg: Any) -> tuple[float, np.ndarray]:
    """A ``sensor_msgs/Imu`` -> ``(t, sample)``.

    t: header stamp in float seconds. sample: ``(6,)`` float32, accel xyz (m/s^2) then gyro xyz
    (rad/s). Per REP-145 a covariance whose first element is -1 marks the quantity as not
    provided: missing accel or gyro raises (``accel_unavailable``/``gyro_unavailable``), a missing
    orientation is normal (we do not use it). NaN/inf raise ``nonfinite``.
    """
    if _unavailable(msg.linear_acceleration_covariance):
        raise ConversionError("accel_unavailable", "linear_acceleration_covariance[0] == -1 (REP-145)")
    if _unavailable(msg.angular_velocity_covariance):
        raise ConversionError("gyro_unavailable", "angular_velocity_covariance[0] == -1 (REP-145)")
    a, w = msg.linear_acceleration, msg.angular_velocity
    sample = np.array([a.x, a.y, a.z, w.x, w.y, w.z], dtype=np.float64)
    if not np.isfinite(sample).all():
        raise ConversionError("nonfinite", f"IMU sample has NaN/inf: {sample.tolist()}")
    if np.abs(sample).max() > np.finfo(np.float32).max:
        raise ConversionError("nonfinite", "IMU sample overflows float32")
    return stamp_to_seconds(msg.header.stamp), sample.astype(np.float32)


def _unavailable(covariance: Any) -> bool:
    return len(covariance) > 0 and float(covariance[0]) == -1.0
