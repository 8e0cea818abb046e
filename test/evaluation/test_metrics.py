"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from frozen_vlm_perception.evaluation.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    retrieval_recall,
)


def test_confusion_accuracy_and_macro_f1_by_hand():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    assert confusion_matrix(true, pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert accuracy(true, pred) == pytest.approx(0.6)
    # F1: label 0 = 2*1/(2+2) = 0.5, label 1 = 2*2/(2+3) = 0.8, label 2 = 0
    assert macro_f1(true, pred, 3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_retrieval_recall_by_hand():
    keys = np.eye(4)
    queries = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0.2, 0.1]], dtype=float)
    recall = retrieval_recall(queries, keys, ks=(1, 2))
    assert recall[1] == pytest.approx(0.5)  # queries 0 and 2 hit; 1 ranks 2nd, 3 ranks 2nd
    assert recall[2] == pytest.approx(1.0)
