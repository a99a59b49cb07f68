"""Thesis mask loss (§3.5.3, eq. 3.8 and 3.9)."""

from __future__ import annotations

from typing import Optional

import torch


def mask_penalty(mask: torch.Tensor, p: float = 1.0, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """E_ij[A_ij^p]   (eq. 3.8): the mask otherwise drifts to 1 everywhere.

    With a ``target`` ``(S, S)`` (the canonical face region) it is E_ij[|A_ij - R_ij|^p]: eq. 3.8 is the
    case R = 0. Pulled to zero, the mask collapses as soon as the texture term is weighted by it.
    """
    return (mask if target is None else (mask - target).abs()).pow(p).mean()


def total_variation(mask: torch.Tensor) -> torch.Tensor:
    """E[(A_i+1,j - A_ij)^2] + E[(A_i,j+1 - A_ij)^2]   (eq. 3.9), each mean over its valid pairs."""
    dy = mask[..., 1:, :] - mask[..., :-1, :]
    dx = mask[..., :, 1:] - mask[..., :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


def mask_loss(mask: torch.Tensor, p: float = 1.0, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_mask = E[A^p] + TV(A): the sum of eq. 3.8 and 3.9 (``target``: see `mask_penalty`)."""
    return mask_penalty(mask, p, target) + total_variation(mask)
