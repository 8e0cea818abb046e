"""What the frozen LM reads: each pseudo-token's nearest vocabulary tokens (what ``fvp inspect`` prints).

The scene reaches the LM as K vectors of width H in the slot where K word embeddings would sit. This
module compares each of them with the LM's whole input-embedding table (V, H): the top-k vocabulary
tokens by cosine similarity (as Table III of *Combining Pre-Trained Unimodal Models with a Single
Fully-Connected Layer* reports), and its norm against the vocabulary's median norm (a pseudo-token
far outside the vocabulary's norm range is read very differently from any word)::

    index = VocabularyIndex(language)                     # a FrozenLanguageModel
    report = index.report(torch.from_numpy(scene.latents), top_k=5)
    print(format_table(report))
    nearest_tokens(scene_tokens, language)                # [[(" walking", 0.21), ...], ...]
    text_report("walking upstairs", language)             # reference: a text's own tokens, cosine 1.0

No ROS at import time: only ``--live`` (:func:`receive_latents`) imports rclpy, when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_TOP_K = 5
DEFAULT_SCENES = 3
DEFAULT_LATENTS_TOPIC = "/perception/latents"
DEFAULT_ACTIVITY_TOPIC = "/perception/activity"
_SCALE_SAMPLES = 512  # vocabulary tokens / random directions behind VocabularyStats' cosine scale
_ROWS_PER_MATMUL = 256  # (rows, V) scores at a time: 256 x 49152 floats = 50 MB


@dataclass(frozen=True)
class Neighbour:
    token_id: int
    text: str  # decoded by the tokenizer: "Ġwalking" is " walking"
    cosine: float


@dataclass(frozen=True)
class TokenRow:
    """One input vector: its norm, and its nearest vocabulary tokens, most similar first."""

    index: int
    norm: float
    norm_ratio: float  # norm / the vocabulary's median norm
    neighbours: tuple[Neighbour, ...]
    own_text: str | None = None  # for a text's tokens: the token itself


@dataclass(frozen=True)
class VocabularyStats:
    """The vocabulary's embedding norms, and the scale for reading cosines: how close a vocabulary
    token's nearest other token is (median over a fixed sample), and how close a random direction
    gets to its nearest token (median over fixed Gaussian draws; a pseudo-token at that level is
    near no word at all)."""

    size: int
    median: float
    p01: float
    p99: float
    min: float
    max: float
    neighbour_cosine: float | None = None
    random_cosine: float | None = None


@dataclass
class TokenReport:
    rows: list[TokenRow]
    vocabulary: VocabularyStats
    mutual_cosine: float | None = None  # mean cosine between the rows themselves (None for one row)

    @property
    def outside_norm_range(self) -> list[int]:
        """Rows whose norm lies outside every vocabulary embedding's (below the min or above the max)."""
        v = self.vocabulary
        return [row.index for row in self.rows if not v.min <= row.norm <= v.max]

    def to_dict(self) -> dict[str, Any]:
        return {
            "vocabulary": asdict(self.vocabulary),
            "mutual_cosine": self.mutual_cosine,
            "tokens": [
                {
                    "index": row.index,
                    "norm": row.norm,
                    "norm_ratio": row.norm_ratio,
                    **({"own_text": row.own_text} if row.own_text is not None else {}),
                    "nearest": [
                        {"id": n.token_id, "token": n.text, "cosine": n.cosine} for n in row.neighbours
                    ],
                }
                for row in self.rows
            ],
        }


class VocabularyIndex:
    """The LM's input-embedding table, ready for cosine searches (built once, reused per scene).

    Only the rows the tokenizer can produce are searched (some models pad the table past the
    vocabulary; those rows are never read from text).
    """

    def __init__(self, language: Any):
        weight = language.lm.get_input_embeddings().weight.detach()
        rows = min(weight.shape[0], len(language.tokenizer))
        self.weight = weight[:rows].float()  # (V, H); a view on CPU float32, no copy
        self.norms = self.weight.norm(dim=1)  # (V,)
        self.tokenizer = language.tokenizer
        n = self.norms.cpu()
        p01, p99 = torch.quantile(n, torch.tensor([0.01, 0.99])).tolist()
        self.vocabulary = VocabularyStats(
            size=rows,
            median=float(n.median()),
            p01=p01,
            p99=p99,
            min=float(n.min()),
            max=float(n.max()),
        )
        generator = torch.Generator().manual_seed(0)
        sample = torch.randperm(rows, generator=generator)[:_SCALE_SAMPLES].to(self.weight.device)
        neighbour = self.search(self.weight[sample], top_k=2)[0][:, 1]  # [:, 0] is the token itself
        randoms = torch.randn(_SCALE_SAMPLES, self.hidden_size, generator=generator)
        random = self.search(randoms, top_k=1)[0][:, 0]
        self.vocabulary = replace(
            self.vocabulary, neighbour_cosine=float(neighbour.median()), random_cosine=float(random.median())
        )

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    @torch.inference_mode()
    def search(self, vectors: torch.Tensor, top_k: int = DEFAULT_TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
        """vectors (K, H) -> (cosines (K, k), token ids (K, k)), most similar first."""
        vectors = self._check(vectors)
        top_k = max(1, min(int(top_k), self.vocabulary.size))
        unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        inv_norms = 1.0 / self.norms.clamp_min(1e-12)
        cosines, ids = [], []
        for chunk in unit.split(_ROWS_PER_MATMUL):
            scores = (chunk @ self.weight.T) * inv_norms  # (rows, V) cosine similarities
            values, indices = scores.topk(top_k, dim=1)
            cosines.append(values)
            ids.append(indices)
        return torch.cat(cosines).cpu(), torch.cat(ids).cpu()

    def report(
        self, vectors: torch.Tensor, top_k: int = DEFAULT_TOP_K, own_texts: Sequence[str] | None = None
    ) -> TokenReport:
        vectors = self._check(vectors)
        cosines, ids = self.search(vectors, top_k)
        norms = vectors.norm(dim=1).cpu().tolist()
        texts = self.decode(ids.flatten().tolist())
        width = ids.shape[1]
        rows = []
        for i, norm in enumerate(norms):
            neighbours = tuple(
                Neighbour(int(ids[i, j]), texts[i * width + j], float(cosines[i, j])) for j in range(width)
            )
            rows.append(
                TokenRow(
                    index=i,
                    norm=float(norm),
                    norm_ratio=float(norm) / self.vocabulary.median,
                    neighbours=neighbours,
                    own_text=None if own_texts is None else own_texts[i],
                )
            )
        return TokenReport(rows=rows, vocabulary=self.vocabulary, mutual_cosine=_mutual_cosine(vectors))

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Each id on its own, as the tokenizer writes it (a leading space stays a space)."""
        return [
            self.tokenizer.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for i in ids
        ]

    def _check(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = torch.as_tensor(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.hidden_size or vectors.shape[0] == 0:
            raise ValueError(
                f"expected vectors of shape (K, {self.hidden_size}) (the LM's embedding width), "
                f"got {tuple(vectors.shape)}"
            )
        if not bool(torch.isfinite(vectors).all()):
            raise ValueError("the vectors hold NaN or inf")
        return vectors.to(self.weight.device, torch.float32)


def _mutual_cosine(vectors: torch.Tensor) -> float | None:
    """Mean cosine between distinct rows: near 1 means the K pseudo-tokens all say the same thing."""
    k = vectors.shape[0]
    if k < 2:
        return None
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (k * (k - 1)))


def nearest_tokens(
    pseudo_tokens: torch.Tensor,
    language: Any,
    top_k: int = DEFAULT_TOP_K,
    *,
    index: VocabularyIndex | None = None,
) -> list[list[tuple[str, float]]]:
    """For each of the K pseudo-tokens (K, H): its ``top_k`` nearest vocabulary tokens as
    ``(token_text, cosine)``, most similar first. Pass ``index`` to reuse the table over many calls."""
    report = (index or VocabularyIndex(language)).report(pseudo_tokens, top_k)
    return [[(n.text, n.cosine) for n in row.neighbours] for row in report.rows]


def text_report(
    text: str, language: Any, top_k: int = DEFAULT_TOP_K, *, index: VocabularyIndex | None = None
) -> TokenReport:
    """The same report for the embeddings of ``text``'s own tokens (a reference: each is its own
    nearest token, cosine 1.0, and its norm is a vocabulary norm)."""
    ids = language.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} has no tokens")
    index = index or VocabularyIndex(language)
    with torch.inference_mode():
        vectors = language.embed_ids(torch.tensor(ids, dtype=torch.long))
    return index.report(vectors, top_k, own_texts=index.decode(ids))


# --------------------------------------------------------------------------------------------------
# Text output


def format_vocabulary(vocabulary: VocabularyStats) -> str:
    v = vocabulary
    text = (
        f"vocabulary: {v.size} token embeddings, norm median {v.median:.3f} "
        f"(1st-99th percentile {v.p01:.3f}-{v.p99:.3f}, range {v.min:.3f}-{v.max:.3f})"
    )
    if v.neighbour_cosine is not None and v.random_cosine is not None:
        text += (
            f"\ncosine scale: a vocabulary token's nearest other token {v.neighbour_cosine:.3f}, "
            f"a random direction's nearest token {v.random_cosine:.3f} (medians)"
        )
    return text


def format_table(report: TokenReport, *, with_vocabulary: bool = True) -> str:
    """One row per input vector: index, norm (and x the vocabulary median), top-k tokens with cosines.

    Token texts are shown with repr(), so a leading space is visible (``' walking'``); a ``*`` marks
    a norm outside the range of every vocabulary embedding. ``with_vocabulary``: start with a line
    on the vocabulary's norms (leave it out when printing several tables against one vocabulary).
    """
    v = report.vocabulary
    own = any(row.own_text is not None for row in report.rows)
    texts = [repr(row.own_text) for row in report.rows] if own else []
    own_width = max([len("token"), *map(len, texts)]) if own else 0
    lines = [format_vocabulary(v)] if with_vocabulary else []
    lines += [
        f"{'#':>3}  {'token':<{own_width}}  " * own
        + ("" if own else f"{'#':>3}  ")
        + f"{'norm':>8} {'x med':>7}   nearest vocabulary tokens (cosine)",
    ]
    for i, row in enumerate(report.rows):
        mark = "*" if not v.min <= row.norm <= v.max else " "
        head = f"{row.index:>3}  " + (f"{texts[i]:<{own_width}}  " if own else "")
        neighbours = "  ".join(f"{n.text!r} {n.cosine:.3f}" for n in row.neighbours)
        lines.append(f"{head}{row.norm:>8.3f} {row.norm_ratio:>6.2f}x{mark}  {neighbours}")
    outside = report.outside_norm_range
    if outside:
        lines.append(
            f"* {len(outside)} of {len(report.rows)} norms lie outside the vocabulary's range "
            f"({v.min:.3f}-{v.max:.3f})"
        )
    if report.mutual_cosine is not None and not own:
        lines.append(
            f"mean cosine between these {len(report.rows)} pseudo-tokens: {report.mutual_cosine:.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Scenes from a bag


@dataclass
class InspectedScene:
    """One scene's report with what is known about it (what ``fvp inspect`` prints and writes)."""

    stamp: float
    report: TokenReport
    offset_s: float | None = None  # seconds after the bag's first frame
    frame_index: int | None = None  # among the bag's paired frames, from 0
    truth_label: str | None = None
    place: str | None = None
    head_label: str | None = None
    head_confidence: float | None = None
    source: str | None = None  # "fused" | "vision" | "imu"
    node_label: str | None = None  # --live: what the perception node published for this stamp
    node_confidence: float | None = None
    notes: list[str] = field(default_factory=list)
    # --question: the question reader's tokens for it (None: no question, or no reader) and the answer
    question: str | None = None
    reader: TokenReport | None = None
    answer: str | None = None
    decision: str | None = None  # a deciding reader's verdict on the question (nn/reader.py)

    def header(self) -> str:
        where = [f"stamp {self.stamp:.3f} s"]
        if self.offset_s is not None:
            where.append(f"+{self.offset_s:.2f} s into the bag")
        if self.frame_index is not None:
            where.append(f"frame {self.frame_index}")
        lines = [", ".join(where)]
        if self.truth_label is not None or self.place is not None:
            lines.append(f"truth: {self.truth_label or '?'}, place: {self.place or '?'}")
        if self.head_label is not None:
            lines.append(f"head: {self.head_label} {self.head_confidence:.2f} ({self.source})")
        if self.node_label is not None:
            lines.append(f"node published: {self.node_label} {self.node_confidence:.2f}")
        lines += self.notes
        if self.question is not None:
            lines += [f"question: {self.question}", f"answer: {self.answer}"]
            if self.decision is not None:
                lines.append(f"reader's decision: {self.decision}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("report", "reader")}
        out.update(self.report.to_dict())
        if self.reader is not None:
            reader = self.reader.to_dict()
            out["reader"] = {"mutual_cosine": reader["mutual_cosine"], "tokens": reader["tokens"]}
        return out


def ask(
    pipeline: Any,
    scene: InspectedScene,
    latents: torch.Tensor,
    question: str | None,
    *,
    index: VocabularyIndex,
    top_k: int,
) -> InspectedScene:
    """``scene`` with its answer to ``question`` and, when the model has a question reader, the
    reader's tokens for it: what the LM reads after the question. latents (L, H); ``question`` None:
    ``scene`` as it is."""
    if question is None:
        return scene
    latents = latents[None].float()
    answer = pipeline.answer_batch(latents, question)[0].text
    tokens = pipeline.read_question(latents, [question])
    reader = None if tokens is None else index.report(tokens[0].float().cpu(), top_k)
    logits = pipeline.question_decision(latents, [question])
    starts = pipeline.scene_model.reader is not None and pipeline.scene_model.reader.decision_starts_answer
    decision = _decision_text(logits, starts_answer=starts)
    return replace(scene, question=question, reader=reader, answer=answer, decision=decision)


def _decision_text(logits: torch.Tensor | None, *, starts_answer: bool = False) -> str | None:
    """"yes/no question (gate 1.00): yes (P(yes) 0.97), the answer's first word" from a deciding
    reader's [gate, yes] logits (1, 2); None without a decision."""
    if logits is None:
        return None
    gate, yes = torch.sigmoid(logits[0].float()).tolist()
    if gate <= 0.5:
        return f"not a yes/no question about the scene (gate {gate:.2f}): its free tokens alone"
    said = f"yes/no question (gate {gate:.2f}): {'yes' if yes > 0.5 else 'no'} (P(yes) {yes:.2f})"
    return said + (", the answer's first word" if starts_answer else "")


def _usable(sample: Any, mode: str) -> bool:
    return mode == "vision" or sample.imu_window is not None


def select_samples(
    samples_factory, *, mode: str, at: Sequence[float] = (), indices: Sequence[int] = (), scenes: int
) -> Iterator[tuple[int, float, Any]]:
    """(frame index, seconds after the first frame, sample) for the wanted scenes, in bag order.

    ``at``: the first usable frame at or after each offset; ``indices``: those paired frames;
    otherwise ``scenes`` evenly spaced usable frames (one counting pass over the bag first).
    Usable: has an IMU window, unless mode is "vision". ``samples_factory()`` iterates the bag.
    """
    if at or indices:
        offsets, wanted = sorted(at), set(indices)
        first = None
        for i, sample in enumerate(samples_factory()):
            first = sample.stamp if first is None else first
            offset = sample.stamp - first
            take = i in wanted
            wanted.discard(i)
            while offsets and offset >= offsets[0] and _usable(sample, mode):
                offsets.pop(0)
                take = True
            if take:
                yield i, offset, sample
            if not offsets and not wanted:
                return
        missing = [f"--at {o:g}" for o in offsets] + [f"--index {i}" for i in sorted(wanted)]
        if missing:
            raise ValueError(
                f"the bag ends before {', '.join(missing)} (it has {0 if first is None else i + 1} "
                "paired frames)"
            )
        return
    usable = [i for i, sample in enumerate(samples_factory()) if _usable(sample, mode)]
    if not usable:
        raise ValueError(
            "the bag has no frame with an IMU window" if mode != "vision" else "the bag has no frames"
        )
    count = min(max(1, scenes), len(usable))
    picks = {usable[round(k * (len(usable) - 1) / max(count - 1, 1))] for k in range(count)}
    first = None
    for i, sample in enumerate(samples_factory()):
        first = sample.stamp if first is None else first
        if i in picks:
            yield i, sample.stamp - first, sample
            picks.discard(i)
            if not picks:
                return


def inspect_bag(
    pipeline: Any,
    bag: str | Path,
    *,
    camera_topic: str,
    imu_topic: str,
    label_topic: str | None,
    place_topic: str | None,
    mode: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    at: Sequence[float] = (),
    indices: Sequence[int] = (),
    scenes: int = DEFAULT_SCENES,
    index: VocabularyIndex | None = None,
    question: str | None = None,
) -> list[InspectedScene]:
    """Encode the chosen frames of ``bag`` with ``pipeline`` and report each scene's pseudo-tokens
    (and, with a ``question``, the answer and the question reader's tokens: ``ask``)."""
    from frozen_vlm_perception.config import SyncConfig
    from frozen_vlm_perception.data.bags import read_paired_samples

    mode = mode or pipeline.config.fusion.mode
    index = index or VocabularyIndex(pipeline.language)

    def samples():
        return read_paired_samples(
            bag,
            camera_topic=camera_topic,
            imu_topic=imu_topic or None,
            label_topic=label_topic or None,
            place_topic=place_topic or None,
            imu_config=pipeline.config.imu,
            sync_config=SyncConfig(),
        )

    out = []
    for i, offset, sample in select_samples(samples, mode=mode, at=at, indices=indices, scenes=scenes):
        notes = []
        window = sample.imu_window.data if sample.imu_window is not None else None
        if window is None:
            if mode == "imu":
                raise ValueError(
                    f"frame {i} has no IMU window ({sample.window_reason}); --mode imu needs one"
                )
            if mode == "fused":
                notes.append(f"no IMU window ({sample.window_reason}): vision only")
        scene = pipeline.encode_one(sample.frame, window, mode=mode)
        latents = torch.from_numpy(np.asarray(scene.latents, np.float32))
        inspected = InspectedScene(
            stamp=sample.stamp,
            report=index.report(latents, top_k),
            offset_s=offset,
            frame_index=i,
            truth_label=sample.label,
            place=sample.place,
            head_label=scene.label,
            head_confidence=scene.confidence,
            source=scene.source,
            notes=notes,
        )
        out.append(ask(pipeline, inspected, latents, question, index=index, top_k=top_k))
    return out


# --------------------------------------------------------------------------------------------------
# Scenes from the running nodes


@dataclass
class LiveLatents:
    stamp: float
    latents: np.ndarray  # (L, D) float32
    modalities: tuple[str, ...]
    activity: tuple[str, float] | None  # the ActivityLabel published for the same stamp, if seen


class NoLatentsError(RuntimeError):
    """Nothing arrived on the latents topic within the timeout."""


def latents_from_msg(msg: Any) -> np.ndarray:
    """SceneLatents -> (L, D) float32, checked the way the reasoning node checks it (_on_latents)."""
    num, dim = int(msg.num_latents), int(msg.dim)
    data = np.asarray(msg.data, dtype=np.float32).reshape(-1)
    if num < 1 or dim < 1 or data.size != num * dim:
        raise ValueError(f"bad SceneLatents: {data.size} values for {num} x {dim} latents")
    if not np.isfinite(data).all():
        raise ValueError("SceneLatents holds NaN or inf")
    return data.reshape(num, dim)


def receive_latents(
    count: int,
    *,
    timeout: float,
    latents_topic: str = DEFAULT_LATENTS_TOPIC,
    activity_topic: str = DEFAULT_ACTIVITY_TOPIC,
    ros_args: Sequence[str] = (),
) -> list[LiveLatents]:
    """The next ``count`` SceneLatents from the running perception node (with their ActivityLabel
    when one with the same stamp arrives). Raises NoLatentsError when none comes within ``timeout``."""
    from rclpy.executors import SingleThreadedExecutor

    from frozen_vlm_perception.conversions import stamp_to_ns
    from frozen_vlm_perception.nodes.query_client import _Session
    from frozen_vlm_perception_interfaces.msg import ActivityLabel, SceneLatents

    received: list[Any] = []
    activities: dict[int, tuple[str, float]] = {}
    deadline = time.monotonic() + timeout
    with _Session(ros_args) as session:
        session.node.create_subscription(SceneLatents, latents_topic, received.append, 10)
        session.node.create_subscription(
            ActivityLabel,
            activity_topic,
            lambda m: activities.__setitem__(stamp_to_ns(m.header.stamp), (m.label, float(m.confidence))),
            10,
        )
        executor = SingleThreadedExecutor(context=session.context)
        executor.add_node(session.node)
        try:
            while len(received) < count and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            settle = time.monotonic() + 0.3  # labels of the last scenes may still be on their way
            while received and time.monotonic() < settle:
                executor.spin_once(timeout_sec=0.05)
        finally:
            executor.remove_node(session.node)
            executor.shutdown(timeout_sec=0.1)
    if not received:
        raise NoLatentsError(
            f"no SceneLatents on {latents_topic} within {timeout:g} s: is the perception node running and "
            "active, with camera frames coming in, in the same ROS_DOMAIN_ID?"
        )
    out = []
    for msg in received[:count]:
        ns = stamp_to_ns(msg.header.stamp)
        out.append(LiveLatents(ns * 1e-9, latents_from_msg(msg), tuple(msg.modalities), activities.get(ns)))
    return out


def inspect_live(
    pipeline: Any,
    latents: Sequence[LiveLatents],
    *,
    top_k: int,
    index: VocabularyIndex | None = None,
    question: str | None = None,
) -> list[InspectedScene]:
    """Reports for latents received from the node; the head's label is recomputed from the latents
    with ``pipeline``'s head (and the node's published label is shown next to it when it came).
    With a ``question``: the answer and the question reader's tokens too (``ask``)."""
    index = index or VocabularyIndex(pipeline.language)
    out = []
    for item in latents:
        if item.latents.shape[1] != index.hidden_size:
            raise ValueError(
                f"the latents are {item.latents.shape[1]} wide but the model's language model expects "
                f"{index.hidden_size}: the node runs another model than --model"
            )
        tokens = torch.from_numpy(item.latents)
        head_label = head_confidence = None
        with torch.inference_mode():
            head = pipeline.scene_model.head
            param = next(head.parameters())
            scores = head(tokens.unsqueeze(0).to(param.device, param.dtype)).float().softmax(-1)[0]
        best = int(scores.argmax())
        head_label, head_confidence = pipeline.config.labels[best], float(scores[best])
        source = "fused" if len(item.modalities) == 2 else (item.modalities[0] if item.modalities else "?")
        inspected = InspectedScene(
            stamp=item.stamp,
            report=index.report(tokens, top_k),
            head_label=head_label,
            head_confidence=head_confidence,
            source=source,
            node_label=item.activity[0] if item.activity else None,
            node_confidence=item.activity[1] if item.activity else None,
        )
        out.append(ask(pipeline, inspected, tokens, question, index=index, top_k=top_k))
    return out


# --------------------------------------------------------------------------------------------------
# fvp inspect


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``fvp inspect`` (p: an argparse parser)."""
    from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, CAMERA_TOPIC, IMU_TOPIC, PLACE_TOPIC

    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bag", default=None, help="rosbag2 folder (or .mcap/.db3 file) to take scenes from")
    what.add_argument(
        "--live",
        action="store_true",
        help=f"take scenes from the running perception node ({DEFAULT_LATENTS_TOPIC})",
    )
    what.add_argument("--text", default=None, help="reference: the same table for a text's own tokens")
    p.add_argument("--model", default=None, help="model folder (default: the shipped models/demo)")
    p.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, help="nearest vocabulary tokens per pseudo-token"
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=["fused", "vision", "imu"],
        help="--bag: modalities (default: the model's)",
    )
    p.add_argument(
        "--scenes",
        type=int,
        default=None,
        help=f"scenes evenly spaced over the bag (default {DEFAULT_SCENES}); --live: the next N (default 1)",
    )
    p.add_argument(
        "--at",
        type=float,
        action="append",
        default=[],
        metavar="SECONDS",
        help="--bag: the scene this many seconds after the first frame (repeatable)",
    )
    p.add_argument(
        "--index",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="--bag: the N-th paired frame, from 0 (repeatable)",
    )
    p.add_argument("--camera-topic", default=CAMERA_TOPIC, help=f"sensor_msgs/Image topic ({CAMERA_TOPIC})")
    p.add_argument("--imu-topic", default=IMU_TOPIC, help=f"sensor_msgs/Imu topic ({IMU_TOPIC})")
    p.add_argument(
        "--label-topic",
        default=ACTIVITY_TOPIC,
        help=f"ground-truth label topic, '' for none ({ACTIVITY_TOPIC})",
    )
    p.add_argument(
        "--place-topic", default=PLACE_TOPIC, help=f"ground-truth place topic, '' for none ({PLACE_TOPIC})"
    )
    p.add_argument(
        "--latents-topic",
        default=DEFAULT_LATENTS_TOPIC,
        help=f"--live: SceneLatents topic ({DEFAULT_LATENTS_TOPIC})",
    )
    p.add_argument(
        "--activity-topic",
        default=DEFAULT_ACTIVITY_TOPIC,
        help=f"--live: ActivityLabel topic ({DEFAULT_ACTIVITY_TOPIC})",
    )
    p.add_argument(
        "--question",
        default=None,
        help="--bag/--live: also ask this of every scene: the answer, and the question reader's tokens "
        "for it (what the LM reads after the question)",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="--live: seconds to wait for scenes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the reports as JSON")


def main_inspect(args: argparse.Namespace) -> int:
    """``fvp inspect``: print each scene's pseudo-tokens' nearest vocabulary tokens; exit 0, 1 on a
    bad request or bag, 2 when --live receives nothing."""
    from frozen_vlm_perception.paths import default_model_dir
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    if args.top_k < 1:
        return _fail("--top-k must be at least 1")
    if args.scenes is not None and args.scenes < 1:
        return _fail("--scenes must be at least 1")
    if any(i < 0 for i in args.index) or any(not (t >= 0) for t in args.at):
        return _fail("--index and --at must not be negative")
    if not args.bag and (args.at or args.index or args.mode):
        return _fail("--at, --index and --mode apply to --bag only")
    if args.question is not None and (args.text is not None or not args.question.strip()):
        return _fail("--question needs --bag or --live, and some text")
    model = args.model or default_model_dir()
    if model is None:
        return _fail("no --model given and no shipped models/demo found")

    live = None
    if args.live:  # before loading anything: a quiet topic should fail fast and clearly
        try:
            live = receive_latents(
                args.scenes or 1,
                timeout=args.timeout,
                latents_topic=args.latents_topic,
                activity_topic=args.activity_topic,
            )
        except NoLatentsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except ValueError as err:
            return _fail(str(err))

    pipeline = PerceptionPipeline.from_model_dir(model, device=args.device, load_vision=bool(args.bag))
    index = VocabularyIndex(pipeline.language)
    result: dict[str, Any] = {"model": str(model), "top_k": args.top_k}
    try:
        if args.text is not None:
            report = text_report(args.text, pipeline.language, args.top_k, index=index)
            print(f"text {args.text!r}: {len(report.rows)} tokens")
            print(format_table(report))
            result.update(text=args.text, **report.to_dict())
            scenes = []
        elif live is not None:
            scenes = inspect_live(pipeline, live, top_k=args.top_k, index=index, question=args.question)
            result.update(source="live", latents_topic=args.latents_topic)
        else:
            scenes = inspect_bag(
                pipeline,
                args.bag,
                camera_topic=args.camera_topic,
                imu_topic=args.imu_topic,
                label_topic=args.label_topic,
                place_topic=args.place_topic,
                mode=args.mode,
                top_k=args.top_k,
                at=args.at,
                indices=args.index,
                scenes=args.scenes or DEFAULT_SCENES,
                index=index,
                question=args.question,
            )
            result.update(source="bag", bag=str(args.bag), mode=args.mode or pipeline.config.fusion.mode)
    except (ValueError, OSError, RuntimeError) as err:  # BagError is a RuntimeError
        return _fail(str(err))
    if scenes:
        print(format_vocabulary(index.vocabulary))
    for n, scene in enumerate(scenes, start=1):
        first, *rest = scene.header().split("\n")
        print(f"\nscene {n}/{len(scenes)}: {first}")
        for line in rest:
            print(f"  {line}")
        print(format_table(scene.report, with_vocabulary=False))
        if scene.question is not None and scene.reader is not None:
            print(f"  question reader's {len(scene.reader.rows)} tokens (after the question):")
            print(format_table(scene.reader, with_vocabulary=False))
        elif scene.question is not None:
            print("  (this model has no question reader: the LM reads the scene's tokens only)")
    if scenes:
        result["scenes"] = [scene.to_dict() for scene in scenes]
        _summary(scenes)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")
        print(f"wrote {args.json}")
    return 0


def _summary(scenes: Sequence[InspectedScene]) -> None:
    best = [row.neighbours[0].cosine for scene in scenes for row in scene.report.rows]
    ratios = [row.norm_ratio for scene in scenes for row in scene.report.rows]
    outside = sum(len(scene.report.outside_norm_range) for scene in scenes)
    v = scenes[0].report.vocabulary
    scale = (
        f" (a random direction: {v.random_cosine:.3f}, a word's nearest other word: {v.neighbour_cosine:.3f})"
        if v.random_cosine is not None and v.neighbour_cosine is not None
        else ""
    )
    print(
        f"\n{len(best)} pseudo-tokens in {len(scenes)} scenes: best cosine to any vocabulary token "
        f"median {float(np.median(best)):.3f}, max {max(best):.3f}{scale}; norm "
        f"{float(np.median(ratios)):.2f}x the vocabulary median, {outside} outside its norm range"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
