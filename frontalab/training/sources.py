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

from frontalab import storage
from frontalab.config import ConfigError
from frontalab.models import pretrained
from frontalab.tracking import store

RUN_ID = re.compile(r"[0-9a-f]{32}")


def checkpoint_file(spec: str, into: Path) -> Path:
    """A local checkpoint file for ``spec``; downloads go under ``into``."""
    if pretrained.is_pretrained(spec):
        try:
            return pretrained.checkpoint_path(spec)
        except pretrained.UnknownPretrained as err:
            raise ConfigError(str(err)) from None
    if spec.startswith("models:/"):
        return store.registered_checkpoint(spec, into)
    if RUN_ID.fullmatch(spec):
        return store.latest_checkpoint_artifact(store.client(), spec, into)
    if storage.is_s3(spec):
        return storage.cached(spec)
    if not Path(spec).is_file():
        raise ConfigError(f"{spec!r} is neither pretrained:NAME, models:/…, a run id, nor a checkpoint file")
    return Path(spec)
