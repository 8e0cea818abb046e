"""`fvp eval --through-ros`: a real bag played into the real nodes (own processes), labels scored."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frozen_vlm_perception.evaluation.through_ros import Observed, Truth, evaluate_through_ros, score
from frozen_vlm_perception.nodes.common import DEFAULT_MODEL_DIR, resolve_model_dir
from frozen_vlm_perception.training.config import DataConfig

LABELS = ("walking", "standing", "sitting")


def test_score_counts_matches_misses_and_strays():
    truth = Truth(
        stamps_ns=np.array([0, 10**8, 2 * 10**8]),
        activity=["walking", "standing", None],
        place=[None, None, None],
    )
    seen = Observed()
    seen.frames = {0: 1.0, 10**8: 2.0, 2 * 10**8: 3.0}
    seen.labels = {
        0: ("walking", "fused", 1.05),  # right
        10**8 + 500: ("sitting", "vision", 2.2),  # wrong; stamp within the 1 ms tolerance
        2 * 10**8: ("walking", "fused", 3.1),  # no truth at this frame: not scored
        5 * 10**8: ("walking", "fused", 4.0),  # no such frame
    }
    seen.diagnostics = {"perception: perception": {"drop:superseded": "7", "state": "active"}}
    section = score(truth, seen, [], published=3, labels=LABELS)
    assert section["n_scored"] == 2 and section["accuracy"] == 0.5
    assert section["accuracy_by_source"] == {"fused": 1.0, "vision": 0.0}
    assert section["labels_not_matching_a_frame"] == 1
    assert section["node_drops"] == {"drop:superseded": 7}
    assert section["latency_ms"]["n"] == 2  # the stray stamps have no frame received here
    assert math.isnan(section["qa"]["accuracy"])


@pytest.mark.slow
def test_bag_played_into_the_nodes_is_scored(tmp_path, ros_env):
    from frozen_vlm_perception.data.demo_bag import make_small_bag

    bag = tmp_path / "bag"
    make_small_bag(bag, seconds=10.0, num_segments=2, camera_rate_hz=10.0, image_width=96, image_height=72)
    section = evaluate_through_ros(
        data=DataConfig(bag=str(bag)),
        model_dir=resolve_model_dir(DEFAULT_MODEL_DIR),
        device="cpu",
        questions=1,
        log=lambda line: None,
    )
    assert section["frames_published"] == section["frames_in_bag"] > 0
    assert section["labels_received"] > 0.3 * section["frames_published"]
    assert section["n_scored"] > 0 and 0.0 <= section["accuracy"] <= 1.0
    assert section["labels_not_matching_a_frame"] == 0  # every label carries a played frame's stamp
    assert section["latency_ms"]["n"] > 0
    assert section["qa"]["asked"] >= 1 and section["qa"]["answered"] >= 1
