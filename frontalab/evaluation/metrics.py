"""The evaluation's measures (pure functions of arrays, with known answers: tests/test_evaluate.py):
verification ROC, pair distances, how close each person's faces lie, line-ups (what is measured of each
output is `frontalab.measure`'s)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np



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


def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between every row of ``a`` and every row of ``b``, ``(len(a), len(b))``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def auc_output_vs_photos(outputs: np.ndarray, photos: np.ndarray, person: np.ndarray) -> float:
    """Verification ROC-AUC of every output against every *other* real photo: is output i closer to
    photo j when j shows the same person? (Output i and photo i come from the same input: that pair
    is left out, so an output is judged by the person's other photos only.)"""
    person = np.asarray(person)
    d = distance_matrix(outputs, photos)
    keep = ~np.eye(len(person), dtype=bool)
    same = (person[:, None] == person[None])[keep]
    return roc_auc(-d[keep], same)


def lineup_rank1(outputs: np.ndarray, photos: np.ndarray, person: np.ndarray, size: int = 100,
                 seed: int = 0) -> tuple[float, int]:
    """Line-up identification: the share of outputs whose own person is the nearest of a line-up.

    For output i, the line-up is its own person and ``size - 1`` other people drawn at random (all
    others when fewer exist); each person is scored by their photo nearest to the output, the
    input photo i itself excluded, so only outputs of people with another photo are asked. A hit
    counts 1, a tie for first with k others 1 / (k + 1): one face for everyone scores chance,
    1 / size. Returns (rank-1 share, the line-up size used).
    """
    person = np.asarray(person)
    people, index = np.unique(person, return_inverse=True)
    d = distance_matrix(outputs, photos)
    np.fill_diagonal(d, np.inf)
    # Each output's distance to each person: their nearest photo.
    nearest = np.full((len(person), len(people)), np.inf)
    for k in range(len(people)):
        nearest[:, k] = d[:, index == k].min(1)
    size = min(size, len(people))
    rng = np.random.default_rng(seed)
    scores = []
    for i in np.flatnonzero(np.isfinite(nearest[np.arange(len(person)), index])):
        others = np.delete(np.arange(len(people)), index[i])
        drawn = rng.choice(others, size - 1, replace=False)
        own, rivals = nearest[i, index[i]], nearest[i, drawn]
        tied = np.abs(rivals - own) <= 1e-9 * max(1.0, own)  # equal but for the distances' rounding
        if (rivals[~tied] < own).any():
            scores.append(0.0)
        else:
            scores.append(1.0 / (1 + int(tied.sum())))
    if not scores:
        raise ValueError("a line-up needs a person with two photos")
    return float(np.mean(scores)), size


def equal_error_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The distance below which pairs are called the same person where false accepts and false
    rejects are equally frequent: (threshold, that error rate)."""
    distances, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    candidates = np.unique(distances)
    false_reject = np.array([(distances[same] >= t).mean() for t in candidates])
    false_accept = np.array([(distances[~same] < t).mean() for t in candidates])
    best = int(np.argmin(np.abs(false_reject - false_accept)))
    return float(candidates[best]), float((false_reject[best] + false_accept[best]) / 2)


LINEUP_SIZE = 100  # people in a line-up: its own and 99 others, so rank-1 compares across face sets


def identity_measures(photos: np.ndarray, outputs: np.ndarray, person: np.ndarray, threshold: float,
                      seed: int) -> dict[str, Any]:
    """How recognisably each output is its person, by one encoder's embeddings of the input photos and
    of their outputs (row i of both: the same face), with the photos' own values as the ceiling.

    - ``auc_outputs``: verification among the outputs (same person vs different people);
    - ``auc_output_vs_photos``: each output against every other real photo;
    - ``lineup_rank1``: in line-ups of `LINEUP_SIZE` people, the output's nearest person is its own;
    - ``within_threshold``: the output lies within the encoder's same-person threshold of its input.
    """
    pairs, same = verification_pairs(person, seed)
    rank1, size = lineup_rank1(outputs, photos, person, LINEUP_SIZE, seed)
    photos_rank1, _ = lineup_rank1(photos, photos, person, LINEUP_SIZE, seed)
    return {
        "auc_outputs": roc_auc(-pair_distances(outputs, pairs), same),
        "auc_output_vs_photos": auc_output_vs_photos(outputs, photos, person),
        "lineup_rank1": rank1,
        "within_threshold": float((np.linalg.norm(photos - outputs, axis=1) < threshold).mean()),
        "threshold": float(threshold),
        "lineup_size": size,
        "photos": {"auc_outputs": roc_auc(-pair_distances(photos, pairs), same),
                   "auc_output_vs_photos": auc_output_vs_photos(photos, photos, person),
                   "lineup_rank1": photos_rank1},
    }
