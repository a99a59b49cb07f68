"""Selection metrics: the numbers that say whether a trial makes distinct frontal faces, defined once.

A frozen encoder alone cannot judge a frontalizer: near-white outputs sat within dlib's threshold of 21%
of LFW inputs, and outputs all alike are "normalised". So validation, sweeps and promotion rank trials
by `frontalization_score`, which is zero without a detectable face or without differences between people.
"""

from __future__ import annotations

import numpy as np


def different_people_spread(inputs: np.ndarray, outputs: np.ndarray, pairs: np.ndarray) -> float:
    """Mean encoder distance between different people's outputs over that between their inputs, on the
    index ``pairs`` ``(M, 2)`` of different people: 0 when every output is alike, 1 as distinct as the photos."""
    pairs = np.asarray(pairs)
    if len(pairs) == 0:
        raise ValueError("the spread needs at least one pair of different people")
    d_in = np.linalg.norm(inputs[pairs[:, 0]] - inputs[pairs[:, 1]], axis=1)
    d_out = np.linalg.norm(outputs[pairs[:, 0]] - outputs[pairs[:, 1]], axis=1)
    return float(d_out.mean() / max(d_in.mean(), 1e-12))


def all_pairs(n: int) -> np.ndarray:
    """Every index pair ``(i, j)``, i < j, of ``n`` faces: validation faces of unlabelled sets are taken as
    different people."""
    i, j = np.triu_indices(n, 1)
    return np.stack([i, j], axis=1)


def frontalization_score(face_share: float, spread: float, mean_distance: float, threshold: float) -> float:
    """face share x min(1, spread) x T / (T + mean identity distance), in [0, 1].

    Zero when no output holds a detectable face or when all outputs are alike, whatever the identity
    distance; otherwise a trial gains from more faces, more distinct people and closer identities.
    """
    return float(face_share * min(1.0, max(0.0, spread)) * threshold / (threshold + mean_distance))
