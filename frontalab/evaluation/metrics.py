"""The evaluation's measures (pure functions of arrays, with known answers: tests/test_evaluate.py):
verification ROC, pair distances, how close each person's faces lie, the mouth's opening."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from frontalab.models import landmarks as lm


def roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half; with
    ``weights``, each pair counts that many times (the people bootstrap of `auc_interval`)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    w_pos, w_neg = w[positive].sum(), w[~positive].sum()
    if w_pos == 0 or w_neg == 0:
        raise ValueError("ROC-AUC needs both positive and negative pairs")
    levels, group = np.unique(scores, return_inverse=True)
    neg = np.bincount(group, weights=w * ~positive, minlength=len(levels))
    beaten = np.cumsum(neg) - neg + neg / 2  # negative weight below each score, ties counting half (Mann-Whitney U)
    return float((w[positive] * beaten[group[positive]]).sum() / (w_pos * w_neg))


def auc_interval(scores: np.ndarray, positive: np.ndarray, pairs: np.ndarray, person: np.ndarray,
                 seed: int, resamples: int = 1000) -> tuple[float, float]:
    """95% interval of `roc_auc` over the people evaluated: people drawn with replacement, each pair
    counted as often as both its people were drawn (pairs of one person are not independent)."""
    people, index = np.unique(np.asarray(person), return_inverse=True)
    first, second = index[pairs[:, 0]], index[pairs[:, 1]]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(0, len(people), len(people)), minlength=len(people)).astype(np.float64)
        weights = np.where(positive, drawn[first], drawn[first] * drawn[second])
        if weights[positive].sum() and weights[~positive].sum():
            aucs.append(roc_auc(scores, positive, weights))
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates), one point per distinct threshold from high to low
    (tied scores move together, so the curve's area is `roc_auc`)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    thresholds, group = np.unique(-scores, return_inverse=True)  # ascending -score = descending score
    tp = np.bincount(group, weights=positive, minlength=len(thresholds))
    fp = np.bincount(group, weights=~positive, minlength=len(thresholds))
    tpr = np.concatenate([[0.0], np.cumsum(tp) / max(positive.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(fp) / max((~positive).sum(), 1)])
    return fpr, tpr


def verification_pairs(person: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All same-person index pairs and as many random different-person pairs: ``(pairs (M, 2), same (M,))``."""
    person = np.asarray(person)
    same = []
    for who in np.unique(person):
        members = np.flatnonzero(person == who)
        i, j = np.triu_indices(len(members), 1)
        same += list(zip(members[i].tolist(), members[j].tolist()))
    same.sort()
    if not same or len(set(person.tolist())) < 2:
        raise ValueError("verification needs a person with two faces and at least two people")
    rng = np.random.default_rng(seed)
    different: set[tuple[int, int]] = set()
    possible = (len(person) ** 2 - sum(c ** 2 for c in Counter(person.tolist()).values())) // 2
    while len(different) < min(len(same), possible):
        i, j = sorted(rng.integers(0, len(person), 2).tolist())
        if person[i] != person[j]:
            different.add((i, j))
    pairs = np.array(same + sorted(different))
    return pairs, np.arange(len(pairs)) < len(same)


def pair_distances(embeddings: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(embeddings[pairs[:, 0]] - embeddings[pairs[:, 1]], axis=1)


def spread_per_person(embeddings: np.ndarray, person: np.ndarray) -> dict[Any, float]:
    """Mean pairwise distance among each person's embeddings (people with >= 2 faces)."""
    spread = {}
    for who in sorted(set(np.asarray(person).tolist())):
        e = embeddings[np.asarray(person) == who]
        if len(e) >= 2:
            d = np.linalg.norm(e[:, None] - e[None], axis=-1)
            spread[who] = float(d[np.triu_indices(len(e), 1)].mean())
    return spread


def normalized_share(inputs: np.ndarray, outputs: np.ndarray, person: np.ndarray) -> float:
    """The share of people whose outputs lie closer together than their inputs."""
    before, after = spread_per_person(inputs, person), spread_per_person(outputs, person)
    if not before:
        raise ValueError("normalisation needs a person with two faces")
    return float(np.mean([after[p] < before[p] for p in before]))


def mouth_opening(points68: np.ndarray) -> float:
    """Mean inner-lip gap over the outer-eye-corner distance: 0 for closed lips, scale-free."""
    upper = [a for a, _ in lm.INNER_LIP_PAIRS]
    lower = [b for _, b in lm.INNER_LIP_PAIRS]
    gap = np.abs(points68[lower, 1] - points68[upper, 1]).mean()
    left, right = lm.OUTER_EYE_CORNERS
    return float(gap / np.linalg.norm(points68[right] - points68[left]))
