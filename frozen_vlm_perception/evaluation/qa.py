"""Question answering you can trust: every question family, trained and held-out wordings, scored
by the rules of :mod:`frozen_vlm_perception.answers`. No ROS (the through-the-nodes evaluation and
the demo score their answers with the same functions).

On ``count`` evenly spaced scenes (fused latents of the trainable part), the frozen LM is asked
every family the scene can answer (the place families only where the bag knows the place), once
with a trained wording and once with a held-out one (``questions.py``), cycling through the
wordings by scene index so that every wording gets asked. Each answer is scored (``RULES``);
accuracy is reported per family for settled scenes and for all scenes, for trained and held-out
wordings separately, with the counts behind every share.

*Settled* (``LabelTimeline``): the scene's IMU window lies inside one labelled segment, i.e. the
ground-truth label does not change between the window's start (frame stamp - window length) and
the frame. Frames within a window length of a change see two activities in their IMU window and
have no single right answer, so the headline accuracy counts settled scenes only. The timeline is
read from the same label source training uses: the bag's ``/ground_truth/activity`` topic
(ActivityLabel or String, dated by header stamp, else receive time; a label lapses
``label_tolerance_s`` after its last message, as in ``data/bags.py``) or the ``start,end,label`` CSV.

General-knowledge questions (``GENERAL_QUESTIONS``) are the control: asked with no scene and with
the latents of a few scenes in the prompt; a scene that reaches the LM must not break what it knew.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frozen_vlm_perception.answers import (
    DEFAULT_GROUNDING_MIN_PROBABILITY,
    answer_is_correct,
    check_grounding,
    invented_scenery,
    named_activities,
    named_places,
    place_keys_for,
    yes_no,
)
from frozen_vlm_perception.questions import (
    FAMILIES,
    FAMILY_NAMES,
    GENERAL_QUESTIONS,
    place_phrase,
    wordings,
    yes_no_truth,
)

# Scenes asked per family (fvp eval --qa-samples). The headline counts settled scenes only, and on the
# demo's test split (5-s segments) fewer than half are settled: 320 gives about 150 of them.
DEFAULT_SCENES = 320
MAX_NEW_TOKENS = 24  # enough for "The person is walking upstairs next to an astronaut."
GENERAL_SCENES = 5  # scenes whose latents go with the general-knowledge questions
EXAMPLES_PER_FAMILY = 4
BATCH = 32  # scenes decoded together per wording (pipeline.answer_batch)
WORDING_KINDS = ("trained", "held_out")

RULES: dict[str, str] = {
    "activity": "correct when the activities the answer names (answers.named_activities: whole words, "
    "case-insensitive, a label inside a longer named label does not count) are exactly [the true label]",
    "place": "correct when the place keys the answer names (answers.named_places) are exactly "
    "[the true place]",
    "activity_place": "correct when both the activity rule and the place rule hold",
    "yes_no": "correct when the answer's first word is yes or no (answers.yes_no) and equals the truth "
    "of the question's predicate for the true label (questions.yes_no_truth); anything else is "
    "wrong. Wordings alternate by scene between one whose true answer is yes and one whose is no, "
    "so always answering no scores about 0.5",
    "agrees_with_head": "share of answers naming at least one activity whose named activities are exactly "
    "[the activity head's predicted label for the same scene]",
    "names_absent": "share of answers that name an activity other than the true one, a place other than the "
    "true one, or invented scenery (answers.invented_scenery: park, street, kitchen, ... not in the true "
    "place's phrase); for yes/no answers only other activities and places count, and an activity the "
    "question itself names does not count in an answer that says no",
    "flagged": "the reasoning node's grounding check (answers.check_grounding, min probability "
    f"{DEFAULT_GROUNDING_MIN_PROBABILITY}) on the fused head's probabilities for the same scene: an answer "
    "naming an activity the head gives less, or saying yes/no to an activity predicate where the head "
    "gives that answer less, is flagged; reported as the share of wrong answers flagged (caught) and of "
    "right answers flagged (false alarms)",
    "settled": "a scene is settled when its IMU window (frame stamp - window length .. frame stamp) lies "
    "inside one labelled segment: no ground-truth label change in it",
    "general": "a general-knowledge answer counts when it contains one of the accepted words (whole word, "
    "case-insensitive); asked with no scene and with each of a few scenes' latents in the prompt",
    "wordings": "every family is asked once with a trained wording (stage 2 saw it) and once with a held-out "
    "wording (never trained), cycling through each list by scene index",
}


# --------------------------------------------------------------------------------------------------
# Settled scenes


@dataclass(frozen=True)
class LabelTimeline:
    """The ground-truth activity over time as change points: ``labels[i]`` holds from ``times[i]``
    until ``times[i + 1]`` (None: no label known there)."""

    times: tuple[float, ...]
    labels: tuple[str | None, ...]

    def at(self, t: float) -> str | None:
        i = bisect_right(self.times, t) - 1
        return self.labels[i] if i >= 0 else None

    def settled(self, t: float, window_s: float) -> bool:
        """True when one known label holds over the whole window [t - window_s, t]."""
        i = bisect_right(self.times, t) - 1
        return i >= 0 and self.labels[i] is not None and self.times[i] <= t - window_s + 1e-9

    def settled_mask(self, stamps: Iterable[float], window_s: float) -> np.ndarray:
        return np.array([self.settled(float(t), window_s) for t in stamps], dtype=bool)


def timeline_from_events(events: Iterable[tuple[float, str]], tolerance_s: float) -> LabelTimeline:
    """Label messages (time s, label) -> change points; a label lapses ``tolerance_s`` after its last
    message (the rule ``read_paired_samples`` pairs frames with)."""
    times: list[float] = []
    labels: list[str | None] = []

    def change(t: float, label: str | None) -> None:
        if not labels or labels[-1] != label:
            times.append(t)
            labels.append(label)

    last: float | None = None
    for t, label in sorted(events, key=lambda e: e[0]):
        if last is not None and t - last > tolerance_s:
            change(last + tolerance_s, None)
        change(t, label)
        last = t
    if last is not None:
        change(last + tolerance_s, None)
    return LabelTimeline(tuple(times), tuple(labels))


def timeline_from_intervals(intervals: Iterable[Any]) -> LabelTimeline:
    """``LabelInterval`` s (start, end, label; sorted, not overlapping) -> change points."""
    times: list[float] = []
    labels: list[str | None] = []
    for iv in intervals:
        if labels and times[-1] == iv.start:  # the previous interval's end marker
            times.pop()
            labels.pop()
        if not labels or labels[-1] != iv.label:
            times.append(iv.start)
            labels.append(iv.label)
        times.append(iv.end)
        labels.append(None)
    return LabelTimeline(tuple(times), tuple(labels))


def read_label_timeline(data: Any, *, tolerance_s: float | None = None) -> LabelTimeline:
    """The bag's ground-truth timeline from ``data.labels_csv`` or ``data.label_topic`` (a DataConfig)."""
    from frozen_vlm_perception.conversions import stamp_to_seconds
    from frozen_vlm_perception.data.bags import DEFAULT_LABEL_TOLERANCE_S, load_labels_csv, read_messages

    if data.labels_csv:
        return timeline_from_intervals(load_labels_csv(data.labels_csv))
    if not data.label_topic:
        return LabelTimeline((), ())
    events = []
    for _, receive_ns, msg in read_messages(data.bag, [data.label_topic]):
        header = getattr(msg, "header", None)
        t = stamp_to_seconds(header.stamp) if header is not None else receive_ns * 1e-9
        events.append((t, str(getattr(msg, "label", None) or getattr(msg, "data", ""))))
    tolerance = DEFAULT_LABEL_TOLERANCE_S if tolerance_s is None else tolerance_s
    return timeline_from_events(events, tolerance)


# --------------------------------------------------------------------------------------------------
# Scoring one answer


@dataclass(frozen=True)
class Scored:
    correct: bool
    activities: tuple[str, ...]  # activities the answer names
    places: tuple[str, ...]  # place keys the answer names
    invented: tuple[str, ...]  # invented scenery words
    names_absent: bool
    agrees_with_head: bool | None  # None: the answer names no activity, or no head label is known


def score_answer(
    family: str,
    question: str,
    answer: str,
    *,
    label: str,
    place: str | None,
    labels: Sequence[str],
    place_keys: Sequence[str],
    head_label: str | None = None,
) -> Scored:
    """Score ``answer`` to ``question`` of ``family`` about a scene whose truth is (label, place)."""
    correct = answer_is_correct(
        family, question, answer, label=label, place=place, labels=labels, place_keys=place_keys
    )
    acts = named_activities(answer, labels)
    places = named_places(answer, place_keys)
    said = yes_no(answer)
    extra_acts = [a for a in acts if a != label]
    if family == "yes_no" and said is False:  # "No, the person is not sitting." names no absent activity
        asked_about = set(named_activities(question, labels))
        extra_acts = [a for a in extra_acts if a not in asked_about]
    extra_places = [p for p in places if p != place]
    invented: list[str] = []
    if family != "yes_no":
        invented = invented_scenery(answer, place_phrase(place).split() if place else ())
    agrees = None if not acts or head_label is None else acts == [head_label]
    return Scored(
        correct=bool(correct),
        activities=tuple(acts),
        places=tuple(places),
        invented=tuple(invented),
        names_absent=bool(extra_acts or extra_places or invented),
        agrees_with_head=agrees,
    )


def general_correct(answer: str, accepted: Iterable[str]) -> bool:
    """True when ``answer`` contains one of the accepted words (whole word, case-insensitive)."""
    return any(re.search(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE) for word in accepted)


def pick_wording(family: str, *, held_out: bool, index: int, label: str) -> str:
    """The wording asked of scene ``index``: the family's list cycled by index; for yes/no, even
    indices take a wording whose true answer is yes and odd ones a wording whose is no (each cycled),
    where the label allows it."""
    options = wordings(family, held_out=held_out)
    if family == "yes_no":
        want = index % 2 == 0
        matching = [q for q in options if yes_no_truth(q, label) == want]
        if matching:
            return matching[(index // 2) % len(matching)]
    return options[index % len(options)]


# --------------------------------------------------------------------------------------------------
# Summaries


def _share(rows: Sequence[dict[str, Any]], key: str = "correct") -> dict[str, Any]:
    hits = sum(bool(r[key]) for r in rows)
    return {"accuracy": hits / len(rows) if rows else float("nan"), "correct": hits, "n": len(rows)}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-family accuracy tables and the shares from scored answer records (see ``record``)."""
    out: dict[str, Any] = {}
    for family in FAMILY_NAMES:
        rows = [r for r in records if r["family"] == family]
        out[family] = {}
        for kind in WORDING_KINDS:
            mine = [r for r in rows if r["held_out"] == (kind == "held_out")]
            out[family][kind] = {
                "settled": _share([r for r in mine if r.get("settled")]),
                "all": _share(mine),
            }
        if family == "yes_no":
            truths = [r["truth_yes"] for r in rows if r.get("truth_yes") is not None]
            out[family]["truth_yes_share"] = float(np.mean(truths)) if truths else float("nan")
        # Per wording, trained ones first: a held-out share that falls short shows which wording drags it.
        questions = sorted({(r["held_out"], r["question"]) for r in rows})
        out[family]["by_wording"] = [
            {
                "question": question,
                "held_out": held_out,
                "settled": _share([r for r in rows if r["question"] == question and r.get("settled")]),
                "all": _share([r for r in rows if r["question"] == question]),
            }
            for held_out, question in questions
        ]
    naming = [r for r in records if r["agrees_with_head"] is not None]
    out["agrees_with_head"] = {
        "share": _share(naming, "agrees_with_head")["accuracy"],
        "agree": sum(bool(r["agrees_with_head"]) for r in naming),
        "n": len(naming),
        "by_family": {
            f: _share([r for r in naming if r["family"] == f], "agrees_with_head") for f in FAMILY_NAMES
        },
    }
    out["names_absent"] = {
        "share": _share(records, "names_absent")["accuracy"],
        "count": sum(bool(r["names_absent"]) for r in records),
        "n": len(records),
        # Where the label is settled the truth is clear; elsewhere the IMU window spans two activities
        # and an answer naming the other one counts as absent too.
        "settled": _share([r for r in records if r.get("settled")], "names_absent"),
        "by_family": {
            f: _share([r for r in records if r["family"] == f], "names_absent") for f in FAMILY_NAMES
        },
    }
    checked = [r for r in records if r.get("flagged") is not None]
    if checked:
        # What the grounding flag would tell a robot: the share of wrong answers it catches and of
        # right answers it flags by mistake.
        def flag_shares(rows: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "wrong": _share([r for r in rows if not r["correct"]], "flagged"),
                "right": _share([r for r in rows if r["correct"]], "flagged"),
            }

        out["flagged"] = flag_shares(checked) | {
            "by_family": {f: flag_shares([r for r in checked if r["family"] == f]) for f in FAMILY_NAMES}
        }
    out["accuracy"] = out["activity"]["trained"]["settled"]["accuracy"]
    return out


def record(
    family: str,
    question: str,
    answer: str,
    *,
    held_out: bool,
    label: str,
    place: str | None,
    settled: bool | None,
    labels: Sequence[str],
    place_keys: Sequence[str],
    head_label: str | None = None,
    head_probabilities: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One scored answer as a JSON-able dict (what ``summarize`` reads). ``head_probabilities``: the
    head's probability per label of ``labels`` for the scene; with them, ``flagged`` says whether the
    reasoning node's grounding check (answers.check_grounding) would flag the answer."""
    scored = score_answer(
        family, question, answer, label=label, place=place, labels=labels, place_keys=place_keys,
        head_label=head_label,
    )  # fmt: skip
    flagged = None
    if head_probabilities is not None:
        probabilities = dict(zip(labels, map(float, head_probabilities), strict=True))
        flagged = check_grounding(answer, probabilities, DEFAULT_GROUNDING_MIN_PROBABILITY, question).flagged
    return {
        "family": family,
        "held_out": held_out,
        "question": question,
        "answer": answer,
        "label": label,
        "place": place,
        "head_label": head_label,
        "settled": settled,
        "correct": scored.correct,
        "names_absent": scored.names_absent,
        "agrees_with_head": scored.agrees_with_head,
        "flagged": flagged,
        "named": {"activities": list(scored.activities), "places": list(scored.places)},
        "invented": list(scored.invented),
        "truth_yes": yes_no_truth(question, label) if family == "yes_no" else None,
        **extra,
    }


def family_line(qa: dict[str, Any]) -> str:
    """One line: per family, accuracy on settled scenes with trained / held-out wordings."""

    def fmt(cell: dict[str, Any]) -> str:
        return f"{cell['accuracy']:.2f}" if cell["n"] else "-"

    parts = [
        f"{f} {fmt(qa[f]['trained']['settled'])}/{fmt(qa[f]['held_out']['settled'])}"
        for f in FAMILY_NAMES
        if f in qa
    ]
    return "QA settled scenes, trained/held-out wording: " + ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# The offline evaluation


def evaluate_qa(
    pipeline: Any,
    samples: Any,
    target: np.ndarray,
    head_pred: np.ndarray,
    count: int = DEFAULT_SCENES,
    settled_mask: np.ndarray | None = None,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    general_scenes: int = GENERAL_SCENES,
    general_questions: Sequence[tuple[str, Sequence[str]]] = GENERAL_QUESTIONS,
    examples_per_family: int = EXAMPLES_PER_FAMILY,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    answers_out: list[dict[str, Any]] | None = None,
    head_probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """The ``qa`` section of the report (module doc).

    ``samples``: an EmbeddingSet; ``target`` / ``head_pred``: (M,) indices into the model's labels
    (truth and the fused head's prediction); ``settled_mask``: (M,) bool (None: no scene is settled).
    ``head_probabilities``: (M, L) the fused head's probabilities, for the grounding flag's shares.
    ``answers_out``: when given, every scored answer (``record``'s dict) is appended to it, so that a
    caller can keep them all (``fvp eval`` writes them to qa_answers.jsonl).
    """
    from tqdm.auto import tqdm

    from frozen_vlm_perception.evaluation.scene_outputs import run_scene_model

    labels = list(pipeline.config.labels)
    device = pipeline.device
    picks = np.unique(np.linspace(0, len(samples) - 1, num=min(count, len(samples))).round().astype(int))
    latents = run_scene_model(pipeline, samples.subset(picks), "fused")["latents"]
    place_keys = place_keys_for(samples.place_names)
    records: list[dict[str, Any]] = []
    seconds = 0.0

    # Every (scene, family, trained/held-out) question first; then each distinct wording is asked
    # of all its scenes in batches (pipeline.answer_batch), several times faster than one by one.
    asks: list[tuple[int, int, str, bool, str]] = []  # (row, index, family, held_out, question)
    for row, index in enumerate(picks):
        index = int(index)
        label, place = labels[int(target[index])], samples.place_of(index)
        for family in FAMILY_NAMES:
            if FAMILIES[family].needs_place and place is None:
                continue
            for held_out in (False, True):
                question = pick_wording(family, held_out=held_out, index=row, label=label)
                asks.append((row, index, family, held_out, question))
    answers: dict[int, str] = {}
    by_question: dict[str, list[int]] = {}
    for n, ask in enumerate(asks):
        by_question.setdefault(ask[4], []).append(n)
    start = time.perf_counter()
    bar = tqdm(total=len(asks), desc="QA", unit="answer", disable=not progress)
    for question, numbers in by_question.items():
        for chunk in range(0, len(numbers), BATCH):
            part = numbers[chunk : chunk + BATCH]
            scenes = latents[[asks[n][0] for n in part]].to(device)
            for n, generation in zip(
                part, pipeline.answer_batch(scenes, question, max_new_tokens=max_new_tokens), strict=True
            ):
                answers[n] = generation.text
            bar.update(len(part))
    bar.close()
    seconds = time.perf_counter() - start
    for n, (_row, index, family, held_out, question) in enumerate(asks):
        label, place = labels[int(target[index])], samples.place_of(index)
        records.append(
            record(
                family,
                question,
                answers[n],
                held_out=held_out,
                label=label,
                place=place,
                settled=bool(settled_mask[index]) if settled_mask is not None else False,
                labels=labels,
                place_keys=place_keys,
                head_label=labels[int(head_pred[index])],
                head_probabilities=head_probabilities[index] if head_probabilities is not None else None,
                stamp=float(samples.stamps[index]),
            )
        )
    result = summarize(records)
    if answers_out is not None:
        answers_out.extend(records)
    n_answers = len(records)
    general_rows = np.unique(np.linspace(0, len(picks) - 1, num=min(general_scenes, len(picks))).round())
    general, general_seconds, general_answers = _general(
        pipeline, general_questions, [latents[int(r)].to(device) for r in general_rows], max_new_tokens
    )
    result.update(
        n_scenes=len(picks),
        n_settled=int(settled_mask[picks].sum()) if settled_mask is not None else 0,
        n_answers=n_answers,
        seconds_per_answer=(seconds + general_seconds) / max(n_answers + general_answers, 1),
        max_new_tokens=max_new_tokens,
        general=general,
        rules=dict(RULES),
        examples=_examples(records, examples_per_family),
    )
    if log is not None:
        log(f"[eval] QA: {n_answers + general_answers} answers, {result['seconds_per_answer']:.2f} s each")
    return result


def _general(
    pipeline: Any, questions: Sequence[tuple[str, Sequence[str]]], scenes: list, max_new_tokens: int
) -> tuple[dict[str, Any], float, int]:
    start = time.perf_counter()
    rows, with_scene = [], []
    for question, accepted in questions:
        bare = pipeline.answer(None, question, max_new_tokens=max_new_tokens).text
        scened = []
        if scenes:
            batch = pipeline.answer_batch(torch.stack(scenes), question, max_new_tokens=max_new_tokens)
            scened = [g.text for g in batch]
        hits = [general_correct(a, accepted) for a in scened]
        with_scene += hits
        rows.append(
            {
                "question": question,
                "accepted": list(accepted),
                "no_scene": bare,
                "no_scene_correct": general_correct(bare, accepted),
                "with_scene": scened[0] if scened else None,
                "with_scene_correct": sum(hits),
                "with_scene_n": len(hits),
            }
        )
    bare_hits = sum(r["no_scene_correct"] for r in rows)
    general = {
        "no_scene": {"accuracy": bare_hits / len(rows), "correct": bare_hits, "n": len(rows)},
        "with_scene": {
            "accuracy": sum(with_scene) / len(with_scene) if with_scene else float("nan"),
            "correct": sum(with_scene),
            "n": len(with_scene),
            "scenes": len(scenes),
        },
        "answers": rows,
    }
    return general, time.perf_counter() - start, len(rows) * (1 + len(scenes))


def _examples(records: Sequence[dict[str, Any]], per_family: int) -> dict[str, list[dict[str, Any]]]:
    """A few answers per family, evenly spread over its records (trained and held-out wordings mix:
    the records alternate between them scene by scene)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for family in FAMILY_NAMES:
        rows = [r for r in records if r["family"] == family]
        spread = np.unique(np.linspace(0, len(rows) - 1, num=min(per_family, len(rows))).round().astype(int))
        if len(rows):
            out[family] = [{key: rows[int(i)][key] for key in _EXAMPLE_KEYS} for i in spread]
    return out


_EXAMPLE_KEYS = ("question", "held_out", "answer", "label", "place", "settled", "correct", "names_absent")
