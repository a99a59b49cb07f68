"""Embedded services (SeaweedFS as S3, an MLflow tracking server) and the client side of any endpoints.

One machine, no setup: `up(cfg)` starts what is missing under the state directory
(``services.state_dir``, else ``$FRONTALAB_HOME``, else ``~/.frontalab``) and returns the
endpoints; `down(cfg)` stops it; `status(cfg)` reports it. Remote first: where existing services are
named (``services.mlflow_uri`` or ``$MLFLOW_TRACKING_URI``; ``services.s3_endpoint``,
``$MLFLOW_S3_ENDPOINT_URL`` or ``$AWS_ENDPOINT_URL_S3``), nothing is started for them: they are only
health-checked, and their credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``; MLflow's ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``TOKEN``). Every
client (`client_env`, `s3_client`) goes through the same code for both cases. Ray is not started here: commands embed it in-process.

State directory layout (0700)::

    credentials.json    0600  the S3 access/secret key: the only file that holds the secret
                              (it is also SeaweedFS's -s3.config identities file)
    seaweedfs/data/     SeaweedFS data (-dir): volumes, filer metadata, master state
    seaweedfs/ports.json  SeaweedFS's internal ports (master, volume, filer, admin, gRPC), reused
    seaweedfs/tls/      CA, certificate and key for mutual TLS on SeaweedFS's gRPC ports
    mlflow/mlflow.db    MLflow backend store; artifacts go to s3://BUCKET/mlflow via the server
    mlflow/basic_auth.ini  0600  with services.mlflow_auth: MLflow's basic-auth config, holding the generated
                              admin login (the only copy); mlflow/basic_auth.db is its user store
    run/                weed.pid, mlflow.pid (the PID) and weed.json, mlflow.json (details)
    logs/               weed.log, mlflow.log

This package's modules, one concern each: `endpoints` (the client side), `seaweedfs` (the S3
store and its hardening; the master's HTTP status page stays, SeaweedFS has no switch for it,
and shows topology, never object data), `mlflow_server`, `state` (the state directory and the
children recorded in it), `processes` (/proc and ports). This module starts and stops them.
Children run in their own session, so `down` stops each whole process group by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from frontalab.config import mask_userinfo
from frontalab.services import mlflow_server, seaweedfs
from frontalab.services.endpoints import (BUCKET_LAYOUT, DEFAULT_REGION, S3_CREDENTIAL_ENV, S3_ENDPOINT_ENV,
                                          S3_IDENTITY, S3_REGION_ENV, Credentials, Endpoints, bind_host, bucket_uri,
                                          client_env, credentials, embedded_credentials, endpoints, s3_client,
                                          s3_env_names)
from frontalab.services.mlflow_server import MLFLOW_SERVER_ENV, mlflow_healthy, mlflow_server_flags
from frontalab.services.processes import alive, group_members, port_free
from frontalab.services.seaweedfs import (ensure_bucket, remove_weed_sockets, s3_healthy, weed_binary,
                                          weed_client_env)
from frontalab.services.state import (CHILDREN, PortInUseError, ServiceError, StatePaths, clear_pidfiles, locked,
                                      log_tail, prepare_state, read_info, reap, recorded_group, running)
from frontalab.services.state import spawn as _spawn
from frontalab.services.state import state_paths as _paths

__all__ = ["BUCKET_LAYOUT", "DEFAULT_REGION", "MLFLOW_SERVER_ENV", "S3_CREDENTIAL_ENV", "S3_ENDPOINT_ENV",
           "S3_IDENTITY", "S3_REGION_ENV", "Credentials", "Endpoints", "PortInUseError", "ServiceError", "bucket_uri",
           "client_env", "credentials", "down", "endpoints", "mlflow_server_flags", "s3_client", "s3_env_names",
           "status", "up", "weed_binary", "weed_client_env"]

_TERM_TIMEOUT = {"weed": 15.0, "mlflow": 10.0}  # SIGTERM -> SIGKILL; weed exits ~4 s after SIGTERM


def _start_weed(cfg: Any, paths: StatePaths) -> dict[str, Any]:
    argv, env, cwd, extra = seaweedfs.weed_command(cfg, paths)
    return _spawn(paths, "weed", argv, env, cwd=cwd, extra=extra)


def _start_mlflow(cfg: Any, paths: StatePaths, creds: Credentials | None) -> dict[str, Any]:
    argv, env, cwd, extra = mlflow_server.mlflow_command(cfg, paths, creds)
    return _spawn(paths, "mlflow", argv, env, cwd=cwd, extra=extra)


def _check_port(host: str, port: int, what: str, key: str) -> None:
    if not port_free(host, port):
        raise PortInUseError(port, host, what, key)


def _stop_many(paths: StatePaths, names: list[str], timeout: float, say: Callable[[str], None]) -> dict[str, bool]:
    """SIGTERM the recorded process groups together, SIGKILL what is left after `timeout`."""
    groups: dict[str, int] = {}
    for name in names:
        info, members = recorded_group(paths, name)
        if info is not None and members:
            pgid = int(info.get("pgid", info["pid"]))
            say(f"stopping {name} (pid {info['pid']})")
            groups[name] = pgid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)

    def pending() -> list[str]:
        for name in groups:
            reap(int(read_info(paths, name)["pid"]))
        return [n for n, g in groups.items() if group_members(g)]

    deadline = time.monotonic() + timeout
    while pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in pending():
        say(f"{name} did not exit within {timeout:.0f} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(groups[name], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = pending()
    for name in names:
        info = read_info(paths, name)
        if info:
            child = CHILDREN.pop(int(info["pid"]), None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1)
            if name == "weed" and name in groups and name not in left:
                remove_weed_sockets(info)
        if name not in left:
            clear_pidfiles(paths, name)
    if left:
        raise ServiceError(f"could not stop {', '.join(left)}: processes in group(s) "
                           f"{', '.join(str(groups[n]) for n in left)} survived SIGKILL")
    return {name: name in groups for name in names}


def _stop(paths: StatePaths, name: str, timeout: float, say: Callable[[str], None]) -> bool:
    return _stop_many(paths, [name], timeout, say)[name]


def _wait(what: str, check: Callable[[], tuple[bool, str]], timeout: float,
          info: dict[str, Any] | None, log: Path | None, redact: str | None) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while True:
        ok, detail = check()
        if ok:
            return
        if info is not None:
            pid = int(info["pid"])
            reap(pid)
            if not alive(pid):
                tail = log_tail(log, redact=redact) if log else ""
                raise ServiceError(f"{what} exited during startup; last lines of {log}:\n{tail}")
        if time.monotonic() >= deadline:
            tail = f"; last lines of {log}:\n{log_tail(log, redact=redact)}" if log else ""
            raise ServiceError(f"{what} not healthy after {timeout:.0f} s ({detail}){tail}")
        time.sleep(0.2)


def _stderr(quiet: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            print(f"frontalab: {msg}", file=sys.stderr, flush=True)
    return say


def _healthy_within(check: Callable[[], tuple[bool, str]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check()[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _reusable(paths: StatePaths, name: str, what: str, bind: str, port: int,
              check: Callable[[], tuple[bool, str]], say: Callable[[str], None],
              auth: bool = False) -> dict[str, Any] | None:
    """This state dir's running `name` if it is healthy on the configured address (and with `auth`, its login
    on or off as configured); else None, after stopping whatever is left of it (a sick server, orphans of a
    killed parent)."""
    info = running(paths, name)
    if info is not None:
        if int(info["port"]) != int(port) or info.get("host") != bind:
            raise ServiceError(
                f"the {what} of {paths.root} already runs on {info.get('host')}:{info['port']}, "
                f"not {bind}:{port}; run `frontalab down` first")
        if bool(info.get("auth")) != auth:
            raise ServiceError(f"the {what} of {paths.root} runs with services.mlflow_auth={str(not auth).lower()}; "
                               f"run `frontalab down` first")
        if _healthy_within(check, 5.0):
            return info
        say(f"the {what} (pid {info['pid']}) is not healthy: restarting it")
    _stop(paths, name, _TERM_TIMEOUT[name], say)
    return None


def up(cfg: Any, *, timeout: float = 120.0, quiet: bool = False) -> Endpoints:
    """Start whatever embedded service is missing, wait until all are healthy, return the endpoints.

    Idempotent: healthy services already running from this state directory are reused as they
    are (a sick one is restarted). Raises `PortInUseError` before starting anything when a
    configured port is taken by another process, and `ServiceError` when a service does not
    become healthy within `timeout` (30 s at most for remote endpoints).
    """
    say = _stderr(quiet)
    paths = _paths(cfg)
    ep = endpoints(cfg)
    bind = bind_host(cfg.host)
    t0 = time.monotonic()
    with locked(paths):
        prepare_state(paths)
        weed = mlflow = None
        if ep.embedded_s3:
            weed = _reusable(paths, "weed", "embedded S3 (SeaweedFS)", bind, cfg.s3_port,
                             lambda: s3_healthy(cfg), say)
        if ep.embedded_mlflow:
            mlflow = _reusable(paths, "mlflow", "embedded MLflow server", bind, cfg.mlflow_port,
                               lambda: mlflow_healthy(ep.mlflow), say, auth=bool(cfg.mlflow_auth))
        start_weed, start_mlflow = ep.embedded_s3 and weed is None, ep.embedded_mlflow and mlflow is None
        # Every port check happens before anything starts.
        if start_weed:
            _check_port(bind, int(cfg.s3_port), "the embedded S3 endpoint (SeaweedFS)", "services.s3_port")
        if start_mlflow:
            if start_weed and int(cfg.mlflow_port) == int(cfg.s3_port):
                raise PortInUseError(cfg.mlflow_port, bind, "the embedded MLflow server; it equals services.s3_port",
                                     "services.mlflow_port")
            _check_port(bind, int(cfg.mlflow_port), "the embedded MLflow server", "services.mlflow_port")

        creds = embedded_credentials(paths, create=True) if ep.embedded_s3 else credentials(cfg)
        secret = creds.secret_key if creds else None
        if start_weed:
            say(f"starting SeaweedFS S3 on {ep.s3} (state: {paths.root})")
            weed = _start_weed(cfg, paths)
        if start_mlflow:
            # Started before S3 is healthy: its imports take most of its startup time.
            say(f"starting MLflow server on {ep.mlflow} (artifacts: {ep.artifacts})")
            mlflow = _start_mlflow(cfg, paths, creds)
        try:
            if ep.embedded_s3:
                _wait("embedded S3 (SeaweedFS)", lambda: s3_healthy(cfg), timeout, weed, paths.log("weed"), secret)
            else:
                _wait(f"S3 endpoint {mask_userinfo(ep.s3)}", lambda: s3_healthy(cfg), min(timeout, 30.0), None, None, secret)
            ensure_bucket(cfg)
            if start_weed:
                say(f"S3 ready in {time.monotonic() - t0:.1f} s (bucket {ep.bucket})")
            if ep.embedded_mlflow:
                _wait("embedded MLflow server", lambda: mlflow_healthy(ep.mlflow), timeout, mlflow,
                      paths.log("mlflow"), secret)
            else:
                _wait(f"MLflow server {mask_userinfo(ep.mlflow)}", lambda: mlflow_healthy(ep.mlflow), min(timeout, 30.0),
                      None, None, secret)
            if start_mlflow:
                say(f"MLflow ready in {time.monotonic() - t0:.1f} s")
        except BaseException:
            # Leave nothing half-started behind by this call.
            started = [n for n, s in (("mlflow", start_mlflow), ("weed", start_weed)) if s]
            if started:
                _stop_many(paths, started, max(_TERM_TIMEOUT[n] for n in started), say)
            raise
        if not (start_weed or start_mlflow):
            say("services already running")
    return ep


def down(cfg: Any, *, quiet: bool = False) -> dict[str, bool]:
    """Stop this state directory's embedded services (whole process groups, together); remote ones
    are untouched. Returns which of them were running."""
    say = _stderr(quiet)
    paths = _paths(cfg)
    if not paths.root.exists():
        return {"mlflow": False, "s3": False}
    with locked(paths):
        stopped = _stop_many(paths, ["mlflow", "weed"], max(_TERM_TIMEOUT.values()), say)
    if not any(stopped.values()):
        say("no embedded service was running")
    return {"mlflow": stopped["mlflow"], "s3": stopped["weed"]}


def status(cfg: Any) -> dict[str, Any]:
    """Endpoints, whether each service is remote or embedded, health and PIDs; never a secret."""
    paths = _paths(cfg)
    ep = endpoints(cfg)
    weed = running(paths, "weed") if ep.embedded_s3 and paths.root.exists() else None
    mlflow = running(paths, "mlflow") if ep.embedded_mlflow and paths.root.exists() else None
    s3_ok = s3_healthy(cfg)[0] if (weed or not ep.embedded_s3) else False
    mlflow_ok = mlflow_healthy(ep.mlflow)[0] if (mlflow or not ep.embedded_mlflow) else False
    public = ep.public()
    return {
        "mlflow": public["mlflow"],
        "s3": public["s3"],
        "bucket": ep.bucket,
        "artifacts": ep.artifacts,
        "healthy": bool(s3_ok and mlflow_ok),
        "s3_healthy": bool(s3_ok),
        "mlflow_healthy": bool(mlflow_ok),
        "mlflow_service": "embedded" if ep.embedded_mlflow else "remote",
        "s3_service": "embedded" if ep.embedded_s3 else "remote",
        "s3_pid": int(weed["pid"]) if weed else None,
        "mlflow_pid": int(mlflow["pid"]) if mlflow else None,
        "s3_internal_ports": dict(weed.get("ports", {})) if weed else {},
        "state_dir": str(paths.root),
    }
