"""The thesis' loose face crop (§5.1): a square centred on the face, the face filling 0.625 of it."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from frontalab.data.teacher import Box


def loose_crop_box(points68: np.ndarray, face_ratio: float = 0.625) -> Box:
    """Square box centred on the landmarks' bounding box, whose side is the face's / face_ratio.

    Landmarks rather than detector boxes define the face: they are stable across detectors
    and give every crop of a dataset the same framing.
    """
    lo, hi = points68.min(0), points68.max(0)
    cx, cy = (lo + hi) / 2
    half = float(max(hi - lo)) / face_ratio / 2
    return Box(cx - half, cy - half, cx + half, cy + half)


def crop(rgb: np.ndarray, box: Box, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Resample the square ``box`` of ``rgb`` to ``size``x``size``; outside the photo, edges replicate.

    Returns the crop and the affine map of pixel points into it, ``p_crop = scale * p + shift``
    (pixel centres at integers). Large reductions first shrink with area averaging, so the
    crop does not alias.
    """
    scale = size / (box.right - box.left)
    src = rgb
    sx = sy = 1.0
    if scale < 0.5:
        src = cv2.resize(rgb, None, fx=scale * 2, fy=scale * 2, interpolation=cv2.INTER_AREA)
        sy, sx = src.shape[0] / rgb.shape[0], src.shape[1] / rgb.shape[1]
    # Edge-based coordinates u = p + 0.5: u_crop = (u - box corner) * scale.
    m = np.array([[scale / sx, 0.0, scale * (0.5 / sx - box.left) - 0.5],
                  [0.0, scale / sy, scale * (0.5 / sy - box.top) - 0.5]])
    out = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    shift = np.array([scale * (0.5 - box.left) - 0.5, scale * (0.5 - box.top) - 0.5], dtype=np.float64)
    return out, scale, shift


def points_to_crop(points: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    """Pixel points of the photo -> pixel points of the crop made by `crop`."""
    return (points * scale + shift).astype(np.float32)


def encoder_chip(teacher, rgb: np.ndarray, box: Box, encoder, points68: Optional[np.ndarray] = None) -> np.ndarray:
    """The (s, s, 3) uint8 input of ``encoder`` for the face in ``box`` of a photo, by the encoder's
    policy (`FaceEncoder.aligned_chip`): dlib's aligned chip, or the loose crop (default face ratio)
    resampled straight to the encoder's side. ``points68``: the teacher's 68 points of that face, when read
    already."""
    if encoder.aligned_chip:
        return teacher.chip(rgb, box, encoder.input_size, encoder.chip_padding)
    points = teacher.landmarks68(rgb, box) if points68 is None else points68
    face, _, _ = crop(rgb, loose_crop_box(points), encoder.input_size)
    return face
