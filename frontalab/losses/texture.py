"""Thesis texture loss (§3.5.1, eq. 3.1)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from frontalab.models import landmarks as lm
from frontalab.models.warp import sparse_image_warp


def warp_to_canonical(images: torch.Tensor, points: torch.Tensor, canonical: torch.Tensor) -> torch.Tensor:
    """Warp ``images`` so their 14 texture landmarks land on the canonical ones (k=1 spline).

    ``points`` ``(N, 68, 2)`` and ``canonical`` ``(68, 2)`` are in normalised units.
    """
    size = images.shape[-1]
    idx = list(lm.TEXTURE_POINTS)
    src = lm.to_pixels(points[:, idx], size)
    dst = lm.to_pixels(canonical[idx], size).expand_as(src)
    return sparse_image_warp(images, src, dst, order=1)


def texture_loss(inputs: torch.Tensor, input_points: torch.Tensor, outputs: torch.Tensor,
                 output_points: Optional[torch.Tensor], canonical: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_tex = E_ij[ M*_ij |I*_ij - O*_ij| ]   (eq. 3.1, mean instead of sum).

    I* and O* are the input and output warped to the canonical 14 landmarks; the mask is
    warped with the output, so all three are in one frame. ``output_points=None`` takes the
    output as already in the canonical frame (O* = O). The inputs are resized to the output's
    side first. The thesis writes a sum over pixels; the mean keeps the weight independent of
    resolution.
    """
    size = outputs.shape[-1]
    if inputs.shape[-1] != size:
        inputs = F.interpolate(inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    warped_in = warp_to_canonical(inputs, input_points, canonical)
    stacked = outputs if mask is None else torch.cat([outputs, mask], dim=1)
    warped_out = stacked if output_points is None else warp_to_canonical(stacked, output_points, canonical)
    diff = (warped_in - warped_out[:, :3]).abs()
    if mask is not None:
        diff = diff * warped_out[:, 3:]
    return diff.mean()
