"""Questions and reference answers built from labels: the one place training and evaluation share.

Stage 2 trains the adapter so that the frozen LM, given the scene's pseudo-tokens, answers these
questions with these sentences; evaluation asks the same questions and compares with the same
references. Answers are short on purpose: the LM's cost grows with every supervised token.

    activity_answer("walking upstairs")                    -> "The person is walking upstairs."
    place_answer("walking upstairs", "coffee")             -> "The person is walking upstairs at a
                                                               table with a cup of coffee."
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Asked about any labelled sample (the IMU alone can answer them).
ACTIVITY_QUESTIONS: tuple[str, ...] = (
    "What is the person doing?",
    "What activity is the person doing?",
)
# Asked when the sample has a place and its frame is used (the place needs the camera).
PLACE_QUESTIONS: tuple[str, ...] = (
    "Where is the person and what are they doing?",
    "Describe the scene.",
)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str  # "activity" | "place"


def place_phrase(place: str) -> str:
    """The text for a place key: the demo's own phrase ("at a table with a cup of coffee") when the
    key is one of the demo's photos, else "at <key>"."""
    from frozen_vlm_perception.data.photos import PLACES_BY_KEY

    known = PLACES_BY_KEY.get(place)
    return known.phrase if known is not None else f"at {place.replace('_', ' ')}"


def activity_answer(label: str) -> str:
    return f"The person is {label}."


def place_answer(label: str, place: str) -> str:
    return f"The person is {label} {place_phrase(place)}."


def make_qa(label: str, place: str | None, *, has_vision: bool, rng: random.Random | None = None) -> QA:
    """A question/answer pair for one sample.

    With a place and a frame, the place question is asked half the time (so both kinds are
    trained); otherwise the activity question. ``rng`` None: deterministic (the first template of
    the kind, place when possible), which is what validation and evaluation use.
    """
    use_place = place is not None and has_vision and (rng is None or rng.random() < 0.5)
    if use_place:
        question = PLACE_QUESTIONS[0] if rng is None else rng.choice(PLACE_QUESTIONS)
        return QA(question, place_answer(label, place), "place")
    question = ACTIVITY_QUESTIONS[0] if rng is None else rng.choice(ACTIVITY_QUESTIONS)
    return QA(question, activity_answer(label), "activity")
