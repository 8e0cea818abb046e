"""Question families and reference answers (shared by stage 2 and evaluation)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from frozen_vlm_perception import questions as Q
from frozen_vlm_perception.answers import named_activities, named_places, yes_no

LABELS = ["walking", "walking upstairs", "walking downstairs", "sitting", "standing", "lying"]


def test_every_family_has_trained_held_out_and_validation_wordings_that_never_overlap():
    for family in Q.FAMILIES.values():
        assert len(family.trained) >= 4 and len(family.held_out) >= 3, family.name
        assert len(family.validation) >= 3, family.name
    every = [q for f in Q.FAMILIES.values() for q in f.trained + f.held_out + f.validation]
    assert len(every) == len(set(every))  # no wording in two sets or two families
    yes_no = Q.FAMILIES["yes_no"]
    assert set(Q.YES_NO_PREDICATE) == set(yes_no.trained + yes_no.held_out + yes_no.validation)
    # Validation asks a true yes and a true no about every label (stage 2 alternates them).
    for label in LABELS:
        assert {Q.yes_no_truth(q, label) for q in yes_no.validation} == {True, False}, label
    with pytest.raises(ValueError, match="not both"):
        Q.wordings("activity", held_out=True, validation=True)
    general = {q for q, _ in Q.GENERAL_QUESTIONS}
    assert not general & set(Q.GENERAL_TRAINING_QUESTIONS)  # evaluation's control stays unseen


def test_the_decisions_training_wordings_stay_out_of_evaluation_and_read_as_their_predicate():
    unseen = {q for f in Q.FAMILIES.values() for q in f.held_out + f.validation}
    unseen |= {q for q, _ in Q.GENERAL_QUESTIONS}
    assert len(Q.DECISION_WORDINGS) >= 1000 and len(Q.DECISION_GATE_NEGATIVES) >= 300
    assert not unseen & set(Q.DECISION_WORDINGS) and not unseen & set(Q.DECISION_GATE_NEGATIVES)
    assert not set(Q.DECISION_WORDINGS) & set(Q.DECISION_GATE_NEGATIVES)
    assert set(Q.DECISION_WORDINGS.values()) == set(Q.PREDICATES)
    # The rule-based reading that evaluation and the grounding flag use agrees with every one whose
    # words name its predicate alone.
    for question, predicate in Q.DECISION_WORDINGS.items():
        assert Q.asked_predicate(question) in (predicate, None), question
    assert Q.DECISION_WORDINGS["Would you say the human is on their feet?"] == "standing"


def test_every_yes_no_training_wording_has_a_word_that_no_wording_false_of_the_label_has():
    """The decision pools a question's tokens by a soft maximum (nn/reader.py), so a wording reads
    as true of a label only by a word absent from every wording false of that label."""
    asked = {q: Q.YES_NO_PREDICATE[q] for q in Q.FAMILIES["yes_no"].trained} | Q.DECISION_WORDINGS

    def words(question):
        return set(question.lower().rstrip("?").split())

    for label in LABELS:
        false_words = set().union(*(words(q) for q, p in asked.items() if not Q.PREDICATES[p](label)))
        stuck = [q for q, p in asked.items() if Q.PREDICATES[p](label) and words(q) <= false_words]
        assert not stuck, (label, stuck[:5])


@pytest.mark.parametrize(
    ("question", "opens"),
    [("Is the person moving?", True), ("  are they sitting?", True), ("Would you say she is lying?", True),
     ("Can you tell if the person is seated?", True), ("How many legs does a dog have?", False),
     ("What is going on in this scene?", False), ("Island or city?", False)],
)  # fmt: skip
def test_a_yes_no_question_opens_with_an_auxiliary_verb(question, opens):
    assert Q.opens_as_yes_no(question) is opens


@pytest.mark.parametrize(
    ("family", "question", "label", "place", "answer"),
    [
        ("activity", "What is the person up to?", "walking upstairs", None,
         "The person is walking upstairs."),
        ("place", "Where are we?", "sitting", "cat", "The person is next to a cat."),
        ("activity_place", "Describe the scene.", "lying", "coffee",
         "The person is lying at a table with a cup of coffee."),
        ("yes_no", "Is the person moving?", "walking downstairs", None,
         "Yes, the person is walking downstairs."),
        ("yes_no", "Is the person lying down?", "sitting", None, "No, the person is sitting."),
        ("yes_no", "Is the person on the stairs?", "walking", None, "No, the person is walking."),
        ("activity_place", "Describe the scene.", "standing", "garage_2",
         "The person is standing at garage 2."),
        ("activity", "What is the person up to?", "walking upstairs", "cat",
         "The person is walking upstairs."),  # the default names no place here
    ],
)  # fmt: skip
def test_reference_answers(family, question, label, place, answer):
    assert Q.reference_answer(family, question, label, place) == answer


@pytest.mark.parametrize(
    ("family", "question", "label", "place", "answer"),
    [
        ("activity", "What is the person up to?", "walking upstairs", "cat",
         "The person is walking upstairs next to a cat."),
        ("yes_no", "Is the person moving?", "sitting", "rocket",
         "No, the person is sitting at a rocket launch pad."),
        ("place", "Where are we?", "sitting", "cat", "The person is next to a cat."),
        ("activity", "What is the person up to?", "lying", None, "The person is lying."),
    ],
)  # fmt: skip
def test_answers_that_name_the_place_everywhere(family, question, label, place, answer):
    assert Q.reference_answer(family, question, label, place, place_everywhere=True) == answer


def test_reference_answers_pass_their_own_scoring_rules():
    """Every trained answer is what evaluation scores as right (the two modules agree)."""
    places = ["coffee", "cat", "astronaut", "rocket", "motorcycle"]
    for label in LABELS:
        for place in places:
            for family in Q.FAMILY_NAMES:
                every = Q.wordings(family) + Q.wordings(family, held_out=True)
                for question in every + Q.wordings(family, validation=True):
                    answer = Q.reference_answer(family, question, label, place)
                    assert named_activities(answer, LABELS) == ([] if family == "place" else [label])
                    if Q.FAMILIES[family].needs_place:
                        assert named_places(answer, places) == [place]
                    if family == "yes_no":
                        assert yes_no(answer) == Q.yes_no_truth(question, label)


def test_place_families_need_a_frame_and_a_place():
    assert Q.families_for("cat", has_vision=True) == list(Q.FAMILY_NAMES)
    assert Q.families_for("cat", has_vision=False) == ["activity", "yes_no"]
    assert Q.families_for(None, has_vision=True) == ["activity", "yes_no"]
    with pytest.raises(ValueError, match="place"):
        Q.make_qa("sitting", None, has_vision=True, family="place")
    rng = random.Random(0)
    imu_only = [Q.make_qa("sitting", "cat", has_vision=False, rng=rng) for _ in range(200)]
    assert {qa.family for qa in imu_only} == {"activity", "yes_no"}
    # With place_everywhere every answer of a frame-using sample names the place; the IMU cannot know it.
    assert all("cat" in Q.make_qa("sitting", "cat", has_vision=True, rng=rng, place_everywhere=True).answer
               for _ in range(200))  # fmt: skip
    assert not any(
        "cat" in Q.make_qa("sitting", "cat", has_vision=False, rng=rng, place_everywhere=True).answer
        for _ in range(200)
    )


def test_training_draws_cover_families_wordings_and_balance_yes_no():
    rng = random.Random(0)
    draws = [Q.make_qa("lying", "rocket", has_vision=True, rng=rng) for _ in range(4000)]
    families = Counter(d.family for d in draws)
    assert set(families) == set(Q.FAMILY_NAMES) and min(families.values()) > 800
    asked = {d.question for d in draws}
    trained = {q for f in Q.FAMILY_NAMES for q in Q.wordings(f)}
    assert asked == trained  # every trained wording, no held-out one
    answers = Counter(yes_no(d.answer) for d in draws if d.family == "yes_no")
    # "lying" is the yes of only one of the five predicates; the draw still balances yes and no.
    assert abs(answers[True] - answers[False]) < 0.1 * sum(answers.values())


def test_evaluation_draws_are_deterministic_and_cycle_wordings():
    held = Q.wordings("activity", held_out=True)
    got = [
        Q.make_qa("sitting", None, has_vision=True, family="activity", held_out=True, index=i)
        for i in range(6)
    ]
    assert [g.question for g in got] == list(held) * 2
    assert Q.make_qa("sitting", "cat", has_vision=True).family == "activity_place"
    assert Q.make_qa("sitting", None, has_vision=True).family == "activity"


def test_scene_caption():
    assert Q.scene_caption("walking upstairs", "cat") == "walking upstairs cat"
    assert Q.scene_caption("sitting", "kitchen_table") == "sitting kitchen table"
    assert Q.scene_caption("lying", None) == "lying"


def test_every_yes_no_wording_reads_as_its_own_predicate_by_its_words():
    """asked_predicate must read the wordings stage 2 and evaluation use by their words alone, so
    that a user's own yes/no question is checked the same way."""
    for question, predicate in Q.YES_NO_PREDICATE.items():
        assert Q.asked_predicate(question) == predicate
        assert Q.asked_predicate(question.replace("the person", "she")) == predicate, question


@pytest.mark.parametrize(
    ("question", "predicate"),
    [
        ("Are they walking up the stairs?", "stairs"),
        ("Does the person lie on the floor?", "lying"),
        ("is anyone seated here", "sitting"),
        ("Can you tell me if the person is in motion?", "moving"),
        ("What is the person doing?", None),  # not a yes/no question
        ("Is it raining?", None),  # no predicate
        ("Is the person walking or sitting?", None),  # two predicates: not one yes/no
        ("Is the person not moving?", None),  # negated: a yes means the opposite
        ("Isn't she lying down?", None),
    ],
)
def test_asked_predicate_of_a_users_question(question, predicate):
    assert Q.asked_predicate(question) == predicate
