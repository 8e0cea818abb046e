"""Questions a user asks about a scene, and the reference answers built from its labels.

The one place training and evaluation share. Stage 2 trains the adapter so that the frozen LM,
given the scene's pseudo-tokens, answers these questions with these sentences; evaluation asks
them and scores the answers with the rules of ``frozen_vlm_perception.answers``.

Four families, each with several wordings. The ``trained`` wordings are what stage 2 asks; the
``held_out`` wordings are never used in training, so evaluation measures whether the scene reaches
the LM whatever the wording, not whether the adapter memorised a template. The ``validation``
wordings are a third set, never trained and never evaluated: stage 2's validation generates answers
to them to choose which step to keep, so the kept step is good at wordings it did not train on
without evaluation's held-out wordings ever steering training::

    activity        "What is the person doing?" -> "The person is walking upstairs."
    place           "Where is the person?"      -> "The person is next to a cat."
    activity_place  "Describe the scene."       -> "The person is walking upstairs next to a cat."
    yes_no          "Is the person moving?"     -> "Yes, the person is walking upstairs."
                    "Is the person lying down?" -> "No, the person is sitting."

(``place_everywhere``: the activity and yes/no answers name a known place too.)

The place families need the camera (an IMU window cannot know the place). General-knowledge
questions ("What is the capital of France?") are the control: the frozen LM must answer them as
well with a scene in its prompt as without one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

# Activity predicates of the yes/no questions (labels of the demo head; other label sets answer the
# predicates whose words they contain).
PREDICATES: dict[str, Callable[[str], bool]] = {
    "moving": lambda label: label.startswith("walking"),
    "lying": lambda label: label == "lying",
    "sitting": lambda label: label == "sitting",
    "standing": lambda label: label == "standing",
    "stairs": lambda label: label in ("walking upstairs", "walking downstairs"),
}


@dataclass(frozen=True)
class Family:
    name: str
    needs_place: bool  # only asked when the frame is used and the sample has a place
    trained: tuple[str, ...]
    held_out: tuple[str, ...]  # evaluation only
    validation: tuple[str, ...]  # stage-2 validation only


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "activity",
            False,
            trained=(
                "What is the person doing?",
                "What activity is the person doing?",
                "What is the person up to?",
                "Describe what the person is doing.",
                "What is the human doing right now?",
                "Which activity is this?",
                "What is the person currently doing?",
                "Tell me the person's activity.",
                "What do you see the person doing?",
                "What is the person busy with?",
            ),
            held_out=(
                "Tell me what the human in front of you is up to right now.",
                "What activity do you perceive?",
                "What's the person doing at the moment?",
            ),
            validation=(
                "Can you tell what the person is doing?",
                "What action is the person performing?",
                "Say what the person is doing.",
            ),
        ),
        Family(
            "place",
            True,
            trained=(
                "Where is the person?",
                "Where are we?",
                "What is next to the person?",
                "What place is this?",
                "Where is this happening?",
                "Where is the person right now?",
                "What is near the person?",
                "What is in the background?",
                "Where does this take place?",
            ),
            held_out=(
                "What do you see around the person?",
                "Describe the surroundings.",
                "Where is the robot looking?",
            ),
            validation=(
                "What is around the person?",
                "Where are they?",
                "What can be seen near the person?",
            ),
        ),
        Family(
            "activity_place",
            True,
            trained=(
                "Where is the person and what are they doing?",
                "Describe the scene.",
                "What is happening here?",
                "What is the person doing, and where?",
                "Describe the person and their surroundings.",
                "Tell me about the scene.",
                "What is the person doing and what is next to them?",
            ),
            held_out=(
                "Describe what you perceive.",
                "Give a short description of the scene.",
                "What's going on?",
            ),
            validation=(
                "What is going on in this scene?",
                "Summarize the scene.",
                "What is the person doing, and what is around them?",
            ),
        ),
        Family(
            "yes_no",
            False,
            trained=(
                "Is the person moving?",
                "Is the person in motion?",
                "Is the person lying down?",
                "Is the person sitting?",
                "Is the person standing?",
                "Is the person on the stairs?",
                "Is the person walking?",
                "Is the person lying?",
                "Is the person seated?",
                "Is the person standing still?",
                "Is the person going up or down stairs?",
            ),
            held_out=(
                "Is the person moving right now?",
                "Is the person lying on the ground?",
                "Is the person sitting down?",
                "Is the person using the stairs?",
            ),
            validation=(
                "Is the person walking right now?",
                "Is the person lying flat?",
                "Is the person sitting at the moment?",
                "Is the person standing up?",
                "Is the person on a staircase?",
            ),
        ),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

# The first words of a yes/no reference answer ("Yes, the person is ...").
YES_WORD, NO_WORD = "Yes", "No"

# Which predicate each yes/no wording asks about.
YES_NO_PREDICATE: dict[str, str] = {
    "Is the person moving?": "moving",
    "Is the person in motion?": "moving",
    "Is the person lying down?": "lying",
    "Is the person sitting?": "sitting",
    "Is the person standing?": "standing",
    "Is the person on the stairs?": "stairs",
    "Is the person walking?": "moving",
    "Is the person lying?": "lying",
    "Is the person seated?": "sitting",
    "Is the person standing still?": "standing",
    "Is the person going up or down stairs?": "stairs",
    "Is the person moving right now?": "moving",
    "Is the person lying on the ground?": "lying",
    "Is the person sitting down?": "sitting",
    "Is the person using the stairs?": "stairs",
    "Is the person walking right now?": "moving",
    "Is the person lying flat?": "lying",
    "Is the person sitting at the moment?": "sitting",
    "Is the person standing up?": "standing",
    "Is the person on a staircase?": "stairs",
}

# The standard question (demo, bench, the node's examples): the first trained activity wording.
STANDARD_QUESTION = FAMILIES["activity"].trained[0]

# Control questions with nothing to do with the scene; an answer counts when it contains one of the
# accepted words. Scored with and without a scene in the prompt.
GENERAL_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("What is 2 plus 3?", ("5", "five")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("How many legs does a dog have?", ("4", "four")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is 10 minus 4?", ("6", "six")),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What do bees make?", ("honey",)),
    ("What is frozen water called?", ("ice",)),
    ("How many days are in a week?", ("7", "seven")),
)


# General questions stage 2 asks with a scene in the prompt, teaching the LM's *own* no-scene
# answers, so the pseudo-tokens learn not to drown its knowledge. Disjoint from GENERAL_QUESTIONS,
# which evaluation keeps for itself.
GENERAL_TRAINING_QUESTIONS: tuple[str, ...] = (
    "What is the capital of Italy?",
    "What is 3 plus 4?",
    "What color is grass?",
    "How many wheels does a bicycle have?",
    "What is the opposite of up?",
    "What animal says meow?",
    "What is the boiling point of water in Celsius?",
    "How many hours are in a day?",
    "What is the capital of Japan?",
    "What do cows drink?",
)


# The reader's yes/no decision (nn/reader.py) trains on many more wordings than the LM: it needs no
# LM forward, and from the eleven trained ones alone its reading of an unseen wording depended on
# the seed (held-out decisions 0.89-0.98 over four seeds; docs/ANSWERS.md). Frames x subjects x
# predicate phrases, none of them a held-out or validation wording (checked below); the same frames
# around questions that are not about a predicate teach the gate that the frames decide nothing.
# The decision pools its tokens by a soft maximum, so a wording can only read as true of a label by
# a word that no wording false of that label has: "walking on stairs" (false of walking) would make
# "Is the person walking?" unlearnable for walking, so no phrase mixes two predicates (tested).
_DECISION_FRAMES = (
    "Is {s} {p}?",
    "Is {s} {p} now?",
    "Is {s} currently {p}?",
    "Would you say {s} is {p}?",
    "Can you tell if {s} is {p}?",
    "Do you think {s} is {p}?",
    "Is {s} {p} in this scene?",
)
_DECISION_SUBJECTS = ("the person", "the human", "someone", "this person", "the subject", "the individual")
_DECISION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving": (
        "moving", "in motion", "walking", "on the move", "moving around", "walking around", "taking steps",
    ),
    "lying": (
        "lying down", "lying", "lying in bed", "reclining", "lying on a sofa", "lying on their back",
        "stretched out lying down",
    ),
    "sitting": (
        "sitting", "seated", "sitting in a chair", "sitting on a chair", "on a chair", "in a seat",
        "sitting on a bench",
    ),
    "standing": (
        "standing", "standing still", "on their feet", "upright", "standing in place",
        "standing on the floor",
    ),
    "stairs": (
        "on the stairs", "going up or down stairs", "climbing stairs", "on the steps",
        "going upstairs or downstairs", "climbing or descending stairs",
    ),
}  # fmt: skip
# Yes/no questions about the person that no predicate answers, and questions that are not yes/no.
_GATE_NEGATIVE_PHRASES = ("happy", "tired", "wearing a hat", "a child", "holding a phone", "talking")
_GATE_NEGATIVE_FRAMES = (
    "What is {s} doing{t}?",
    "Where is {s}{t}?",
    "Where is {s} going{t}?",
    "What is next to {s}{t}?",
    "What is {s} holding{t}?",
)
_GATE_NEGATIVE_TAILS = ("", " now", " currently", " in this scene")
_GENERAL_YES_NO = (
    "Is the sky blue?", "Is water wet?", "Is Rome in Italy?", "Is seven larger than three?", "Is ice cold?",
    "Is it raining?", "Do cats bark?", "Can fish swim?", "Is the sun a star?", "Are apples fruit?",
    "Is Berlin the capital of Germany?", "Is two plus two four?", "Does a week have seven days?",
)  # fmt: skip


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _decision_wordings() -> tuple[dict[str, str], tuple[str, ...]]:
    unseen = {q for f in FAMILIES.values() for q in f.held_out + f.validation}
    unseen |= {q for q, _ in GENERAL_QUESTIONS}
    asked = {
        _sentence(frame.format(s=subject, p=phrase)): predicate
        for predicate, phrases in _DECISION_PHRASES.items()
        for frame in _DECISION_FRAMES
        for subject in _DECISION_SUBJECTS
        for phrase in phrases
    }
    negatives = [_sentence(f.format(s=s, p=p)) for f in _DECISION_FRAMES for s in _DECISION_SUBJECTS
                 for p in _GATE_NEGATIVE_PHRASES]  # fmt: skip
    negatives += [_sentence(f.format(s=s, t=t)) for f in _GATE_NEGATIVE_FRAMES for s in _DECISION_SUBJECTS
                  for t in _GATE_NEGATIVE_TAILS]  # fmt: skip
    negatives += _GENERAL_YES_NO
    leaked = unseen & (set(asked) | set(negatives))
    if leaked or set(asked) & set(negatives):
        raise ValueError(f"decision training wordings must not be evaluation's or validation's: {leaked}")
    return asked, tuple(dict.fromkeys(negatives))


# question -> predicate, and questions whose gate must stay shut: what the decision trains on besides
# the yes/no family's trained wordings and the other families' (training/adapter.py decision_loss).
DECISION_WORDINGS, DECISION_GATE_NEGATIVES = _decision_wordings()


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    family: str


def place_phrase(place: str) -> str:
    """The text for a place key: the demo's own phrase ("next to a cat") when the key is one of the
    demo's photos, else "at <key>"."""
    from frozen_vlm_perception.data.photos import PLACES_BY_KEY

    known = PLACES_BY_KEY.get(place)
    return known.phrase if known is not None else f"at {place.replace('_', ' ')}"


def scene_caption(label: str, place: str | None) -> str:
    """The scene in a few words, the text its pseudo-tokens are warm-started towards:
    "walking upstairs cat", or "walking upstairs" without a place (or without a frame).

    The place is its key word, not its phrase: the caption must fit the K pseudo-tokens (8 for the
    demo), and with the phrase "walking downstairs at a table with a cup of coffee" the cut fell on
    the one word that names the place."""
    return label if place is None else f"{label} {place.replace('_', ' ')}"


def reference_answer(
    family: str, question: str, label: str, place: str | None, *, place_everywhere: bool = False
) -> str:
    """The sentence stage 2 teaches for ``question`` of ``family`` about (label, place); ``place``
    None when the scene does not know it (no frame used, or no place in the recording).

    ``place_everywhere`` (stage 2's ``answers_name_place``, on by default there): where the place is
    known, the activity and yes/no answers go on to name it too ("The person is sitting next to a
    cat.", "Yes, the person is walking next to a cat."). Without it those answers stop after the
    activity, and the LM stopped there too for place wordings it had not seen: 9 in 10 wrong answers
    to the held-out place and activity-and-place wordings were "The person is <activity>."
    (docs/ANSWERS.md, "Where the place got lost"). A place answer names only the place either way."""
    scene = label if place is None or not place_everywhere else f"{label} {place_phrase(place)}"
    if family == "activity":
        return f"The person is {scene}."
    if family == "place":
        return f"The person is {place_phrase(_need(place))}."
    if family == "activity_place":
        return f"The person is {label} {place_phrase(_need(place))}."
    if family == "yes_no":
        return f"{YES_WORD if yes_no_truth(question, label) else NO_WORD}, the person is {scene}."
    raise KeyError(f"unknown question family {family!r}; known: {FAMILY_NAMES}")


def yes_no_truth(question: str, label: str) -> bool:
    """The true answer to a yes/no wording about an activity label."""
    if question not in YES_NO_PREDICATE:
        raise KeyError(f"{question!r} is not one of the yes/no wordings")
    return PREDICATES[YES_NO_PREDICATE[question]](label)


# What a yes/no question a user writes asks about: a yes/no opening and the words of one predicate.
# Every yes/no wording above reads as its own predicate this way (tested).
_YES_NO_OPENING = re.compile(
    r"^\W*(is|are|am|was|were|does|do|did|can|could|would|will|should|has|have|had)\b", re.IGNORECASE
)
_NEGATION = re.compile(r"\b(not|never|no longer)\b|n't\b", re.IGNORECASE)
_PREDICATE_WORDS: dict[str, re.Pattern[str]] = {
    "stairs": re.compile(r"\b(stairs?|upstairs|downstairs|staircase)\b", re.IGNORECASE),
    "lying": re.compile(r"\b(lying|lie|lies|laying)\b", re.IGNORECASE),
    "sitting": re.compile(r"\b(sit|sits|sitting|seated)\b", re.IGNORECASE),
    "standing": re.compile(r"\b(stand|stands|standing)\b", re.IGNORECASE),
    "moving": re.compile(r"\b(move|moves|moving|motion|walk|walks|walking)\b", re.IGNORECASE),
}


def opens_as_yes_no(question: str) -> bool:
    """Whether ``question`` opens as an English yes/no question does, with an auxiliary verb ("Is
    ...", "Can you tell if ..."); "How many legs does a dog have?" does not. Only such questions may
    have their answer decided by the question reader (PerceptionPipeline)."""
    return bool(_YES_NO_OPENING.match(question))


def asked_predicate(question: str) -> str | None:
    """The PREDICATES key a yes/no question asks about ("Is the person moving?" -> "moving"), or
    None: not a yes/no question, a negated one, no predicate's words, or the words of several ("Is
    the person walking or sitting?")."""
    if question in YES_NO_PREDICATE:
        return YES_NO_PREDICATE[question]
    if not opens_as_yes_no(question) or _NEGATION.search(question):
        return None  # "Is the person not moving?": a yes means the opposite; not judged
    found = [name for name, words in _PREDICATE_WORDS.items() if words.search(question)]
    if set(found) == {"stairs", "moving"}:
        return "stairs"  # "walking up the stairs" asks about the stairs
    return found[0] if len(found) == 1 else None


def families_for(place: str | None, *, has_vision: bool) -> list[str]:
    """The families a sample can answer: the place ones only with a frame and a place."""
    with_place = place is not None and has_vision
    return [name for name, f in FAMILIES.items() if with_place or not f.needs_place]


def wordings(family: str, *, held_out: bool = False, validation: bool = False) -> tuple[str, ...]:
    """The trained wordings of ``family``, or its held-out (evaluation) or validation ones."""
    if held_out and validation:
        raise ValueError("a wording set is held-out (evaluation) or validation, not both")
    f = FAMILIES[family]
    return f.held_out if held_out else f.validation if validation else f.trained


def make_qa(
    label: str,
    place: str | None,
    *,
    has_vision: bool,
    rng: random.Random | None = None,
    family: str | None = None,
    held_out: bool = False,
    index: int = 0,
    place_everywhere: bool = False,
) -> QA:
    """A question/answer pair for one sample.

    ``rng`` given (training): a family the sample can answer, uniformly, then one of its wordings;
    yes/no questions are drawn so that yes and no are about equally frequent. ``rng`` None
    (validation, evaluation): ``family`` (default: the richest the sample can answer) and the
    wording at ``index`` (cycled), from the held-out set when ``held_out``.
    """
    possible = families_for(place, has_vision=has_vision)
    if rng is not None:
        family = family or rng.choice(possible)
        options = wordings(family, held_out=held_out)
        if family == "yes_no":
            want = rng.random() < 0.5
            matching = [q for q in options if yes_no_truth(q, label) == want]
            options = matching or options
        question = rng.choice(options)
    else:
        family = family or ("activity_place" if "activity_place" in possible else "activity")
        if family not in possible:
            raise ValueError(f"a sample without {'a frame' if place else 'a place'} cannot answer {family!r}")
        options = wordings(family, held_out=held_out)
        question = options[index % len(options)]
    known_place = place if has_vision else None  # an IMU window alone cannot know the place
    answer = reference_answer(family, question, label, known_place, place_everywhere=place_everywhere)
    return QA(question, answer, family)


def _need(place: str | None) -> str:
    if place is None:
        raise ValueError("this question family needs a place")
    return place
