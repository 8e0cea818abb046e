"""Render docs/overlay.png: what /perception/overlay shows, for one real frame of the demo recording.

The frame and the IMU window ending at its stamp are read from the bag (data/bags.py
read_paired_samples, the pairing the nodes use), encoded by the shipped model (pipeline
encode_one: activity label, confidence, source), asked a question by the model's frozen LM
(pipeline answer), the answer checked against the activity head as the reasoning node does
(answers.check_grounding with the node's default grounding_min_probability), and drawn by the
function the perception node calls (overlay.render_overlay).

    .venv/bin/python tools/render_overlay_png.py [--bag demo_bags/test] [--model models/demo] \
        [--at 47.0] [--scale 4.0] [--out docs/overlay.png]

The demo recording's frames are 160x120, so the default scale here is 4.0 (a 640x480 picture, as a
640x480 camera gives at the node's default overlay.scale of 1.0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frozen_vlm_perception.questions import STANDARD_QUESTION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bag", default="demo_bags/test")
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--at", type=float, default=47.0, help="seconds after the first frame")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--question", default=STANDARD_QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="docs/overlay.png")
    args = parser.parse_args(argv)

    from PIL import Image

    from frozen_vlm_perception.answers import DEFAULT_GROUNDING_MIN_PROBABILITY, check_grounding
    from frozen_vlm_perception.config import SyncConfig
    from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, PLACE_TOPIC, read_paired_samples
    from frozen_vlm_perception.overlay import OverlayText, render_overlay
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    pipeline = PerceptionPipeline.from_model_dir(args.model, device="cpu")
    samples = read_paired_samples(args.bag, label_topic=ACTIVITY_TOPIC, place_topic=PLACE_TOPIC,
                                  imu_config=pipeline.config.imu, sync_config=SyncConfig())
    first = sample = None
    for sample in samples:
        first = sample.stamp if first is None else first
        if sample.stamp - first >= args.at and sample.imu_window is not None:
            break
    else:
        print(f"no frame with an IMU window {args.at} s into {args.bag}", file=sys.stderr)
        return 1
    scene = pipeline.encode_one(sample.frame, sample.imu_window.data)
    answer = pipeline.answer(scene, args.question, max_new_tokens=args.max_new_tokens).text
    probabilities = dict(zip(scene.labels, map(float, scene.scores), strict=True))
    grounding = check_grounding(answer, probabilities, DEFAULT_GROUNDING_MIN_PROBABILITY, args.question)
    text = OverlayText(scene.label, scene.confidence, scene.source, args.question, answer,
                       grounding.status, grounding.flagged)
    image = render_overlay(sample.frame, text, args.scale)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(args.out, optimize=True)
    print(f"frame at {sample.stamp - first:.2f} s (stamp {sample.stamp:.3f}), {sample.frame.shape[1]}x"
          f"{sample.frame.shape[0]} -> {image.shape[1]}x{image.shape[0]}; truth: {sample.label} / "
          f"{sample.place}; head: {scene.label} {scene.confidence:.2f} {scene.source}; answer: {answer!r}; "
          f"grounding: {grounding.status} ({grounding.note}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
