"""Where things live on disk: the faces collection, the user cache, and service state.

Each location has one setting (an environment variable) so a user elsewhere points the
same code at their own copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent


def faces_dir() -> Path:
    """Real face photos: ``$FRONTALAB_FACES``, else ``../shared/faces`` beside the checkout."""
    env = os.environ.get("FRONTALAB_FACES")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "faces")


def portable(path: str | Path) -> str:
    """``path`` as it reads on any machine: ``$FRONTALAB_FACES/lfw-gray`` for a folder of the faces collection,
    else as given (an ``s3://`` URI, a path elsewhere)."""
    try:
        inside = Path(path).expanduser().resolve().relative_to(faces_dir().resolve())
    except (ValueError, OSError):
        return str(path)
    return "$FRONTALAB_FACES" + ("" if inside == Path(".") else f"/{inside.as_posix()}")


def cache_dir() -> Path:
    """Per-user cache for converted weights and downloaded data: ``$FRONTALAB_CACHE`` or the platform's."""
    env = os.environ.get("FRONTALAB_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("frontalab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir(configured: str = "") -> Path:
    """Embedded services' data, PIDs and logs: config, else ``$FRONTALAB_HOME``, else ``~/.frontalab``."""
    chosen = configured or os.environ.get("FRONTALAB_HOME") or "~/.frontalab"
    return Path(chosen).expanduser().resolve()
