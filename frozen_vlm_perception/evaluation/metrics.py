"""Metrics for activity recognition, cross-modal retrieval and question answering. numpy only."""

from __future__ import annotations

import re
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


def names_in_answer(answer: str, names: Sequence[str]) -> set[str]:
    """The names that occur in the answer as whole words (case-insensitive)."""
    text = answer.lower()
    return {name for name in names if re.search(rf"\b{re.escape(name.lower())}\b", text)}


def answer_names_label(answer: str, label: str, all_labels: Sequence[str]) -> bool:
    """True when the answer names ``label`` and no other label that is not part of it.

    "walking upstairs" contains "walking": a label counts as named only when no longer label
    that contains it is named instead.
    """
    named = names_in_answer(answer, all_labels)
    named = {n for n in named if not any(n != m and n in m and m in named for m in named)}
    return label in named and len(named) == 1


def answer_names_activity_and_place(answer: str, label: str, place: str, all_labels: Sequence[str]) -> bool:
    """True when the answer names ``label`` (as :func:`answer_names_label`) and the place's phrase."""
    from frozen_vlm_perception.questions import place_phrase

    return answer_names_label(answer, label, all_labels) and place_phrase(place).lower() in answer.lower()
