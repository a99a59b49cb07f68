"""A frontalizer's outputs, measured one way and named once: by validation (`frontalab.training.trial`) and by
`frontalab evaluate` (`frontalab.evaluation.run`).

An output is read as a photo is read: upscaled for the landmark teacher (`read_output`), its face found by the
teacher's detector (else read at the canonical box, where the decoder puts the face), its 68 points, its pose and
mouth, and a chip for each encoder cut at those points. A degenerate output (a flat image) is measured, never
raised: no face found, a NaN pose that the means skip.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from frontalab.data.crop import encoder_chip
from frontalab.data.teacher import LandmarkTeacher, head_pose, read_output
from frontalab.metrics import different_people_spread, frontalization_score
from frontalab.models import landmarks as lm
from frontalab.models.images import to_tensor


def mouth_opening(points68: np.ndarray) -> float:
    """Mean inner-lip gap over the outer-eye-corner distance: 0 for closed lips, scale-free."""
    upper = [a for a, _ in lm.INNER_LIP_PAIRS]
    lower = [b for _, b in lm.INNER_LIP_PAIRS]
    gap = np.abs(points68[lower, 1] - points68[upper, 1]).mean()
    left, right = lm.OUTER_EYE_CORNERS
    return float(gap / np.linalg.norm(points68[right] - points68[left]))


def high_frequency_energy(rgb: np.ndarray) -> float:
    """Mean squared Laplacian of an image's grey levels (0-255) over its central half: how much fine detail
    a face holds where the face is (outputs and loose crops centre it), the border left out."""
    grey = np.asarray(rgb, dtype=np.float64).mean(-1)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    h, w = laplacian.shape
    return float((laplacian[h // 4: h - h // 4, w // 4: w - w // 4] ** 2).mean())


def colour_cast(rgb: np.ndarray) -> float:
    """Mean absolute departure of the channels from their grey level (0-255) over the central half: 0 for a
    grey image, so grey photos should give outputs near 0 ("grey in, grey out")."""
    image = np.asarray(rgb, dtype=np.float64)
    h, w = image.shape[:2]
    centre = image[h // 4: h - h // 4, w // 4: w - w // 4]
    return float(np.abs(centre - centre.mean(-1, keepdims=True)).mean())


def pose_and_mouth(points68: np.ndarray, image_shape: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, mouth opening) of a face from the teacher's 68 points in an image of ``image_shape``; NaN
    pose when no pose fits the points (the means skip it)."""
    try:
        yaw, pitch, _ = head_pose(points68, image_shape)
    except ValueError:
        yaw = pitch = float("nan")
    return yaw, pitch, mouth_opening(points68)


def embed(encoder, chips: list[np.ndarray]) -> np.ndarray:
    """(N, D) embeddings of (N, s, s, 3) uint8 encoder chips."""
    with torch.no_grad():
        return encoder.embed(to_tensor(np.stack(chips)).to(next(encoder.parameters()).device)).cpu().numpy()


@dataclass
class Outputs:
    """What was measured of each output (row i of every array: output i)."""
    detected: np.ndarray  # (N,) bool: the teacher's detector finds a face
    pose: np.ndarray  # (N, 3): yaw and pitch in degrees (NaN where no pose fits), mouth opening
    embeddings: dict[str, np.ndarray]  # encoder name -> (N, D): each encoder's chip of the output
    detail: np.ndarray  # (N,) `high_frequency_energy`
    cast: np.ndarray  # (N,) `colour_cast`

    @staticmethod
    def concat(parts: Sequence[Outputs]) -> Outputs:
        return Outputs(np.concatenate([p.detected for p in parts]), np.concatenate([p.pose for p in parts]),
                       {name: np.concatenate([p.embeddings[name] for p in parts]) for name in parts[0].embeddings},
                       np.concatenate([p.detail for p in parts]), np.concatenate([p.cast for p in parts]))


def measure_outputs(teacher: LandmarkTeacher, outputs: np.ndarray, encoders: Sequence) -> Outputs:
    """Measure ``outputs`` ((N, S, S, 3) uint8), embedding each by every one of ``encoders``."""
    detected, pose, detail, cast = [], [], [], []
    chips: dict[str, list[np.ndarray]] = {e.name: [] for e in encoders}
    for out in outputs:
        view, box, found = read_output(teacher, out)
        points = teacher.landmarks68(view, box)
        detected.append(found)
        pose.append(pose_and_mouth(points, view.shape[:2]))
        detail.append(high_frequency_energy(out))
        cast.append(colour_cast(out))
        for e in encoders:
            chips[e.name].append(encoder_chip(teacher, view, box, e, points))
    return Outputs(np.array(detected, bool), np.array(pose, np.float64).reshape(-1, 3),
                   {e.name: embed(e, chips[e.name]) for e in encoders},
                   np.array(detail), np.array(cast))


def _mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN; NaN when none is (no pose fitted any output)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if len(values) else float("nan")


def summarise_outputs(outputs: Outputs, encoder: str, inputs: np.ndarray, threshold: float,
                      different: np.ndarray) -> dict[str, float]:
    """The outputs' numbers, by ``encoder`` (whose embeddings of the inputs, row for row, are ``inputs`` and whose
    same-person threshold is ``threshold``), over the index pairs ``different`` (M, 2) of different people.
    These names are validation's (``val/NAME``) and the evaluation's."""
    distance = np.linalg.norm(inputs - outputs.embeddings[encoder], axis=1)
    face_share = float(outputs.detected.mean())
    spread = different_people_spread(inputs, outputs.embeddings[encoder], different)
    return {
        # Pose read off an output that is no face is the template's: read yaw with this share.
        "output_face_detected": face_share,
        "mean_abs_yaw": _mean(np.abs(outputs.pose[:, 0])),
        "mean_abs_pitch": _mean(np.abs(outputs.pose[:, 1])),
        "mean_mouth_opening": _mean(outputs.pose[:, 2]),
        "identity_distance_mean": float(distance.mean()),
        "identity_distance_median": float(np.median(distance)),
        "identity_distance_p95": float(np.percentile(distance, 95)),
        "identity_within_threshold": float((distance < threshold).mean()),
        # Outputs all alike would be "normalised" and make pose read as frontal: how far apart do different
        # people's outputs stay, relative to their inputs? (1 = as distinct as the photos)
        "different_people_spread": spread,
        "frontalization_score": frontalization_score(face_share, spread, float(distance.mean()), threshold),
        "output_colour_cast": _mean(outputs.cast),
    }
