"""Reading and writing rosbag2 recordings with ``rosbags`` (pure Python; rosbag2_py is not available).

* :func:`make_typestore`: the ROS 2 Kilted types plus our ``frozen_vlm_perception_interfaces`` msgs.
* :class:`BagWriter`: writes Image / Imu / ActivityLabel / String messages (mcap or sqlite3).
* :func:`read_messages`: ``(topic, receive_time_ns, msg)`` in receive-time order.
* :func:`read_paired_samples`: camera frames paired with the IMU window ending at each frame's
  stamp, the activity label and the place in force at that time (what training and evaluation read).

A bag is a rosbag2 folder (with metadata.yaml) or a lone ``.mcap`` / ``.db3`` file. Deserialized
messages are rosbags dataclasses with the ROS field names, so :mod:`..conversions` takes them as is.
Bad messages are skipped and counted (``drops``), never silently lost and never fatal.
"""

from __future__ import annotations

import collections
import csv
import itertools
import math
import os
import sys
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_ACTIVITY_LABELS, ImuConfig, SyncConfig
from ..conversions import (
    ConversionError,
    image_fields,
    image_to_rgb,
    imu_to_sample,
    ns_to_stamp,
    stamp_to_seconds,
)
from ..sync import ImuBuffer, ImuWindow, WindowUnavailable

CAMERA_TOPIC = "/camera/image_raw"
IMU_TOPIC = "/imu/data"
ACTIVITY_TOPIC = "/ground_truth/activity"
PLACE_TOPIC = "/ground_truth/place"

IMAGE_TYPE = "sensor_msgs/msg/Image"
IMU_TYPE = "sensor_msgs/msg/Imu"
STRING_TYPE = "std_msgs/msg/String"
INTERFACES_PACKAGE = "frozen_vlm_perception_interfaces"
ACTIVITY_TYPE = f"{INTERFACES_PACKAGE}/msg/ActivityLabel"

BAG_FILE_SUFFIXES = (".mcap", ".db3")
STORAGES = ("mcap", "sqlite3")

# A label or place message older than this (relative to the frame) is stale: no label for the frame.
DEFAULT_LABEL_TOLERANCE_S = 2.0


class BagError(RuntimeError):
    """A bag cannot be opened/written, or lacks what was asked of it (message says what and where)."""


# --------------------------------------------------------------------------------------------------
# Types


def interfaces_msg_dir() -> Path:
    """Folder with our ``*.msg`` files: the source tree next to the package, else the installed share."""
    here = Path(__file__).resolve().parents[2] / "interfaces" / INTERFACES_PACKAGE / "msg"
    candidates = [here]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(INTERFACES_PACKAGE)) / "msg")
    except Exception:  # not installed, or no ament index: try the usual prefixes by hand
        pass
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    candidates += [Path(p) / "share" / INTERFACES_PACKAGE / "msg" for p in prefixes]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.msg")):
            return folder
    raise BagError(
        f"cannot find the {INTERFACES_PACKAGE} message definitions; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def _newest_ros2_store():
    from rosbags.typesys import Stores

    if hasattr(Stores, "ROS2_KILTED"):
        return Stores.ROS2_KILTED
    ros2 = [s for s in Stores if s.name.startswith("ROS2_")]
    return ros2[-1]


def make_typestore():
    """A rosbags typestore: ROS 2 Kilted (or the newest known) + our custom messages."""
    from rosbags.typesys import get_types_from_msg, get_typestore

    store = get_typestore(_newest_ros2_store())
    types: dict = {}
    for path in sorted(interfaces_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{INTERFACES_PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


# --------------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """Writes a rosbag2 (a folder) message by message. Use as a context manager.

    Every ``write_*`` takes the header stamp and an optional receive time (both integer ns); the
    receive time defaults to the stamp. Messages should be written in receive-time order.
    ``compress``: zstd-compress mcap chunks (standard mcap; about 15% smaller for photos).
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", compress: bool = False, typestore=None):
        from rosbags.rosbag2 import Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

        if storage not in STORAGES:
            raise BagError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; rosbag2 writers never overwrite")
        self.typestore = typestore or make_typestore()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if compress and storage == "mcap":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._connections: dict[str, Any] = {}
        self._writer.open()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.abort()

    def close(self) -> None:
        self._writer.close()

    def set_custom_data(self, key: str, value: str) -> None:
        """A string stored in metadata.yaml's ``custom_data`` (call before close)."""
        self._writer.set_custom_data(key, value)

    # Low level --------------------------------------------------------------------------------

    def _connection(self, topic: str, msgtype: str):
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise BagError(f"topic {topic} already carries {conn.msgtype}, not {msgtype}")
        return conn

    def write_msg(self, topic: str, msg: Any, receive_ns: int) -> None:
        """Serialize and write a typestore message instance (its ``__msgtype__`` names the type)."""
        data = self.typestore.serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(self._connection(topic, msg.__msgtype__), int(receive_ns), data)

    def _header(self, stamp_ns: int, frame_id: str):
        types = self.typestore.types
        sec, nanosec = ns_to_stamp(stamp_ns)
        return types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
        )

    # Typed writers ----------------------------------------------------------------------------

    def write_image_fields(
        self, topic: str, fields: dict, stamp_ns: int, *, receive_ns: int | None = None, frame_id: str = ""
    ) -> None:
        """An Image from raw fields (see conversions.image_fields); lets tests write malformed ones."""
        msg = self.typestore.types[IMAGE_TYPE](
            header=self._header(stamp_ns, frame_id),
            height=int(fields["height"]),
            width=int(fields["width"]),
            encoding=str(fields["encoding"]),
            is_bigendian=int(fields["is_bigendian"]),
            step=int(fields["step"]),
            data=np.frombuffer(bytes(fields["data"]), dtype=np.uint8),
        )
        self.write_msg(topic, msg, stamp_ns if receive_ns is None else receive_ns)

    def write_image(
        self,
        topic: str,
        rgb: np.ndarray,
        stamp_ns: int,
        *,
        receive_ns: int | None = None,
        frame_id: str = "camera",
        encoding: str = "rgb8",
    ) -> None:
        """(H, W, 3) uint8 RGB frame -> sensor_msgs/Image."""
        fields = image_fields(rgb, encoding)
        self.write_image_fields(topic, fields, stamp_ns, receive_ns=receive_ns, frame_id=frame_id)

    def write_imu(
        self,
        topic: str,
        stamp_ns: int,
        accel: Iterable[float],
        gyro: Iterable[float],
        *,
        receive_ns: int | None = None,
        frame_id: str = "imu",
        accel_variance: float = 0.0,
        gyro_variance: float = 0.0,
    ) -> None:
        """sensor_msgs/Imu with accel (m/s^2) and gyro (rad/s); orientation not provided (REP-145)."""
        types = self.typestore.types
        vec = types["geometry_msgs/msg/Vector3"]
        ax, ay, az = (float(v) for v in accel)
        gx, gy, gz = (float(v) for v in gyro)
        orientation_cov = np.zeros(9)
        orientation_cov[0] = -1.0  # REP-145: orientation unavailable
        msg = types[IMU_TYPE](
            header=self._header(stamp_ns, frame_id),
            orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            orientation_covariance=orientation_cov,
            angular_velocity=vec(x=gx, y=gy, z=gz),
            angular_velocity_covariance=np.diag([gyro_variance] * 3).reshape(-1),
            linear_acceleration=vec(x=ax, y=ay, z=az),
            linear_acceleration_covariance=np.diag([accel_variance] * 3).reshape(-1),
        )
        self.write_msg(topic, msg, stamp_ns if receive_ns is None else receive_ns)

    def write_activity(
        self,
        topic: str,
        stamp_ns: int,
        label: str,
        *,
        receive_ns: int | None = None,
        confidence: float = 1.0,
        candidate_labels: Iterable[str] = DEFAULT_ACTIVITY_LABELS,
        scores: Iterable[float] | None = None,
        source: str = "fused",
        frame_id: str = "camera",
    ) -> None:
        """frozen_vlm_perception_interfaces/ActivityLabel. scores default: one-hot on ``label``."""
        candidates = list(candidate_labels)
        if scores is None:
            scores = [1.0 if c == label else 0.0 for c in candidates]
        msg = self.typestore.types[ACTIVITY_TYPE](
            header=self._header(stamp_ns, frame_id),
            label=label,
            confidence=float(confidence),
            candidate_labels=candidates,
            scores=np.asarray(list(scores), dtype=np.float32),
            source=source,
        )
        self.write_msg(topic, msg, stamp_ns if receive_ns is None else receive_ns)

    def write_string(self, topic: str, text: str, receive_ns: int) -> None:
        """std_msgs/String (it has no header: only the receive time dates it)."""
        self.write_msg(topic, self.typestore.types[STRING_TYPE](data=text), receive_ns)


# --------------------------------------------------------------------------------------------------
# Reading


def resolve_bag_path(path: str | Path) -> Path:
    """A rosbag2 folder, or a lone .mcap/.db3 file; a folder without metadata.yaml but with exactly
    one storage file is read through that file. Raises BagError saying what was found instead."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        files = [p for p in sorted(path.iterdir()) if p.suffix in BAG_FILE_SUFFIXES]
        if len(files) == 1:
            return files[0]
        raise BagError(
            f"{path} is a folder without metadata.yaml and with {len(files)} .mcap/.db3 files; "
            "pass the rosbag2 folder or one storage file"
        )
    if path.suffix not in BAG_FILE_SUFFIXES:
        raise BagError(f"{path} is not a rosbag2 folder or a {'/'.join(BAG_FILE_SUFFIXES)} file")
    return path


class BagReader:
    """An open bag: ``topics`` ({name: msgtype}), ``custom_data``, ``messages(topics)``."""

    def __init__(self, path: str | Path, *, typestore=None):
        from rosbags.highlevel import AnyReader

        self.path = resolve_bag_path(path)
        # default_typestore is only used by bags that carry no message definitions (old .db3 files).
        self._reader = AnyReader([self.path], default_typestore=typestore or make_typestore())
        try:
            self._reader.open()
        except Exception as err:  # rosbags raises several error classes; say which bag failed
            raise BagError(f"cannot open bag {self.path}: {err}") from err

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.stack is not None:
            self._reader.close()

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def custom_data(self) -> dict[str, str]:
        """metadata.yaml's custom_data (empty for lone storage files)."""
        out: dict[str, str] = {}
        for reader in self._reader.readers:
            storage = getattr(reader, "storage", None)
            metadata = getattr(storage, "metadata", None)
            out.update(getattr(metadata, "custom", None) or {})
        return out

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, receive_ns, CDR bytes) in receive-time order."""
        wanted = None if topics is None else set(topics)
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, receive_ns, raw in self._reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(receive_ns), raw

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        return self._reader.deserialize(raw, msgtype)

    def messages(
        self, topics: Iterable[str] | None = None, *, drops: collections.Counter | None = None
    ) -> Iterator[tuple[str, int, Any]]:
        """(topic, receive_ns, deserialized msg); undecodable messages are counted in ``drops``."""
        for topic, msgtype, receive_ns, raw in self.raw_messages(topics):
            try:
                msg = self.deserialize(raw, msgtype)
            except Exception:  # corrupt CDR: count, skip, go on
                if drops is not None:
                    drops[f"{topic}:undecodable"] += 1
                continue
            yield topic, receive_ns, msg


def read_messages(
    bag: str | Path, topics: Iterable[str] | None = None, *, drops: collections.Counter | None = None
) -> Iterator[tuple[str, int, Any]]:
    """(topic, receive_time_ns, deserialized msg) of ``topics`` (default all) in receive-time order."""
    with BagReader(bag) as reader:
        yield from reader.messages(topics, drops=drops)


# --------------------------------------------------------------------------------------------------
# Label CSV


@dataclass(frozen=True)
class LabelInterval:
    """``label`` holds for header stamps in ``[start, end)`` (seconds)."""

    start: float
    end: float
    label: str


LABELS_CSV_HEADER = ("start", "end", "label")


def load_labels_csv(path: str | Path) -> list[LabelInterval]:
    """Read a ``start,end,label`` CSV (seconds of the header clock) -> intervals sorted by start.

    Raises ValueError naming the file and line for a wrong header, a non-number, a non-finite or
    empty interval, an empty label, or overlapping intervals.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(c.strip() for c in rows[0]) != LABELS_CSV_HEADER:
        got = rows[0] if rows else "an empty file"
        raise ValueError(f"{path}: the first line must be 'start,end,label', got {got}")
    intervals = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise ValueError(f"{path}:{line}: expected 3 columns start,end,label, got {len(row)}: {row}")
        try:
            start, end = float(row[0]), float(row[1])
        except ValueError:
            raise ValueError(f"{path}:{line}: start and end must be numbers (seconds): {row[:2]}") from None
        label = row[2].strip()
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise ValueError(f"{path}:{line}: need finite start < end, got {start}, {end}")
        if not label:
            raise ValueError(f"{path}:{line}: empty label")
        intervals.append(LabelInterval(start, end, label))
    intervals.sort(key=lambda iv: iv.start)
    for a, b in zip(intervals, intervals[1:], strict=False):
        if b.start < a.end:
            raise ValueError(f"{path}: intervals overlap: {a} and {b}")
    return intervals


def save_labels_csv(path: str | Path, intervals: Iterable[LabelInterval]) -> None:
    """Write intervals as a ``start,end,label`` CSV (full float precision: repr round-trips)."""
    with Path(path).open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(LABELS_CSV_HEADER)
        for iv in intervals:
            out.writerow([repr(float(iv.start)), repr(float(iv.end)), iv.label])


# --------------------------------------------------------------------------------------------------
# Paired samples


@dataclass
class PairedSample:
    """One camera frame and what was true at its stamp.

    stamp: the frame's header stamp (seconds). frame: (H, W, 3) uint8 RGB.
    imu_window: the window ending at ``stamp`` (None when unavailable; ``window_reason`` says why).
    label: the activity in force at ``stamp`` (None if unknown). place: the place key in force when
    the frame was received (std_msgs/String has no stamp). receive_ns: bag receive time.
    """

    stamp: float
    frame: np.ndarray
    imu_window: ImuWindow | None
    label: str | None
    place: str | None
    receive_ns: int = 0
    window_reason: str | None = None


class _Track:
    """Values over time: ``at(t)`` = the latest value with time <= t, if not older than tolerance."""

    def __init__(self, tolerance_s: float):
        self.tolerance_s = tolerance_s
        self._times: list[float] = []
        self._values: list[str] = []

    def add(self, t: float, value: str) -> None:
        if self._times and t < self._times[-1]:  # rare: keep sorted anyway
            i = bisect_right(self._times, t)
            self._times.insert(i, t)
            self._values.insert(i, value)
        else:
            self._times.append(t)
            self._values.append(value)

    def at(self, t: float) -> str | None:
        i = bisect_right(self._times, t) - 1  # equal ns stamps give equal floats: "<=" holds
        if i < 0 or t - self._times[i] > self.tolerance_s:
            return None
        return self._values[i]


class _Intervals:
    def __init__(self, intervals: list[LabelInterval]):
        self._starts = [iv.start for iv in intervals]
        self._intervals = intervals

    def at(self, t: float) -> str | None:
        i = bisect_right(self._starts, t) - 1
        if i < 0 or t >= self._intervals[i].end:
            return None
        return self._intervals[i].label


class PairedSamples:
    """Iterable of :class:`PairedSample` from one bag (iterate once); ``drops`` counts what was lost.

    Drop keys: ``camera:<reason>`` / ``imu:<reason>`` (ConversionError and ImuBuffer reasons),
    ``<topic>:undecodable``, ``missing_topic:<topic>``; frames without a window are kept and
    counted as ``no_window:<reason>``.
    """

    def __init__(
        self,
        bag: str | Path,
        *,
        camera_topic: str,
        imu_topic: str | None,
        label_topic: str | None,
        place_topic: str | None,
        labels_csv: str | Path | None,
        imu_config: ImuConfig,
        sync_config: SyncConfig,
        frame_stride: int,
        label_tolerance_s: float,
        limit: int | None,
    ):
        if label_topic and labels_csv:
            raise ValueError("give label_topic or labels_csv, not both")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.bag = bag
        self.camera_topic, self.imu_topic = camera_topic, imu_topic
        self.label_topic, self.place_topic = label_topic, place_topic
        self.csv_labels = _Intervals(load_labels_csv(labels_csv)) if labels_csv else None
        self.imu_config, self.sync_config = imu_config, sync_config
        self.frame_stride, self.limit = frame_stride, limit
        self.label_tolerance_s = label_tolerance_s
        self.drops: collections.Counter[str] = collections.Counter()

    def __iter__(self) -> Iterator[PairedSample]:
        with BagReader(self.bag) as reader:
            yield from self._pairs(reader)

    def _pairs(self, reader: BagReader) -> Iterator[PairedSample]:
        self.drops.clear()  # each pass over the bag counts afresh
        available = reader.topics
        if self.camera_topic not in available:
            raise BagError(f"{reader.path} has no topic {self.camera_topic}; topics: {sorted(available)}")
        for topic in (self.imu_topic, self.label_topic, self.place_topic):
            if topic and topic not in available:
                self.drops[f"missing_topic:{topic}"] += 1
        buffer = ImuBuffer.from_config(self.imu_config, self.sync_config)
        try:
            yield from itertools.islice(self._stream(reader, buffer), self.limit)
        finally:  # also when the caller stops early
            for reason, count in buffer.drops.items():
                self.drops[f"imu:{reason}"] += count

    def _stream(self, reader: BagReader, buffer: ImuBuffer) -> Iterator[PairedSample]:
        labels = _Track(self.label_tolerance_s)
        places = _Track(self.label_tolerance_s)
        # Frames wait here until the IMU has caught up with their stamp, or until the bag's clock
        # has run imu_silence_s past them (then the IMU is late or gone: pair what there is).
        pending: collections.deque = collections.deque()
        wait_ns = int(max(self.sync_config.max_wait_s, self.sync_config.imu_silence_s) * 1e9)
        topics = [t for t in (self.camera_topic, self.imu_topic, self.label_topic, self.place_topic) if t]
        camera_index = 0

        def ready(now_ns: int | None) -> bool:
            if not pending:
                return False
            latest = buffer.latest_stamp
            if latest is not None and latest >= pending[0][0]:
                return True
            return now_ns is None or now_ns - pending[0][1] > wait_ns

        for topic, msgtype, receive_ns, raw in reader.raw_messages(topics):
            if topic == self.camera_topic:
                camera_index += 1
                if (camera_index - 1) % self.frame_stride:
                    continue  # skipped by stride: not even deserialized
            msg = self._decode(reader, topic, msgtype, raw)
            if msg is not None:
                self._handle(topic, receive_ns, msg, pending, buffer, labels, places)
            while ready(receive_ns):
                yield self._resolve(pending.popleft(), buffer, labels, places)
        while ready(None):  # the bag has ended: nothing more will arrive
            yield self._resolve(pending.popleft(), buffer, labels, places)

    def _handle(self, topic, receive_ns, msg, pending, buffer, labels, places) -> None:
        if topic == self.camera_topic:
            frame = self._frame(msg)
            if frame is not None:
                pending.append((stamp_to_seconds(msg.header.stamp), receive_ns, frame))
        elif topic == self.imu_topic:
            self._imu(msg, buffer)
        elif topic == self.label_topic:
            # ActivityLabel (header + label); a std_msgs/String works too, dated by its receive time.
            header = getattr(msg, "header", None)
            t = stamp_to_seconds(header.stamp) if header is not None else receive_ns * 1e-9
            labels.add(t, str(getattr(msg, "label", None) or getattr(msg, "data", "")))
        elif topic == self.place_topic:
            places.add(receive_ns * 1e-9, str(getattr(msg, "data", "")))

    def _decode(self, reader: BagReader, topic: str, msgtype: str, raw: bytes) -> Any:
        try:
            return reader.deserialize(raw, msgtype)
        except Exception:  # corrupt CDR: count and go on
            self.drops[f"{topic}:undecodable"] += 1
            return None

    def _frame(self, msg: Any) -> np.ndarray | None:
        try:
            return image_to_rgb(msg)
        except ConversionError as err:
            self.drops[f"camera:{err.reason}"] += 1
            return None

    def _imu(self, msg: Any, buffer: ImuBuffer) -> None:
        try:
            t, sample = imu_to_sample(msg)
        except ConversionError as err:
            self.drops[f"imu:{err.reason}"] += 1
            return
        buffer.add(t, sample)  # its own drops are merged at the end

    def _resolve(self, item, buffer: ImuBuffer, labels: _Track, places: _Track) -> PairedSample:
        stamp, receive_ns, frame = item
        window, reason = None, None
        try:
            window = buffer.window(stamp, self.imu_config, self.sync_config)
        except WindowUnavailable as err:
            reason = err.reason
            self.drops[f"no_window:{reason}"] += 1
        label = self.csv_labels.at(stamp) if self.csv_labels else labels.at(stamp)
        place = places.at(receive_ns * 1e-9)
        return PairedSample(stamp, frame, window, label, place, receive_ns, reason)


def read_paired_samples(
    bag: str | Path,
    *,
    camera_topic: str = CAMERA_TOPIC,
    imu_topic: str | None = IMU_TOPIC,
    label_topic: str | None = None,
    labels_csv: str | Path | None = None,
    place_topic: str | None = None,
    imu_config: ImuConfig | None = None,
    sync_config: SyncConfig | None = None,
    frame_stride: int = 1,
    label_tolerance_s: float = DEFAULT_LABEL_TOLERANCE_S,
    limit: int | None = None,
) -> PairedSamples:
    """Camera frames of ``bag`` paired with the IMU window ending at each frame's stamp.

    Returns a :class:`PairedSamples` (iterate it; ``.drops`` is the Counter of what was skipped).
    Labels come from ``label_topic`` (ActivityLabel: the latest with stamp <= frame stamp, at most
    ``label_tolerance_s`` old) or from ``labels_csv`` (start,end,label in header-clock seconds).
    ``frame_stride``: keep every n-th camera message. ``limit``: stop after this many samples.
    """
    return PairedSamples(
        bag,
        camera_topic=camera_topic,
        imu_topic=imu_topic,
        label_topic=label_topic,
        place_topic=place_topic,
        labels_csv=labels_csv,
        imu_config=imu_config or ImuConfig(),
        sync_config=sync_config or SyncConfig(),
        frame_stride=frame_stride,
        label_tolerance_s=label_tolerance_s,
        limit=limit,
    )
