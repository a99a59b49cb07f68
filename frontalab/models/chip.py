"""A differentiable face chip: dlib's ``get_face_chip(img, shape, size, padding)`` in torch.

dlib aligns a face for its recognition network from the 5 points of
``shape_predictor_5_face_landmarks.dat`` (outer and inner corner of each eye, bottom of
the nose). This module reproduces that geometry so the whole path

    image --(5 points)--> chip --> encoder

can sit inside a loss: gradients flow to the image (and to the points).

How dlib builds the chip (``get_face_chip_details`` / ``extract_image_chips``):
1. Template: its 5 mean-face points, normalised to [0, 1], are padded
   ``(padding + p) / (1 + 2 padding)`` and scaled by ``size`` (chip pixel coordinates).
2. The least-squares similarity transform template -> landmarks (Umeyama) gives a scale
   ``s`` and an angle.
3. The crop rectangle is centred on the image of the template point ``(size/2, size/2)``
   = (75, 75), ``size*s`` wide; chip pixel 0 maps to its left edge and pixel ``size-1`` to
   its right edge, so one chip pixel spans ``(size*s - 1) / (size - 1)`` source pixels
   (not ``s``) and chip pixel 74.5 (not 75) lands on the centre.
4. Bilinear sampling; a sample whose 2x2 neighbourhood leaves the image is black
   (dlib does not blend with the border), and values are rounded down to 8 bits.

Not reproduced: when the crop is more than about twice the chip size (``s > 2``: outer eye
corners more than ~150 px apart for a 150-px chip), dlib first shrinks the image with a
Gaussian pyramid (``pyramid_down<2>``) and samples from that. We always sample the
full-resolution image, so for such large faces our chip is sharper (slightly aliased)
compared with dlib's; the geometry is the same. `chip_scale` tells when this applies;
shrink large images first (and scale the points) if you need dlib's chip exactly.
"""

from __future__ import annotations

import torch
from kornia.geometry.transform import warp_affine

# dlib's 5-point mean face (get_face_chip_details), in the 5-point predictor's order,
# normalised to the unit square.
FIVE_POINT_TEMPLATE = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)


def template_points(size: int = 150, padding: float = 0.25, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """The 5 template points in chip pixel coordinates ``(5, 2)``."""
    t = torch.tensor(FIVE_POINT_TEMPLATE, dtype=torch.float64)
    t = (padding + t) / (2 * padding + 1) * size
    return t if like is None else t.to(dtype=like.dtype, device=like.device)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares similarity ``dst ~ M src + t`` for batched points ``(N, P, 2)``.

    In 2-D the best rotation-and-scale is the complex number ``sum(conj(a) b) / sum(|a|^2)``
    of the centred points; this is exactly the optimum Umeyama's method (dlib's
    ``find_similarity_transform``) finds, written without an SVD so it stays smooth.
    Returns M ``(N, 2, 2)`` and t ``(N, 2)``.
    """
    src = src.expand_as(dst)
    mean_src, mean_dst = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    a, b = src - mean_src, dst - mean_dst
    norm = (a * a).sum((1, 2))
    p = (a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1]).sum(1) / norm   # s cos(angle)
    q = (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).sum(1) / norm   # s sin(angle)
    m = torch.stack([torch.stack([p, -q], -1), torch.stack([q, p], -1)], -2)
    t = mean_dst[:, 0] - (m @ mean_src[:, 0, :, None])[..., 0]
    return m, t


def chip_transform(points5: torch.Tensor, size: int = 150, padding: float = 0.25) -> torch.Tensor:
    """The affine map chip pixel ``(u, v, 1)`` -> image pixel ``(x, y)`` of dlib's chip, ``(N, 2, 3)``."""
    if points5.ndim != 3 or points5.shape[1:] != (5, 2):
        raise ValueError(f"points5 must be (N, 5, 2) pixel (x, y) from the 5-point predictor, got {tuple(points5.shape)}")
    m, t = similarity_transform(template_points(size, padding, like=points5)[None], points5)
    centre = (m @ points5.new_tensor([size / 2.0, size / 2.0])[:, None])[..., 0] + t
    scale = torch.linalg.vector_norm(m[:, :, 0], dim=1)
    # dlib spans the crop's (size*s - 1) pixels with size - 1 chip steps, around the centre.
    step = (size * scale - 1.0) / (size - 1)
    a = m * (step / scale)[:, None, None]
    offset = centre - (a @ points5.new_tensor([(size - 1) / 2.0, (size - 1) / 2.0])[:, None])[..., 0]
    return torch.cat([a, offset[..., None]], dim=2)


def chip_scale(points5: torch.Tensor, size: int = 150, padding: float = 0.25) -> torch.Tensor:
    """Source pixels per chip pixel ``(N,)``; above ~2 dlib would have shrunk the image first."""
    return torch.linalg.vector_norm(chip_transform(points5, size, padding)[:, :, 0], dim=1)


def face_chip(images: torch.Tensor, points5: torch.Tensor, size: int = 150, padding: float = 0.25,
              quantize: bool = False) -> torch.Tensor:
    """dlib's face chip, differentiable: ``(N, C, H, W)`` in [0, 1] and ``(N, 5, 2)`` -> ``(N, C, size, size)``.

    points5: the 5-point predictor's landmarks in pixel ``(x, y)``, pixel centres at integers.
    quantize: round down to 8-bit levels as dlib does (forward only; the gradient passes
    straight through). Use it to reproduce dlib's chips; leave it off inside losses.
    """
    if images.ndim != 4 or images.shape[0] != points5.shape[0]:
        raise ValueError(f"images must be (N, C, H, W) with N = len(points5), got {tuple(images.shape)}")
    points5 = points5.to(images.dtype)
    chip_to_image = chip_transform(points5, size, padding)

    # kornia wants the forward map image -> chip; a similarity's inverse is closed-form.
    a, t = chip_to_image[:, :, :2], chip_to_image[:, :, 2:]
    a_inv = a.transpose(1, 2) / (a[:, 0, 0] ** 2 + a[:, 1, 0] ** 2)[:, None, None]
    image_to_chip = torch.cat([a_inv, -a_inv @ t], dim=2)
    chip = warp_affine(images, image_to_chip, (size, size), mode="bilinear", padding_mode="zeros",
                       align_corners=True)

    # dlib samples only where all four neighbours exist (0 <= x < W-1), else black;
    # grid_sample would fade into the border over the last pixel instead.
    h, w = images.shape[-2:]
    grid = torch.arange(size, dtype=images.dtype, device=images.device)
    u, v = grid[None, None, :], grid[None, :, None]
    x = a[:, 0, 0, None, None] * u + a[:, 0, 1, None, None] * v + t[:, 0, 0, None, None]
    y = a[:, 1, 0, None, None] * u + a[:, 1, 1, None, None] * v + t[:, 1, 0, None, None]
    inside = (x >= 0) & (x < w - 1) & (y >= 0) & (y < h - 1)
    chip = chip * inside[:, None].to(chip.dtype)

    if quantize:
        # A tiny offset, sized to the dtype's rounding error, keeps exact levels (100.0 computed
        # as 99.99999) from dropping a step: float64 then matches dlib's chips exactly.
        tiny = min(1e-2, max(1e-9, 200 * torch.finfo(chip.dtype).eps))
        levels = torch.floor(chip.detach() * 255.0 + tiny).clamp(0, 255) / 255.0
        chip = chip + (levels - chip).detach()
    return chip
