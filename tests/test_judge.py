"""The independent judge: the torch port against TF.js, the line-up's known answers, and the refusals
that keep it out of training and selection."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from frontalab.evaluation import metrics as m

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def judge():
    from frontalab.evaluation.judge import FaceResJudge

    return FaceResJudge()


def test_port_matches_tfjs_on_the_same_inputs(judge):
    """tools/judge_reference.py ran the npm package's graph in TF.js on these inputs; the port agrees."""
    from frontalab.paths import faces_dir

    sys.path.insert(0, str(ROOT / "tools"))
    from judge_reference import reference_input

    reference = json.loads((ROOT / "tests" / "fixtures" / "judge_reference.json").read_text())
    photos = [faces_dir() / case["photo"] for case in reference["cases"]]
    if not all(p.is_file() for p in photos):
        pytest.skip(f"the reference photos are not under {faces_dir()}")
    inputs = np.stack([reference_input(p, case["tint"]) for p, case in zip(photos, reference["cases"])])
    with torch.no_grad():
        ours = judge.net(torch.from_numpy(inputs).permute(0, 3, 1, 2)).numpy()
    theirs = np.array([case["descriptor"] for case in reference["cases"]])
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.999, cosine
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()
    # Different people are not one vector (the package's mobilefacenet is: the same output for any input).
    assert cosine.size == 5 and np.corrcoef(ours)[0, 2] < 0.95


def test_judge_embeds_unit_vectors_and_tells_people_apart(judge):
    from frontalab.data.decode import decode
    from frontalab.data.teacher import LandmarkTeacher
    from frontalab.paths import faces_dir

    root = faces_dir() / "lfw-gray"
    photos = [root / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 2)] + [root / "AJ_Cook" / "AJ_Cook_0001.jpg"]
    if not all(p.is_file() for p in photos):
        pytest.skip(f"no LFW photos under {root}")
    teacher = LandmarkTeacher()
    chips = []
    for p in photos:
        rgb, _ = decode(p.read_bytes())
        box, _ = teacher.central_face(rgb)
        chips.append(teacher.chip(rgb, box, judge.input_size, judge.chip_padding))
    with torch.no_grad():
        emb = judge.embed(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    same, different = judge.distance(emb[0], emb[1]), judge.distance(emb[0], emb[2])
    assert same < judge.same_identity_threshold < different
    white = judge.embed(torch.ones(1, 3, 224, 224))
    assert judge.distance(white[0], emb[0]) > judge.same_identity_threshold  # a blank output is nobody


def clusters(people: int, per_person: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(people), per_person)
    return rng.normal(size=(people, 16))[person] + rng.normal(size=(len(person), 16)) * spread, person


def test_lineup_of_photos_as_their_own_outputs_is_the_photos_rank1():
    photos, person = clusters(150, 2, 0.05)
    rank1, size = m.lineup_rank1(photos, photos, person)
    assert (rank1, size) == (1.0, 100)  # well-separated people: each photo's other photo wins
    measures = m.identity_measures(photos, photos.copy(), person, threshold=0.5, seed=0)
    assert measures["lineup_rank1"] == measures["photos"]["lineup_rank1"] == 1.0
    assert measures["auc_output_vs_photos"] == measures["photos"]["auc_output_vs_photos"] == 1.0
    assert measures["within_threshold"] == 1.0


def test_one_face_for_everyone_scores_chance():
    photos, person = clusters(150, 2, 0.05)
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)  # every photo at distance 1 from the origin
    one_face = np.zeros_like(photos)  # every output the same face, as near to each person as to any other
    rank1, size = m.lineup_rank1(one_face, photos, person)
    assert size == 100 and rank1 == pytest.approx(1 / 100)
    assert m.auc_output_vs_photos(one_face, photos, person) == 0.5
    assert m.identity_measures(photos, one_face, person, threshold=0.5, seed=0)["within_threshold"] == 0.0


def test_lineup_ties_count_as_a_share_of_the_first_place():
    photos = np.zeros((4, 2))
    person = np.array([0, 0, 1, 1])
    rank1, size = m.lineup_rank1(photos, photos, person, size=2)
    assert size == 2 and rank1 == 0.5  # own and the other person tie: half a hit each


def test_lineup_needs_a_second_photo():
    with pytest.raises(ValueError, match="two photos"):
        m.lineup_rank1(np.eye(3), np.eye(3), np.array([0, 1, 2]))


def test_equal_error_threshold_separates_known_distances():
    distances = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([True, True, True, False, False, False])
    threshold, eer = m.equal_error_threshold(distances, same)
    assert 0.3 < threshold <= 0.7 and eer == 0.0


# ---------------------------------------------------------------- the judge cannot train or select


@pytest.mark.parametrize("key", ["encoder.name", "prepare.encoders=[hse-faceres]", "evaluate.encoder"])
def test_config_refuses_the_judge_as_an_encoder(key):
    from conftest import run_cli

    item = key if "=" in key else f"{key}=hse-faceres"
    out = run_cli("config", item, check=False, timeout=120)
    assert out.returncode == 2
    assert "hse-faceres is the independent judge" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_promote_refuses_to_select_by_the_judge():
    from frontalab.sections import ConfigError
    from frontalab.serving.promotion import best_trial_run

    with pytest.raises(ConfigError, match="grades evaluations only"):
        best_trial_run(None, "any-sweep", "eval/hse-faceres/outputs/lineup_rank1", "max")


def test_import_contract_breaks_when_training_imports_the_judge(tmp_path):
    """A copy of the package in which a training module imports the judge fails `lint-imports`."""
    shutil.copytree(ROOT / "frontalab", tmp_path / "frontalab", ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "frontalab" / "training" / "sneaky.py").write_text("from frontalab.evaluation.judge import FaceResJudge\n")
    lint = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([str(lint), "--config", "pyproject.toml"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    assert "frontalab.training.sneaky -> frontalab.evaluation.judge" in out.stdout
    assert "The judge is evaluation only" in out.stdout and "BROKEN" in out.stdout


def test_lineup_command_lines_up_and_draws_three_columns(tmp_path):
    from PIL import Image

    from conftest import run_cli
    from frontalab.paths import faces_dir

    if not (faces_dir() / "lfw-gray").is_dir():
        pytest.skip(f"no LFW under {faces_dir()}")
    out = run_cli("lineup", "--model", "pretrained:thesis", "--people", "3", "--out", str(tmp_path), timeout=600)
    result = json.loads(out.stdout)
    assert result["people"] == 3 and result["judge"] == "hse-faceres"
    assert 0 <= result["picked_own"] <= 3 and result["photos_picked_own"] == 3  # real second photos: all found
    assert len(result["picks"]) == 3 and set(result["picks"].values()) <= set(result["picks"])  # picks among the 3
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 128, 3 * 128)  # first photo | output | second photo, a row per person
