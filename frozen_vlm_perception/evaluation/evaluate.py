"""`fvp eval`: how well and how fast a model works on a recording, before it drives a robot.

Reads the bag's paired samples once (frozen-vision embeddings come from the same on-disk cache
training uses), then scores the trainable part in every mode from those embeddings:

- activity accuracy and macro-F1 for vision-only, IMU-only and fused, and fused over a sweep of
  the fusion weight alpha; a confusion matrix (PNG);
- IMU -> image retrieval R@1 / R@5 (alignment quality) and a t-SNE of both embeddings (PNG);
- question answering through the frozen LM on evenly spaced scenes: every question family
  (activity, place, activity + place, yes/no), trained and held-out wordings, scored by the rules of
  ``answers.py`` on settled and on all scenes, plus general-knowledge controls (see ``qa.py``);
- per-stage latency of the whole pipeline on real frames of the bag.

Writes DIR/report.md, DIR/report.json, the PNGs and DIR/qa_answers.jsonl (every QA answer, scored).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frozen_vlm_perception.config import SyncConfig
from frozen_vlm_perception.data.bags import read_paired_samples
from frozen_vlm_perception.data.cli_args import add_bag_arguments, data_config_from_args
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.data.embeddings import load_embeddings
from frozen_vlm_perception.evaluation import qa as qa_eval
from frozen_vlm_perception.evaluation.metrics import accuracy, confusion_matrix, macro_f1, retrieval_recall
from frozen_vlm_perception.evaluation.report import write_report
from frozen_vlm_perception.evaluation.scene_outputs import run_scene_model
from frozen_vlm_perception.nn.fusion import ALPHA_GRID
from frozen_vlm_perception.pipeline import PerceptionPipeline

MODES = ("vision", "imu", "fused")
ALPHA_SWEEP = ALPHA_GRID


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_bag_arguments(parser, with_val=False)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped models/demo)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--qa-samples",
        type=int,
        default=qa_eval.DEFAULT_SCENES,
        help="scenes asked every question family (trained + held-out wording each; 0: skip QA)",
    )
    parser.add_argument(
        "--qa-max-new-tokens",
        type=int,
        default=qa_eval.MAX_NEW_TOKENS,
        help="answer length limit when scoring",
    )
    parser.add_argument(
        "--latency-frames", type=int, default=20, help="real frames timed through the pipeline"
    )
    parser.add_argument("--tsne-samples", type=int, default=400, help="samples in the t-SNE plot (0: skip)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--through-ros",
        action="store_true",
        help="also play the bag into the running nodes and score what they publish (drops and timing too)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="--through-ros: playback speed factor")
    parser.add_argument(
        "--ros-questions", type=int, default=6, help="--through-ros: moments to ask QueryScene at (0: none)"
    )


def main_eval(args: argparse.Namespace) -> int:
    from frozen_vlm_perception.paths import default_model_dir

    model = args.model or default_model_dir()
    if model is None:
        raise SystemExit("no --model given and no shipped models/demo found")
    report = evaluate(
        data=data_config_from_args(args),
        model_dir=model,
        out_dir=Path(args.out),
        device=args.device,
        qa_samples=args.qa_samples,
        qa_max_new_tokens=args.qa_max_new_tokens,
        latency_frames=args.latency_frames,
        tsne_samples=args.tsne_samples,
        progress=not args.no_progress,
        through_ros={"rate": args.rate, "questions": args.ros_questions} if args.through_ros else None,
    )
    acc = report["accuracy"]
    print(
        f"{report['n_samples']} samples: accuracy vision {acc['vision']:.3f}, imu {acc['imu']:.3f}, "
        f"fused {acc['fused']:.3f}; IMU->image R@1 {report['retrieval']['imu_to_image_r1']:.3f}"
    )
    qa = report["qa"]
    if qa:
        general = qa["general"]
        print(
            f"{qa_eval.family_line(qa)}; names something absent {qa['names_absent']['share']:.2f} "
            f"(settled scenes {qa['names_absent']['settled']['accuracy']:.2f}); "
            f"general knowledge {general['no_scene']['accuracy']:.2f} without a scene, "
            f"{general['with_scene']['accuracy']:.2f} with one"
        )
    ros = report.get("through_ros")
    if ros:
        lat = ros["latency_ms"]
        print(
            f"through the nodes: {ros['share_labelled']:.0%} of {ros['frames_published']} frames labelled, "
            f"accuracy {ros['accuracy']:.3f}, latency p50 {lat.get('p50', float('nan')):.0f} ms "
            f"p99 {lat.get('p99', float('nan')):.0f} ms"
        )
        if ros["qa"].get("asked"):
            print(f"through the nodes: {qa_eval.family_line(ros['qa'])}")
    print(f"wrote {args.out}/report.md")
    return 0


def evaluate(
    *,
    data: DataConfig,
    model_dir: str | Path,
    out_dir: Path,
    device: str = "auto",
    qa_samples: int = qa_eval.DEFAULT_SCENES,
    qa_max_new_tokens: int = qa_eval.MAX_NEW_TOKENS,
    latency_frames: int = 20,
    tsne_samples: int = 400,
    progress: bool = True,
    through_ros: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The offline report (module doc); ``through_ros`` ({"rate", "questions"}) adds the section of
    :func:`frozen_vlm_perception.evaluation.through_ros.evaluate_through_ros`."""
    pipeline = PerceptionPipeline.from_model_dir(model_dir, device=device, load_language=qa_samples > 0)
    config = pipeline.config
    embeddings = load_embeddings(
        data.bag,
        data=data,
        vision=config.vision,
        imu=config.imu,
        sync=SyncConfig(),
        device=pipeline.device,
        progress=progress,
    )
    labels = embeddings.labels_for(config.labels)
    # Every mode is scored on the same samples: labelled ones with an IMU window.
    keep = torch.nonzero((labels >= 0) & embeddings.has_imu).flatten()
    if len(keep) == 0:
        raise ValueError(
            f"{data.bag}: no labelled sample with an IMU window (labels: {embeddings.label_names})"
        )
    samples = embeddings.subset(keep)
    target = labels[keep].numpy()

    outputs = {mode: run_scene_model(pipeline, samples, mode) for mode in MODES}
    predictions = {mode: out["logits"].argmax(1).numpy() for mode, out in outputs.items()}
    num_labels = len(config.labels)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "bag": str(data.bag),
        "n_samples": int(len(samples)),
        "labels": list(config.labels),
        "chance_accuracy": float(np.bincount(target, minlength=num_labels).max() / len(target)),
        "accuracy": {mode: accuracy(target, predictions[mode]) for mode in MODES},
        "macro_f1": {mode: macro_f1(target, predictions[mode], num_labels) for mode in MODES},
        "alpha_sweep": [],
        "drops": dict(embeddings.info.get("drops", {})),
        "fusion": {  # what the fused row used: the model's alpha, or its gate's per-sample weights
            "weighting": config.fusion.weighting,
            "alpha": config.fusion.alpha,
            "vision_weight_mean": float(outputs["fused"]["vision_weight"].mean()),
            "vision_weight_std": float(outputs["fused"]["vision_weight"].std()) if len(samples) > 1 else 0.0,
        },
    }
    for alpha in ALPHA_SWEEP:
        pred = run_scene_model(pipeline, samples, "fused", alpha=alpha)["logits"].argmax(1).numpy()
        report["alpha_sweep"].append(
            {
                "alpha": alpha,
                "accuracy": accuracy(target, pred),
                "macro_f1": macro_f1(target, pred, num_labels),
            }
        )

    imu_pooled = outputs["imu"]["pooled"].numpy()
    image_pooled = samples.vision_pooled.numpy()
    recall = retrieval_recall(imu_pooled, image_pooled, ks=(1, 5))
    report["retrieval"] = {
        "imu_to_image_r1": recall[1],
        "imu_to_image_r5": recall[5],
        "chance_r1": 1.0 / len(samples),
        "chance_r5": min(1.0, 5.0 / len(samples)),
    }
    report["confusion_fused"] = confusion_matrix(target, predictions["fused"], num_labels).tolist()
    report["qa"] = {}
    qa_answers: list[dict[str, Any]] = []
    if qa_samples > 0:
        timeline = qa_eval.read_label_timeline(data)
        settled = timeline.settled_mask(samples.stamps.tolist(), config.imu.window_s)
        report["qa"] = qa_eval.evaluate_qa(
            pipeline,
            samples,
            target,
            predictions["fused"],
            qa_samples,
            settled,
            max_new_tokens=qa_max_new_tokens,
            progress=progress,
            answers_out=qa_answers,
            head_probabilities=outputs["fused"]["logits"].float().softmax(1).numpy(),
        )
    report["latency_ms"] = measure_latency(pipeline, data, latency_frames)
    tsne = tsne_points(image_pooled, imu_pooled, target, tsne_samples) if tsne_samples > 0 else None
    if through_ros is not None:
        from frozen_vlm_perception.evaluation.through_ros import evaluate_through_ros

        report["through_ros"] = evaluate_through_ros(
            data=data,
            model_dir=model_dir,
            device=device,
            labels=tuple(config.labels),
            window_s=config.imu.window_s,
            max_new_tokens=qa_max_new_tokens,
            **through_ros,
        )
    write_report(out_dir, report, tsne=tsne, qa_answers=qa_answers)
    return report


def measure_latency(pipeline: PerceptionPipeline, data: DataConfig, frames: int) -> dict[str, float]:
    """Median per-stage ms of ``pipeline.encode_one`` on the bag's first real frames that have an IMU
    window (the frames of the first window length have none and would time the vision path only)."""
    if frames <= 0:
        return {}
    paired = read_paired_samples(
        data.bag,
        camera_topic=data.camera_topic,
        imu_topic=data.imu_topic,
        label_topic=None,
        imu_config=pipeline.config.imu,
        sync_config=SyncConfig(),
    )
    timings: dict[str, list[float]] = {}
    warm_up = 2
    for sample in paired:
        if sample.imu_window is None:
            continue
        scene = pipeline.encode_one(sample.frame, sample.imu_window.data)
        if warm_up:
            warm_up -= 1
            continue
        for stage, ms in scene.timings_ms.items():
            timings.setdefault(stage, []).append(ms)
        if len(timings.get("head", ())) >= frames:
            break
    medians = {stage: statistics.median(values) for stage, values in timings.items()}
    if medians:
        medians["total"] = sum(medians.values())
    return medians


def tsne_points(
    image: np.ndarray, imu: np.ndarray, target: np.ndarray, count: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """2-D t-SNE of L2-normalised image and IMU embeddings of ``count`` samples (both modalities)."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(image), size=min(count, len(image)), replace=False)
    both = np.concatenate([image[picks], imu[picks]])
    both = both / np.linalg.norm(both, axis=1, keepdims=True).clip(1e-12)
    perplexity = float(min(30, max(5, len(both) // 10)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(both)
    return {"image": points[: len(picks)], "imu": points[len(picks) :], "labels": target[picks]}
