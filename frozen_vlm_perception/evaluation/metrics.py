"""Metrics for activity recognition and cross-modal retrieval. numpy only (answers are scored by
``frozen_vlm_perception.answers`` through ``evaluation/qa.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts; row = true label, column = predicted label."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true), np.asarray(pred)
    return float((true == pred).mean()) if len(true) else float("nan")


def macro_f1(true: np.ndarray, pred: np.ndarray, num_labels: int) -> float:
    """Mean F1 over the labels that occur in ``true`` or ``pred`` (absent labels do not count)."""
    matrix = confusion_matrix(true, pred, num_labels)
    tp = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return float("nan")
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    return float(f1[present].mean())


def retrieval_recall(queries: np.ndarray, keys: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Recall@k of retrieving key i for query i by cosine similarity. queries, keys: (N, D)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True).clip(1e-12)
    similarity = q @ k.T
    # Rank of the true key = number of keys scoring strictly higher than it.
    rank = (similarity > np.diag(similarity)[:, None]).sum(axis=1)
    return {kk: float((rank < kk).mean()) for kk in ks}
