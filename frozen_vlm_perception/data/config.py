"""Which recordings to read and how to pair their messages: ``DataConfig``, shared by training and
evaluation (every command that reads bags). The flags of those commands map one to one onto its
fields (see data/cli_args.py); training's own settings stay in training/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from frozen_vlm_perception.config import ConfigError
from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, CAMERA_TOPIC, IMU_TOPIC, PLACE_TOPIC


@dataclass
class DataConfig:
    """Which recordings to read and how to pair their messages."""

    bag: str = ""
    # Held-out recording; empty: the last ``val_fraction`` of ``bag`` in time (a contiguous tail, so
    # overlapping IMU windows of neighbouring frames never sit on both sides of the split).
    val_bag: str = ""
    val_fraction: float = 0.2
    camera_topic: str = CAMERA_TOPIC
    imu_topic: str = IMU_TOPIC
    # Labels come from an ActivityLabel/String topic or a start,end,label CSV (exactly one of them).
    label_topic: str = ACTIVITY_TOPIC
    labels_csv: str = ""
    place_topic: str = PLACE_TOPIC  # std_msgs/String place key (empty: no places)
    frame_stride: int = 1
    # Embedding cache folder; empty: $FVP_CACHE_DIR/embeddings, else ~/.cache/frozen_vlm_perception/...
    cache_dir: str = ""
    use_cache: bool = True
    encode_batch_size: int = 32  # frames per frozen-vision-encoder call while building the cache

    def validate(self) -> None:
        if not self.bag:
            raise ConfigError("a training bag is required (--bag)")
        if self.label_topic and self.labels_csv:
            raise ConfigError("give a label topic or a labels CSV, not both")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.frame_stride < 1 or self.encode_batch_size < 1:
            raise ConfigError("frame_stride and encode_batch_size must be >= 1")
