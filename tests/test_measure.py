"""The one measurement of outputs (`frontalab.measure`) that validation and `frontalab evaluate` share: known
answers for its pieces, and a flat output measured, not raised, by both."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from frontalab import measure as m
from frontalab.naming import DLIB_RESNET

NAMES = {"output_face_detected", "mean_abs_yaw", "mean_abs_pitch", "mean_mouth_opening", "identity_distance_mean",
         "identity_distance_median", "identity_distance_p95", "identity_within_threshold", "different_people_spread",
         "frontalization_score", "output_colour_cast"}


def test_mouth_opening_is_zero_for_closed_lips_and_scale_free():
    from frontalab.models import landmarks as lm

    face = lm.to_pixels(lm.mean_face(), 100).numpy()
    closed = face.copy()
    for a, b in lm.INNER_LIP_PAIRS:
        closed[b, 1] = closed[a, 1]
    assert m.mouth_opening(closed) == 0
    opened = closed.copy()
    for _, b in lm.INNER_LIP_PAIRS:
        opened[b, 1] += 9.0
    eyes = np.linalg.norm(face[lm.OUTER_EYE_CORNERS[1]] - face[lm.OUTER_EYE_CORNERS[0]])
    assert m.mouth_opening(opened) == pytest.approx(9.0 / eyes)
    assert m.mouth_opening(opened * 3) == pytest.approx(m.mouth_opening(opened))


def test_detail_and_colour_cast_have_known_answers():
    flat = np.full((64, 64, 3), 128, np.uint8)
    stripes = flat.copy()
    stripes[:, ::2] = 0  # a column-wise stripe pattern: all fine detail
    assert m.high_frequency_energy(flat) == 0.0 and m.high_frequency_energy(stripes) > 1e4
    assert m.colour_cast(stripes) == 0.0  # grey stays grey
    tinted = flat.copy()
    tinted[..., 0] = 158  # red 30 above the grey 128 of the others: mean departure (20 + 10 + 10) / 3
    assert m.colour_cast(tinted) == pytest.approx(40 / 3)


def test_summary_of_chosen_measurements_has_known_answers():
    inputs = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    outputs = m.Outputs(detected=np.array([True, True, False]),
                        pose=np.array([[2.0, -1.0, 0.1], [-4.0, 3.0, 0.3], [np.nan, np.nan, 0.2]]),
                        embeddings={"enc": inputs + [[0.3, 0.4], [0.0, 0.0], [0.0, 1.0]]},
                        detail=np.zeros(3), cast=np.array([1.0, 2.0, 6.0]))
    numbers = m.summarise_outputs(outputs, "enc", inputs, threshold=0.6, different=np.array([[0, 1], [0, 2], [1, 2]]))
    assert set(numbers) == NAMES
    assert numbers["output_face_detected"] == pytest.approx(2 / 3)
    assert numbers["mean_abs_yaw"] == 3.0 and numbers["mean_abs_pitch"] == 2.0  # the NaN pose skipped
    assert numbers["mean_mouth_opening"] == pytest.approx(0.2) and numbers["output_colour_cast"] == 3.0
    assert numbers["identity_distance_mean"] == pytest.approx(0.5) and numbers["identity_distance_median"] == 0.5
    assert numbers["identity_within_threshold"] == pytest.approx(2 / 3)  # distances 0.5, 0, 1


@pytest.fixture(scope="module")
def readers():
    from frontalab.data.teacher import LandmarkTeacher
    from frontalab.models.encoders import build_encoder

    return LandmarkTeacher(), build_encoder(DLIB_RESNET)


def test_a_flat_output_is_measured_not_raised(readers):
    teacher, encoder = readers
    flat = np.stack([np.full((64, 64, 3), value, np.uint8) for value in (0, 128, 255)])
    measured = m.measure_outputs(teacher, flat, (encoder,))
    assert not measured.detected.any()
    assert measured.embeddings[DLIB_RESNET].shape == (3, 128) and np.isfinite(measured.embeddings[DLIB_RESNET]).all()
    inputs = np.random.default_rng(0).normal(size=(3, 128)) * 0.1
    numbers = m.summarise_outputs(measured, DLIB_RESNET, inputs, 0.6, np.array([[0, 1], [0, 2], [1, 2]]))
    assert set(numbers) == NAMES
    assert numbers["output_face_detected"] == 0 and numbers["frontalization_score"] == 0


class FlatFrontalizer:
    """A model stand-in whose every output is one grey image."""

    takes_texture = False

    def __init__(self, teacher, encoder):
        self.teacher, self.encoder = teacher, encoder

    def frontalize_chips(self, chips: np.ndarray, textures) -> np.ndarray:
        return np.full((len(chips), 64, 64, 3), 128, np.uint8)


def test_evaluate_measures_flat_outputs_as_validation_names_them(readers, faces_root):
    """`frontalab evaluate` of a model whose outputs are flat: measured (no face, score 0), not raised, under the
    names validation logs (test_selection.py's white outputs are the same case in validation)."""
    from frontalab.evaluation.run import ModelUnderTest, run_faces, select_people, summarise

    teacher, encoder = readers
    people = select_people(faces_root / "lfw-gray", min_photos=2, max_per_person=2, max_people=3, seed=0)
    faces = run_faces(ModelUnderTest(FlatFrontalizer(teacher, encoder), "flat"), encoder, people, 4, Counter())
    results, _ = summarise(faces, encoder.same_identity_threshold, seed=0)
    assert NAMES <= set(results)
    assert results["output_face_detected"] == 0 and results["frontalization_score"] == 0
    assert results["output_colour_cast"] == 0
