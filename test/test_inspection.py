"""fvp inspect: nearest vocabulary tokens of pseudo-tokens, checked on a text's own embeddings; the table;
one real run on a tiny demo bag with the shipped model; scenes received from the latents topic."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from frozen_vlm_perception.inspection import (
    Neighbour,
    TokenReport,
    TokenRow,
    VocabularyIndex,
    VocabularyStats,
    format_table,
    inspect_live,
    nearest_tokens,
    receive_latents,
    text_report,
)


@pytest.fixture(scope="module")
def index(language_model):
    return VocabularyIndex(language_model)


def test_a_texts_own_embeddings_are_their_own_nearest_tokens(language_model, index):
    text = "The person is walking upstairs."
    report = text_report(text, language_model, top_k=3, index=index)
    ids = language_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [row.neighbours[0].token_id for row in report.rows] == ids
    for row in report.rows:
        assert row.neighbours[0].cosine == pytest.approx(1.0, abs=1e-5)
        assert row.neighbours[0].text == row.own_text
        assert row.neighbours[1].cosine < row.neighbours[0].cosine
        assert index.vocabulary.min <= row.norm <= index.vocabulary.max
    # Decoded by the tokenizer: the byte-level "Ġwalking" reads " walking".
    assert " walking" in [row.own_text for row in report.rows]
    assert report.outside_norm_range == []
    # The scale for reading cosines: words have close neighbours, random directions do not.
    assert index.vocabulary.neighbour_cosine > 0.5 > 0.3 > index.vocabulary.random_cosine > 0

    vectors = language_model.embed_ids(torch.tensor(ids))
    plain = nearest_tokens(vectors, language_model, top_k=2, index=index)
    assert [pairs[0][0] for pairs in plain] == [row.own_text for row in report.rows]
    assert all(len(pairs) == 2 and pairs[0][1] == pytest.approx(1.0, abs=1e-5) for pairs in plain)


def test_scaling_changes_the_norm_not_the_cosines(language_model, index):
    ids = language_model.tokenizer(" walking", add_special_tokens=False)["input_ids"]
    vector = language_model.embed_ids(torch.tensor(ids))
    report = index.report(10.0 * vector, top_k=1)
    assert report.rows[0].neighbours[0].text == " walking"
    assert report.rows[0].neighbours[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert report.outside_norm_range == [0]
    with pytest.raises(ValueError, match="shape"):
        index.report(torch.zeros(2, 7))


def test_table_has_a_row_per_token_with_visible_spaces():
    vocabulary = VocabularyStats(size=100, median=3.0, p01=2.0, p99=5.0, min=1.5, max=7.5)
    rows = [
        TokenRow(0, 16.5, 5.5, (Neighbour(1, " walking", 0.181), Neighbour(2, "stairs", 0.12))),
        TokenRow(1, 3.0, 1.0, (Neighbour(3, "\n", 0.5), Neighbour(1, " walking", 0.25))),
    ]
    table = format_table(TokenReport(rows=rows, vocabulary=vocabulary, mutual_cosine=0.9))
    lines = table.splitlines()
    assert lines[0].startswith("vocabulary: 100 token embeddings, norm median 3.000")
    assert lines[1].split()[:3] == ["#", "norm", "x"]
    row0, row1 = lines[2], lines[3]
    assert row0.split()[:3] == ["0", "16.500", "5.50x*"]
    assert "' walking' 0.181" in row0 and "'stairs' 0.120" in row0
    assert row1.split()[:3] == ["1", "3.000", "1.00x"] and "'\\n' 0.500" in row1
    assert "1 of 2 norms lie outside the vocabulary's range" in table
    assert "mean cosine between these 2 pseudo-tokens: 0.900" in table
    assert not format_table(TokenReport(rows, vocabulary), with_vocabulary=False).startswith("vocabulary")


@pytest.mark.slow
def test_fvp_inspect_on_a_tiny_demo_bag(tmp_path, torch_threads, capsys):
    from frozen_vlm_perception.cli import main
    from frozen_vlm_perception.data.demo_bag import make_demo_bag

    bag = tmp_path / "bag"
    make_demo_bag(bag, split="test", seconds_per_segment=2, camera_rate_hz=2, max_subjects=1, max_segments=3)
    out = tmp_path / "inspect.json"
    question = "Is the person moving?"
    code = main(
        ["inspect", "--bag", str(bag), "--scenes", "2", "--top-k", "3", "--device", "cpu", "--json", str(out),
         "--question", question]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result["source"] == "bag" and result["mode"] == "fused" and result["top_k"] == 3
    scenes = result["scenes"]
    assert len(scenes) == 2 and scenes[0]["stamp"] < scenes[1]["stamp"]
    labels = ("walking", "walking upstairs", "walking downstairs", "sitting", "standing", "lying")
    for scene in scenes:
        assert scene["truth_label"] in labels and scene["place"]
        assert scene["head_label"] in labels and scene["source"] == "fused"
        assert len(scene["tokens"]) == 8  # models/demo: 8 resampler latents
        for token in scene["tokens"]:
            assert len(token["nearest"]) == 3 and token["norm"] > 0
            cosines = [n["cosine"] for n in token["nearest"]]
            assert cosines == sorted(cosines, reverse=True) and -1 <= cosines[-1] <= cosines[0] <= 1
    assert printed.count("\nscene ") == 2 and "truth: " in printed and "head: " in printed
    assert printed.count("vocabulary: 49152 token embeddings") == 1
    # --question: each scene's answer, and the 4 tokens models/demo's question reader writes for it.
    assert printed.count(f"question: {question}") == 2 and printed.count("question reader's 4 tokens") == 2
    for scene in scenes:
        assert scene["question"] == question and scene["answer"].startswith(("Yes", "No"))
        assert f"answer: {scene['answer']}" in printed
        reader = scene["reader"]["tokens"]
        assert len(reader) == 4 and all(len(token["nearest"]) == 3 for token in reader)
        # ... and what the reader decided, which the answer's first word follows.
        assert scene["decision"].startswith("yes/no question (gate ") and scene["decision"] in printed
        said = scene["decision"].split("): ")[1].split(" ")[0]
        assert scene["answer"].lower().startswith(said), (scene["decision"], scene["answer"])
    assert main(["inspect", "--text", "hello", "--question", question]) == 1
    assert "--question needs --bag or --live" in capsys.readouterr().err

    code = main(["inspect", "--bag", str(bag), "--index", "100000", "--device", "cpu"])
    assert code == 1 and "the bag ends before --index 100000" in capsys.readouterr().err


def test_live_reads_scene_latents_like_the_reasoning_node(ros_env, language_model, index, capsys):
    import rclpy
    from rclpy.node import Node

    from frozen_vlm_perception.cli import main
    from frozen_vlm_perception.conversions import to_time_msg
    from frozen_vlm_perception.paths import default_model_dir
    from frozen_vlm_perception.pipeline import PerceptionPipeline
    from frozen_vlm_perception_interfaces.msg import ActivityLabel, SceneLatents

    code = main(["inspect", "--live", "--timeout", "0.5", "--latents-topic", "/nobody/latents"])
    assert code == 2 and "no SceneLatents on /nobody/latents within 0.5 s" in capsys.readouterr().err

    ids = language_model.tokenizer(" sitting standing", add_special_tokens=False)["input_ids"]
    latents = (3.0 * language_model.embed_ids(torch.tensor(ids))).numpy()  # (2, 576)
    context = rclpy.Context()
    rclpy.init(context=context)
    stop = threading.Event()
    node = Node("fake_perception", context=context)
    pub_latents = node.create_publisher(SceneLatents, "/test_inspect/latents", 10)
    pub_activity = node.create_publisher(ActivityLabel, "/test_inspect/activity", 10)

    def publish() -> None:
        stamp = 100
        while not stop.is_set():
            stamp += 1
            header_stamp = to_time_msg(float(stamp))
            pub_activity.publish(
                ActivityLabel(header=_header(header_stamp), label="sitting", confidence=0.75)
            )
            pub_latents.publish(
                SceneLatents(
                    header=_header(header_stamp),
                    num_latents=2,
                    dim=576,
                    data=latents.reshape(-1).tolist(),
                    modalities=["vision", "imu"],
                )
            )
            time.sleep(0.1)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        received = receive_latents(
            2, timeout=30, latents_topic="/test_inspect/latents", activity_topic="/test_inspect/activity"
        )
    finally:
        stop.set()
        thread.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown(context=context)
    assert len(received) == 2 and received[0].stamp < received[1].stamp
    np.testing.assert_array_equal(received[0].latents, latents)
    assert received[0].modalities == ("vision", "imu")
    assert any(item.activity == ("sitting", 0.75) for item in received)

    pipeline = PerceptionPipeline.from_model_dir(
        default_model_dir(), device="cpu", load_language=False, load_vision=False
    )
    pipeline.language = language_model
    scenes = inspect_live(pipeline, received, top_k=2, index=index)
    first = scenes[0].report.rows
    assert [row.neighbours[0].text for row in first] == [" sitting", " standing"]
    assert all(row.neighbours[0].cosine == pytest.approx(1.0, abs=1e-5) for row in first)
    assert scenes[0].source == "fused" and scenes[0].head_label in pipeline.config.labels


def _header(stamp):
    from std_msgs.msg import Header

    return Header(stamp=stamp, frame_id="camera")
