"""Texture losses: the thesis' L1 to the input warped to the canonical face (§3.5.1, eq. 3.1), and our mirror symmetry."""

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


def canonical_inputs(inputs: torch.Tensor, input_points: torch.Tensor, canonical: torch.Tensor,
                     size: int) -> torch.Tensor:
    """I*: the inputs resized to side ``size`` and warped to the canonical 14 landmarks, the texture target."""
    if inputs.shape[-1] != size:
        inputs = F.interpolate(inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return warp_to_canonical(inputs, input_points, canonical)


def texture_loss(warped_inputs: torch.Tensor, outputs: torch.Tensor, output_points: Optional[torch.Tensor],
                 canonical: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_tex = E_ij[ M*_ij |I*_ij - O*_ij| ]   (eq. 3.1, mean instead of sum).

    I* (`canonical_inputs`) and O* are the input and output warped to the canonical 14
    landmarks; the mask is warped with the output, so all three are in one frame.
    ``output_points=None`` takes the output as already in the canonical frame (O* = O). The
    thesis writes a sum over pixels; the mean keeps the weight independent of resolution.

    ``region`` ``(S, S)``, a fixed weight in the canonical frame (the face region), replaces the
    learned mask: weighted by M, the term falls as the mask shrinks, so together with the mask
    penalty it drives the mask to zero (seen: M = 0 within 200 steps). The mean is then over the
    region.
    """
    if mask is not None and region is not None:
        raise ValueError("texture_loss weighs by the learned mask or by a fixed region, not both")
    stacked = outputs if mask is None else torch.cat([outputs, mask], dim=1)
    warped_out = stacked if output_points is None else warp_to_canonical(stacked, output_points, canonical)
    diff = (warped_inputs - warped_out[:, :3]).abs()
    if mask is not None:
        return (diff * warped_out[:, 3:]).mean()
    if region is not None:
        return (diff * region).mean() / region.mean()
    return diff.mean()


def pixel_symmetry_loss(images: torch.Tensor) -> torch.Tensor:
    """Mean |I(x, y) - I(W-1-x, y)|: how far faces are from their own mirror images (TP-GAN's symmetry loss,
    Huang et al. 2017, eq. 4, as a mean). A frontal face is nearly so; a stripe or a cast on one side is not."""
    return (images - images.flip(-1)).abs().mean()
