"""LSGAN losses with +-1 targets (thesis §3.5.4, eq. 3.10 and 3.11)."""

from __future__ import annotations

import torch


def generator_adversarial_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """L_G = E[(D(G(z)) - 1)^2]   (eq. 3.10)."""
    return (d_fake - 1).pow(2).mean()


def discriminator_adversarial_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """L_D = E[(D(x) - 1)^2] + E[(D(G(z)) + 1)^2]   (eq. 3.11): zero for a perfect D."""
    return (d_real - 1).pow(2).mean() + (d_fake + 1).pow(2).mean()
