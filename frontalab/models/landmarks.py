"""The dlib 68-point landmark scheme, spelled out once: left/right pairs, midline, mirroring.

Indices are 0-based dlib (iBUG 300-W) indices. "Left" is the subject's right side, which
appears on the image's left in a frontal photo (dlib's point 0 is at the image's left).
Landmarks in the library are ``(N, 68, 2)`` ``(x, y)`` in *normalised* image units: 0 and 1
are the image's outer edges, so pixel centre ``i`` of a side-``S`` image sits at
``(i + 0.5) / S``. Normalised units let an input crop and an output of another size be compared.
"""

from __future__ import annotations

import json
from importlib.resources import files

import torch

NUM_LANDMARKS = 68

# Left/right pairs, image-left point first. Every non-midline point appears exactly once.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = (
    # jaw
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
    # eyebrows
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
    # nostrils
    (31, 35), (32, 34),
    # eyes (outer corner, upper lid, inner corner, lower lid)
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    # outer lips
    (48, 54), (49, 53), (50, 52), (59, 55), (58, 56),
    # inner lips
    (60, 64), (61, 63), (67, 65),
)
MIDLINE: tuple[int, ...] = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)

# Vertically paired inner-lip points; equal heights mean closed lips (thesis eq. 3.6).
INNER_LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))

# The 14 points the thesis found reliable; texture is compared after warping to them (§3.5.1).
TEXTURE_POINTS: tuple[int, ...] = (8, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 62, 64, 66)

# dlib's 5-point predictor (the face-chip input) in 68-point terms: its eye corners are the
# 68-point ones and its nose point sits at 33 (measured: within 1.5% of the eye distance).
FIVE_FROM_68: tuple[int, ...] = (45, 42, 36, 39, 33)

# Outer eye corners: the normaliser of the NME landmark error.
OUTER_EYE_CORNERS: tuple[int, int] = (36, 45)


def _mirror_index() -> tuple[int, ...]:
    index = list(range(NUM_LANDMARKS))
    for a, b in LEFT_RIGHT_PAIRS:
        index[a], index[b] = b, a
    return tuple(index)


# Point i of a horizontally flipped face is point MIRROR_INDEX[i] of the original, reflected.
MIRROR_INDEX: tuple[int, ...] = _mirror_index()
assert sorted(MIDLINE + tuple(i for p in LEFT_RIGHT_PAIRS for i in p)) == list(range(NUM_LANDMARKS))


def mirror(points: torch.Tensor) -> torch.Tensor:
    """Landmarks of the horizontally flipped image, in normalised units."""
    flipped = points[..., MIRROR_INDEX, :].clone()
    flipped[..., 0] = 1.0 - flipped[..., 0]
    return flipped


def to_pixels(points: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised units -> pixel coordinates (pixel centres at integers) of a side-``size`` image."""
    return points * size - 0.5


def to_normalised(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates of a side-``size`` image -> normalised units."""
    return (points + 0.5) / size


def symmetric_mean(points: torch.Tensor) -> torch.Tensor:
    """Mean face of ``(N, 68, 2)`` normalised landmarks, made exactly mirror-symmetric.

    Averaging each face with its mirror image gives a template that is level and centred
    on x = 0.5, so the symmetry and tilt losses are zero on it.
    """
    both = torch.cat([points, mirror(points)])
    return both.mean(0)


def mean_face() -> torch.Tensor:
    """The packaged frontal template ``(68, 2)``: the canonical landmarks of the texture loss and
    Cole's mean geometry when a dataset brings none (made by tools/make_mean_face.py)."""
    data = json.loads(files("frontalab.models").joinpath("mean_face_68.json").read_text())
    return torch.tensor(data["points"], dtype=torch.float32)


# The face's outline: the jaw from ear to ear, then the eyebrows back from the image-right end.
JAW: tuple[int, ...] = tuple(range(0, 17))
BROWS_RIGHT_TO_LEFT: tuple[int, ...] = tuple(range(26, 16, -1))


def face_outline(points: torch.Tensor, forehead: float = 0.25) -> torch.Tensor:
    """The face's outline ``(..., 27, 2)``: the jaw, then the eyebrows raised by ``forehead`` times the
    nose-bridge-to-chin height, so the region holds a forehead and not only the landmarks' hull."""
    lift = forehead * (points[..., 8, 1] - points[..., 27, 1])
    brows = points[..., list(BROWS_RIGHT_TO_LEFT), :].clone()
    brows[..., 1] = brows[..., 1] - lift[..., None]
    return torch.cat([points[..., list(JAW), :], brows], dim=-2)


def face_region(points: torch.Tensor, size: int, supersample: int = 4, scale: float = 1.0) -> torch.Tensor:
    """A side-``size`` image ``(size, size)`` in [0, 1]: 1 inside the face outline of normalised ``(68, 2)``
    landmarks, 0 outside, with antialiased edges (the share of ``supersample``² sub-pixels inside).
    ``scale`` > 1 widens the outline about its centre, taking in hair, ears and the jaw's own line."""
    outline = face_outline(points.float())
    centre = outline.mean(dim=-2, keepdim=True)
    outline = centre + scale * (outline - centre)
    fine = size * supersample
    centres = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    # Even-odd rule: a point is inside when a ray to its right crosses the outline an odd number of times.
    ax, ay = (c[:, None, None] for c in outline.unbind(-1))
    bx, by = (c[:, None, None] for c in outline.roll(-1, dims=0).unbind(-1))
    dy = torch.where(by == ay, torch.full_like(by, 1e-12), by - ay)  # horizontal edges never cross
    crosses = ((ay > y) != (by > y)) & (x < ax + (y - ay) * (bx - ax) / dy)
    inside = (crosses.sum(0) % 2).float()
    return torch.nn.functional.avg_pool2d(inside[None, None], supersample)[0, 0]
