"""Shared fixtures. `embedded_services` runs real SeaweedFS + MLflow servers (no mocks) once per session."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path

import pytest


def pytest_configure(config):
    """Tests name their services with ``services.*`` overrides, and the services are remote first: a stack named
    in the shell that runs them (``MLFLOW_TRACKING_URI``, ``AWS_*``, ``RAY_ADDRESS``…) must not redirect the
    tests or the commands they start. A test that means a remote stack sets these variables itself."""
    from frontalab.services.endpoints import REMOTE_ENV

    for name in REMOTE_ENV:
        os.environ.pop(name, None)
    config.scratch = session_scratch()


SCRATCH_PREFIX = "fl-tests-"  # short: Ray's sockets go in here, and a socket's path has at most 107 bytes


def session_scratch() -> Path:
    """The session's temporary folder, made its ``TMPDIR``: this process's temporary files, pytest's
    ``tmp_path`` folders, and those of the commands, servers and Ray clusters the tests start (which inherit
    it). The tests kill trainers, trials and workers, whose own clean-up then never runs: what they leave
    (a trial's scratch folder, a sender's spool, MLflow's downloads, Ray's session logs: gigabytes a run) goes
    with the session instead of filling the disk. A session that passes removes its folder; one that fails keeps
    it for a look, until a later session removes it once its process is gone."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{SCRATCH_PREFIX}*"):
        pid = old.name[len(SCRATCH_PREFIX):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))
    # Others may pass through, as through /tmp, to a folder of theirs in here (the PostgreSQL test's server runs
    # as another user); what is made in here is private as in /tmp (mkdtemp: 0700, mkstemp: 0600).
    scratch.chmod(0o711)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # read TMPDIR again
    return scratch


@pytest.hookimpl(trylast=True)  # after pytest's own clean-up of its tmp_path folders in there
def pytest_sessionfinish(session, exitstatus):
    scratch = session.config.scratch
    if exitstatus == 0:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"this session's temporary files, kept until a later session: {scratch}")


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and holds none: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def services_config(state_dir: Path | str, s3_port: int | None = None, mlflow_port: int | None = None,
                    *extra: str):
    """A validated `ServicesConfig` for embedded services in `state_dir` on the given (or free) ports."""
    from frontalab.config import load_config

    s3_port = s3_port or free_port()
    mlflow_port = mlflow_port or free_port()
    while mlflow_port == s3_port:
        mlflow_port = free_port()
    overrides = [f"services.state_dir={state_dir}", f"services.s3_port={s3_port}",
                 f"services.mlflow_port={mlflow_port}", *extra]
    return load_config(None, overrides).services


def service_overrides(cfg) -> list[str]:
    """The dotlist that reproduces `cfg` on a `frontalab` command line."""
    return [f"services.state_dir={cfg.state_dir}", f"services.s3_port={cfg.s3_port}",
            f"services.mlflow_port={cfg.mlflow_port}", f"services.bucket={cfg.bucket}",
            f"services.mlflow_auth={str(cfg.mlflow_auth).lower()}"]


# ---------------------------------------------------------------- /proc helpers (psutil is not installed)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped by its parent) counts as gone."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def process_tree(pid: int) -> set[int]:
    """`pid`, its live descendants, and the live members of its process group."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] not in ("Z", "X"):
            procs[int(entry)] = st
    tree = {pid} if pid in procs else set()
    tree |= {p for p, st in procs.items() if st[2] == pid}
    grew = True
    while grew:
        more = {p for p, st in procs.items() if st[1] in tree and p not in tree}
        tree |= more
        grew = bool(more)
    return tree


def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports in LISTEN state owned by any of `pids` (from /proc/net/tcp{,6} and fd links)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """Wait until none of `pids` is alive; return those still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if pid_alive(p)}
        if not left:
            return set()
        time.sleep(0.1)
    return {p for p in pids if pid_alive(p)}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def embedded_services(tmp_path_factory):
    """Embedded S3 + MLflow on free ports in a temporary state dir: yields (ServicesConfig, Endpoints).

    Started once per test session and stopped at teardown; any test module may use it.
    """
    from frontalab import services

    cfg = services_config(tmp_path_factory.mktemp("services") / "state")
    t0 = time.monotonic()
    try:
        endpoints = services.up(cfg, quiet=True)
    except BaseException:
        services.down(cfg, quiet=True)
        raise
    print(f"\nembedded services up in {time.monotonic() - t0:.1f} s: {endpoints.public()}")
    try:
        yield cfg, endpoints
    finally:
        services.down(cfg, quiet=True)


@pytest.fixture
def services_env(embedded_services, monkeypatch):
    """`embedded_services`, with this process's client environment (MLflow, S3) pointing at them."""
    from frontalab import services

    for key, value in services.client_env(embedded_services[0]).items():
        monkeypatch.setenv(key, value)
    return embedded_services


# ---------------------------------------------------------------- a small prepared dataset


def run_cli(*args: str, timeout: float = 900, env: dict | None = None, check: bool = True):
    """`python -m frontalab ARGS` in a subprocess; returns the CompletedProcess."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "frontalab", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert out.returncode == 0, f"frontalab {args[0]} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    """A folder of 72 real UTKFace photos (symlinks)."""
    from frontalab.paths import faces_dir

    faces = sorted((faces_dir() / "utkface").glob("*.jpg"))[500:572]
    if len(faces) < 72:
        pytest.skip(f"no faces at {faces_dir()}")
    src = tmp_path_factory.mktemp("small_src")
    for p in faces:
        (src / p.name).symlink_to(p)
    return src


SMALL_DATASET_SETTINGS = ("prepare.val_fraction=0.15",)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, small_source) -> Path:
    """The 72 photos of `small_source` prepared at 160 px into a local folder (about 15% validation)."""
    out = tmp_path_factory.mktemp("small_dataset") / "faces"
    run_cli("prepare", "--source", str(small_source), "--out", str(out), *SMALL_DATASET_SETTINGS)
    return out


@pytest.fixture(scope="session")
def faces_root() -> Path:
    """The real-photo collection ($FRONTALAB_FACES): utkface/ and lfw-gray/."""
    from frontalab.paths import faces_dir

    root = faces_dir()
    if not (root / "lfw-gray").is_dir():
        pytest.skip(f"real faces not found under {root} (set FRONTALAB_FACES)")
    return root


@pytest.fixture(scope="session")
def lfw_photos(faces_root) -> list[Path]:
    """One photo each of the last 6 people in LFW, sorted: no champion was trained on LFW."""
    folders = sorted(p for p in (faces_root / "lfw-gray").iterdir() if p.is_dir())[-6:]
    return [sorted(f.glob("*.jpg"))[0] for f in folders]
