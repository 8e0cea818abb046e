"""Question answering you can trust (evaluation/qa.py): the scoring of every family with real answer
strings, the settled-scene rule, and a real `evaluate_qa` run on a small bag with the untrained model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from frozen_vlm_perception.config import DEFAULT_ACTIVITY_LABELS
from frozen_vlm_perception.evaluation.qa import (
    LabelTimeline,
    general_correct,
    pick_wording,
    place_keys_for,
    read_label_timeline,
    record,
    score_answer,
    summarize,
    timeline_from_events,
    timeline_from_intervals,
)
from frozen_vlm_perception.questions import FAMILY_NAMES, GENERAL_QUESTIONS, wordings, yes_no_truth

LABELS = DEFAULT_ACTIVITY_LABELS
PLACES = place_keys_for([])


def score(family, question, answer, label, place=None, head=None):
    return score_answer(
        family, question, answer, label=label, place=place, labels=LABELS, place_keys=PLACES, head_label=head
    )


# --------------------------------------------------------------------------------------------------
# One answer


@pytest.mark.parametrize(
    ("answer", "label", "correct"),
    [
        ("The person is walking upstairs.", "walking upstairs", True),
        ("The person is walking.", "walking upstairs", False),  # names walking, not walking upstairs
        ("The person is walking upstairs.", "walking", False),  # the longer label is what it names
        ("Walking, by a cat.", "walking", True),
        ("Walking or sitting.", "walking", False),  # two activities: not exactly the truth
        ("I cannot tell from here.", "sitting", False),
        ("The person is SITTING.", "sitting", True),
    ],
)
def test_activity_family(answer, label, correct):
    assert score("activity", "What is the person doing?", answer, label).correct is correct


@pytest.mark.parametrize(
    ("answer", "place", "correct"),
    [
        ("The person is next to a cat.", "cat", True),
        ("The person is at a table with a cup of coffee.", "coffee", True),
        ("The person is next to a cat.", "coffee", False),
        ("Next to a cat and a cup of coffee.", "cat", False),  # two places
        ("The person is at the park.", "cat", False),
    ],
)
def test_place_family(answer, place, correct):
    assert score("place", "Where is the person?", answer, "sitting", place).correct is correct


def test_activity_place_family_needs_both():
    def right(answer: str, place: str) -> bool:
        return score("activity_place", "Describe the scene.", answer, "walking upstairs", place).correct

    assert right("The person is walking upstairs next to a cat.", "cat")
    assert not right("The person is walking next to a cat.", "cat")
    assert not right("The person is walking upstairs.", "cat")
    assert not right("The person is walking upstairs next to a cat.", "rocket")


@pytest.mark.parametrize(
    ("question", "answer", "label", "correct"),
    [
        ("Is the person moving?", "Yes, the person is sitting.", "sitting", False),
        ("Is the person moving?", "No, the person is sitting.", "sitting", True),
        ("Is the person moving?", "Yes, the person is walking.", "walking downstairs", True),
        ("Is the person on the stairs?", "Yes, the person is walking upstairs.", "walking upstairs", True),
        ("Is the person lying down?", "No.", "lying", False),
        ("Is the person sitting?", "The person is sitting.", "sitting", False),  # neither yes nor no
        ("Is the person using the stairs?", "no, they are standing", "standing", True),
    ],
)
def test_yes_no_family(question, answer, label, correct):
    assert score("yes_no", question, answer, label).correct is correct


def test_names_absent():
    # invented scenery, although the activity is right
    park = score(
        "activity", "What is the person doing?", "The person is walking to a park.", "walking", "cat"
    )
    assert park.correct and park.names_absent and park.invented == ("park",)
    # another activity, another place
    assert score("activity", "What is the person doing?", "Walking or sitting.", "walking").names_absent
    assert score("place", "Where is the person?", "Next to a rocket.", "walking", "cat").names_absent
    # all true: nothing absent
    both = score(
        "activity_place", "Describe the scene.", "The person is sitting next to a cat.", "sitting", "cat"
    )
    assert both.correct and not both.names_absent

    # yes/no: an asserted absent activity counts; one the question names, denied, does not; scenery does not
    def absent(question: str, answer: str, label: str) -> bool:
        return score("yes_no", question, answer, label).names_absent

    assert absent("Is the person sitting?", "Yes, the person is sitting.", "standing")
    assert not absent("Is the person sitting?", "No, the person is not sitting.", "standing")
    assert absent("Is the person sitting?", "No, the person is lying.", "standing")
    assert not absent("Is the person moving?", "Yes, walking down the street.", "walking")


def test_agrees_with_head():
    def agrees(answer: str, label: str, head: str | None) -> bool | None:
        return score("activity", "What is the person doing?", answer, label, head=head).agrees_with_head

    assert agrees("The person is walking.", "sitting", "walking") is True  # the head, not the truth
    assert agrees("The person is walking.", "walking", "sitting") is False
    assert agrees("I do not know.", "walking", "walking") is None  # names no activity
    assert agrees("The person is walking.", "walking", None) is None  # no head label known


def test_general_answers_count_by_whole_accepted_words():
    accepted = dict(GENERAL_QUESTIONS)
    assert general_correct("The capital of France is Paris.", accepted["What is the capital of France?"])
    assert general_correct("2 plus 3 is 5.", accepted["What is 2 plus 3?"])
    assert general_correct("FIVE", accepted["What is 2 plus 3?"])
    assert not general_correct("It is 55.", accepted["What is 2 plus 3?"])
    assert not general_correct("Parisian food.", accepted["What is the capital of France?"])


def test_wordings_cycle_and_yes_no_alternates_truth():
    for family in FAMILY_NAMES:
        for held_out in (False, True):
            asked = {pick_wording(family, held_out=held_out, index=i, label=label)
                     for i in range(24) for label in LABELS}  # fmt: skip
            assert asked == set(wordings(family, held_out=held_out)), (family, held_out)
    for i in range(8):
        question = pick_wording("yes_no", held_out=False, index=i, label="sitting")
        assert yes_no_truth(question, "sitting") is (i % 2 == 0)


def test_summary_tables_and_shares_add_up():
    def row(family: str, question: str, answer: str, held_out: bool, settled: bool) -> dict:
        return record(
            family, question, answer, held_out=held_out, label="walking", place="cat", settled=settled,
            labels=LABELS, place_keys=PLACES, head_label="walking",
        )  # fmt: skip

    rows = [
        row("activity", "What is the person doing?", "The person is walking.", False, True),
        row("activity", "What activity do you perceive?", "Walking in the park.", True, True),
        row("activity", "What is the person doing?", "The person is sitting.", False, False),
        row("yes_no", "Is the person moving?", "No.", False, True),
    ]
    qa = summarize(rows)
    activity = qa["activity"]
    assert activity["trained"]["settled"] == {"accuracy": 1.0, "correct": 1, "n": 1}
    assert activity["trained"]["all"] == {"accuracy": 0.5, "correct": 1, "n": 2}
    assert activity["held_out"]["all"] == {"accuracy": 1.0, "correct": 1, "n": 1}
    assert qa["accuracy"] == 1.0  # activity, trained wordings, settled scenes
    assert qa["yes_no"]["trained"]["all"]["correct"] == 0 and qa["yes_no"]["truth_yes_share"] == 1.0
    assert math.isnan(qa["place"]["trained"]["all"]["accuracy"]) and qa["place"]["trained"]["all"]["n"] == 0
    assert qa["names_absent"]["count"] == 2 and qa["names_absent"]["n"] == 4  # the park; sitting
    assert qa["names_absent"]["settled"] == {"accuracy": 1 / 3, "correct": 1, "n": 3}  # the park
    assert qa["agrees_with_head"]["n"] == 3 and qa["agrees_with_head"]["agree"] == 2  # "No." names none


# --------------------------------------------------------------------------------------------------
# Settled scenes


def test_settled_rule_on_a_hand_made_timeline():
    # walking messages at 0..3 s, sitting at 4..7 s, a gap, walking again at 12 and 13 s; tolerance 2 s
    events = [(float(t), "walking") for t in range(4)] + [(float(t), "sitting") for t in range(4, 8)]
    events += [(12.0, "walking"), (13.0, "walking")]
    timeline = timeline_from_events(events, tolerance_s=2.0)
    changes = ((0.0, "walking"), (4.0, "sitting"), (9.0, None), (12.0, "walking"), (15.0, None))
    assert timeline == LabelTimeline(*zip(*changes, strict=True))
    window = 2.56
    assert timeline.settled(3.9, window)  # walking since 0
    assert not timeline.settled(5.0, window)  # the window starts in walking
    assert timeline.settled(6.56, window)  # exactly one window into sitting
    assert timeline.settled(8.9, window)  # sitting until its label lapses at 9
    assert not timeline.settled(10.0, window)  # no label
    assert not timeline.settled(13.5, window)  # the window starts in the gap
    assert not timeline.settled(1.0, window)  # the window starts before any label
    assert timeline.at(10.0) is None and timeline.at(12.5) == "walking"
    mask = timeline.settled_mask([3.9, 5.0, 6.56], window)
    assert mask.tolist() == [True, False, True]


def test_settled_rule_from_csv_intervals():
    from frozen_vlm_perception.data.bags import LabelInterval

    timeline = timeline_from_intervals(
        [LabelInterval(0, 4, "walking"), LabelInterval(4, 8, "sitting"), LabelInterval(10, 12, "walking")]
    )
    assert timeline.at(9.0) is None and timeline.at(8.0) is None and timeline.at(11.0) == "walking"
    assert timeline.settled(7.0, 2.56) and not timeline.settled(5.0, 2.56)
    assert timeline.settled(11.5, 1.0) and not timeline.settled(10.5, 1.0) and not timeline.settled(12.5, 0.1)


def test_timeline_read_from_a_bag_label_topic_and_a_csv(tmp_path):
    from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, BagWriter
    from frozen_vlm_perception.data.config import DataConfig

    epoch = 1_700_000_000 * 10**9
    labels = ["walking"] * 4 + ["sitting"] * 4
    with BagWriter(tmp_path / "bag") as writer:
        for second, label in enumerate(labels):
            writer.write_activity(ACTIVITY_TOPIC, epoch + second * 10**9, label)
    timeline = read_label_timeline(DataConfig(bag=str(tmp_path / "bag")))
    t0 = epoch / 1e9
    assert timeline.at(t0 + 3.5) == "walking" and timeline.at(t0 + 4.5) == "sitting"
    assert timeline.settled(t0 + 3.5, 2.56) and not timeline.settled(t0 + 5.5, 2.56)
    assert timeline.settled(t0 + 6.6, 2.56)

    csv = tmp_path / "labels.csv"
    csv.write_text("start,end,label\n0,4,walking\n4,8,sitting\n")
    timeline = read_label_timeline(DataConfig(bag=str(tmp_path / "bag"), label_topic="", labels_csv=str(csv)))
    assert timeline.settled(7.0, 2.56) and not timeline.settled(5.0, 2.56)


# --------------------------------------------------------------------------------------------------
# A real run


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    from frozen_vlm_perception.data.demo_bag import make_small_bag

    path = tmp_path_factory.mktemp("qa_bag") / "bag"
    make_small_bag(path, seconds=8.0, num_segments=2, camera_rate_hz=4.0, image_width=32, image_height=24)
    return path


def test_evaluate_qa_on_a_small_bag(small_bag, model_dir, tmp_path):
    """The untrained model's answers (nonsense, but real): every key, and the counts add up."""
    from frozen_vlm_perception.data.config import DataConfig
    from frozen_vlm_perception.data.demo_bag import read_demo_manifest
    from frozen_vlm_perception.data.embeddings import load_embeddings
    from frozen_vlm_perception.evaluation.qa import RULES, evaluate_qa
    from frozen_vlm_perception.evaluation.report import qa_markdown
    from frozen_vlm_perception.evaluation.scene_outputs import run_scene_model
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    pipeline = PerceptionPipeline.from_model_dir(model_dir, device="cpu")
    config = pipeline.config
    data = DataConfig(bag=str(small_bag), cache_dir=str(tmp_path / "cache"))
    embeddings = load_embeddings(
        small_bag, data=data, vision=config.vision, imu=config.imu, encoder_factory=lambda: pipeline.vision,
        progress=False,
    )  # fmt: skip
    labels = embeddings.labels_for(config.labels)
    keep = np.flatnonzero(((labels >= 0) & embeddings.has_imu).numpy())
    samples, target = embeddings.subset(keep), labels[keep].numpy()
    head = run_scene_model(pipeline, samples, "fused")["logits"].argmax(1).numpy()

    # The settled rule against the recording's own segments: one window past the segment start.
    settled = read_label_timeline(data).settled_mask(samples.stamps.tolist(), config.imu.window_s)
    manifest = read_demo_manifest(small_bag)
    starts = [s["start_ns"] // 10**9 + (s["start_ns"] % 10**9) * 1e-9 for s in manifest["segments"]]
    expected = [
        t - max(s for s in starts if s <= t) >= config.imu.window_s - 1e-6 for t in samples.stamps.tolist()
    ]
    assert settled.tolist() == expected and 0 < settled.sum() < len(samples)

    general = GENERAL_QUESTIONS[:2]
    qa = evaluate_qa(
        pipeline, samples, target, head, 2, settled, max_new_tokens=4, general_scenes=1,
        general_questions=general, examples_per_family=2,
    )  # fmt: skip
    json.dumps(qa)  # JSON-able as it stands
    assert set(FAMILY_NAMES) | {"accuracy", "agrees_with_head", "names_absent", "general", "rules"} <= set(qa)
    assert qa["n_scenes"] == 2 and 0 <= qa["n_settled"] <= 2
    total = 0
    for family in FAMILY_NAMES:
        for kind in ("trained", "held_out"):
            cell = qa[family][kind]
            assert cell["all"]["n"] == 2  # every scene of the demo bag has a place: all four families
            assert cell["settled"]["n"] == qa["n_settled"]
            for part in ("all", "settled"):
                assert 0 <= cell[part]["correct"] <= cell[part]["n"]
            total += cell["all"]["n"]
    assert qa["n_answers"] == total == 2 * 4 * 2
    assert qa["names_absent"]["n"] == total
    assert sum(c["n"] for c in qa["names_absent"]["by_family"].values()) == total
    assert sum(c["correct"] for c in qa["names_absent"]["by_family"].values()) == qa["names_absent"]["count"]
    assert 0 <= qa["agrees_with_head"]["n"] <= total
    assert qa["general"]["no_scene"]["n"] == len(general) == len(qa["general"]["answers"])
    assert qa["general"]["with_scene"]["n"] == len(general)
    assert qa["general"]["with_scene"]["scenes"] == 1
    accuracy, settled_cell = qa["accuracy"], qa["activity"]["trained"]["settled"]
    assert accuracy == settled_cell["accuracy"] or (math.isnan(accuracy) and settled_cell["n"] == 0)
    assert qa["rules"] == RULES and qa["seconds_per_answer"] > 0
    assert set(qa["examples"]) == set(FAMILY_NAMES) and all(len(v) == 2 for v in qa["examples"].values())

    text = "\n".join(qa_markdown(qa))
    assert "Scoring rules" in text and "General-knowledge" in text
    assert all(f"**{family}**" in text for family in FAMILY_NAMES)


def test_flag_shares_count_wrong_answers_caught_and_right_answers_flagged():
    """``flagged`` is the reasoning node's grounding check on the head's probabilities; the summary
    says how many wrong answers it catches and how many right ones it flags by mistake."""
    sure_walking = [0.95 if label == "walking" else 0.01 for label in LABELS]

    def row(family: str, question: str, answer: str, probs) -> dict:
        return record(
            family, question, answer, held_out=False, label="walking", place="cat", settled=True,
            labels=LABELS, place_keys=PLACES, head_label="walking", head_probabilities=probs,
        )  # fmt: skip

    rows = [
        row("yes_no", "Is the person moving?", "No, the person is walking.", sure_walking),  # wrong, caught
        row("yes_no", "Is the person moving?", "Yes, the person is walking.", sure_walking),  # right
        row("activity", "What is the person doing?", "The person is sitting.", sure_walking),  # wrong, caught
        row("activity", "What is the person doing?", "The person is walking.", sure_walking),  # right
        row("activity", "What is the person doing?", "The person is walking.", None),  # not checked
    ]
    assert [r["flagged"] for r in rows] == [True, False, True, False, None]
    flagged = summarize(rows)["flagged"]
    assert flagged["wrong"] == {"accuracy": 1.0, "correct": 2, "n": 2}
    assert flagged["right"] == {"accuracy": 0.0, "correct": 0, "n": 2}
    by_family = flagged["by_family"]
    assert by_family["yes_no"]["wrong"]["n"] == 1 and by_family["place"]["wrong"]["n"] == 0
    assert "flagged" not in summarize(rows[-1:])
