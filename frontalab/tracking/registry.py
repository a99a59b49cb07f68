"""Models in MLflow: checkpoints logged by runs, registered versions and their aliases (`promote`), and the
landmark student registered as an asset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Optional

from frontalab.naming import ASSET_SHA_TAG, ASSETS_EXPERIMENT, CHAMPION, LANDMARK_MODEL, PREVIOUS, ROLE_ASSET, ROLE_TAG
from frontalab.sections import ConfigError
from frontalab.tracking import store


class ModelNotFound(LookupError):
    """A model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/…) that names no model on the server."""


@contextlib.contextmanager
def finding_model(uri: str):
    """MLflow's "does not exist" for ``uri`` as `ModelNotFound`, with MLflow's first line as the reason."""
    from mlflow.exceptions import MlflowException  # deferred: MLflow takes seconds to import

    try:
        yield
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFound(f"{uri}: not found ({str(err).splitlines()[0]})") from None


def latest_checkpoint_artifact(client, run_id: str, into: Path) -> Path:
    files = [f.path for f in client.list_artifacts(run_id, "checkpoints") if f.path.endswith(".pt")]
    if not files:
        raise ConfigError(f"run {run_id} has no checkpoint artifact")
    print(f"frontalab: downloading run {run_id}'s {sorted(files)[-1]}", file=sys.stderr, flush=True)
    return Path(client.download_artifacts(run_id, sorted(files)[-1], str(into)))


def download_model(uri: str, into: Path) -> Path:
    """The folder of a registered version (``models:/…``), downloaded under ``into``; one line says so (MLflow's
    bar per file is off unless ``--verbose``)."""
    import mlflow.artifacts  # deferred: MLflow takes seconds to import

    print(f"frontalab: downloading {uri}", file=sys.stderr, flush=True)
    with finding_model(uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))


def model_version(spec: str):
    """(name, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    name, _, ref = spec[len("models:/"):].partition("@")
    c = store.client()
    with finding_model(spec):
        if ref:
            return name, c.get_model_version_by_alias(name, ref)
        name, _, number = name.partition("/")
        return name, c.get_model_version(name, number)


def log_pyfunc_version(run_id: str, model_code: str | Path, artifacts: dict[str, str], code_paths: list[str],
                       registered_model_name: str, pip_requirements: list[str], signature: Any,
                       input_example: Any, description: str, model_config: dict[str, Any]) -> str:
    """Log a pyfunc model in the run that trained it and register it, so the version links to its training
    curves; returns the new version. The run keeps its end status. The model is logged from code:
    ``model_code`` is the Python file that sets it (`mlflow.models.set_model`), copied into the model
    folder and run at each load, so that no pickled Python object is logged or ever unpickled."""
    import mlflow  # deferred: MLflow takes seconds to import

    c = store.client()
    status = c.get_run(run_id).info.status
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="frontalizer", python_model=str(model_code), artifacts=artifacts,
                                       code_paths=code_paths, registered_model_name=registered_model_name,
                                       pip_requirements=pip_requirements, signature=signature,
                                       input_example=input_example, model_config=model_config)
    c.set_terminated(run_id, status=status)
    version = str(info.registered_model_version)
    c.update_model_version(registered_model_name, version, description=description)
    return version


def make_champion(client, name: str, version: str, tags: dict[str, str]) -> Optional[str]:
    """``version`` becomes ``name``'s champion (the one before, if another, its previous); returns that one."""
    previous = None
    try:
        previous = client.get_model_version_by_alias(name, CHAMPION).version
    except Exception:  # no champion yet
        pass
    if previous and previous != version:
        client.set_registered_model_alias(name, PREVIOUS, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return previous


def ensure_landmark_model(weights: Path) -> str:
    """The registered `landmarks68` version holding these student weights, registered on first use."""
    c = store.client()
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    try:
        versions = c.search_model_versions(f"name = '{LANDMARK_MODEL}'")
    except Exception:
        versions = []
    for v in versions:
        if v.tags.get(ASSET_SHA_TAG) == sha:
            return str(v.version)
    if not versions:
        try:
            c.create_registered_model(LANDMARK_MODEL, description="dlib-68 landmark student (frontalab.models.landmark_net)")
        except Exception:  # registered concurrently by another trial
            pass
    run = store.create_run(c, store.experiment_id(c, ASSETS_EXPERIMENT), f"{LANDMARK_MODEL}-{sha[:8]}",
                     {ROLE_TAG: ROLE_ASSET, ASSET_SHA_TAG: sha})
    c.log_artifact(run.info.run_id, str(weights), LANDMARK_MODEL)
    sidecar = weights.with_suffix(".json")
    if sidecar.is_file():
        c.log_artifact(run.info.run_id, str(sidecar), LANDMARK_MODEL)
        metrics = json.loads(sidecar.read_text()).get("metrics", {})
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                c.log_metric(run.info.run_id, key, float(value))
    c.set_terminated(run.info.run_id)
    version = c.create_model_version(LANDMARK_MODEL, source=f"{run.info.artifact_uri}/{LANDMARK_MODEL}",
                                     run_id=run.info.run_id, tags={ASSET_SHA_TAG: sha})
    return str(version.version)
