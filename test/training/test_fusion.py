"""The fusion weight chosen by data: the alpha sweep on validation samples, and a learned gate that
trusts the IMU when the camera says nothing."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_recordings import tiny_data_config, write_tiny_bag

from frozen_vlm_perception.checkpoint import read_checkpoint_config
from frozen_vlm_perception.data.embeddings import load_embeddings
from frozen_vlm_perception.nn.fusion import ALPHA_GRID
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.pipeline import PerceptionPipeline
from frozen_vlm_perception.training.config import AdapterTrainConfig
from frozen_vlm_perception.training.fusion import CHOOSABLE_ALPHAS, best_alpha, choose_fusion, refit_fusion


def row(alpha, accuracy, ce):
    return {"alpha": alpha, "accuracy": accuracy, "ce": ce}


def test_best_alpha_takes_the_top_accuracy_and_breaks_ties_by_cross_entropy():
    assert best_alpha([row(0.0, 0.80, 0.5), row(0.5, 0.90, 0.9), row(1.0, 0.70, 0.1)]) == 0.5
    assert best_alpha([row(0.0, 0.90, 0.5), row(0.5, 0.9001, 0.3), row(1.0, 0.90, 0.4)]) == 0.5
    assert best_alpha([row(0.2, 0.95, 0.2), row(0.3, 0.95, 0.25)]) == 0.2


def test_best_alpha_never_takes_a_sensor_out_of_the_answers():
    """Alpha 0 hides the camera from the language model (no answer can name the place), alpha 1 the
    IMU: neither is chosen, however well it scores on labels."""
    assert CHOOSABLE_ALPHAS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    sweep = [row(0.0, 0.95, 0.1), row(0.1, 0.90, 0.2), row(0.9, 0.89, 0.1), row(1.0, 0.99, 0.0)]
    assert best_alpha(sweep) == 0.1
    with pytest.raises(ValueError, match="none of the choosable alphas"):
        best_alpha([row(0.0, 0.95, 0.1), row(1.0, 0.99, 0.0)])


@pytest.fixture(scope="module")
def val_embeddings(aligned, tiny_bags, tiny_lm_folder, embedding_cache):
    config, _, _ = read_checkpoint_config(aligned.model_dir)
    data = tiny_data_config(*tiny_bags, embedding_cache)
    return load_embeddings(tiny_bags[1], data=data, vision=config.vision, imu=config.imu, progress=False)


def load_scene_model(model_dir) -> SceneModel:
    pipeline = PerceptionPipeline.from_model_dir(
        model_dir, device="cpu", load_language=False, load_vision=False
    )
    return pipeline.scene_model.eval()


def test_choose_fusion_picks_the_alpha_with_the_best_recounted_accuracy(aligned, val_embeddings):
    model = load_scene_model(aligned.model_dir)
    labels = val_embeddings.labels_for(model.config.labels)
    keep = (labels >= 0) & val_embeddings.has_imu
    # Recount every alpha's accuracy sample by sample, independently of training/fusion.py.
    recount = {}
    with torch.no_grad():
        for alpha in ALPHA_GRID:
            right = 0
            for i in torch.nonzero(keep).flatten().tolist():
                out = model(
                    vision_tokens=val_embeddings.vision_tokens[i : i + 1].float(),
                    vision_pooled=val_embeddings.vision_pooled[i : i + 1],
                    imu_windows=val_embeddings.imu[i : i + 1],
                    alpha=alpha,
                )
                right += int(out.logits.argmax(1).item() == labels[i].item())
            recount[alpha] = right / int(keep.sum())
    record = choose_fusion(model, val_embeddings, list(model.config.labels))
    assert [r["alpha"] for r in record["sweep"]] == list(ALPHA_GRID)
    for r in record["sweep"]:
        assert r["accuracy"] == pytest.approx(recount[r["alpha"]], abs=1e-6)
    assert record["alpha"] in CHOOSABLE_ALPHAS
    assert recount[record["alpha"]] == max(recount[alpha] for alpha in CHOOSABLE_ALPHAS)
    assert model.fusion.alpha == record["alpha"] == model.config.fusion.alpha


def test_choose_fusion_needs_samples_with_an_imu_window(aligned, val_embeddings):
    model = load_scene_model(aligned.model_dir)
    no_imu = val_embeddings.subset(range(len(val_embeddings)))
    no_imu.has_imu = torch.zeros_like(no_imu.has_imu)
    with pytest.raises(ValueError, match="no labelled sample with an IMU window"):
        choose_fusion(model, no_imu, list(model.config.labels))


def test_refit_fusion_stores_the_chosen_alpha_in_the_folder(aligned, val_embeddings, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(aligned.model_dir, folder)
    record = refit_fusion(folder, val_embeddings)
    config, _, _ = read_checkpoint_config(folder)
    assert config.fusion.alpha == record["alpha"]
    report = json.loads((folder / "train_report.json").read_text())
    assert report["fusion"]["alpha"] == record["alpha"] and len(report["fusion"]["sweep"]) == len(ALPHA_GRID)
    before, after = load_scene_model(aligned.model_dir), load_scene_model(folder)
    for key, value in before.state_dict().items():  # only the alpha changed, no weight
        assert torch.equal(value, after.state_dict()[key]), key


@pytest.mark.slow
def test_stage2_with_a_gate_trusts_the_imu_when_the_camera_says_nothing(
    aligned, tiny_lm, tmp_path, embedding_cache
):
    """Every segment seen in the same place: the camera carries nothing about the activity. Stage 2
    with a gate must learn to weigh the IMU, and the alpha chosen on validation must lean to it."""
    from frozen_vlm_perception.training.adapter import train_adapter

    train_bag = write_tiny_bag(tmp_path / "train", seed=1, passes=2, one_place="astronaut")
    val_bag = write_tiny_bag(tmp_path / "val", seed=2, passes=1, one_place="astronaut")
    settings = AdapterTrainConfig(
        max_steps=60, batch_size=16, lm_batch_size=4, lm_loss_every=1000, lr=5e-3, warmup_steps=5,
        val_every=30, val_lm_samples=4, patience=100, caption_steps=0, p_general=0.0, reinit=True,
        fusion="gate", device="cpu", progress=False, monitor="val_loss",  # a head test: no LM steps
    )
    out = tmp_path / "gated"
    result = train_adapter(
        data=tiny_data_config(train_bag, val_bag, embedding_cache),
        model_dir=aligned.model_dir,
        train=settings,
        out_dir=out,
        language=tiny_lm,
    )
    fusion = result.report["fusion"]
    # Chosen by data: the sweep's best accuracy among the alphas that keep both sensors, and the sweep
    # leans to the IMU: flat on its side (0.2-0.5, depending on the run; which of the plateau wins is
    # the tie break, the lowest cross-entropy), falling as the camera takes over.
    accuracy = {row["alpha"]: row["accuracy"] for row in fusion["sweep"]}
    best = max(accuracy[alpha] for alpha in CHOOSABLE_ALPHAS)
    assert round(accuracy[fusion["alpha"]], 3) == round(best, 3), fusion["sweep"]
    assert fusion["alpha"] <= 0.5, fusion["sweep"]
    assert accuracy[0.9] < accuracy[fusion["alpha"]] - 0.1, fusion["sweep"]
    assert accuracy[fusion["alpha"]] > accuracy[1.0] + 0.3, fusion["sweep"]  # the camera alone says little
    assert fusion["gate"]["vision_weight_mean"] < 0.4, fusion["gate"]
    best_single = max(result.best["val_acc_imu"], result.best["val_acc_vision"])
    assert fusion["gate"]["accuracy"] >= best_single - 0.05, (fusion["gate"], result.best)
    config, _, _ = read_checkpoint_config(out)
    assert config.fusion.weighting == "gate" and config.fusion.alpha == fusion["alpha"]
    # The finished folder loads; each frame reports the weight its sensors got.
    pipeline = PerceptionPipeline.from_model_dir(out, device="cpu", load_language=False)
    frame = torch.zeros(48, 64, 3, dtype=torch.uint8).numpy()
    window = torch.zeros(64, 6).numpy()
    window[:, 0] = 9.81
    scene = pipeline.encode_one(frame, window)
    assert 0.0 < scene.vision_weight < 0.5
    assert pipeline.encode_one(frame, window, alpha=0.8).vision_weight == pytest.approx(0.8)
    assert pipeline.encode_one(frame, None).vision_weight == 1.0
