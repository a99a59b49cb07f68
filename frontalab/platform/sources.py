"""Where a trained decoder comes from: one resolver for every command that takes a model.

- ``pretrained:NAME``: a champion shipped in the package (`frontalab.models.pretrained`);
- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a registered version's checkpoint artifact;
- a run id (32 hex digits): the run's latest checkpoint artifact;
- a checkpoint file, local or ``s3://``.

Every one ends as a local checkpoint file, loaded with ``weights_only=True`` (tensors and numbers only).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from frontalab.config import ConfigError
from frontalab.models import pretrained
from frontalab.platform import storage

RUN_ID = re.compile(r"[0-9a-f]{32}")


def latest_checkpoint_artifact(client, run_id: str, into: Path) -> Path:
    files = [f.path for f in client.list_artifacts(run_id, "checkpoints") if f.path.endswith(".pt")]
    if not files:
        raise ConfigError(f"run {run_id} has no checkpoint artifact")
    return Path(client.download_artifacts(run_id, sorted(files)[-1], str(into)))


def registered_checkpoint(uri: str, into: Path) -> Path:
    """The checkpoint artifact inside a registered pyfunc version (read from its MLmodel file; the
    pickled python model is never loaded)."""
    import mlflow.artifacts

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    except Exception as err:  # an unknown name, version or alias
        raise ConfigError(f"cannot download {uri}: {str(err).splitlines()[0]}") from None
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise ConfigError(f"{uri} is not a frontalab model (its MLmodel names no checkpoint artifact)")
    return folder / artifacts["checkpoint"]["path"]


def checkpoint_file(spec: str, into: Path) -> Path:
    """A local checkpoint file for ``spec``; downloads go under ``into``."""
    if pretrained.is_pretrained(spec):
        try:
            return pretrained.checkpoint_path(spec)
        except pretrained.UnknownPretrained as err:
            raise ConfigError(str(err)) from None
    if spec.startswith("models:/"):
        return registered_checkpoint(spec, into)
    if RUN_ID.fullmatch(spec):
        from mlflow import MlflowClient

        return latest_checkpoint_artifact(MlflowClient(), spec, into)
    if storage.is_s3(spec):
        return storage.cached(spec)
    if not Path(spec).is_file():
        raise ConfigError(f"{spec!r} is neither pretrained:NAME, models:/…, a run id, nor a checkpoint file")
    return Path(spec)
