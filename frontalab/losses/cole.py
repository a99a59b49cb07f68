"""Cole et al. 2017 training losses (§3.3): texture MAE, landmark MSE, negative cosine identity."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cole_texture_loss(predicted_texture: torch.Tensor, target_texture: torch.Tensor) -> torch.Tensor:
    """MAE between textures registered to the mean face."""
    return (predicted_texture - target_texture).abs().mean()


def cole_landmark_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between landmark sets (normalised units)."""
    return (predicted - target).pow(2).mean()


def cole_identity_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """-cos(e_in, e_out): Cole's FaceNet loss, -1 at best."""
    return -F.cosine_similarity(input_embedding, output_embedding, dim=1, eps=1e-12).mean()
