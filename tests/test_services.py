"""Embedded services against real servers: SeaweedFS (S3) and the MLflow tracking server.

Two instances: the session-wide `embedded_services` fixture (shared with other modules) and
one driven only through the `frontalab` CLI in its own state dir (from nothing, up again,
down, port clashes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import free_port, listening_ports, pid_alive, process_tree, service_overrides, services_config, wait_gone
from frontalab import services

REPO = Path(__file__).resolve().parent.parent


def frontalab(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frontalab", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def http_get(url: str, timeout: float = 3.0) -> tuple[int | None, bytes]:
    """(status, body) of a plain GET; status None when no HTTP response came back at all."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None, b""
    except Exception:  # noqa: BLE001 - e.g. http.client.BadStatusLine from a TLS/gRPC port
        return None, b""


def secret_of(cfg) -> str:
    creds = services.credentials(cfg)
    assert creds is not None
    return creds.secret_key


# ---------------------------------------------------------------- the shared fixture's instance


def test_an_existing_wide_state_dir_is_tightened(tmp_path):
    from frontalab.services.state import StatePaths, prepare_state

    root = tmp_path / "state"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    prepare_state(StatePaths(root))
    assert root.stat().st_mode & 0o777 == 0o700


def test_s3_roundtrip(embedded_services):
    cfg, ep = embedded_services
    s3 = services.s3_client(cfg)
    key = f"tests/roundtrip-{uuid.uuid4().hex}.bin"
    body = os.urandom(4096)
    s3.put_object(Bucket=ep.bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=ep.bucket, Key=key)["Body"].read() == body
    assert ep.bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_client_env_points_everything_at_the_services(embedded_services):
    import boto3

    cfg, ep = embedded_services
    env = services.client_env(cfg)
    assert env["MLFLOW_TRACKING_URI"] == ep.mlflow
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == ep.s3
    client = boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                   region_name=env["AWS_DEFAULT_REGION"]).client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    client.head_bucket(Bucket=ep.bucket)
    assert env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(ep.public())


def test_mlflow_artifact_lands_in_bucket(embedded_services):
    from mlflow import MlflowClient

    cfg, ep = embedded_services
    client = MlflowClient(tracking_uri=ep.mlflow)
    exp_id = client.create_experiment(f"test-services-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.5, step=1)
    client.log_text(run_id, "hello from the test", "notes/hello.txt")
    client.set_terminated(run_id)
    assert client.get_run(run_id).data.metrics["loss"] == 0.5

    keys = [o["Key"] for o in services.s3_client(cfg).list_objects_v2(
        Bucket=ep.bucket, Prefix="mlflow/").get("Contents", [])]
    hits = [k for k in keys if run_id in k and k.endswith("notes/hello.txt")]
    assert hits, f"artifact not in s3://{ep.bucket}/mlflow/: {keys}"
    body = services.s3_client(cfg).get_object(Bucket=ep.bucket, Key=hits[0])["Body"].read()
    assert body == b"hello from the test"


def test_secret_only_in_credentials_file(embedded_services):
    cfg, ep = embedded_services
    secret = secret_of(cfg).encode()
    services.s3_client(cfg).put_object(Bucket=ep.bucket, Key="tests/secret-walk.txt", Body=b"x")
    root = Path(services.status(cfg)["state_dir"])
    holders, scanned = [], 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            scanned += 1
            if secret in path.read_bytes():
                holders.append(path.relative_to(root))
    assert holders == [Path("credentials.json")], holders
    assert scanned > 10  # logs, sqlite db, SeaweedFS data and metadata were all read
    assert (root / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o077 == 0


def test_no_unauthenticated_reads(embedded_services):
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError
    import boto3

    cfg, ep = embedded_services
    key = f"tests/private-{uuid.uuid4().hex}.txt"
    payload = f"private payload {uuid.uuid4().hex}".encode()
    services.s3_client(cfg).put_object(Bucket=ep.bucket, Key=key, Body=payload)

    # Anonymous and wrongly signed S3 requests are refused.
    status, body = http_get(f"{ep.s3}/{ep.bucket}/{key}")
    assert status == 403 and payload not in body
    anon = boto3.session.Session().client("s3", endpoint_url=ep.s3, region_name="us-east-1",
                                          config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError) as err:
        anon.get_object(Bucket=ep.bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    wrong = boto3.session.Session(aws_access_key_id=services.credentials(cfg).access_key,
                                  aws_secret_access_key="not-the-secret").client(
        "s3", endpoint_url=ep.s3, region_name="us-east-1")
    with pytest.raises(ClientError):
        wrong.get_object(Bucket=ep.bucket, Key=key)

    # The object's file id, through the store's own admin shell (mutual TLS to its gRPC ports).
    state = services.status(cfg)
    internal = state["s3_internal_ports"]
    env = {**os.environ, **services.weed_client_env(cfg)}
    shell = subprocess.run(
        [services.weed_binary(), "shell", f"-master=127.0.0.1:{internal['master']}.{internal['master_grpc']}",
         f"-filer=127.0.0.1:{internal['filer']}.{internal['filer_grpc']}"],
        input=f"fs.meta.cat /buckets/{ep.bucket}/{key}\n", capture_output=True, text=True, env=env, timeout=30)
    fids = [line.split('"')[3] for line in shell.stdout.splitlines() if '"fileId"' in line]
    assert fids, shell.stdout[-2000:] + shell.stderr[-2000:]

    # Every other TCP port of the weed process tree: plain GETs read nothing.
    ports = listening_ports(process_tree(state["s3_pid"]))
    assert cfg.s3_port in ports
    assert ports <= set(internal.values()), f"unexpected listeners: {ports - set(internal.values())}"
    print(f"\nweed listens on {sorted(ports)}; internal: {internal}")
    paths = ["/", f"/{ep.bucket}/{key}", f"/buckets/{ep.bucket}/{key}", f"/{fids[0]}", f"/{fids[0]}/x.txt"]
    for port in sorted(ports - {cfg.s3_port}):
        for path in paths:
            status, body = http_get(f"http://127.0.0.1:{port}{path}")
            assert payload not in body, f"object readable at :{port}{path}"
            if port == internal["master"] and path == "/":
                continue  # SeaweedFS always serves its master status page (topology only)
            assert status is None or status >= 400, f"GET :{port}{path} -> {status}"


def test_status_json_via_cli(embedded_services):
    cfg, ep = embedded_services
    res = frontalab("status", "--json", *service_overrides(cfg), timeout=60)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    assert state["mlflow"] == ep.mlflow and state["s3"] == ep.s3 and state["bucket"] == ep.bucket
    assert state["healthy"] is True
    assert pid_alive(state["s3_pid"]) and pid_alive(state["mlflow_pid"])
    secret = secret_of(cfg)
    assert secret not in res.stdout and secret not in res.stderr


def test_remote_endpoints_are_only_health_checked(embedded_services, tmp_path, monkeypatch):
    cfg, ep = embedded_services
    creds = services.credentials(cfg)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_key)
    remote = services_config(tmp_path / "remote-state", free_port(), free_port(),
                             f"services.s3_endpoint={ep.s3}", f"services.mlflow_uri={ep.mlflow}")
    got = services.up(remote, quiet=True)
    assert (got.s3, got.mlflow, got.bucket) == (ep.s3, ep.mlflow, ep.bucket)
    assert not got.embedded_s3 and not got.embedded_mlflow
    state = services.status(remote)
    assert state["healthy"] and state["s3_pid"] is None and state["mlflow_pid"] is None
    assert not list((tmp_path / "remote-state").rglob("*.pid"))
    assert not (tmp_path / "remote-state" / "credentials.json").exists()
    assert services.client_env(remote)["AWS_SECRET_ACCESS_KEY"] == creds.secret_key
    services.s3_client(remote).head_bucket(Bucket=ep.bucket)
    services.down(remote, quiet=True)  # touches nothing remote
    assert services.status(cfg)["healthy"]


# ---------------------------------------------------------------- an instance driven only through the CLI


@pytest.fixture(scope="module")
def cli_cfg(tmp_path_factory):
    cfg = services_config(tmp_path_factory.mktemp("cli") / "state")
    yield cfg
    services.down(cfg, quiet=True)


def test_cli_up_from_nothing(cli_cfg, capsys):
    assert not Path(cli_cfg.state_dir).exists()
    t0 = time.monotonic()
    res = frontalab("up", *service_overrides(cli_cfg))
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    with capsys.disabled():
        print(f"\n`frontalab up` from nothing: healthy S3 + MLflow in {elapsed:.1f} s")
    public = json.loads(res.stdout)
    assert public["s3"] == f"http://127.0.0.1:{cli_cfg.s3_port}"
    assert public["mlflow"] == f"http://127.0.0.1:{cli_cfg.mlflow_port}"
    state = services.status(cli_cfg)
    assert state["healthy"], state
    services.s3_client(cli_cfg).head_bucket(Bucket=cli_cfg.bucket)
    with urllib.request.urlopen(f"{public['mlflow']}/health", timeout=5) as resp:
        assert resp.status == 200
    secret = secret_of(cli_cfg)
    assert secret not in res.stdout and secret not in res.stderr


def test_cli_up_again_is_noop(cli_cfg):
    before = services.status(cli_cfg)
    assert before["healthy"]
    res = frontalab("up", *service_overrides(cli_cfg))
    assert res.returncode == 0, res.stderr
    after = services.status(cli_cfg)
    assert (after["s3_pid"], after["mlflow_pid"]) == (before["s3_pid"], before["mlflow_pid"])
    assert after["healthy"]


@pytest.mark.parametrize("which", ["s3", "mlflow"])
def test_cli_up_refuses_a_taken_port(tmp_path, which):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        other = free_port()
        ports = (taken, other) if which == "s3" else (other, taken)
        cfg = services_config(tmp_path / "state", *ports)
        res = frontalab("up", *service_overrides(cfg), timeout=60)
    assert res.returncode == 4 and "Traceback" not in res.stderr  # `frontalab --help`: a port taken
    assert str(taken) in res.stderr, res.stderr
    assert "in use" in res.stderr
    assert not list((tmp_path / "state").rglob("*.pid")), "something was started"


def test_cli_down_leaves_no_process(cli_cfg):
    state = services.status(cli_cfg)
    pids = process_tree(state["s3_pid"]) | process_tree(state["mlflow_pid"])
    assert len(pids) >= 3  # weed; the mlflow CLI and its uvicorn server
    # Kill the `mlflow server` parent first: its uvicorn child lives on in the process group.
    orphans = process_tree(state["mlflow_pid"]) - {state["mlflow_pid"]}
    assert orphans
    os.kill(state["mlflow_pid"], 9)
    assert wait_gone({state["mlflow_pid"]}, timeout=5) == set()
    assert all(pid_alive(p) for p in orphans)
    res = frontalab("down", *service_overrides(cli_cfg), timeout=120)
    assert res.returncode == 0, res.stderr
    assert wait_gone(pids, timeout=5) == set()
    root = Path(state["state_dir"])
    assert not list((root / "run").glob("*.pid")) and not list((root / "run").glob("*.json"))
    after = services.status(cli_cfg)
    assert after["healthy"] is False and after["s3_pid"] is None and after["mlflow_pid"] is None
    for port in (cli_cfg.s3_port, cli_cfg.mlflow_port, *state["s3_internal_ports"].values()):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # raises if anything still listens
    # The secret stays in the credentials file only, logs included.
    secret = secret_of(cli_cfg).encode()
    holders = [p.relative_to(root) for p in root.rglob("*")
               if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]
    assert holders == [Path("credentials.json")]
    # down again: nothing to do, still success
    assert frontalab("down", *service_overrides(cli_cfg), timeout=60).returncode == 0


# ---------------------------------------------------------------- a remote stack, named by the standard variables only


@pytest.fixture(scope="module")
def remote_stack(tmp_path_factory):
    """A second MLflow server (with MLflow's basic-auth app) and S3 endpoint, with their own state dir and
    ports: a team's stack, seen from the commands below only through MLflow's and AWS's own variables.
    Yields (cfg, endpoints, a member's login): the member is created by the admin as infra/README.md shows."""
    from mlflow.server.auth.client import AuthServiceClient

    cfg = services_config(tmp_path_factory.mktemp("remote") / "state", None, None, "services.mlflow_auth=true")
    try:
        ep = services.up(cfg, quiet=True)
        member = services.Credentials(f"member-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in services.client_env(cfg).items():  # the admin's login among them
                mp.setenv(key, value)
            AuthServiceClient(ep.mlflow).create_user(member.access_key, member.secret_key)
        yield cfg, ep, member
    finally:
        services.down(cfg, quiet=True)


def remote_env(cfg, ep, member, home: Path, mlflow_uri: str | None = None) -> dict[str, str]:
    creds = services.credentials(cfg)
    return {"FRONTALAB_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_uri or ep.mlflow,
            "MLFLOW_TRACKING_USERNAME": member.access_key, "MLFLOW_TRACKING_PASSWORD": member.secret_key,
            "MLFLOW_S3_ENDPOINT_URL": ep.s3, "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key}


def assert_nothing_embedded(home: Path, res: subprocess.CompletedProcess) -> None:
    assert not list(home.rglob("*.pid")) and not list(home.rglob("*.log")), "an embedded service was started"
    assert not (home / "credentials.json").exists()
    assert "starting" not in res.stderr, res.stderr


def test_status_names_remote_services_and_masks_a_password_in_the_url(remote_stack, tmp_path):
    cfg, ep, member = remote_stack
    with_password = ep.mlflow.replace("http://", "http://alice:s3cr3t-pw@")
    res = frontalab("status", "--json", env=remote_env(cfg, ep, member, tmp_path / "home", with_password), timeout=60)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    assert (state["mlflow_service"], state["s3_service"]) == ("remote", "remote")
    assert state["healthy"] and state["mlflow_pid"] is None and state["s3_pid"] is None
    assert state["mlflow"] == ep.mlflow.replace("http://", "http://***@") and state["s3"] == ep.s3
    assert "s3cr3t-pw" not in res.stdout + res.stderr and secret_of(cfg) not in res.stdout + res.stderr
    text = frontalab("status", env=remote_env(cfg, ep, member, tmp_path / "home", with_password), timeout=60)
    assert "remote" in text.stdout and "s3cr3t-pw" not in text.stdout + text.stderr
    assert_nothing_embedded(tmp_path / "home", res)


def test_the_embedded_admin_login_lives_only_in_its_0600_file(remote_stack):
    """services.mlflow_auth: the generated admin password is in MLflow's basic-auth ini (0600) and nowhere else
    in the state dir, logs included; frontalab's own processes get it through client_env."""
    from frontalab.services.state import state_paths

    cfg, _, _ = remote_stack
    env = services.client_env(cfg)
    password = env["MLFLOW_TRACKING_PASSWORD"].encode()
    ini = state_paths(cfg).mlflow_auth
    assert ini.stat().st_mode & 0o777 == 0o600
    root = Path(cfg.state_dir)
    holders = [p.relative_to(root) for p in root.rglob("*") if p.is_file() and password in p.read_bytes()]
    assert holders == [ini.relative_to(root)]


@pytest.mark.slow  # ~45 s; the sweep test below runs the same stack further
def test_train_against_a_remote_stack_named_by_the_standard_variables(remote_stack, small_dataset, tmp_path,
                                                                      monkeypatch):
    """No services.* key: MLFLOW_TRACKING_URI with a member's MLFLOW_TRACKING_USERNAME/PASSWORD, MLFLOW_S3_ENDPOINT_URL
    and the AWS keys name the stack; the run, its metrics and its checkpoint land there, no embedded service starts
    in the command's FRONTALAB_HOME, and neither the login nor the S3 secret is printed or recorded."""
    from mlflow import MlflowClient

    from frontalab.naming import SELECTION_METRIC

    cfg, ep, member = remote_stack
    # The server asks who you are: no login, no data (its health check stays open).
    assert http_get(f"{ep.mlflow}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
    assert http_get(f"{ep.mlflow}/health")[0] == 200
    home = tmp_path / "home"
    res = frontalab("train", "model.out_size=64", f"data.path={small_dataset}", "train.steps=10", "train.batch_size=4",
                    "train.val_faces=4", "train.val_every=10", "train.checkpoint_every=10",
                    "tracking.experiment=test-remote-stack", env=remote_env(cfg, ep, member, home), timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    run_id = json.loads(res.stdout)["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member.access_key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", member.secret_key)
    run = MlflowClient(ep.mlflow).get_run(run_id)
    assert run.info.status == "FINISHED" and SELECTION_METRIC in run.data.metrics
    assert MlflowClient(ep.mlflow).get_experiment(run.info.experiment_id).name == "test-remote-stack"
    s3 = services.s3_client(cfg)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=ep.bucket, Prefix="mlflow/").get("Contents", [])]
    checkpoints = [k for k in keys if run_id in k and "/checkpoints/" in k]
    assert checkpoints, keys
    assert_nothing_embedded(home, res)
    recorded = [res.stdout, res.stderr, *run.data.params.values(), *run.data.tags.values()]
    recorded += [s3.get_object(Bucket=ep.bucket, Key=k)["Body"].read().decode("latin-1") for k in checkpoints]
    for secret in (secret_of(cfg), member.secret_key):
        assert not any(secret in text for text in recorded), "a secret was printed, recorded or checkpointed"


@pytest.mark.slow  # a one-trial sweep, a promotion and a frontalization: ~3 min
def test_sweep_promote_frontalize_against_the_remote_stack(remote_stack, small_dataset, tmp_path, monkeypatch):
    """The product's main path with only the standard variables naming the stack: the trial's run, its
    checkpoint and the registered champion land on the remote servers, nothing embedded starts, and a request
    without a login is refused."""
    from mlflow import MlflowClient

    from frontalab.paths import faces_dir

    cfg, ep, member = remote_stack
    face = sorted((faces_dir() / "lfw-gray").rglob("*.jpg"))[:1]
    if not face:
        pytest.skip(f"no faces at {faces_dir() / 'lfw-gray'}")
    home, env = tmp_path / "home", remote_env(cfg, ep, member, tmp_path / "home")
    name = f"remote-{uuid.uuid4().hex[:6]}"
    res = frontalab("sweep", str(REPO / "sweeps" / "quick.yaml"), "--name", name, f"base.data.path={small_dataset}",
                    "base.train.steps=10", "base.train.batch_size=4", "base.train.val_faces=8", "base.train.val_every=10",
                    "base.train.checkpoint_every=10", "base.train.log_every=5", "scheduler.name=fifo",
                    "search.loss.texture={grid:[50]}", "search.train.g_steps_per_d={grid:[1]}", "max_concurrent=1",
                    "resources.cpu=1", env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert json.loads(res.stdout)["errors"] == 0
    promoted = frontalab("promote", name, "promote.min_face_share=0", env=env, timeout=600)
    assert promoted.returncode == 0, promoted.stderr[-4000:]
    champion = json.loads(promoted.stdout)
    out = tmp_path / "frontal"
    done = frontalab("frontalize", "--model", "models:/frontalizer@champion", str(face[0]), str(out), env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout)["written"] == 1 and len(list(out.glob("*.png"))) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member.access_key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", member.secret_key)
    client = MlflowClient(ep.mlflow)
    version = client.get_model_version_by_alias("frontalizer", "champion")
    assert version.version == champion["version"] and version.run_id == champion["run_id"]
    assert client.get_run(champion["run_id"]).info.status == "FINISHED"
    keys = [o["Key"] for o in services.s3_client(cfg).list_objects_v2(Bucket=ep.bucket, Prefix="mlflow/")
            .get("Contents", [])]
    assert any(champion["run_id"] in k and "/checkpoints/" in k for k in keys)
    for res in (res, promoted, done):
        assert_nothing_embedded(home, res)
        assert secret_of(cfg) not in res.stdout + res.stderr and member.secret_key not in res.stdout + res.stderr
    assert http_get(f"{ep.mlflow}/api/2.0/mlflow/registered-models/get?name=frontalizer")[0] == 401


# ---------------------------------------------------------------- a tracking server that restarts


def test_a_client_rides_out_a_server_restart_only_where_told(monkeypatch):
    """A request that cannot connect fails at once by default (a user's command); after `ride_out_outages`
    (a sweep's driver and trials) it is retried until the server answers, here one that starts 3 s late."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from frontalab.tracking import store

    class Experiments(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"experiment": {"experiment_id": "7", "name": "late", "lifecycle_stage": "active"}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(Exception, match="Connection refused|NewConnectionError"):
        store.client().get_experiment_by_name("late")
    assert time.monotonic() - t0 < 10
    server = None

    def start_late():
        nonlocal server
        time.sleep(3)
        server = HTTPServer(("127.0.0.1", port), Experiments)
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    monkeypatch.setattr(store, "_reconnect_s", 0.0)  # restored after the test
    store.ride_out_outages(60)
    try:
        assert store.client().get_experiment_by_name("late").experiment_id == "7"
    finally:
        if server is not None:
            server.shutdown()
