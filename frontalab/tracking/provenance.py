"""What a run is tagged with about where it came from: the code's commit, the host, the command line."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

from frontalab.config import mask_userinfo
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
