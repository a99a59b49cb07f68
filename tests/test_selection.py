"""Model selection cannot pick a non-face: validation's frontalization score and `promote`'s face guard; and
what `promote` registers is code, not a pickle.

The decoders below are stand-ins whose outputs we choose (white, one face for everyone, each person's
own photo); everything downstream of them is the real validation: the landmark student, the encoder,
dlib's detector on the outputs and the score.
"""

from __future__ import annotations

import base64
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli, service_overrides
from test_measure import NAMES
from frontalab.metrics import all_pairs, different_people_spread, frontalization_score
from frontalab.naming import FACE_SHARE_METRIC, SELECTION_METRIC, SPREAD_METRIC
from frontalab.models.thesis import DecoderOutput


def test_score_is_zero_without_faces_or_without_differences_and_grows_with_each_factor():
    assert frontalization_score(0.0, 1.0, 0.1, 0.6) == 0
    assert frontalization_score(1.0, 0.0, 0.1, 0.6) == 0
    good = frontalization_score(1.0, 0.9, 0.4, 0.6)
    assert good > 0
    assert frontalization_score(0.9, 0.9, 0.4, 0.6) < good  # fewer faces
    assert frontalization_score(1.0, 0.5, 0.4, 0.6) < good  # less distinct people
    assert frontalization_score(1.0, 0.9, 0.5, 0.6) < good  # further from the input's identity
    assert frontalization_score(1.0, 3.0, 0.4, 0.6) == frontalization_score(1.0, 1.0, 0.4, 0.6)  # capped


def test_spread_is_the_ratio_of_mean_pair_distances():
    inputs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]).numpy()
    assert different_people_spread(inputs, inputs / 2, all_pairs(3)) == pytest.approx(0.5)
    assert different_people_spread(inputs, inputs[[0, 0, 0]], all_pairs(3)) == 0
    assert all_pairs(3).tolist() == [[0, 1], [0, 2], [1, 2]]


class ChosenOutputs(nn.Module):
    """A decoder stand-in: for each validation face (found by its features) the image we choose."""

    input_texture = False  # it draws from the features alone, as the papers' decoders do

    def __init__(self, features: torch.Tensor, images: torch.Tensor):
        super().__init__()
        self.features, self.images = features, images

    def forward(self, features: torch.Tensor) -> DecoderOutput:
        chosen = self.images[torch.cdist(features, self.features).argmin(1)]
        return DecoderOutput(chosen, None, chosen)


@pytest.fixture(scope="module")
def validated(small_dataset):
    """Validation metrics of three stand-in decoders on the same validation faces."""
    from frontalab.config import load_config
    from frontalab.training.trial import Trial, mlflow_tracker_factory

    cfg = load_config(None, ["model.out_size=64", f"data.path={small_dataset}", "train.val_faces=8",
                             "tracking.enabled=false", "loss.adversarial=0"])
    trial = Trial(cfg, mlflow_tracker_factory())
    batch = trial.val_batch
    faces = batch["image"]
    outputs = {"white": torch.ones_like(faces), "one face for all": faces[:1].expand_as(faces).clone(),
               "each person's own face": faces}
    results = {}
    for name, images in outputs.items():
        trial.G = trial.objective.G = ChosenOutputs(batch["features"], images)  # validation decodes through the objective
        results[name] = trial.validate()[0]
    return results


def test_white_or_identical_outputs_score_zero_and_below_distinct_faces(validated):
    white, same, own = validated["white"], validated["one face for all"], validated["each person's own face"]
    # A flat output is measured, not raised, under the names `frontalab evaluate` gives (test_measure.py).
    assert set(white) == set(own) == {f"val/{name}" for name in NAMES}  # the stand-ins draw no mask
    assert white[FACE_SHARE_METRIC] == 0 and white[SELECTION_METRIC] == 0
    assert same[SPREAD_METRIC] == pytest.approx(0, abs=1e-6) and same[SELECTION_METRIC] == 0
    assert same[FACE_SHARE_METRIC] in (0.0, 1.0)  # one image: its face is found everywhere or nowhere
    assert own[FACE_SHARE_METRIC] >= 0.75 and own[SPREAD_METRIC] == pytest.approx(1.0, abs=0.2)
    assert own[SELECTION_METRIC] > 0.3
    assert own[SELECTION_METRIC] > max(white[SELECTION_METRIC], same[SELECTION_METRIC])


def test_promote_refuses_a_sweep_whose_best_trial_makes_no_face(validated, embedded_services):
    """The white trial's own validation numbers, logged as a finished trial of a sweep: exit 2, naming it."""
    from mlflow import MlflowClient

    cfg, endpoints = embedded_services
    sweep = f"white-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(tracking_uri=endpoints.mlflow)
    exp = client.create_experiment(f"sweep-{sweep}")
    parent = client.create_run(exp, tags={"frontalab.role": "sweep", "frontalab.sweep": sweep})
    child = client.create_run(exp, tags={"frontalab.trial_id": "white_00000", "mlflow.parentRunId": parent.info.run_id})
    for key, value in validated["white"].items():
        client.log_metric(child.info.run_id, key, value)
    client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    out = run_cli("promote", sweep, *service_overrides(cfg), check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "white_00000" in out.stderr and "0%" in out.stderr and "min_face_share" in out.stderr
    assert "Traceback" not in out.stderr
    # Ranked by identity alone it is still refused: the guard does not depend on the metric.
    out = run_cli("promote", sweep, "--metric", "val/identity_distance_mean", "--mode", "min",
                  *service_overrides(cfg), check=False)
    assert out.returncode == 2 and "white_00000" in out.stderr, out.stderr[-2000:]


# ---------------------------------------------------------------- the promoted version: code, not a pickle


def sweep_of_one_trial(client, sweep: str, checkpoint: Path) -> None:
    """A finished sweep whose one finished trial (a face in every output) logged ``checkpoint``."""
    exp = client.create_experiment(f"sweep-{sweep}")
    parent = client.create_run(exp, tags={"frontalab.role": "sweep", "frontalab.sweep": sweep})
    child = client.create_run(exp, tags={"frontalab.trial_id": f"{sweep}_00000",
                                         "mlflow.parentRunId": parent.info.run_id})
    client.log_metric(child.info.run_id, SELECTION_METRIC, 0.5)
    client.log_metric(child.info.run_id, FACE_SHARE_METRIC, 1.0)
    client.log_artifact(child.info.run_id, str(checkpoint), "checkpoints")
    client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def promoted(embedded_services):
    """pretrained:thesis's checkpoint as the one finished trial of a sweep, promoted by `frontalab promote` to
    a registered model of its own name: (name, the command's JSON, the command's stderr)."""
    import json

    from mlflow import MlflowClient

    from frontalab.models.pretrained import checkpoint_path

    cfg, endpoints = embedded_services
    sweep, name = f"code-{uuid.uuid4().hex[:6]}", f"frontalizer-code-{uuid.uuid4().hex[:6]}"
    sweep_of_one_trial(MlflowClient(tracking_uri=endpoints.mlflow), sweep, checkpoint_path("pretrained:thesis"))
    out = run_cli("promote", sweep, "--name", name, *service_overrides(cfg))
    return name, json.loads(out.stdout), out.stderr


def test_a_promoted_version_is_code_and_loads_without_unpickling(promoted, services_env, lfw_photos, tmp_path,
                                                                 monkeypatch):
    """The version's MLmodel names the code file that builds the model (MLflow's models from code) and holds no
    pickled python model; promoting it warns of neither a pickle nor untyped `predict`; it loads with pickles
    refused (ours and MLflow's), frontalizes a face, and leaves no download behind."""
    import io

    import mlflow.artifacts
    import pandas as pd
    import yaml
    from PIL import Image

    from frontalab.serving.promotion import MODEL_CODE
    from frontalab.serving.pyfunc import TRUST_PICKLES_ENV, load_predictor

    name, result, stderr = promoted
    assert result["version"] and result["uri"] == f"models:/{name}@champion"
    assert "cloudpickle" not in stderr.lower() and "type hint" not in stderr.lower(), stderr[-4000:]
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{result['version']}",
                                                      dst_path=str(tmp_path)))
    pyfunc = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert Path(pyfunc["model_code_path"]).name == MODEL_CODE.name
    assert (folder / MODEL_CODE.name).read_text() == MODEL_CODE.read_text()
    assert not (folder / "python_model.pkl").exists() and not list(folder.rglob("*.pkl"))
    assert set(pyfunc["artifacts"]) == {"checkpoint", "encoder"}

    monkeypatch.delenv(TRUST_PICKLES_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses a pickled python model
    before = set(Path(tempfile.gettempdir()).iterdir())
    predict = load_predictor(result["uri"])
    assert not [p for p in set(Path(tempfile.gettempdir()).iterdir()) - before if list(p.rglob("MLmodel"))], \
        "loading a registered version left its download in the temporary folder"
    out = predict(pd.DataFrame({"image": [lfw_photos[-1].read_bytes()]}))
    assert list(out["face_found"]) == [True] and list(out["error"]) == [""]
    assert Image.open(io.BytesIO(base64.b64decode(out["image"][0]))).size == (128, 128)
    assert not list(folder.rglob("champions")), "a version carries the packaged champions"


def test_promote_names_a_best_trial_whose_checkpoint_is_damaged(embedded_services, tmp_path):
    """The best trial's checkpoint artifact cut short: promote exits 10 in one line naming it; nothing is registered."""
    from mlflow import MlflowClient

    from frontalab.models.pretrained import checkpoint_path

    cfg, endpoints = embedded_services
    sweep, name = f"cut-{uuid.uuid4().hex[:6]}", f"frontalizer-cut-{uuid.uuid4().hex[:6]}"
    damaged = tmp_path / "step-000450.pt"
    damaged.write_bytes(checkpoint_path("pretrained:thesis").read_bytes()[:100_000])
    client = MlflowClient(tracking_uri=endpoints.mlflow)
    sweep_of_one_trial(client, sweep, damaged)
    out = run_cli("promote", sweep, "--name", name, *service_overrides(cfg), check=False)
    said = [line for line in out.stderr.splitlines() if line.startswith("frontalab promote:")]
    assert out.returncode == 10 and len(said) == 1, out.stderr[-2000:]
    assert "step-000450.pt is cut short or corrupt" in said[0] and "Traceback" not in out.stderr
    assert not client.search_registered_models(f"name='{name}'")
