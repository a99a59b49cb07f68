"""The embedded services' state directory: its layout, its private files, and the children recorded in it.

Each child runs in a session of its own; its PID, process group and start time are recorded in
``run/NAME.json`` (the start time guards against PID reuse), and its output goes to ``logs/NAME.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from frontalab.paths import state_dir
from frontalab.storage import replace_durably
from frontalab.services.processes import alive, group_members, start_time

LOG_ROTATE_BYTES = 32 << 20  # a log above this size is moved to NAME.log.1 when its service starts
# Kept so in-process callers (tests, notebooks) reap the children they started.
CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """An embedded or remote service could not be started, reached or stopped."""


class PortInUseError(ServiceError):
    """A configured port is already taken by something other than this state directory's service."""

    def __init__(self, port: int, host: str, what: str, key: str):
        self.port, self.host, self.what, self.key = port, host, what, key
        super().__init__(
            f"port {port} on {host} (for {what}) is already in use by another process; "
            f"stop it or choose another port with {key}=PORT")


def _below(parent: str, name: str) -> property:
    """A path named ``name`` inside the folder given by attribute ``parent``."""
    return property(lambda self: getattr(self, parent) / name)


@dataclass(frozen=True)
class StatePaths:
    """The state directory's layout (see `frontalab.services`)."""

    root: Path
    credentials = _below("root", "credentials.json")
    weed_dir = _below("root", "seaweedfs")
    weed_ports = _below("weed_dir", "ports.json")
    tls_dir = _below("weed_dir", "tls")
    mlflow_dir = _below("root", "mlflow")
    mlflow_db = _below("mlflow_dir", "mlflow.db")
    mlflow_auth = _below("mlflow_dir", "basic_auth.ini")
    mlflow_auth_db = _below("mlflow_dir", "basic_auth.db")
    run = _below("root", "run")
    logs = _below("root", "logs")

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def infofile(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def state_paths(cfg: Any) -> StatePaths:
    return StatePaths(state_dir(getattr(cfg, "state_dir", "") or ""))


def private_dir(path: Path) -> Path:
    """``path``, created if need be and tightened to 0700 if it existed wider: it holds keys and the tracking db."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def prepare_state(paths: StatePaths) -> None:
    for d in (paths.root, paths.weed_dir, paths.mlflow_dir, paths.run, paths.logs):
        private_dir(d)


def write_private(path: Path, data: str) -> None:
    """Write `data` to a 0600 file atomically (the file never exists with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        replace_durably(tmp, path)  # credentials must not come back empty after a crash
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def locked(paths: StatePaths) -> Iterator[None]:
    """Serialise up/down on one state directory across processes."""
    private_dir(paths.root)
    private_dir(paths.run)
    with open(paths.run / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reap(pid: int) -> None:
    child = CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def read_info(paths: StatePaths, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(paths.infofile(name).read_text())
    except (FileNotFoundError, ValueError):
        return None


def running(paths: StatePaths, name: str) -> dict[str, Any] | None:
    """The recorded process `name` if it is still the same live process (guards against PID reuse)."""
    info = read_info(paths, name)
    if not info:
        return None
    pid = int(info["pid"])
    reap(pid)
    if alive(pid) and start_time(pid) == info.get("start_time"):
        return info
    return None


def clear_pidfiles(paths: StatePaths, name: str) -> None:
    for p in (paths.pidfile(name), paths.infofile(name)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def spawn(paths: StatePaths, name: str, argv: list[str], env: dict[str, str], cwd: Path,
           extra: dict[str, Any]) -> dict[str, Any]:
    log_path = paths.log(name)
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_suffix(".log.1"))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True, close_fds=True)
    CHILDREN[proc.pid] = proc
    info = {"pid": proc.pid, "pgid": proc.pid, "start_time": start_time(proc.pid),
            "started_at": time.time(), "argv": argv, **extra}
    write_private(paths.infofile(name), json.dumps(info, indent=2) + "\n")
    write_private(paths.pidfile(name), f"{proc.pid}\n")
    return info


def recorded_group(paths: StatePaths, name: str) -> tuple[dict[str, Any] | None, list[int]]:
    """The recorded process (if it is still the same one) and the live members of its group.

    Members outlive a killed leader (e.g. uvicorn after its `mlflow server` parent); Linux never
    hands out a PID that is still some group's ID, so the members are still ours.
    """
    info = read_info(paths, name)
    if not info:
        return None, []
    pid, pgid = int(info["pid"]), int(info.get("pgid", info["pid"]))
    reap(pid)
    leader_ok = alive(pid) and start_time(pid) == info.get("start_time")
    members = group_members(pgid)
    if not leader_ok and pid in members:  # PID reused by an unrelated process
        members = []
    return info, members


def log_tail(path: Path, lines: int = 15, redact: str | None = None) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    out = "\n".join("    " + line for line in text)
    return out.replace(redact, "***") if redact else out
