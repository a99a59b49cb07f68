"""Weighted sum of named loss terms that skips zero-weight terms entirely (the ablations)."""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch


class WeightedLoss(NamedTuple):
    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # unweighted values of the terms that were computed


def weighted_sum(weights: Mapping[str, float], terms: Mapping[str, Callable[[], torch.Tensor]]) -> WeightedLoss:
    """total = sum_t w_t * term_t(), calling a term only when its weight is non-zero.

    Terms are thunks so that an ablated term costs nothing: no discriminator forward for
    ``adversarial=0``, no encoder forward for ``identity=0``.
    """
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"no weight for loss terms {sorted(missing)}")
    computed: dict[str, torch.Tensor] = {}
    total = None
    for name, term in terms.items():
        w = float(weights[name])
        if w == 0.0:
            continue
        value = term()
        computed[name] = value
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("every loss weight is zero: nothing to optimise")
    return WeightedLoss(total, computed)
