"""Where a trained decoder comes from: one resolver for every command that takes a model.

- ``pretrained:NAME``: a champion shipped in the package (`frontalab.models.pretrained`);
- ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: a registered version's checkpoint artifact;
- a run id (32 hex digits): the run's latest checkpoint artifact;
- a checkpoint file, local or ``s3://``;
- a model folder (an MLflow model, as `frontalab promote` registers it): its checkpoint artifact.

Every one ends as a local checkpoint file, loaded with ``weights_only=True`` (tensors and numbers only).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from frontalab import storage
from frontalab.models import pretrained
from frontalab.sections import ConfigError
from frontalab.tracking import registry, store
from frontalab.training.checkpoints import UnreadableModel

RUN_ID = re.compile(r"[0-9a-f]{32}")


def checkpoint_file(spec: str, into: Path) -> Path:
    """A local checkpoint file for ``spec``; downloads go under ``into``."""
    if pretrained.is_pretrained(spec):
        try:
            return pretrained.checkpoint_path(spec)
        except pretrained.UnknownPretrained as err:
            raise ConfigError(str(err)) from None
    if spec.startswith("models:/"):
        return model_folder_checkpoint(registry.download_model(spec, into), spec)
    if RUN_ID.fullmatch(spec):
        return registry.latest_checkpoint_artifact(store.client(), spec, into)
    if storage.is_s3(spec):
        return storage.cached(spec)
    if Path(spec).is_dir():
        return model_folder_checkpoint(Path(spec), spec)
    if not Path(spec).is_file():
        raise ConfigError(f"{spec!r} is neither pretrained:NAME, models:/…, a run id, a model folder nor a "
                          f"checkpoint file")
    return Path(spec)


def model_folder_checkpoint(folder: Path, name: str) -> Path:
    """The checkpoint artifact of an MLflow model folder, read from its MLmodel file (the python model in it is
    never loaded); ``name`` is how the user named the model."""
    try:
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    except FileNotFoundError:
        raise UnreadableModel(f"{name} is a folder without a model in it (no MLmodel file)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UnreadableModel(f"{name}: its MLmodel file cannot be read ({str(err).splitlines()[0]})") from None
    flavor = mlmodel.get("flavors", {}).get("python_function", {}) if isinstance(mlmodel, dict) else {}
    artifacts = flavor.get("artifacts", {}) if isinstance(flavor, dict) else {}
    if not isinstance(artifacts, dict) or "path" not in artifacts.get("checkpoint", {}):
        raise UnreadableModel(f"{name} is not a frontalab model (its MLmodel names no checkpoint artifact)")
    return folder / artifacts["checkpoint"]["path"]
