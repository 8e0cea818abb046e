"""InfoNCE against a brute-force double loop, the learnable temperature, retrieval recall, helpers."""

from __future__ import annotations

import math

import torch

from frozen_vlm_perception.training.losses import (
    MAX_LOGIT_SCALE,
    LogitScale,
    info_nce,
    retrieval_recall,
    scale_gradient,
    supervised_ce,
)


def brute_force_info_nce(query: torch.Tensor, keys: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE written out with plain Python loops over every pair."""
    n = len(query)
    q = [query[i] / query[i].norm() for i in range(n)]
    k = [keys[j] / keys[j].norm() for j in range(n)]
    sim = [[scale * float(q[i] @ k[j]) for j in range(n)] for i in range(n)]
    q_to_k = 0.0
    k_to_q = 0.0
    for i in range(n):
        q_to_k += -sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n)))
        k_to_q += -sim[i][i] + math.log(sum(math.exp(sim[j][i]) for j in range(n)))
    return 0.5 * (q_to_k / n + k_to_q / n)


def test_info_nce_matches_a_brute_force_double_loop():
    torch.manual_seed(0)
    for n, d, scale in [(2, 3, 1.0), (7, 16, 14.285), (12, 5, 50.0)]:
        query, keys = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
        got = float(info_nce(query, keys, torch.tensor(scale, dtype=torch.float64)))
        assert math.isclose(got, brute_force_info_nce(query, keys, scale), rel_tol=1e-9), (n, d, scale)


def test_info_nce_is_low_for_aligned_pairs_and_high_for_shuffled_ones():
    torch.manual_seed(0)
    keys = torch.randn(16, 32)
    aligned = float(info_nce(keys + 0.01 * torch.randn(16, 32), keys, torch.tensor(1 / 0.07)))
    shuffled = float(info_nce(keys[torch.randperm(16)], keys, torch.tensor(1 / 0.07)))
    assert aligned < 0.01 < math.log(16) < shuffled


def test_learnable_temperature_starts_at_clip_value_and_gets_gradients():
    scale = LogitScale(0.07)
    assert math.isclose(float(scale().detach()), 1 / 0.07, rel_tol=1e-6)
    assert math.isclose(scale.temperature, 0.07, rel_tol=1e-6)
    torch.manual_seed(0)
    query = torch.randn(8, 4, requires_grad=True)
    keys = torch.randn(8, 4)
    info_nce(query, keys, scale()).backward()
    assert scale.log_scale.grad is not None and float(scale.log_scale.grad.abs()) > 0
    assert query.grad is not None and float(query.grad.abs().sum()) > 0


def test_temperature_is_clamped_at_100():
    scale = LogitScale(0.001)  # asks for 1000
    assert float(scale().detach()) == MAX_LOGIT_SCALE
    info_nce(torch.randn(4, 3), torch.randn(4, 3), scale()).backward()
    assert float(scale.log_scale.grad) == 0.0  # the clamp stops the push further up


def test_retrieval_recall_counts_ties_against_us():
    keys = torch.eye(4)
    assert retrieval_recall(keys, keys, ks=(1,)) == {1: 1.0}
    # Every key identical: each positive ties with 3 others, so nothing is retrieved at rank 1.
    same = torch.ones(4, 3)
    recall = retrieval_recall(same, same, ks=(1, 4))
    assert recall[1] == 0.0 and recall[4] == 1.0
    # Query i points at key (i + 1) % 4: R@1 is 0, R@2 too (the positive is last of its three rivals).
    assert retrieval_recall(torch.roll(torch.eye(4), 1, dims=1), torch.eye(4), ks=(1,))[1] == 0.0


def test_scale_gradient_keeps_values_and_scales_gradients():
    x = torch.randn(3, 2, requires_grad=True)
    y = scale_gradient(x, 0.25)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))
    x.grad = None
    scale_gradient(x, 0.0).sum().backward()
    assert float(x.grad.abs().sum()) == 0.0


def test_supervised_ce_ignores_unknown_labels():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, -1, 2, -1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(supervised_ce(logits, labels), expected)
    none = supervised_ce(logits, torch.full((4,), -1))
    assert float(none.detach()) == 0.0 and none.requires_grad
