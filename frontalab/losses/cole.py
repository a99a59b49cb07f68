"""Cole et al. 2017 training losses (§3.3): texture MAE, landmark MSE, negative cosine identity."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cole_texture_loss(predicted_texture: torch.Tensor, target_texture: torch.Tensor) -> torch.Tensor:
    """MAE between textures registered to the mean face."""
    return (predicted_texture - target_texture).abs().mean()


# Cole's images are 224 px; their landmark MSE (weight 1 against texture MAE x100) is read in its pixels.
COLE_SIDE = 224


def cole_landmark_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between landmark sets of normalised units, in pixels of Cole's 224 px images whatever the output's
    size: in normalised units the term is ~224² times weaker, and the identity term, whose gradient reaches the
    landmarks through the warp, then bends the face's geometry at will (seen: distorted outputs, no face)."""
    return ((predicted - target) * COLE_SIDE).pow(2).mean()


def cole_identity_loss(input_embedding: torch.Tensor, output_embedding: torch.Tensor) -> torch.Tensor:
    """-cos(e_in, e_out): Cole's FaceNet loss, -1 at best."""
    return -F.cosine_similarity(input_embedding, output_embedding, dim=1, eps=1e-12).mean()
