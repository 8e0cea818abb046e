"""The evaluation report: report.json (machine-readable), report.md (for people), PNG plots and
qa_answers.jsonl (every question-answering answer, scored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from frozen_vlm_perception.questions import FAMILY_NAMES

QA_ANSWERS_FILE = "qa_answers.jsonl"


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    *,
    tsne: dict[str, np.ndarray] | None = None,
    qa_answers: list[dict[str, Any]] | None = None,
) -> None:
    """report.json, report.md, the plots and, when there are answers, qa_answers.jsonl (one scored
    answer per line: question, answer, truth, what it named, whether it was right)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers_file = out_dir / QA_ANSWERS_FILE
    if qa_answers:
        with open(answers_file, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in qa_answers)
    else:  # a report without QA written over an older one must not keep the older answers beside it
        answers_file.unlink(missing_ok=True)
    plots = {"confusion": "confusion_fused.png", "alpha_sweep": "alpha_sweep.png"}
    plot_confusion(out_dir / plots["confusion"], np.array(report["confusion_fused"]), report["labels"])
    plot_alpha_sweep(out_dir / plots["alpha_sweep"], report["alpha_sweep"])
    if tsne is not None:
        plots["tsne"] = "tsne.png"
        plot_tsne(out_dir / plots["tsne"], tsne, report["labels"])
    report = dict(report, plots=plots)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))


def _fusion_line(fusion: dict[str, Any] | None) -> str:
    if not fusion:
        return "Fused: the model's fusion weight."
    if fusion["weighting"] == "gate":
        return (
            f"Fused: the model's learned gate, vision weight {fusion['vision_weight_mean']:.2f} "
            f"+- {fusion['vision_weight_std']:.2f} per sample (its fixed alpha, chosen on validation data, "
            f"is {fusion['alpha']:.1f})."
        )
    return f"Fused: the model's alpha {fusion['alpha']:.1f} (chosen on validation data when stage 2 ran)."


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
        _fusion_line(report.get("fusion")),
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
        lines += qa_markdown(qa)
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
        lines.append(
            f"| questions answered through QueryScene | {qa['answered']}/{qa['asked']} "
            f"({qa['n_scored']} scored) |"
        )
        for family in FAMILY_NAMES:
            cells = [_cell_share(qa[family][kind]["all"]) for kind in ("trained", "held_out")]
            settled = [_cell_share(qa[family][kind]["settled"]) for kind in ("trained", "held_out")]
            lines.append(
                f"| QA {family}: trained / held-out wording, all scenes (settled) | "
                f"{cells[0]} / {cells[1]} ({settled[0]} / {settled[1]}) |"
            )
        lines.append(f"| answers naming something absent | {_cell_share(qa['names_absent'], 'share')} |")
    lines += ["", f"Drops counted by the perception node: `{json.dumps(ros['node_drops'])}`", ""]
    return lines


def qa_markdown(qa: dict[str, Any]) -> list[str]:
    """The question-answering section: a table per family, the shares, general knowledge, rules."""
    lines = [
        "## Question answering (frozen LM, greedy)",
        "",
        f"{qa['n_scenes']} evenly spaced scenes (fused latents), {qa['n_settled']} of them settled (the IMU "
        f"window lies inside one labelled segment). Each scene is asked every family it can answer (the "
        f"place families only where the place is known), once with a trained wording and once with a "
        f"held-out one: {qa['n_answers']} answers of at most {qa['max_new_tokens']} new tokens, "
        f"{qa['seconds_per_answer']:.2f} s per answer. Accuracy (correct / asked):",
        "",
    ]
    for family in FAMILY_NAMES:
        table = qa[family]
        lines += [
            f"**{family}**"
            + (
                " (the true answer is yes in " + _pct(table["truth_yes_share"]) + ")"
                if family == "yes_no"
                else ""
            ),
            "",
            "| wording | settled scenes | all scenes |",
            "|---|---|---|",
            *(
                f"| {kind.replace('_', '-')} | {_cell_share(table[kind]['settled'])} | "
                f"{_cell_share(table[kind]['all'])} |"
                for kind in ("trained", "held_out")
            ),
            "",
        ]
    lines += [
        f"Per wording (every answer is in {QA_ANSWERS_FILE}):",
        "",
        "| family | wording | question | settled scenes | all scenes |",
        "|---|---|---|---|---|",
        *(
            f"| {family} | {'held-out' if w['held_out'] else 'trained'} | {_md(w['question'])} | "
            f"{_cell_share(w['settled'])} | {_cell_share(w['all'])} |"
            for family in FAMILY_NAMES
            for w in qa[family].get("by_wording", [])
        ),
        "",
    ]
    agree, absent = qa["agrees_with_head"], qa["names_absent"]
    lines += [
        "| family | answers naming something absent | answers naming an activity that agree with the head |",
        "|---|---|---|",
        *(
            f"| {f} | {_cell_share(absent['by_family'][f])} | {_cell_share(agree['by_family'][f])} |"
            for f in FAMILY_NAMES
        ),
        f"| **all** | {_share_text(absent['share'], absent['count'], absent['n'])} | "
        f"{_share_text(agree['share'], agree['agree'], agree['n'])} |",
        "",
    ]
    flagged = qa.get("flagged")
    if flagged:
        lines += [
            "The grounding flag (what `QueryScene` would say about each answer, rule below):",
            "",
            "| family | wrong answers flagged | right answers flagged |",
            "|---|---|---|",
            *(
                f"| {f} | {_cell_share(flagged['by_family'][f]['wrong'])} | "
                f"{_cell_share(flagged['by_family'][f]['right'])} |"
                for f in FAMILY_NAMES
            ),
            f"| **all** | {_cell_share(flagged['wrong'])} | {_cell_share(flagged['right'])} |",
            "",
        ]
    if "settled" in absent:
        lines += [
            f"On settled scenes {_cell_share(absent['settled'])} of the answers name something absent "
            "(elsewhere the IMU window spans two activities, and naming the other one counts).",
            "",
        ]
    general = qa.get("general")
    if general:
        bare, scened = general["no_scene"], general["with_scene"]
        lines += [
            "General-knowledge control (the scene must not break what the LM knew):",
            "",
            "| prompt | accuracy |",
            "|---|---|",
            f"| no scene | {_cell_share(bare)} |",
            f"| with a scene's latents in the prompt (each of {scened['scenes']} scenes) | "
            f"{_cell_share(scened)} |",
            "",
            "| question | answer, no scene | answer, first scene | correct with a scene |",
            "|---|---|---|---|",
            *(
                f"| {_md(r['question'])} | {_md(r['no_scene'])} | {_md(r['with_scene'] or '')} | "
                f"{r['with_scene_correct']}/{r['with_scene_n']} |"
                for r in general["answers"]
            ),
            "",
        ]
    examples = qa.get("examples") or {}
    if examples:
        lines += ["| family | wording | truth | question | answer | correct |", "|---|---|---|---|---|---|"]
        for family, rows in examples.items():
            for r in rows:
                truth = r["label"] + (f", {r['place']}" if r.get("place") else "")
                truth += "" if r.get("settled") else " (not settled)"
                mark = "yes" if r["correct"] else "no"
                mark += ", names something absent" if r.get("names_absent") else ""
                lines.append(
                    f"| {family} | {'held-out' if r['held_out'] else 'trained'} | {truth} | "
                    f"{_md(r['question'])} | {_md(r['answer'])} | {mark} |"
                )
        lines.append("")
    rules = qa.get("rules") or {}
    if rules:
        lines += ["Scoring rules:", "", *(f"- **{name}**: {text}." for name, text in rules.items()), ""]
    return lines


def _share_text(share: float, hits: int, n: int) -> str:
    return f"{share:.3f} ({hits}/{n})" if n else "- (0)"


def _cell_share(cell: dict[str, Any], key: str = "accuracy") -> str:
    hits = cell.get("correct", cell.get("count", cell.get("agree", 0)))
    return _share_text(cell[key], hits, cell["n"])


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.0%}"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


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
