"""The client side of the services, embedded or remote: endpoints, credentials, the bucket's layout,
and the environment and S3 client that point MLflow, boto3, pyarrow and Ray Tune at them.

Remote first: a service is remote where ``services.mlflow_uri`` / ``services.s3_endpoint`` or the standard
variable names it (``MLFLOW_TRACKING_URI``; ``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``), the config
key first; it is then used as-is, with the environment's credentials (MLflow's own ``MLFLOW_TRACKING_*``,
``AWS_*``). Only a service nobody named is embedded. The embedded keys (ports, state_dir) say where an
embedded service runs, and name none.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

from frontalab.compute import RAY_ADDRESS_ENV
from frontalab.config import mask_userinfo
from frontalab.services.state import ServiceError, StatePaths, private_dir, state_paths, write_private

DEFAULT_REGION = "us-east-1"


S3_IDENTITY = "frontalab"


# Prefixes inside the bucket (`services.bucket`), the same embedded and on a cluster (infra/ uses them too).
BUCKET_LAYOUT = {
    "mlflow": "mlflow",      # MLflow artifacts, written through the tracking server (--artifacts-destination)
    "datasets": "datasets",  # prepared datasets: datasets/NAME
    "sweeps": "sweeps",      # Ray Tune storage: sweeps/NAME
    "weights": "weights",    # weights that images never bake in (FaceNet): fetched from here at start
}


# Variables that point MLflow (artifacts), boto3 and pyarrow at the S3 endpoint, and carry its region and keys.
S3_ENDPOINT_ENV = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


S3_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


S3_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"


# MLflow's own credentials for a remote server: the MLflow client reads them, frontalab never records them.
MLFLOW_CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MLFLOW_LOGIN_ENV = MLFLOW_CREDENTIAL_ENV[:2]


# What a user who is not an admin may do on a server behind MLflow's basic-auth app (embedded or infra/): read
# every experiment and model; change only what they created or were granted.
MLFLOW_AUTH_DEFAULT_PERMISSION = "READ"

MLFLOW_ADMIN = "frontalab"  # the embedded server's admin user with services.mlflow_auth (its password is generated)


# Every variable that names a remote service (Ray's cluster included) or carries its credentials.
REMOTE_ENV = (MLFLOW_URI_ENV, *MLFLOW_CREDENTIAL_ENV, *S3_ENDPOINT_ENV, *S3_CREDENTIAL_ENV, RAY_ADDRESS_ENV)


@dataclass(frozen=True)
class Endpoints:
    """Where clients find the services. Holds no secret: `public()` is safe to print and log."""

    mlflow: str
    s3: str
    bucket: str
    region: str = DEFAULT_REGION
    embedded_s3: bool = True
    embedded_mlflow: bool = True

    @property
    def artifacts(self) -> str:
        return bucket_uri(self.bucket, "mlflow")

    def public(self) -> dict[str, Any]:
        return {"mlflow": mask_userinfo(self.mlflow), "s3": mask_userinfo(self.s3), "bucket": self.bucket,
                "artifacts": self.artifacts, "region": self.region,
                "embedded": {"s3": self.embedded_s3, "mlflow": self.embedded_mlflow}}


@dataclass(frozen=True)
class Credentials:
    """A key pair: an S3 access and secret key, or an MLflow username and password."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"

    __str__ = __repr__


def bucket_uri(bucket: str, area: str, *parts: str) -> str:
    """``s3://BUCKET/PREFIX[/PART...]`` for an area of `BUCKET_LAYOUT` (mlflow, datasets, sweeps, weights)."""
    return "/".join([f"s3://{bucket}", BUCKET_LAYOUT[area], *parts])


def s3_env_names() -> dict[str, tuple[str, ...]]:
    """Names of the S3 variables clients read: endpoint, region, credentials."""
    return {"endpoint": S3_ENDPOINT_ENV, "region": S3_REGION_ENV, "credentials": S3_CREDENTIAL_ENV}


def embedded_credentials(paths: StatePaths, create: bool) -> Credentials | None:
    """The embedded S3 identity, generated once into the 0600 credentials file."""
    if paths.credentials.exists():
        doc = json.loads(paths.credentials.read_text())
        cred = doc["identities"][0]["credentials"][0]
        return Credentials(cred["accessKey"], cred["secretKey"])
    if not create:
        return None
    creds = Credentials("FL" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    doc = {"identities": [{
        "name": S3_IDENTITY,
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}
    private_dir(paths.root)
    write_private(paths.credentials, json.dumps(doc, indent=2) + "\n")
    return creds


def embedded_mlflow_login(paths: StatePaths, create: bool) -> Credentials | None:
    """The embedded MLflow server's admin login, generated once into its basic-auth config: MLflow's own ini
    file (0600), which the server reads through MLFLOW_AUTH_CONFIG_PATH and which is the only copy."""
    auth = configparser.ConfigParser(interpolation=None)
    if auth.read(paths.mlflow_auth):
        return Credentials(auth["mlflow"]["admin_username"], auth["mlflow"]["admin_password"])
    if not create:
        return None
    login = Credentials(MLFLOW_ADMIN, secrets.token_urlsafe(24))
    auth["mlflow"] = {"default_permission": MLFLOW_AUTH_DEFAULT_PERMISSION,
                      "database_uri": f"sqlite:///{paths.mlflow_auth_db}",
                      "admin_username": login.access_key, "admin_password": login.secret_key}
    text = io.StringIO()
    auth.write(text)
    private_dir(paths.mlflow_dir)
    write_private(paths.mlflow_auth, text.getvalue())
    return login


def credentials(cfg: Any) -> Credentials | None:
    """S3 credentials clients should use: the state dir's for embedded S3, else the environment's.

    None when the embedded store was never started, or when a remote endpoint is configured
    and the environment has no keys (boto3's own chain, e.g. an instance role, then applies).
    """
    if remote_s3(cfg):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        return Credentials(key, secret) if key and secret else None
    return embedded_credentials(state_paths(cfg), create=False)


def client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def bind_host(host: str) -> str:
    return host.strip("[]") or "127.0.0.1"


def remote_mlflow(cfg: Any) -> str | None:
    """The MLflow server named by ``services.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``; None: embedded."""
    return cfg.mlflow_uri or os.environ.get(MLFLOW_URI_ENV) or None


def remote_s3(cfg: Any) -> str | None:
    """The S3 endpoint named by ``services.s3_endpoint``, else the first of `S3_ENDPOINT_ENV` set; None: embedded."""
    return cfg.s3_endpoint or next((os.environ[n] for n in S3_ENDPOINT_ENV if os.environ.get(n)), None)


def endpoints(cfg: Any) -> Endpoints:
    """The endpoints clients use for `cfg` (a `ServicesConfig`) and this environment; no service is contacted."""
    host = client_host(cfg.host)
    remote_s3_url, remote_mlflow_url = remote_s3(cfg), remote_mlflow(cfg)
    s3 = (remote_s3_url or f"http://{host}:{cfg.s3_port}").rstrip("/")
    mlflow = (remote_mlflow_url or f"http://{host}:{cfg.mlflow_port}").rstrip("/")
    region = DEFAULT_REGION
    if remote_s3_url:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    return Endpoints(mlflow=mlflow, s3=s3, bucket=cfg.bucket, region=region,
                     embedded_s3=not remote_s3_url, embedded_mlflow=not remote_mlflow_url)


def client_env(cfg: Any) -> dict[str, str]:
    """Environment variables that point MLflow, boto3, pyarrow and Ray Tune at the services.

    Contains the S3 secret (and the embedded MLflow server's password): pass it to child processes, never print
    or log it.
    """
    ep = endpoints(cfg)
    env = {MLFLOW_URI_ENV: ep.mlflow}
    env.update({name: ep.s3 for name in S3_ENDPOINT_ENV})
    env.update({name: ep.region for name in S3_REGION_ENV})
    creds = credentials(cfg)
    if creds is not None:
        env.update(zip(S3_CREDENTIAL_ENV, (creds.access_key, creds.secret_key)))
    # A remote server's login is the user's own, already in MLflow's variables; the embedded one's is ours.
    login = embedded_mlflow_login(state_paths(cfg), create=False) if ep.embedded_mlflow and cfg.mlflow_auth else None
    if login is not None:
        env.update(zip(MLFLOW_LOGIN_ENV, (login.access_key, login.secret_key)))
    return env


def s3_client(cfg: Any, *, timeout: float = 30.0, retries: int = 3):
    """A boto3 S3 client for the configured endpoint (path-style addressing, SigV4)."""
    import boto3  # deferred: boto3 takes ~0.5 s to import; only S3 health checks and buckets need it
    from botocore.config import Config  # deferred: with boto3

    ep = endpoints(cfg)
    creds = credentials(cfg)
    if creds is None and ep.embedded_s3:
        raise ServiceError(f"no S3 credentials under {state_paths(cfg).root}: run `frontalab up` first")
    kwargs: dict[str, Any] = {}
    if creds is not None:
        kwargs = {"aws_access_key_id": creds.access_key, "aws_secret_access_key": creds.secret_key}
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                    retries={"max_attempts": retries, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=ep.s3, region_name=ep.region,
                                          config=config, **kwargs)
