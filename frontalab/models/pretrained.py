"""Champions shipped with the package: ``pretrained:thesis`` and ``pretrained:cole``.

Each is a decoder checkpoint (``champions/NAME.pt``: the decoder's weights and its config, tensors and
numbers only) with a JSON sidecar (``champions/NAME.json``: the recipe command, the MLflow run, the
dataset hash and the evaluation numbers), written by ``tools/package_champion.py``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

PREFIX = "pretrained:"
NAMES = ("thesis", "cole")


# A champion carries its model, its losses and its training; these sections describe the machine it was made on.
LOCAL_SECTIONS = ("services", "tracking", "prepare", "promote", "evaluate", "landmarks")


def champion_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's resolved config as a packaged champion keeps it: without `LOCAL_SECTIONS`."""
    return {k: v for k, v in config.items() if k not in LOCAL_SECTIONS}


class UnknownPretrained(ValueError):
    """A ``pretrained:NAME`` that the package does not ship."""


def is_pretrained(spec: str) -> bool:
    return spec.startswith(PREFIX)


def _folder() -> Path:
    return Path(str(files("frontalab.models").joinpath("champions")))


def checkpoint_path(spec: str) -> Path:
    """The packaged checkpoint of ``pretrained:NAME``."""
    name = spec[len(PREFIX):] if is_pretrained(spec) else spec
    path = _folder() / f"{name}.pt"
    if name not in NAMES or not path.is_file():
        shipped = [n for n in NAMES if (_folder() / f"{n}.pt").is_file()]
        raise UnknownPretrained(f"no packaged champion {PREFIX}{name}; this install ships: "
                                f"{', '.join(PREFIX + n for n in shipped) or 'none'}")
    return path


def sidecar(spec: str) -> dict[str, Any]:
    """The champion's provenance and evaluation numbers."""
    return json.loads(checkpoint_path(spec).with_suffix(".json").read_text())
