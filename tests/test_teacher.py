"""The landmark teacher's head pose and the loose crop, on real faces."""

import numpy as np
import pytest
from PIL import Image

from frontalab.data.crop import crop, loose_crop_box, points_to_crop
from frontalab.data.teacher import LandmarkTeacher, head_pose
from frontalab.paths import faces_dir

FACES = faces_dir()
pytestmark = pytest.mark.skipif(not (FACES / "lfw-gray").is_dir(), reason=f"no faces at {FACES}")


@pytest.fixture(scope="module")
def teacher():
    return LandmarkTeacher()


def pose_of(teacher, rgb):
    boxes = teacher.detect(rgb)
    assert boxes, "no face"
    box = min(boxes, key=lambda b: abs(b.centre[0] - rgb.shape[1] / 2))
    return head_pose(teacher.landmarks68(rgb, box), rgb.shape[:2])


def photos(n=150):
    return sorted((FACES / "lfw-gray").glob("*/*.jpg"))[:n]


def test_frontal_face_mirror_and_turned_face(teacher):
    poses = []
    for p in photos():
        rgb = np.asarray(Image.open(p).convert("RGB"))
        if len(teacher.detect(rgb)) == 1:
            poses.append((p, rgb, pose_of(teacher, rgb)))
    frontal = min(poses, key=lambda t: abs(t[2][0]))
    turned = max(poses, key=lambda t: abs(t[2][0]))
    print(f"\nmost frontal {frontal[0].name}: yaw {frontal[2][0]:.1f}; most turned {turned[0].name}: yaw {turned[2][0]:.1f}")
    assert abs(frontal[2][0]) <= 10
    assert abs(turned[2][0]) > 20
    for _, rgb, (yaw, pitch, roll) in [turned] + poses[:20]:
        m_yaw, m_pitch, m_roll = pose_of(teacher, np.ascontiguousarray(rgb[:, ::-1]))
        # The mirror flips yaw and roll, keeps pitch (within the teacher's own noise).
        if abs(yaw) > 5:
            assert np.sign(m_yaw) == -np.sign(yaw), (yaw, m_yaw)
        assert abs(m_yaw + yaw) < 6 and abs(m_pitch - pitch) < 6


def test_loose_crop_maps_landmarks_with_the_pixels(teacher):
    rgb = np.asarray(Image.open(photos(1)[0]).convert("RGB"))
    box = teacher.detect(rgb)[0]
    points = teacher.landmarks68(rgb, box)
    square = loose_crop_box(points, 0.625)
    assert square.right - square.left == pytest.approx((points.max(0) - points.min(0)).max() / 0.625)
    face, scale, shift = crop(rgb, square, 160)
    moved = points_to_crop(points, scale, shift)
    # The teacher on the crop finds (nearly) the transformed landmarks: the map is right.
    again = teacher.landmarks68(face, teacher.detect(face)[0])
    eye = np.linalg.norm(moved[36] - moved[45])
    assert np.linalg.norm(again - moved, axis=1).mean() / eye < 0.05
