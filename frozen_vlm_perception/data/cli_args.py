"""argparse helpers for every command that reads recordings (fvp train align/adapter/fusion, fvp eval).

    add_bag_arguments(parser)       # --bag --val-bag --camera-topic --imu-topic --label-topic|--labels ...
    data_config_from_args(args)     # -> DataConfig

Defaults are not repeated here: a flag left out keeps the dataclass default (data/config.py, with
the demo recording's topic names from data/bags.py).
"""

from __future__ import annotations

import argparse

from frozen_vlm_perception.data.config import DataConfig


def add_bag_arguments(
    parser: argparse.ArgumentParser, *, with_val: bool = True, require_bag: bool = True
) -> None:
    """Flags shared by every command that reads recordings."""
    d = DataConfig()
    group = parser.add_argument_group("recordings")
    group.add_argument("--bag", required=require_bag, help="rosbag2 folder (or .mcap/.db3 file) to read")
    if with_val:
        group.add_argument(
            "--val-bag",
            default="",
            help="held-out bag for validation "
            f"(default: the last --val-fraction of --bag in time, {d.val_fraction})",
        )
        group.add_argument(
            "--val-fraction",
            type=float,
            default=d.val_fraction,
            help="share of --bag held out without --val-bag",
        )
    group.add_argument(
        "--camera-topic", default=d.camera_topic, help=f"sensor_msgs/Image topic ({d.camera_topic})"
    )
    group.add_argument("--imu-topic", default=d.imu_topic, help=f"sensor_msgs/Imu topic ({d.imu_topic})")
    labels = group.add_mutually_exclusive_group()
    labels.add_argument(
        "--label-topic",
        default=None,
        help=f"ActivityLabel or std_msgs/String label topic (default {d.label_topic})",
    )
    labels.add_argument(
        "--labels",
        default=None,
        metavar="FILE.csv",
        help="labels as a start,end,label CSV (seconds of the header clock) instead of a topic",
    )
    group.add_argument(
        "--place-topic",
        default=d.place_topic,
        help=f"std_msgs/String place topic, '' for none ({d.place_topic})",
    )
    group.add_argument("--frame-stride", type=int, default=d.frame_stride, help="use every n-th camera frame")
    group.add_argument(
        "--cache-dir",
        default="",
        help="embedding cache folder "
        "(default $FVP_CACHE_DIR/embeddings or ~/.cache/frozen_vlm_perception/embeddings)",
    )
    group.add_argument("--no-cache", action="store_true", help="recompute the frozen-encoder embeddings")
    group.add_argument(
        "--encode-batch-size",
        type=int,
        default=d.encode_batch_size,
        help="frames per frozen-encoder call when filling the cache",
    )


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The validated DataConfig of the flags :func:`add_bag_arguments` added."""
    labels_csv = args.labels or ""
    label_topic = (
        args.label_topic if args.label_topic is not None else ("" if labels_csv else DataConfig.label_topic)
    )
    config = DataConfig(
        bag=str(args.bag or ""),
        val_bag=str(getattr(args, "val_bag", "") or ""),
        val_fraction=getattr(args, "val_fraction", DataConfig.val_fraction),
        camera_topic=args.camera_topic,
        imu_topic=args.imu_topic,
        label_topic=label_topic,
        labels_csv=str(labels_csv),
        place_topic=args.place_topic or "",
        frame_stride=args.frame_stride,
        cache_dir=args.cache_dir or "",
        use_cache=not args.no_cache,
        encode_batch_size=args.encode_batch_size,
    )
    config.validate()
    return config
