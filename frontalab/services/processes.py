"""Processes seen through Linux's /proc, and ports: the one set of helpers the services and the
local test cluster share. Nothing here knows what the processes are."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterable, Optional


def proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat from the state on (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> Optional[int]:
    st = proc_stat(pid)
    return int(st[19]) if st else None


def alive(pid: int) -> bool:
    """A live process; a zombie counts as gone."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and int(st[2]) == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def environ_value(pid: int, name: str) -> Optional[str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def pids_with_env(name: str, value: str | None = None, prefix: str | None = None) -> dict[int, str]:
    """Live processes whose environment has ``name`` (equal to ``value``, or starting with
    ``prefix``): pid -> the variable's value. This process is never included."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        got = environ_value(pid, name)
        if got is None or not alive(pid):
            continue
        if (value is None or got == value) and (prefix is None or got.startswith(prefix)):
            found[pid] = got
    return found


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL, *, marker: tuple[str, str] | None = None,
              timeout: float = 10.0) -> set[int]:
    """Send ``sig`` to each PID (only if it still carries ``marker`` = (name, value), which guards
    against PID reuse); wait up to ``timeout`` s; return those still alive."""
    targets = set()
    for pid in pids:
        if marker is not None and environ_value(pid, marker[0]) != marker[1]:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            targets.add(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in list(targets):  # reap our own children so they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        left = {p for p in targets if alive(p)}
        if not left:
            return set()
        time.sleep(0.1)
    return {p for p in targets if alive(p)}


def environment_without(drop: tuple[str, ...]) -> dict[str, str]:
    """This process's environment minus variables (by prefix) that would change what a child stores or trusts."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


# ---------------------------------------------------------------- ports


def port_free(host: str, port: int, *, strict: bool = False) -> bool:
    """True if a server could listen on ``host``:``port`` now.

    By default with the servers' own SO_REUSEADDR (a port in TIME_WAIT is free); a bind error
    other than "in use" or "denied" raises. ``strict``: without SO_REUSEADDR, on ``host`` and on
    0.0.0.0 both, any error meaning taken (how the local Ray cluster picks its ports).
    """
    if strict:
        for h in {host, "0.0.0.0"}:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((h, port))
                except OSError:
                    return False
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
