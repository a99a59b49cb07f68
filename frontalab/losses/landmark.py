"""Thesis landmark losses (§3.5.2, eq. 3.2-3.7), on normalised ``(N, 68, 2)`` landmarks."""

from __future__ import annotations

import torch

from frontalab.models import landmarks as lm

_LEFT = [a for a, _ in lm.LEFT_RIGHT_PAIRS]
_RIGHT = [b for _, b in lm.LEFT_RIGHT_PAIRS]


def distance_matrix(points: torch.Tensor) -> torch.Tensor:
    """D_ij = |L_i - L_j|_1   (eq. 3.2; L1 avoids the sqrt's gradient singularity)."""
    return (points[:, :, None, :] - points[:, None, :, :]).abs().sum(-1)


def geometry_loss(input_points: torch.Tensor, output_points: torch.Tensor) -> torch.Tensor:
    """L_geo = 1 - D_inp . D_out / (|D_inp| |D_out|)   (eq. 3.3 as a loss).

    Invariant to translation and scale of either set: only the face's proportions count.
    """
    a = distance_matrix(input_points).flatten(1)
    b = distance_matrix(output_points).flatten(1)
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)).mean()


def symmetry_loss(points: torch.Tensor, midline: float = 0.5) -> torch.Tensor:
    """L_sym = E_i |(x_li + x_ri)/2 - m|   (eq. 3.4), m the image's vertical midline."""
    centre = (points[:, _LEFT, 0] + points[:, _RIGHT, 0]) / 2
    return (centre - midline).abs().mean()


def tilt_loss(points: torch.Tensor) -> torch.Tensor:
    """L_tilt = E_i |y_li - y_ri|   (eq. 3.5)."""
    return (points[:, _LEFT, 1] - points[:, _RIGHT, 1]).abs().mean()


def expression_loss(points: torch.Tensor) -> torch.Tensor:
    """L_expr = |y61 - y67| + |y62 - y66| + |y63 - y65|   (eq. 3.6): zero for closed lips."""
    upper = [a for a, _ in lm.INNER_LIP_PAIRS]
    lower = [b for _, b in lm.INNER_LIP_PAIRS]
    return (points[:, upper, 1] - points[:, lower, 1]).abs().sum(1).mean()
