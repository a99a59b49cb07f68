"""The champions shipped in the package: frontal faces from a fresh install, no services, nothing to train."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import run_cli
from frontalab.models import pretrained


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_each_champion_ships_with_its_provenance_and_loads_as_tensors_only(name):
    path = pretrained.checkpoint_path(f"pretrained:{name}")
    blob = torch.load(path, weights_only=True)  # nothing in it is code
    assert blob["config"]["model"]["decoder"] == name and blob["step"] > 0
    side = pretrained.sidecar(name)
    assert side["recipe"].startswith("frontalab ") and re.search(rf"sweeps/cpu_{name}\w*\.yaml", side["recipe"])
    assert len(side["run_id"]) == 32 and side["dataset_hash"] == blob["dataset_hash"]
    for key in ("output_face_detected", "different_people_spread", "auc_outputs", "identity_within_threshold"):
        assert 0 <= side["evaluation"][key] <= 1


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_champion_frontalizes_unseen_people(name, lfw_photos, tmp_path):
    """`frontalize --model pretrained:NAME` with no services running; each champion's every output holds a face
    that dlib's detector finds."""
    out = run_cli("frontalize", "--model", f"pretrained:{name}", *map(str, lfw_photos), str(tmp_path / "out"),
                  "--grid", str(tmp_path / "grid.png"), env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    summary = json.loads(out.stdout)
    assert summary["written"] == len(lfw_photos) and not summary["no_face"]
    assert summary["outputs_with_a_face"] == len(lfw_photos), summary["outputs_without_a_face"]
    assert (tmp_path / "grid.png").is_file()


def test_unknown_champion_is_a_one_line_error(lfw_photos, tmp_path):
    out = run_cli("frontalize", "--model", "pretrained:nobody", str(lfw_photos[0]), str(tmp_path), check=False)
    assert out.returncode == 2 and "pretrained:nobody" in out.stderr and "Traceback" not in out.stderr
