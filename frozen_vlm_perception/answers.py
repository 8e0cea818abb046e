"""What an answer says: the activities, places and yes/no it names. No ROS, no torch.

Evaluation scores answers with these rules and the reasoning node checks each answer against the
activity head of the same scene with them (the grounding flag), so both read answers the same way.

Rules (all case-insensitive, whole words):

- An activity is *named* when its label occurs as words ("walking upstairs"); an occurrence inside a
  longer named label does not count on its own ("walking upstairs" names "walking upstairs", not also
  "walking"; "walking upstairs, then walking" names both).
- A place is named by its key word ("coffee", "cat", ...; see data/photos.py).
- A yes/no answer is read from its first word ("Yes, ...", "No."); anything else is None.
- Invented scenery: words for places a robot's camera did not show (``SCENERY_WORDS``: "park",
  "street", "kitchen", ...) count as naming something not in the scene.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Places and scenery the frozen LM tends to invent when the scene does not reach it (seen in real
# answers: "walking to a park", "down the street", "in front of a window", "to the mall").
SCENERY_WORDS: tuple[str, ...] = (
    "park", "street", "road", "mall", "window", "kitchen", "office", "room", "beach", "forest",
    "garden", "store", "shop", "restaurant", "city", "house", "building", "car", "bus", "dog",
)  # fmt: skip

# An answer is flagged when the activity head of its scene gives what it says less than this
# probability (the reasoning node's grounding_min_probability parameter, fvp eval's flag columns).
DEFAULT_GROUNDING_MIN_PROBABILITY = 0.1

_YES = {"yes", "yeah", "yep", "correct", "true"}
_NO = {"no", "nope", "not", "false"}


def _has_words(text: str, words: str) -> bool:
    return re.search(rf"\b{re.escape(words.lower())}\b", text.lower()) is not None


def named_activities(text: str, labels: Sequence[str]) -> list[str]:
    """The labels the text names, in ``labels`` order (the longest-match rule in the module doc).

    Longer labels are matched first and their words taken out of the text, so "walking upstairs"
    does not also name "walking", but "walking upstairs, then walking" names both.
    """
    rest = text.lower()
    named = set()
    for label in sorted(labels, key=len, reverse=True):
        pattern = rf"\b{re.escape(label.lower())}\b"
        if re.search(pattern, rest):
            named.add(label)
            rest = re.sub(pattern, " | ", rest)
    return [label for label in labels if label in named]


def named_places(text: str, places: Sequence[str]) -> list[str]:
    """The place keys (e.g. "coffee", "motorcycle") the text names, in ``places`` order."""
    return [key for key in places if _has_words(text, key.replace("_", " "))]


def place_keys_for(known: Iterable[str | None]) -> list[str]:
    """Candidate places an answer can name: the demo's photo keys and the recording's own keys."""
    from frozen_vlm_perception.data.photos import place_keys

    return sorted(set(place_keys()) | {p for p in known if p})


def invented_scenery(text: str, scene_words: Sequence[str] = ()) -> list[str]:
    """SCENERY_WORDS the text uses that are not among ``scene_words`` (the true place's own words)."""
    allowed = " ".join(scene_words).lower()
    return [w for w in SCENERY_WORDS if _has_words(text, w) and not _has_words(allowed, w)]


def answer_is_correct(
    family: str,
    question: str,
    answer: str,
    *,
    label: str,
    place: str | None,
    labels: Sequence[str],
    place_keys: Sequence[str],
) -> bool:
    """Whether ``answer`` to ``question`` of ``family`` is right about a scene whose truth is
    (label, place): the activities it names are exactly [label]; the places it names are exactly
    [place]; both; or its yes/no equals the question's truth for label. The one rule that
    evaluation scores with and stage 2's validation keeps its best step by."""
    from frozen_vlm_perception.questions import FAMILY_NAMES, yes_no_truth

    if family == "yes_no":
        said = yes_no(answer)
        return said is not None and said == yes_no_truth(question, label)
    activity_ok = named_activities(answer, labels) == [label]
    place_ok = place is not None and named_places(answer, place_keys) == [place]
    if family == "activity":
        return activity_ok
    if family == "place":
        return place_ok
    if family == "activity_place":
        return activity_ok and place_ok
    raise KeyError(f"unknown question family {family!r}; known: {FAMILY_NAMES}")


def yes_no(text: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None when it starts with neither."""
    first = re.match(r"\W*(\w+)", text.lower())
    if first is None:
        return None
    word = first.group(1)
    return True if word in _YES else False if word in _NO else None


@dataclass(frozen=True)
class Grounding:
    """Whether an answer agrees with the activity head of the scene it was given."""

    status: str  # "agrees" | "contradicts" | "unchecked" (names no activity, no yes/no to check)
    named: tuple[str, ...]  # activities the answer names
    note: str  # human-readable reason, e.g. "names walking (p 0.02), below 0.10"

    @property
    def flagged(self) -> bool:
        return self.status == "contradicts"


def check_grounding(
    text: str, probabilities: Mapping[str, float], min_probability: float, question: str = ""
) -> Grounding:
    """Grounding of ``text`` against the head's ``{label: probability}`` of the same scene.

    An answer that names an activity the head gives less than ``min_probability`` contradicts the
    head (flagged); one whose every named activity reaches it agrees; one naming none is unchecked.
    Given the ``question``, a yes or no to a yes/no question about an activity predicate
    (questions.asked_predicate: moving, lying, ...) contradicts the head too when the head gives
    that answer less than ``min_probability``: the probability of the labels the predicate holds for
    (for yes) or of the others (for no). The frozen LM often names the right activity and then gets
    the yes/no wrong ("Is the person moving?" -> "No, the person is walking."); this catches it.
    """
    named = tuple(named_activities(text, list(probabilities)))
    said = _said_yes_no(text, question, probabilities)
    said_note = ""
    if said is not None:
        predicate, answer_yes, p_said = said
        said_note = f"says {'yes' if answer_yes else 'no'} to {predicate} (p {p_said:.2f})"
        if p_said < min_probability:
            return Grounding("contradicts", named, f"{said_note}, below {min_probability:.2f}")
    if not named:
        if said_note:
            return Grounding("agrees", (), said_note)
        return Grounding("unchecked", (), "the answer names no activity")
    weak = [(n, probabilities[n]) for n in named if probabilities[n] < min_probability]
    if weak:
        listed = ", ".join(f"{n} (p {p:.2f})" for n, p in weak)
        return Grounding("contradicts", named, f"names {listed}, below {min_probability:.2f}")
    listed = ", ".join(f"{n} (p {probabilities[n]:.2f})" for n in named)
    return Grounding("agrees", named, f"names {listed}" + (f"; {said_note}" if said_note else ""))


def _said_yes_no(
    text: str, question: str, probabilities: Mapping[str, float]
) -> tuple[str, bool, float] | None:
    """(predicate, the answer's yes/no, the head's probability of that answer) when ``text`` answers
    a yes/no ``question`` about a predicate the head's labels can decide; else None."""
    from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS
    from frozen_vlm_perception.questions import PREDICATES, asked_predicate

    answer_yes = yes_no(text)
    if answer_yes is None or not question:
        return None
    predicate = asked_predicate(question)
    # The predicates are written for the demo's activity labels; another label set is not judged.
    if predicate is None or not set(probabilities) <= set(DEFAULT_ACTIVITY_LABELS):
        return None
    p_yes = sum(p for label, p in probabilities.items() if PREDICATES[predicate](label))
    return predicate, answer_yes, p_yes if answer_yes else 1.0 - p_yes
