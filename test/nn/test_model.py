"""Shapes through every trainable module, fusion semantics, and frozen parts staying frozen."""

from __future__ import annotations

import math

import pytest
import torch

from frozen_vlm_perception.config import AdapterConfig, FusionConfig, ImuConfig, ModelConfig
from frozen_vlm_perception.nn.fusion import GATE_MIN, ModalityFusion
from frozen_vlm_perception.nn.imu import ImuEncoder
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.nn.resampler import PerceiverResampler

D, N, H = 32, 9, 24  # small widths keep these tests instant


def small_config(kind: str) -> ModelConfig:
    return ModelConfig(
        imu=ImuConfig(width=16, depth=1, heads=2),
        adapter=AdapterConfig(kind=kind, dim=16, depth=2, heads=2, dim_head=8, num_latents=5, num_tokens=3),
    )


def test_imu_encoder_shapes_and_channel_count():
    config = ImuConfig(channels=9, window_samples=64, patch_size=16, width=16, depth=1, heads=2)
    encoder = ImuEncoder(config=config, out_dim=D)
    tokens, pooled = encoder(torch.randn(3, 64, 9))
    assert tokens.shape == (3, 4, D) and pooled.shape == (3, D)
    with pytest.raises(ValueError, match=r"\(B, 64, 9\)"):
        encoder(torch.randn(3, 64, 6))


@pytest.mark.parametrize("kind,num_out", [("resampler", 5), ("linear", 3)])
def test_scene_model_shapes_for_both_adapters(kind, num_out):
    model = SceneModel(config=small_config(kind), vision_dim=D, vision_tokens=N, lm_dim=H)
    out = model(
        vision_tokens=torch.randn(4, N, D),
        vision_pooled=torch.randn(4, D),
        imu_windows=torch.randn(4, 128, 6),
    )
    assert out.latents.shape == (4, num_out, H)
    assert out.logits.shape == (4, 6) and out.pooled.shape == (4, D) and out.imu_pooled.shape == (4, D)
    vision_only = model(vision_tokens=torch.randn(2, N, D), vision_pooled=torch.randn(2, D), imu_windows=None)
    imu_only = model(vision_tokens=None, vision_pooled=None, imu_windows=torch.randn(2, 128, 6))
    assert vision_only.latents.shape == imu_only.latents.shape == (2, num_out, H)


def test_fusion_pooled_is_the_weighted_combination_with_per_sample_mask():
    fusion = ModalityFusion(dim=D, alpha=0.25)
    v, i = torch.randn(3, D), torch.randn(3, D)
    has_v = torch.tensor([True, True, False])
    has_i = torch.tensor([True, False, True])
    tokens, log_w, pooled, vision_weight = fusion(
        vision_tokens=torch.randn(3, N, D),
        vision_pooled=v,
        imu_tokens=torch.randn(3, 4, D),
        imu_pooled=i,
        has_vision=has_v,
        has_imu=has_i,
    )
    torch.testing.assert_close(pooled[0], 0.25 * v[0] + 0.75 * i[0])
    torch.testing.assert_close(pooled[1], v[1])  # vision-only sample: all weight on vision
    torch.testing.assert_close(pooled[2], i[2])  # IMU-only sample
    assert tokens.shape == (3, N + 4, D)
    assert math.isclose(log_w[0, 0].exp().item(), 0.25, rel_tol=1e-5)
    assert math.isclose(log_w[0, -1].exp().item(), 0.75, rel_tol=1e-5)
    assert torch.isinf(log_w[1, N:]).all() and torch.isinf(log_w[2, :N]).all()
    torch.testing.assert_close(vision_weight, torch.tensor([0.25, 1.0, 0.0]))


def test_fusion_refuses_samples_without_any_modality():
    fusion = ModalityFusion(dim=D, alpha=0.5)
    with pytest.raises(ValueError, match="at least one modality"):
        fusion(
            vision_tokens=torch.randn(1, N, D),
            vision_pooled=torch.randn(1, D),
            imu_tokens=torch.randn(1, 4, D),
            imu_pooled=torch.randn(1, D),
            has_vision=torch.tensor([False]),
            has_imu=torch.tensor([False]),
        )


def test_resampler_ignores_masked_media():
    resampler = PerceiverResampler(config=small_config("resampler").adapter, media_dim=D, out_dim=H).eval()
    media = torch.randn(1, 6, D)
    log_w = torch.tensor([[0.0, 0.0, 0.0, -math.inf, -math.inf, -math.inf]])
    changed = media.clone()
    changed[:, 3:] = torch.randn(1, 3, D) * 100
    torch.testing.assert_close(resampler(media, log_w), resampler(changed, log_w))
    assert not torch.allclose(resampler(media), resampler(changed))


def test_alpha_changes_the_fused_latents_only_when_both_modalities_are_present():
    model = SceneModel(config=small_config("resampler"), vision_dim=D, vision_tokens=N, lm_dim=H).eval()
    inputs = dict(
        vision_tokens=torch.randn(1, N, D),
        vision_pooled=torch.randn(1, D),
        imu_windows=torch.randn(1, 128, 6),
    )
    assert not torch.allclose(model(**inputs, alpha=0.2).latents, model(**inputs, alpha=0.8).latents)
    vision_only = dict(inputs, imu_windows=None)
    torch.testing.assert_close(
        model(**vision_only, alpha=0.2).latents, model(**vision_only, alpha=0.8).latents
    )


def scene_inputs(batch: int) -> dict[str, torch.Tensor]:
    return dict(
        vision_tokens=torch.randn(batch, N, D),
        vision_pooled=torch.randn(batch, D),
        imu_windows=torch.randn(batch, 128, 6),
    )


def gated_model(alpha: float = 0.3) -> SceneModel:
    config = small_config("resampler")
    fusion = FusionConfig(alpha=alpha, weighting="gate", gate_hidden=8)
    config = ModelConfig(imu=config.imu, adapter=config.adapter, fusion=fusion)
    return SceneModel(config=config, vision_dim=D, vision_tokens=N, lm_dim=H)


def test_gate_starts_at_alpha_and_an_explicit_alpha_overrides_it():
    model = gated_model(alpha=0.3).eval()
    inputs = scene_inputs(4)
    fixed = SceneModel(config=small_config("resampler"), vision_dim=D, vision_tokens=N, lm_dim=H).eval()
    fixed.load_state_dict(model.state_dict(), strict=False)
    fixed.fusion.alpha = 0.3
    start = model(**inputs)
    torch.testing.assert_close(start.vision_weight, torch.full((4,), 0.3))
    torch.testing.assert_close(start.logits, fixed(**inputs).logits)  # untrained gate == alpha 0.3
    # A trained gate gives every sample its own weight; an explicit alpha still wins.
    torch.nn.init.normal_(model.fusion.gate.out.weight, std=1.0)
    gated = model(**inputs)
    assert gated.vision_weight.std() > 0.01
    assert ((gated.vision_weight > GATE_MIN) & (gated.vision_weight < 1 - GATE_MIN)).all()
    torch.testing.assert_close(model(**inputs, alpha=0.7).vision_weight, torch.full((4,), 0.7))
    torch.testing.assert_close(model(**inputs, alpha=0.7).logits, fixed(**inputs, alpha=0.7).logits)
    # One modality missing: the gate has nothing to weigh.
    assert model(**dict(inputs, imu_windows=None)).vision_weight.eq(1.0).all()


def test_gate_learns_from_the_head_loss():
    model = gated_model()
    inputs = scene_inputs(4)
    loss = torch.nn.functional.cross_entropy(model(**inputs).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.fusion.gate.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    model.zero_grad()
    model(**inputs, alpha=0.5).logits.sum().backward()  # overridden: the gate gets no gradient
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.fusion.gate.parameters())


def test_frozen_vision_stays_bit_identical_after_an_optimizer_step(vision_encoder):
    import skimage.data

    before = {k: v.clone() for k, v in vision_encoder.state_dict().items()}
    model = SceneModel(config=ModelConfig(), vision_dim=1280, vision_tokens=49, lm_dim=H)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens, pooled = vision_encoder([skimage.data.coffee(), skimage.data.chelsea()])
    out = model(
        vision_tokens=tokens.clone(), vision_pooled=pooled.clone(), imu_windows=torch.randn(2, 128, 6)
    )
    trainable_before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])) + out.latents.pow(2).mean()
    loss.backward()
    optimizer.step()
    after = vision_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, trainable_before[k])]
    assert any(k.startswith("adapter.") for k in changed) and any(k.startswith("head.") for k in changed)


def test_gate_loss_targets_the_modality_that_explains_the_label_and_trains_only_the_gate():
    from frozen_vlm_perception.training.adapter import gate_loss

    torch.manual_seed(0)
    model = gated_model().eval()  # no dropout: the recount must see the same forward
    inputs = scene_inputs(6)
    labels = torch.tensor([0, 1, 2, 3, 4, -1])  # the unlabelled sample is left out
    batch = {**inputs, "imu": inputs["imu_windows"], "label": labels,
             "has_imu": torch.tensor([True, True, True, True, False, True])}  # sample 4: no IMU window
    loss = gate_loss(model, batch, "cpu")
    # Recount: p_true from vision alone and from the IMU alone, for the 4 usable samples.
    use = torch.tensor([0, 1, 2, 3])
    sub = {k: v[use] for k, v in inputs.items()}
    with torch.no_grad():
        off, on = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
        p_v = model(**sub, has_vision=on, has_imu=off).logits.softmax(-1)[torch.arange(4), labels[use]]
        p_i = model(**sub, has_vision=off, has_imu=on).logits.softmax(-1)[torch.arange(4), labels[use]]
        _, imu_pooled = model.imu_encoder(sub["imu_windows"])
        weight = model.fusion.gate(sub["vision_pooled"], imu_pooled)
    expected = torch.nn.functional.binary_cross_entropy(weight, p_v / (p_v + p_i))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith("fusion.gate.") for n in trained), trained
    assert gate_loss(SceneModel(config=small_config("resampler"), vision_dim=D, vision_tokens=N, lm_dim=H),
                     batch, "cpu") is None  # no gate, no loss
