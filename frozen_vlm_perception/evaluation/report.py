"""The evaluation report: report.json (machine-readable), report.md (for people), PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_report(out_dir: Path, report: dict[str, Any], *, tsne: dict[str, np.ndarray] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"confusion": "confusion_fused.png", "alpha_sweep": "alpha_sweep.png"}
    plot_confusion(out_dir / plots["confusion"], np.array(report["confusion_fused"]), report["labels"])
    plot_alpha_sweep(out_dir / plots["alpha_sweep"], report["alpha_sweep"])
    if tsne is not None:
        plots["tsne"] = "tsne.png"
        plot_tsne(out_dir / plots["tsne"], tsne, report["labels"])
    report = dict(report, plots=plots)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    acc, f1, ret = report["accuracy"], report["macro_f1"], report["retrieval"]
    lines = [
        "# Evaluation report",
        "",
        f"Model `{report['model']}` on `{report['bag']}`: {report['n_samples']} labelled samples "
        f"with an IMU window (majority-class accuracy {report['chance_accuracy']:.3f}).",
        "",
        "## Activity recognition",
        "",
        "| mode | accuracy | macro-F1 |",
        "|---|---|---|",
        *(f"| {mode} | {acc[mode]:.3f} | {f1[mode]:.3f} |" for mode in ("vision", "imu", "fused")),
        "",
        "Fused accuracy over the fusion weight alpha (vision weight; the IMU gets 1 - alpha):",
        "",
        "| alpha | " + " | ".join(f"{row['alpha']:.1f}" for row in report["alpha_sweep"]) + " |",
        "|---|" + "---|" * len(report["alpha_sweep"]),
        "| accuracy | " + " | ".join(f"{row['accuracy']:.3f}" for row in report["alpha_sweep"]) + " |",
        "",
        f"![confusion]({report['plots']['confusion']}) ![alpha]({report['plots']['alpha_sweep']})",
        "",
        "## Alignment",
        "",
        f"IMU -> image retrieval among all {report['n_samples']} samples: R@1 {ret['imu_to_image_r1']:.3f} "
        f"(chance {ret['chance_r1']:.4f}), R@5 {ret['imu_to_image_r5']:.3f} (chance {ret['chance_r5']:.4f}).",
        "",
    ]
    if "tsne" in report["plots"]:
        lines += [f"![t-SNE]({report['plots']['tsne']})", ""]
    qa = report.get("qa") or {}
    if qa:
        lines += [
            "## Question answering (frozen LM, greedy)",
            "",
            f"{qa['n_questions']} evenly spaced fused scenes. "
            f"Answers naming the right activity: {qa['accuracy']:.3f}.",
        ]
        if "activity_and_place_accuracy" in qa:
            lines.append(
                f"Answers to the place question naming both the activity and the place: "
                f"{qa['activity_and_place_accuracy']:.3f}."
            )
        lines += ["", "| truth | answer |", "|---|---|"]
        for example in qa["examples"][:8]:
            truth = example["label"] + (f", {example['place']}" if example.get("place") else "")
            lines.append(f"| {truth} | {example.get('place_answer') or example['answer']} |")
        lines.append("")
    latency = report.get("latency_ms") or {}
    if latency:
        lines += ["## Latency per stage (median ms, batch 1)", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {stage} | {ms:.1f} |" for stage, ms in latency.items()]
        lines.append("")
    if report.get("through_ros"):
        lines += through_ros_markdown(report["through_ros"])
    if report.get("drops"):
        lines += ["## Samples dropped while reading the bag", "", f"`{json.dumps(report['drops'])}`", ""]
    return "\n".join(lines)


def through_ros_markdown(ros: dict[str, Any]) -> list[str]:
    lat, qa = ros["latency_ms"], ros["qa"]
    lines = [
        "## Through the running nodes (--through-ros)",
        "",
        f"The bag's camera and IMU played into the perception and reasoning nodes (own processes); "
        f"{ros['frames_published']} frames published, {ros['labels_received']} labelled "
        f"({ros['share_labelled']:.0%}); the rest were superseded while the node was busy or dropped as "
        f"counted below.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| accuracy of the published labels | {ros['accuracy']:.3f} ({ros['n_scored']} scored) |",
        f"| macro-F1 | {ros['macro_f1']:.3f} |",
        *(
            f"| accuracy, source {src} | {a:.3f} ({ros['labels_by_source'][src]} labels) |"
            for src, a in ros["accuracy_by_source"].items()
        ),
    ]
    if lat.get("n"):
        lines.append(
            f"| label latency p50 / p99 / max ms (frame received -> label received) | "
            f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} |"
        )
    if qa.get("asked"):
        lines.append(f"| questions answered through QueryScene | {qa['answered']}/{qa['asked']} |")
        lines.append(f"| answers naming the right activity | {qa['accuracy']:.3f} |")
        lines.append(f"| place answers naming activity and place | {qa['activity_and_place_accuracy']:.3f} |")
    lines += ["", f"Drops counted by the perception node: `{json.dumps(ros['node_drops'])}`", ""]
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, matrix: np.ndarray, labels: list[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    rows = matrix / matrix.sum(axis=1, keepdims=True).clip(1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if rows[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Activity confusion (fused)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alpha_sweep(path: Path, sweep: list[dict[str, float]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    alphas = [row["alpha"] for row in sweep]
    ax.plot(alphas, [row["accuracy"] for row in sweep], marker="o", label="accuracy")
    ax.plot(alphas, [row["macro_f1"] for row in sweep], marker="s", label="macro-F1")
    ax.set_xlabel("alpha (vision weight)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Fusion weight sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(path: Path, tsne: dict[str, np.ndarray], labels: list[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    colors = plt.get_cmap("tab10")
    for index, name in enumerate(labels):
        mask = tsne["labels"] == index
        if not mask.any():
            continue
        ax.scatter(
            *tsne["image"][mask].T, s=14, marker="o", color=colors(index), alpha=0.6, label=f"{name} (image)"
        )
        ax.scatter(
            *tsne["imu"][mask].T, s=18, marker="x", color=colors(index), alpha=0.8, label=f"{name} (IMU)"
        )
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title("t-SNE of image (o) and IMU (x) embeddings, coloured by activity")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
