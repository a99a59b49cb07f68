"""The embedded MLflow tracking server: its flags (shared with infra/), its environment, its health.

Artifacts are proxied by the server to ``s3://BUCKET/mlflow``, so clients need no S3 keys. With
``services.mlflow_auth`` it runs MLflow's basic-auth app, configured by its ini file in the state dir.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from frontalab.services.endpoints import S3_CREDENTIAL_ENV, Credentials, bind_host, embedded_mlflow_login, endpoints
from frontalab.services.processes import environment_without
from frontalab.services.state import StatePaths

# Environment every MLflow server of ours runs with (otherwise 7 extra job-runner processes).
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


# MLflow's basic-auth app: every request but /health needs a login (HTTP basic auth) of its user store.
MLFLOW_AUTH_APP = "basic-auth"


def mlflow_server_flags(*, backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                        workers: int = 1, allowed_hosts: tuple[str, ...] = (), auth: bool = False) -> list[str]:
    """`mlflow server` options: artifacts proxied to S3 by the server, so clients need no S3 keys.

    The embedded server and the manifests in infra/ (compose, Kubernetes; always with `auth`) use these same flags.
    """
    flags = ["--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination,
             "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        flags += ["--allowed-hosts", ",".join(allowed_hosts)]
    if auth:
        flags += ["--app-name", MLFLOW_AUTH_APP]
    return flags


def mlflow_command(cfg: Any, paths: StatePaths,
                   creds: Credentials | None) -> tuple[list[str], dict[str, str], Path, dict[str, Any]]:
    """(argv, environment, working folder, details to record) of the embedded MLflow server."""
    bind = bind_host(cfg.host)
    argv = [sys.executable, "-m", "mlflow", "server", *mlflow_server_flags(
        backend_store_uri=f"sqlite:///{paths.mlflow_db}", artifacts_destination=endpoints(cfg).artifacts,
        host=bind, port=cfg.mlflow_port, workers=1, auth=cfg.mlflow_auth)]
    # MLFLOW_SERVER_* and other server settings pass through; the store's endpoint and keys and the auth
    # settings are ours (MLFLOW_AUTH_ADMIN_* from the shell would override the generated admin).
    env = environment_without(("AWS_", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_AUTH_"))
    env.update({
        **MLFLOW_SERVER_ENV,
        "MLFLOW_S3_ENDPOINT_URL": endpoints(cfg).s3,
        "AWS_DEFAULT_REGION": endpoints(cfg).region,
        "AWS_REGION": endpoints(cfg).region,
    })
    if not endpoints(cfg).embedded_s3:
        for k, v in os.environ.items():  # a remote store's own credential settings (profile, token, ...)
            if k.startswith("AWS_") and k not in env:
                env[k] = v
    else:
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    if creds is not None:
        env.update(zip(S3_CREDENTIAL_ENV, (creds.access_key, creds.secret_key)))
    if cfg.mlflow_auth:
        embedded_mlflow_login(paths, create=True)
        # The Flask secret signs only the sign-up form's CSRF token and flash messages: a new one per start will do.
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(paths.mlflow_auth), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32))
    return argv, env, paths.mlflow_dir, {"host": bind, "port": cfg.mlflow_port, "auth": bool(cfg.mlflow_auth)}


def mlflow_healthy(uri: str, timeout: float = 2.0) -> tuple[bool, str]:
    # No proxies: a proxy from the environment must not answer for (or block) a local server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    parts = urlsplit(uri)  # /health asks for no credentials, even behind MLflow's basic-auth app: leave out user:pass@
    try:
        with opener.open(f"{parts._replace(netloc=parts.netloc.rpartition('@')[2]).geturl()}/health",
                         timeout=timeout) as resp:
            ok = resp.status == 200
            return ok, "" if ok else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return False, f"{type(err).__name__}: {err}"
