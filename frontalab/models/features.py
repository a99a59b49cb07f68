"""How a decoder takes a frozen encoder's features: standardised with its training set's statistics.

A recognition network's pooled features are nearly collinear across faces (dlib's: cosine
0.98 between different people, the face-specific part ~15% of the norm). Fed raw, a decoder
sees an almost constant input and settles on one average face for everyone; standardised per
dimension, the part that differs between faces is the signal.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureStandardizer(nn.Module):
    """``(features - mean) / std`` with buffers, so checkpoints and served models carry the statistics."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> "FeatureStandardizer":
        """Take the statistics of ``(N, dim)`` training features (a constant dimension keeps std 1)."""
        features = features.to(self.mean.device, torch.float64)
        self.mean.copy_(features.mean(0).float())
        std = features.std(0).float()
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std
