"""What a run is tagged with about where it came from: the code's commit, the host, the command line."""

from __future__ import annotations

import getpass
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from frontalab.config import mask_userinfo
from frontalab.naming import GIT_COMMIT_TAG, SOURCE_NAME_TAG, SOURCE_TYPE_TAG, USER_TAG
from frontalab.paths import REPO_ROOT


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> str:
    return socket.gethostname()


def command_line() -> str:
    """This process's command as typed (``frontalab sweep …``), for the runs it creates. Credentials
    travel in the environment, never in argv; user:password in a URL is masked all the same."""
    prog = Path(sys.argv[0]).name
    args = [mask_userinfo(a) for a in sys.argv[1:]]
    return shlex.join(["frontalab" if prog in ("frontalab", "__main__.py", "cli.py") else prog, *args])


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        return "unknown"


def standard_tags(source: str) -> dict[str, str]:
    """MLflow's User, Source and git commit, as its fluent API sets them: runs made through `MlflowClient`
    get none. ``source`` is the command that made the run (a trial's is its sweep's command)."""
    return {USER_TAG: user(), SOURCE_NAME_TAG: source, SOURCE_TYPE_TAG: "LOCAL", GIT_COMMIT_TAG: git_commit()}
