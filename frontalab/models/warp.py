"""Differentiable image warping by polyharmonic splines (Cole et al. 2017, §4 and Algorithm 1).

Conventions (public API):
- images are ``(N, C, H, W)``; points are ``(N, P, 2)`` in pixel coordinates ``(x, y)``,
  pixel centres at integers, so ``(0, 0)`` is the top-left pixel and ``(W-1, H-1)`` the
  bottom-right one;
- `sparse_image_warp(image, source_points, dest_points)` returns an image whose value at
  ``dest_points[i]`` is the input's value at ``source_points[i]``. This is TensorFlow's
  ``sparse_image_warp`` contract, which the thesis used (§3.5.1).

Every item of a batch has its own control points: the linear systems are solved batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# phi is not differentiable at r = 0 (the diagonal of the system matrix): clamp before
# sqrt/log so the gradient there is zero, while the value stays exactly phi(0) = 0.
_EPS = 1e-10
# Coincident control points (the inner lips of a closed mouth) make the system singular: this
# ridge on phi's diagonal keeps it solvable, and moves the fit at a point by 1e-12 of its weight.
_RIDGE = 1e-12


def phi(r2: torch.Tensor, order: int) -> torch.Tensor:
    """Polyharmonic radial basis of the squared distance: k=1 ``r``, k=2 ``r^2 log r``."""
    if order == 1:
        return torch.where(r2 > _EPS, torch.sqrt(r2.clamp_min(_EPS)), torch.zeros_like(r2))
    if order == 2:
        return 0.5 * r2 * torch.log(r2.clamp_min(_EPS))  # r^2 log r == 0.5 r^2 log r^2
    raise ValueError(f"spline order must be 1 or 2, got {order}")


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``(N, A, B)``; written out (not cdist) to stay exact at 0."""
    return ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)


def solve_spline(points: torch.Tensor, values: torch.Tensor, order: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``s(x) = sum_i w_i phi(|x - p_i|) + v . [x, y, 1]`` through ``values`` at ``points``.

    Algorithm 1: solve ``[[A, B^T], [B, 0]] [w; v] = [G; 0]`` with ``A = phi(dists)`` and
    ``B = [x; y; 1]``. points ``(N, P, 2)``, values ``(N, P, C)`` -> w ``(N, P, C)``, v ``(N, 3, C)``.
    """
    n, p, _ = points.shape
    a = phi(_sqdist(points, points), order) + _RIDGE * torch.eye(p, dtype=points.dtype, device=points.device)
    b = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (N, P, 3)
    top = torch.cat([a, b], dim=2)
    bottom = torch.cat([b.transpose(1, 2), points.new_zeros(n, 3, 3)], dim=2)
    lhs = torch.cat([top, bottom], dim=1)  # (N, P+3, P+3)
    rhs = torch.cat([values, values.new_zeros(n, 3, values.shape[-1])], dim=1)
    if lhs.is_cuda:
        # MAGMA's batched LU, torch's default here, reads out of bounds now and then (pytorch#77527):
        # seen on an H200 as an illegal memory access with 8 trials sharing the GPU; cuSOLVER was fine.
        torch.backends.cuda.preferred_linalg_library("cusolver")
    wv = torch.linalg.solve(lhs, rhs)
    return wv[:, :p], wv[:, p:]


def evaluate_spline(points: torch.Tensor, w: torch.Tensor, v: torch.Tensor,
                    query: torch.Tensor, order: int = 1) -> torch.Tensor:
    """Evaluate the fitted interpolant at ``query`` ``(N, Q, 2)`` -> ``(N, Q, C)``."""
    radial = phi(_sqdist(query, points), order) @ w
    linear = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1) @ v
    return radial + linear


def interpolate_spline(points: torch.Tensor, values: torch.Tensor, query: torch.Tensor,
                       order: int = 1) -> torch.Tensor:
    """Polyharmonic interpolation of ``values`` given at ``points``, evaluated at ``query``.

    Both point sets are first centred and scaled to unit size: the interpolant does not
    change (k=1 and k=2 splines with a linear term are similarity-equivariant), but the
    linear system is far better conditioned than in pixel units. It is solved and evaluated in
    float64: near-coincident points (a closed mouth's inner lips) get large weights of opposite
    sign, and in float32 the solve left errors of pixels at the points while the evaluation's sum
    cancelled into per-pixel noise: every warped texture had vertical stripes (high-frequency
    energy across columns twice the photo's; tests/test_warp.py), which the models learnt to draw.
    """
    centre = points.mean(dim=1, keepdim=True)
    scale = (points - centre).abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    points, query = ((points - centre) / scale).double(), ((query - centre) / scale).double()
    w, v = solve_spline(points, values.double(), order)
    return evaluate_spline(points, w, v, query, order).to(values.dtype)


def boundary_points(height: int, width: int, per_edge: int, like: torch.Tensor) -> torch.Tensor:
    """Zero-displacement points on the image border, as in TensorFlow's sparse_image_warp.

    ``per_edge=0``: none; ``1``: the 4 corners; ``n``: the corners and ``n-1`` more on each edge.
    """
    if per_edge == 0:
        return like.new_zeros(0, 2)
    xs = torch.linspace(0, width - 1, per_edge + 1, dtype=like.dtype, device=like.device)
    ys = torch.linspace(0, height - 1, per_edge + 1, dtype=like.dtype, device=like.device)
    top = torch.stack([xs, torch.zeros_like(xs)], -1)
    bottom = torch.stack([xs, torch.full_like(xs, height - 1)], -1)
    left = torch.stack([torch.zeros_like(ys[1:-1]), ys[1:-1]], -1)
    right = torch.stack([torch.full_like(ys[1:-1], width - 1), ys[1:-1]], -1)
    return torch.cat([top, bottom, left, right])


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """All pixel centres as ``(H*W, 2)`` ``(x, y)`` in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([xs, ys], -1).reshape(-1, 2)


def sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sample ``image`` at pixel coordinates ``coords`` ``(N, H, W, 2)``; borders clamp."""
    h, w = image.shape[-2:]
    scale = coords.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return F.grid_sample(image, coords * scale - 1.0, mode="bilinear", padding_mode="border", align_corners=True)


def sparse_image_warp(image: torch.Tensor, source_points: torch.Tensor, dest_points: torch.Tensor,
                      order: int = 1, boundary_points_per_edge: int = 2) -> torch.Tensor:
    """Warp ``image`` so that the output at ``dest_points[i]`` samples the input at ``source_points[i]``.

    A dense sampling offset is interpolated from the sparse offsets ``source - dest`` given at
    ``dest`` (plus zero offsets on the border), then the image is sampled bilinearly.
    """
    if source_points.shape != dest_points.shape or source_points.shape[-1] != 2:
        raise ValueError(f"points must both be (N, P, 2), got {tuple(source_points.shape)} and {tuple(dest_points.shape)}")
    n, _, h, w = image.shape
    dtype = torch.promote_types(image.dtype, torch.float32)
    # The linear solve needs at least float32, also inside a bf16 autocast region.
    with torch.autocast(image.device.type, enabled=False):
        src, dst = source_points.to(dtype), dest_points.to(dtype)
        border = boundary_points(h, w, boundary_points_per_edge, src)
        if len(border):
            border = border.expand(n, -1, -1)
            src, dst = torch.cat([src, border], 1), torch.cat([dst, border], 1)
        grid = pixel_grid(h, w, src).expand(n, -1, -1)
        offset = interpolate_spline(dst, src - dst, grid, order)
        coords = (grid + offset).reshape(n, h, w, 2)
        return sample(image.to(dtype), coords).to(image.dtype)
