"""Images between the models' tensors and uint8 pictures: one conversion each way."""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] (the decoders' range) -> (N, S, S, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] (the encoders' range)."""
    return torch.from_numpy(np.require(images, requirements=("C", "W"))).permute(0, 3, 1, 2).float() / 255
