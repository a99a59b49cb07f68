"""`frontalab evaluate`'s metrics, with known answers, and its pose reading on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from frontalab.data.teacher import canonical_box, read_output
from frontalab import evaluation as ev
from frontalab.measure import Outputs, measure_outputs
from frontalab.naming import DLIB_RESNET
from frontalab.sections import ConfigError


def faces_of(person, emb_in, emb_out, pose_in, pose_out) -> ev.Faces:
    """Evaluated faces with chosen embeddings and poses (every output a detected face, flat and grey)."""
    n = len(person)
    out = Outputs(detected=np.ones(n, bool), pose=np.array(pose_out, float), embeddings={DLIB_RESNET: np.array(emb_out)},
                  detail=np.zeros(n), cast=np.zeros(n))
    return ev.Faces(person=list(person), emb_in=list(emb_in), pose_in=list(pose_in), outputs=[out])


def test_auc_known_answers():
    assert ev.roc_auc([3, 4, 1, 2], [True, True, False, False]) == 1.0
    assert ev.roc_auc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    # positives {1, 3}, negatives {2, 4}: of the 4 (pos, neg) orderings only 3 > 2 wins.
    assert ev.roc_auc([1, 3, 2, 4], [True, True, False, False]) == 0.25
    assert ev.roc_auc([5, 5, 5, 5], [True, False, True, False]) == 0.5  # ties count half
    with pytest.raises(ValueError):
        ev.roc_auc([1, 2], [True, True])


def test_auc_matches_the_area_under_its_own_curve():
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.4
    scores = rng.normal(positive * 1.0, 1.0)  # separated by one standard deviation
    fpr, tpr = ev.roc_curve(scores, positive)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert ev.roc_auc(scores, positive) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)
    # The binormal model's AUC is Phi(1 / sqrt 2) = 0.760; 400 samples land near it.
    assert ev.roc_auc(scores, positive) == pytest.approx(0.760, abs=0.05)


def test_weights_count_a_pair_that_many_times():
    rng = np.random.default_rng(3)
    scores, positive = rng.normal(size=40), rng.random(40) < 0.5
    weights = rng.integers(0, 4, 40)
    repeated = np.repeat(np.arange(40), weights)
    assert ev.roc_auc(scores, positive, weights) == pytest.approx(ev.roc_auc(scores[repeated], positive[repeated]))


def test_auc_interval_over_people_brackets_the_auc():
    rng = np.random.default_rng(0)
    person = np.repeat(np.arange(60), 3)
    emb = rng.normal(size=(60, 8))[person] + rng.normal(scale=0.9, size=(180, 8))  # people overlap a little
    pairs, same = ev.verification_pairs(person, seed=0)
    scores = -ev.pair_distances(emb, pairs)
    auc = ev.roc_auc(scores, same)
    low, high = ev.auc_interval(scores, same, pairs, person, seed=0)
    assert low < auc < high and 0.005 < high - low < 0.2
    apart = -ev.pair_distances(np.eye(60)[person] * 10, pairs)  # perfectly separated: no uncertainty
    assert ev.auc_interval(apart, same, pairs, person, seed=0) == (1.0, 1.0)


def test_roc_curve_moves_tied_scores_together():
    # A collapsed generator: every pair at the same distance. The curve is the diagonal, like its AUC.
    fpr, tpr = ev.roc_curve(np.zeros(6), np.array([True, True, True, False, False, False]))
    assert fpr.tolist() == [0, 1] and tpr.tolist() == [0, 1]


def test_verification_pairs_are_all_same_pairs_and_as_many_different_ones():
    person = np.array([0, 0, 0, 1, 1, 2])
    pairs, same = ev.verification_pairs(person, seed=0)
    assert sorted(map(tuple, pairs[same].tolist())) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    different = pairs[~same]
    assert len(different) == 4 and len(set(map(tuple, different.tolist()))) == 4
    assert all(person[i] != person[j] for i, j in different)
    again, _ = ev.verification_pairs(person, seed=0)
    assert np.array_equal(pairs, again)  # fixed seed, fixed pairs
    with pytest.raises(ValueError):
        ev.verification_pairs(np.array([0, 1, 2]), seed=0)


def test_identical_outputs_are_at_distance_zero_and_all_within_threshold():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(12, 128)) * 0.1
    faces = faces_of([i // 3 for i in range(12)], emb, emb.copy(), [(10.0, 5.0, 0.1)] * 12, [(-2.0, 1.0, 0.0)] * 12)
    results, arrays = ev.summarise(faces, threshold=0.6, seed=0)
    assert np.all(arrays["identity"] == 0)
    assert results["identity_within_threshold"] == 1.0
    assert results["auc_outputs"] == results["auc_inputs"]
    assert results["normalized_share"] == 0.0  # equal spread is not closer
    assert results["mean_abs_yaw"] == 2.0 and results["inputs_mean_abs_yaw"] == 10.0
    assert (results["n_faces"], results["n_people"]) == (12, 4)


def test_outputs_that_keep_people_apart_verify_perfectly():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 32))
    person = np.repeat(np.arange(6), 3)
    inputs = centres[person] + rng.normal(size=(18, 32)) * 2.0  # noisy photos: some pairs confused
    outputs = centres[person] + rng.normal(size=(18, 32)) * 0.01  # a perfect normaliser
    faces = faces_of(person.tolist(), inputs, outputs, [(0.0, 0.0, 0.0)] * 18, [(0.0, 0.0, 0.0)] * 18)
    results, _ = ev.summarise(faces, threshold=0.6, seed=0)
    assert results["auc_outputs"] == 1.0 and results["auc_inputs"] < 1.0
    assert results["normalized_share"] == 1.0 and results["different_people_spread"] < 1.0


def test_too_few_people_is_a_clear_error():
    faces = faces_of([0, 0, 1], np.eye(3), np.eye(3), [(0.0, 0.0, 0.0)] * 3, [(0.0, 0.0, 0.0)] * 3)
    with pytest.raises(ConfigError, match="1 people have 2\\+ faces"):
        ev.summarise(faces, threshold=0.6, seed=0)


def test_normalisation_counts_people_pulled_together():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 16))
    person = np.repeat(np.arange(5), 4)
    inputs = centres[person] + rng.normal(size=(20, 16))
    # Outputs of people 0-2 shrink towards their centre, those of 3-4 spread out.
    factor = np.where(person < 3, 0.5, 2.0)[:, None]
    outputs = centres[person] + (inputs - centres[person]) * factor
    assert ev.normalized_share(inputs, outputs, person) == pytest.approx(3 / 5)
    spread = ev.spread_per_person(outputs, person)
    assert spread[0] == pytest.approx(ev.spread_per_person(inputs, person)[0] * 0.5)


@pytest.fixture(scope="module")
def teacher():
    from frontalab.data.teacher import LandmarkTeacher

    return LandmarkTeacher()


def _output_like(teacher, photo):
    """A real face framed as the decoder frames its output (the loose crop at 64 px), or None."""
    from frontalab.data.crop import crop, loose_crop_box
    from frontalab.data.decode import decode

    rgb, _ = decode(photo.read_bytes())
    boxes = teacher.detect(rgb)
    if not boxes:
        return None
    face, _, _ = crop(rgb, loose_crop_box(teacher.landmarks68(rgb, boxes[0])), 64)
    return face


def test_mirrored_face_gives_mirrored_yaw(teacher, faces_root):
    """dlib's points on a 64 px face are not exactly mirror-equivariant, so the check is statistical:
    over 60 LFW faces the mirror's yaw is the negated yaw (median error 1.5 deg when written)."""
    yaws, mirrored, pitch_gap = [], [], []
    for photo in sorted((faces_root / "lfw-gray").glob("*/*.jpg"))[:60]:
        face = _output_like(teacher, photo)
        if face is None:
            continue
        yaw, pitch, _ = measure_outputs(teacher, face[None], ()).pose[0]
        m_yaw, m_pitch, _ = measure_outputs(teacher, np.ascontiguousarray(face[None, :, ::-1]), ()).pose[0]
        yaws.append(yaw)
        mirrored.append(m_yaw)
        pitch_gap.append(abs(pitch - m_pitch))
    yaws, mirrored = np.array(yaws), np.array(mirrored)
    assert len(yaws) >= 40
    turned = np.abs(yaws) > 10
    assert turned.sum() >= 5 and np.mean(np.sign(mirrored[turned]) == -np.sign(yaws[turned])) >= 0.9
    assert np.median(np.abs(yaws + mirrored)) < 3.0
    assert np.corrcoef(yaws, -mirrored)[0, 1] > 0.85
    assert np.median(pitch_gap) < 3.0  # a mirror leaves pitch alone


def test_outputs_are_read_in_the_detected_box_else_the_canonical_one(teacher, faces_root):
    faces = [_output_like(teacher, p) for p in sorted((faces_root / "lfw-gray").glob("*/*.jpg"))[:30]]
    faces = [f for f in faces if f is not None]
    found = [read_output(teacher, f)[2] for f in faces]
    assert np.mean(found) >= 0.9  # real faces framed as outputs are found at 4x
    view, box, detected = read_output(teacher, np.full((64, 64, 3), 128, np.uint8))  # no face
    assert not detected and box == canonical_box(256) and view.shape == (256, 256, 3)


def test_people_selection(tmp_path):
    for name, n in (("Ann", 3), ("Bob", 1), ("Cid", 12), ("Dee", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a person")
    people = ev.select_people(tmp_path, min_photos=2, max_per_person=10, max_people=0, seed=0)
    assert [(p, len(f)) for p, f in people] == [("Ann", 3), ("Cid", 10), ("Dee", 2)]
    sample = ev.select_people(tmp_path, 2, 10, max_people=2, seed=0)
    assert len(sample) == 2 and sample == ev.select_people(tmp_path, 2, 10, max_people=2, seed=0)
    with pytest.raises(ConfigError, match="one folder per person"):
        ev.select_people(tmp_path / "Ann", 2, 10, 0, 0)


# ---------------------------------------------------------------- the command, end to end


@pytest.fixture(scope="module")
def trained_run(small_dataset, embedded_services, tmp_path_factory):
    """A 20-step tracked trial: an MLflow run with a checkpoint artifact."""
    import json

    from conftest import run_cli, service_overrides

    cfg, _ = embedded_services
    ckpt = tmp_path_factory.mktemp("ckpt_eval")
    out = run_cli("train", "model.out_size=64", f"data.path={small_dataset}", "train.steps=20", "train.batch_size=4",
                  "train.val_faces=4", "train.val_every=20", "train.checkpoint_every=20", f"train.checkpoint_dir={ckpt}",
                  "tracking.experiment=test-evaluate", *service_overrides(cfg))
    return json.loads(out.stdout)["run_id"], ckpt


@pytest.fixture(scope="module")
def lfw_subset(faces_root, tmp_path_factory):
    """5 LFW people with 3 photos each, plus a corrupt photo in one of them."""
    root = tmp_path_factory.mktemp("lfw_subset")
    people = [p for p in sorted((faces_root / "lfw-gray").iterdir()) if len(list(p.glob("*.jpg"))) >= 3][:5]
    for person in people:
        (root / person.name).mkdir()
        for photo in sorted(person.glob("*.jpg"))[:3]:
            (root / person.name / photo.name).symlink_to(photo)
    (root / people[0].name / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_evaluate_command_writes_json_report_and_linked_mlflow_run(trained_run, lfw_subset, embedded_services, tmp_path):
    import json

    import requests

    from conftest import run_cli, service_overrides

    run_id, _ = trained_run
    cfg, endpoints = embedded_services
    out = run_cli("evaluate", "--model", run_id, "--faces", str(lfw_subset), "--json", str(tmp_path / "h.json"),
                  "--out", str(tmp_path / "report"), "--label", "e2e", "evaluate.experiment=test-evaluations",
                  *service_overrides(cfg))
    headline = json.loads((tmp_path / "h.json").read_text())
    assert set(headline) == set(ev.HEADLINE)
    assert headline["n_people"] == 5 and headline["n_faces"] <= 15
    for key in ("identity_within_threshold", "normalized_share", "auc_outputs", "auc_inputs"):
        assert 0 <= headline[key] <= 1
    full = json.loads(out.stdout)
    assert set(full["skipped"]) & {"not_an_image", "truncated", "corrupt"}  # the broken photo, counted
    assert full["photos"] == 16 and full["n_faces"] + sum(full["skipped"].values()) == 16
    for name in ("report.md", "pairs.png", "identity_distance.png", "roc.png", "pair_distances.png", "yaw.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    run = requests.get(f"{endpoints.mlflow}/api/2.0/mlflow/runs/get", params={"run_id": full["run_id"]}, timeout=30).json()["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["frontalab.role"] == "evaluation" and tags["source_run"] == run_id and tags["frontalab.label"] == "e2e"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["eval/n_people"] == 5 and metrics["eval/auc_inputs"] == pytest.approx(headline["auc_inputs"])


def test_evaluate_rejects_what_is_not_a_model(lfw_subset, tmp_path):
    from conftest import run_cli

    out = run_cli("evaluate", "--model", str(tmp_path / "nothing.pt"), "--faces", str(lfw_subset),
                  "evaluate.track=false", check=False)
    assert out.returncode == 2 and "neither pretrained:NAME, models:/" in out.stderr


def test_input_baseline_keeps_identity_far_better_than_an_untrained_model(lfw_subset, tmp_path):
    """input:64 (each photo's own crop at 64 px) bounds what a 64 px output can keep of identity."""
    import json

    from conftest import run_cli

    out = run_cli("evaluate", "--model", "input:64", "--faces", str(lfw_subset), "--out", str(tmp_path / "r"),
                  "evaluate.track=false")
    baseline = json.loads(out.stdout)
    assert baseline["identity_within_threshold"] >= 0.9 and baseline["identity_distance_median"] < 0.35
    # No frontalization: the baseline's faces keep the inputs' pose.
    assert baseline["mean_abs_yaw"] == pytest.approx(baseline["inputs_mean_abs_yaw"], abs=4.0)


def test_warp_baseline_is_the_input_warped_to_the_canonical_face_on_white(lfw_photos):
    """`warp:SIZE`: what an input-texture decoder draws before any training, so evaluations show what training added."""
    from frontalab.data.decode import decode

    model = ev.load_model("warp:64")
    rgb, _ = decode(lfw_photos[0].read_bytes())
    box, _ = model.frontalizer.teacher.central_face(rgb)
    out = model.frontalizer.crop(rgb, box)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:3, :3] == 255).all() and (out[-3:, :3] == 255).all()  # outside the face region: white
    assert out[24:40, 24:40].std() > 5  # inside: the photo's own face, not a flat fill
