"""Identity losses between encoder embeddings of input and output (thesis L_id, Cole §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_cosine_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """1 - cos(e_in, e_out), batch mean: 0 for the same direction."""
    return (1 - F.cosine_similarity(input_embedding, output_embedding, dim=1, eps=1e-12)).mean()


def identity_l2_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """|e_in - e_out|_2, batch mean: the distance the same-identity threshold is stated for."""
    return (input_embedding - output_embedding).pow(2).sum(1).clamp_min(1e-12).sqrt().mean()
