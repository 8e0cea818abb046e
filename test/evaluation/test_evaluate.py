"""evaluate(): the offline report (no ROS) against an independent recount through the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frozen_vlm_perception.config import SyncConfig
from frozen_vlm_perception.data.bags import ACTIVITY_TOPIC, PLACE_TOPIC, read_paired_samples
from frozen_vlm_perception.data.config import DataConfig
from frozen_vlm_perception.nn.language import Generation

MODEL = "models/demo"  # trained: the three modes and the fusion weights really disagree on some frames


class ScriptedLanguage:
    """Stands in for the frozen LM: every answer names one place (``key``), so the place family's
    accuracy is the share of asked scenes that are at that place."""

    hidden_size = 576

    def __init__(self, key: str):
        self.answer = f"The person is walking next to the {key.replace('_', ' ')}."

    def _one(self) -> Generation:
        return Generation(text=self.answer, num_tokens=8, seconds=0.0, stopped_early=False, reason="eos")

    def generate(self, scene, question, **kwargs) -> Generation:
        return self._one()

    def generate_batch(self, scenes, question, **kwargs) -> list[Generation]:
        return [self._one() for _ in range(len(scenes))]

    def first_token_id(self, text):
        """The decided first word's token (models/demo's reader decides yes/no); ignored by the script."""
        return 0

    def question_embeddings(self, questions):
        """What a model's question reader reads (one zero token each): its answers are scripted anyway."""
        import torch

        count = len(questions)
        return torch.zeros(count, 1, self.hidden_size), torch.ones(count, 1, dtype=torch.bool)


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    from frozen_vlm_perception.data.demo_bag import make_demo_bag

    bag = tmp_path_factory.mktemp("eval") / "bag"
    make_demo_bag(bag, split="test", seconds_per_segment=4, camera_rate_hz=1, max_subjects=1, max_segments=6)
    return bag


@pytest.fixture(scope="module")
def recount(small_bag, torch_threads):
    """Per labelled frame with an IMU window, in bag order: (label index, place, prediction per mode
    and per alpha), from the pipeline's own encode() on the bag's raw frames and windows."""
    from frozen_vlm_perception.pipeline import PerceptionPipeline

    pipeline = PerceptionPipeline.from_model_dir(MODEL, device="cpu", load_language=False)
    labels = list(pipeline.config.labels)
    kept = [
        sample
        for sample in read_paired_samples(
            small_bag,
            label_topic=ACTIVITY_TOPIC,
            place_topic=PLACE_TOPIC,
            imu_config=pipeline.config.imu,
            sync_config=SyncConfig(),
        )  # fmt: skip
        if sample.imu_window is not None and sample.label in labels
    ]
    frames = [s.frame for s in kept]
    windows = [s.imu_window.data for s in kept]
    runs = {mode: {"mode": mode} for mode in ("vision", "imu", "fused")}
    runs.update({alpha: {"mode": "fused", "alpha": alpha} for alpha in (0.0, 1.0)})
    predicted = {
        key: [int(np.argmax(scene.scores)) for scene in pipeline.encode(frames, windows, **kwargs)]
        for key, kwargs in runs.items()
    }
    rows = [
        (labels.index(s.label), s.place, {key: predicted[key][i] for key in runs}) for i, s in enumerate(kept)
    ]
    return pipeline.config, rows


def own_macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the labels seen in truth or prediction of 2 TP / (#true + #predicted)."""
    scores = []
    for label in sorted(set(true.tolist()) | set(pred.tolist())):
        hits = int(np.sum((true == label) & (pred == label)))
        scores.append(2 * hits / (int(np.sum(true == label)) + int(np.sum(pred == label))))
    return float(np.mean(scores))


def run_evaluate(small_bag, tmp_path, **kwargs):
    from frozen_vlm_perception.evaluation.evaluate import evaluate

    data = DataConfig(bag=str(small_bag), cache_dir=str(tmp_path / "cache"), **kwargs.pop("data", {}))
    options = dict(qa_samples=0, latency_frames=0, tsne_samples=0, progress=False, device="cpu")
    return evaluate(data=data, model_dir=MODEL, out_dir=tmp_path / "report", **{**options, **kwargs})


def test_evaluate_counts_what_the_pipeline_predicts(small_bag, recount, tmp_path, monkeypatch):
    config, rows = recount
    target = np.array([label for label, _, _ in rows])
    places = [place for _, place, _ in rows]
    assert len(rows) >= 15 and len(set(target)) >= 3 and len(set(places)) >= 3

    # QA through a scripted LM that always names the place of the first asked scene.
    qa_samples = 8
    picks = np.unique(np.linspace(0, len(rows) - 1, num=qa_samples).round().astype(int))
    key = places[picks[0]]
    monkeypatch.setattr("frozen_vlm_perception.pipeline._load_language", lambda *a: ScriptedLanguage(key))
    report = run_evaluate(small_bag, tmp_path, qa_samples=qa_samples)

    assert report["n_samples"] == len(rows)
    for mode in ("vision", "imu", "fused"):
        predicted = np.array([p[mode] for _, _, p in rows])
        assert report["accuracy"][mode] == pytest.approx(float(np.mean(predicted == target)), abs=1e-9), mode
        assert report["macro_f1"][mode] == pytest.approx(own_macro_f1(target, predicted), abs=1e-9), mode
    fused = [p["fused"] for _, _, p in rows]
    confusion = np.zeros((len(config.labels),) * 2, dtype=int)
    for true, pred in zip(target, fused, strict=True):
        confusion[true, pred] += 1
    assert report["confusion_fused"] == confusion.tolist()
    modes = {m: [p[m] for _, _, p in rows] for m in ("vision", "imu", "fused")}
    assert len({tuple(v) for v in modes.values()}) > 1  # the modes disagree: the check can tell them apart
    assert report["chance_accuracy"] == pytest.approx(np.bincount(target).max() / len(target))

    # The alpha sweep: alpha = the model's value is the plain fused run; the ends match a recount.
    sweep = {entry["alpha"]: entry["accuracy"] for entry in report["alpha_sweep"]}
    assert sorted(sweep) == pytest.approx([round(a, 2) for a in np.linspace(0, 1, 11)])
    assert sweep[round(config.fusion.alpha, 2)] == report["accuracy"]["fused"]
    for alpha in (0.0, 1.0):
        predicted = np.array([p[alpha] for _, _, p in rows])
        assert sweep[alpha] == pytest.approx(float(np.mean(predicted == target)), abs=1e-9), alpha
    assert len(set(sweep.values())) > 1

    # Place scoring: every answer names ``key``: right exactly for the asked scenes at ``key``.
    qa = report["qa"]
    assert qa["n_scenes"] == len(picks)
    asked = [places[i] for i in picks if places[i]]
    for kind in ("trained", "held_out"):
        cell = qa["place"][kind]["all"]
        assert cell["n"] == len(asked)
        assert cell["correct"] == sum(place == key for place in asked)
    assert 0 < qa["place"]["trained"]["all"]["correct"] < len(asked)
    # Activity: the scripted answer names "walking": right exactly for the asked scenes that are walking.
    walking = sum(config.labels[target[i]] == "walking" for i in picks)
    assert qa["activity"]["trained"]["all"]["correct"] == walking
    assert (tmp_path / "report" / "report.json").is_file()

    # Every answer is kept, one JSON line each, and the per-wording table adds up to the same counts.
    lines = (tmp_path / "report" / "qa_answers.jsonl").read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    assert len(answers) == qa["n_answers"]
    place_rows = [a for a in answers if a["family"] == "place"]
    assert len(place_rows) == 2 * len(asked)
    assert all(a["correct"] == (a["place"] == key) and a["answer"] for a in place_rows)
    by_wording = qa["place"]["by_wording"]
    assert {w["question"] for w in by_wording} == {a["question"] for a in place_rows}
    for w in by_wording:
        mine = [a for a in place_rows if a["question"] == w["question"]]
        assert w["all"]["n"] == len(mine) and w["held_out"] == mine[0]["held_out"]
        assert w["all"]["correct"] == sum(a["place"] == key for a in mine), w["question"]
    for kind, held_out in (("trained", False), ("held_out", True)):
        mine = [w for w in by_wording if w["held_out"] == held_out]
        assert sum(w["all"]["correct"] for w in mine) == qa["place"][kind]["all"]["correct"]


def test_evaluate_refuses_a_bag_without_imu_windows(small_bag, tmp_path):
    with pytest.raises(ValueError, match="no labelled sample with an IMU window"):
        run_evaluate(small_bag, tmp_path, data={"imu_topic": "/no/such/imu"})
