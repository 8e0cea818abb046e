"""answers.py: what real answers name (activities, places, yes/no) and the grounding check's rules."""

from __future__ import annotations

import pytest

from frozen_vlm_perception.answers import (
    Grounding,
    check_grounding,
    invented_scenery,
    named_activities,
    named_places,
    yes_no,
)
from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS

LABELS = list(DEFAULT_ACTIVITY_LABELS)


@pytest.mark.parametrize(
    "text,named",
    [
        ("The person is walking upstairs next to a cat.", ["walking upstairs"]),
        ("The person is walking.", ["walking"]),
        ("Walking downstairs.", ["walking downstairs"]),
        ("The person is walking upstairs, then walking along the corridor.", ["walking", "walking upstairs"]),
        ("They were sitting, then standing up.", ["sitting", "standing"]),
        ("The person is lying on a sofa.", ["lying"]),
        ("Someone is walkingupstairs quickly.", []),  # whole words only
        ("The sleepwalking person.", []),
        ("The person is jogging.", []),
        ("Nothing.", []),
        ("", []),
    ],
)
def test_named_activities_of_real_answers(text, named):
    assert named_activities(text, LABELS) == named


def test_named_activities_follow_the_labels_order_and_ignore_case():
    assert named_activities("STANDING, then WALKING UPSTAIRS", LABELS) == ["walking upstairs", "standing"]
    assert named_activities("walking upstairs", ["walking upstairs", "walking"]) == ["walking upstairs"]


@pytest.mark.parametrize(
    "text,answer",
    [
        ("Yes, the person is walking.", True),
        ("yes", True),
        ("  Yes!", True),
        ("Correct, they are sitting.", True),
        ("No.", False),
        ("No, the person is lying down.", False),
        ("Nope", False),
        ("The person is walking.", None),
        ("Nothing.", None),
        ("Noisy street.", None),  # "no" must be the whole first word
        ("", None),
        ("...", None),
    ],
)
def test_yes_no_from_the_first_word(text, answer):
    assert yes_no(text) is answer


def test_named_places_and_invented_scenery():
    places = ["coffee", "cat", "rocket", "motorcycle"]
    assert named_places("The person is walking upstairs next to a cat.", places) == ["cat"]
    assert named_places("A cup of coffee near a motorcycle.", places) == ["coffee", "motorcycle"]
    assert named_places("A catalogue.", places) == []
    assert invented_scenery("The person is walking to a park down the street.") == ["park", "street"]
    assert invented_scenery("Sitting in the kitchen.", scene_words=["kitchen", "table"]) == []
    assert invented_scenery("The person is walking upstairs next to a cat.") == []


def probabilities(**given: float) -> dict[str, float]:
    """A head output over all LABELS: the given labels (underscores for spaces), the rest shared."""
    given = {k.replace("_", " "): v for k, v in given.items()}
    rest = [label for label in LABELS if label not in given]
    share = (1.0 - sum(given.values())) / len(rest)
    return {label: given.get(label, share) for label in LABELS}


def test_grounding_agrees_when_every_named_activity_is_likely():
    text = "The person is walking upstairs next to a cat."
    g = check_grounding(text, probabilities(walking_upstairs=0.93), 0.1)
    assert g == Grounding("agrees", ("walking upstairs",), "names walking upstairs (p 0.93)")
    assert not g.flagged


def test_grounding_contradicts_when_a_named_activity_is_unlikely():
    g = check_grounding("Yes, the person is walking.", probabilities(walking=0.02, sitting=0.9), 0.1)
    assert g.status == "contradicts" and g.flagged
    assert g.named == ("walking",)
    assert g.note == "names walking (p 0.02), below 0.10"


def test_grounding_one_unlikely_activity_among_likely_ones_contradicts():
    p = probabilities(walking=0.6, standing=0.01)
    g = check_grounding("The person is walking, then standing.", p, 0.1)
    assert g.flagged and g.named == ("walking", "standing")
    assert "standing (p 0.01)" in g.note and "walking (p" not in g.note


@pytest.mark.parametrize("text", ["No.", "Nothing.", "A cup of coffee.", ""])
def test_grounding_unchecked_when_no_activity_is_named(text):
    g = check_grounding(text, probabilities(walking=0.0), 0.1)
    assert g.status == "unchecked" and not g.flagged and g.named == ()
    assert g.note == "the answer names no activity"


def test_grounding_threshold_edge():
    text = "The person is sitting."
    assert check_grounding(text, probabilities(sitting=0.25), 0.25).status == "agrees"  # not less than
    assert check_grounding(text, probabilities(sitting=0.2499), 0.25).status == "contradicts"
    assert check_grounding(text, probabilities(sitting=0.0), 0.0).status == "agrees"  # 0 disables it
    assert check_grounding(text, probabilities(sitting=0.99), 1.0).flagged


def test_grounding_reads_the_longer_label_only():
    # "walking upstairs" does not also name "walking": an unlikely "walking" must not flag it.
    p = probabilities(walking_upstairs=0.9, walking=0.001)
    assert check_grounding("The person is walking upstairs.", p, 0.1).status == "agrees"
    assert check_grounding("The person is walking upstairs, not just walking.", p, 0.1).flagged


def test_grounding_catches_a_yes_or_no_the_head_contradicts():
    """The frozen LM often names the right activity and gets the yes/no wrong: with the question,
    a no to "moving?" where the head is sure of walking is flagged, however right the activity."""
    p = probabilities(walking=0.85, walking_upstairs=0.1)  # moving: p 0.95 + a share of the rest
    wrong = check_grounding("No, the person is walking.", p, 0.1, "Is the person moving right now?")
    assert wrong.flagged and wrong.named == ("walking",)
    assert wrong.note.startswith("says no to moving (p 0.0") and wrong.note.endswith("below 0.10")
    right = check_grounding("Yes, the person is walking.", p, 0.1, "Is the person moving right now?")
    assert right.status == "agrees" and right.note.startswith("names walking (p 0.85); says yes to moving")
    # Without the question (or to a question about no predicate) only the named activity is checked.
    assert check_grounding("No, the person is walking.", p, 0.1).status == "agrees"
    assert check_grounding("No, the person is walking.", p, 0.1, "Is it raining?").status == "agrees"
    # A bare yes/no is checked too, and a head that is unsure flags neither answer.
    assert check_grounding("No.", p, 0.1, "Is the person walking?").flagged
    assert check_grounding("Yes.", p, 0.1, "Is the person lying down?").flagged
    assert check_grounding("No.", p, 0.1, "Is the person lying down?").status == "agrees"
    unsure = probabilities(walking=0.5, sitting=0.45)
    for text in ("Yes.", "No."):
        assert not check_grounding(text, unsure, 0.1, "Is the person moving?").flagged


def test_grounding_judges_yes_no_only_for_the_labels_its_predicates_know():
    custom = {"walking": 0.9, "cycling": 0.1}  # a user's own label set
    assert check_grounding("No.", custom, 0.1, "Is the person moving?").status == "unchecked"
