"""The team's database for real: MLflow's tracking store and its basic-auth user store on PostgreSQL, as infra/
runs them (compose.yaml, k8s/mlflow.yaml), under the product's main path: sweep -> promote -> frontalize.

Every other test uses the embedded SQLite store. Here a throwaway PostgreSQL server (Debian's package: initdb,
pg_ctl) runs as an unprivileged user (PostgreSQL refuses root; `nobody` when the tests run as root), listens on
127.0.0.1 only on a free port, with a password (SCRAM), and is stopped (`pg_ctl stop -m fast`) and deleted at
the end, also when the test fails. The MLflow server runs with infra's flags (`mlflow_server_flags`, with
``--app-name basic-auth``) on ``postgresql+psycopg2://mlflow@HOST:PORT/mlflow``, the password from PGPASSWORD,
the basic-auth ini's ``database_uri`` naming the same database and the admin from MLFLOW_AUTH_ADMIN_*; S3 is
the embedded SeaweedFS. The admin creates a member, and the member's commands see the stack only through the
standard variables (MLFLOW_TRACKING_URI/USERNAME/PASSWORD, MLFLOW_S3_ENDPOINT_URL, AWS keys). Afterwards the
database itself is read: the runs, the registered model and its alias, the users and the member's grants are
rows in PostgreSQL, and no SQLite file was written anywhere.

Slow (several minutes on 2 cores); skipped where PostgreSQL's server binaries or psycopg2 are missing.
"""

from __future__ import annotations

import configparser
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import free_port, services_config

REPO = Path(__file__).resolve().parent.parent
QUICK = str(REPO / "sweeps" / "quick.yaml")
RUN_AS_ROOT = "nobody"  # who runs PostgreSQL when the tests run as root


# ---------------------------------------------------------------- a throwaway PostgreSQL server


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl, postgres), or None. Debian keeps them in
    /usr/lib/postgresql/VERSION/bin, off PATH; a PATH entry (e.g. a symlink in /usr/local/bin) wins."""
    need = ("initdb", "pg_ctl", "postgres")
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
                         key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()], reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in need):
            return bindir
    return None


class LocalPostgres:
    """A PostgreSQL server of its own, for one test: a fresh cluster (initdb) in a private folder under TMPDIR,
    run by an unprivileged user (`RUN_AS_ROOT` when this process is root: PostgreSQL refuses to run as root, and
    pytest's tmp_path, below a 0700 root folder, is out of that user's reach), listening on 127.0.0.1:`port`
    only (and a unix socket in its own folder), superuser `user` with a random password (SCRAM; TCP logins
    need it), and an empty database `database`. fsync is off: nothing here must survive a crash.

    `stop()` stops it (`pg_ctl stop -m fast`; the postmaster's PID, from its pid file, gets SIGQUIT then
    SIGKILL if that fails), copies its log to `log_dir` and deletes the cluster."""

    def __init__(self, bindir: Path, log_dir: Path, *, user: str = "mlflow", database: str = "mlflow"):
        self.bindir, self.log_dir, self.user, self.database = bindir, Path(log_dir), user, database
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self.root: Path | None = None
        self.run_as = pwd.getpwnam(RUN_AS_ROOT) if os.geteuid() == 0 else None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def uri(self, driver: str = "postgresql+psycopg2") -> str:
        """The SQLAlchemy URI as infra/ writes it: no password (libpq takes it from PGPASSWORD)."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
        ids = {}
        if self.run_as is not None:
            ids = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C", "TZ": "UTC"}
        out = subprocess.run([str(self.bindir / argv[0]), *argv[1:]], cwd=self.root, env=env, capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True, **ids)
        if out.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}\n"
                               f"server log:\n{log}")
        return out

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def start(self) -> "LocalPostgres":
        self.root = Path(tempfile.mkdtemp(prefix="frl-pg-"))  # 0700; short, for the unix socket's path
        self._own(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--no-locale", "--encoding=UTF8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        self.port = free_port()
        with open(self.data / "postgresql.conf", "a") as conf:  # appended: the file stays the server user's
            conf.write(f"\n# {__name__}\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\nfull_page_writes = off\n")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120")
        with contextlib.closing(self.connect("postgres")) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def connect(self, database: str | None = None):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=database or self.database, connect_timeout=10)

    def query(self, sql: str, *params) -> list[tuple]:
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", timeout=90)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pid = self._postmaster_pid()
                    for sig in (signal.SIGQUIT, signal.SIGKILL):  # SIGQUIT: PostgreSQL's immediate shutdown
                        if pid is None:
                            break
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                            time.sleep(0.2)
        finally:
            with contextlib.suppress(OSError):
                self.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log, self.log_dir / "postgres.log")
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed "
                    "(Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 (MLflow's PostgreSQL driver) is not installed: "
                                           "pip install -e '.[dev]'")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS_ROOT)
        except KeyError:
            pytest.skip(f"running as root and no user {RUN_AS_ROOT!r} to run PostgreSQL as (it refuses root)")
    pg = LocalPostgres(bindir, tmp_path_factory.mktemp("postgres-log"))
    t0 = time.monotonic()
    try:
        pg.start()
        print(f"\nPostgreSQL {pg.query('SHOW server_version')[0][0]} up on 127.0.0.1:{pg.port} "
              f"in {time.monotonic() - t0:.1f} s")
        yield pg
    finally:
        pg.stop()


# ---------------------------------------------------------------- MLflow on it, as infra/ runs it, with embedded S3


def _stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (it runs in a session of its own: its workers too), SIGKILL after
    `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived the supervisor
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def pg_stack(postgres, tmp_path_factory):
    """MLflow server (basic-auth app, 2 workers) on `postgres` plus embedded S3: yields a dict with the
    services config (its MLflow named as remote), the endpoints, the admin's and a member's login, and the
    server's working folder. The member is created by the admin, as infra/README.md's Logins section does."""
    from mlflow.server.auth.client import AuthServiceClient

    from frontalab import services
    from frontalab.services.endpoints import MLFLOW_AUTH_DEFAULT_PERMISSION, bucket_uri, embedded_credentials
    from frontalab.services.mlflow_server import MLFLOW_SERVER_ENV, mlflow_healthy, mlflow_server_flags
    from frontalab.services.processes import environment_without
    from frontalab.services.state import state_paths

    base = tmp_path_factory.mktemp("pg-stack")
    mlflow_port = free_port()
    cfg = services_config(base / "state", None, None, f"services.mlflow_uri=http://127.0.0.1:{mlflow_port}")
    ep = services.endpoints(cfg)
    assert ep.embedded_s3 and not ep.embedded_mlflow
    s3_keys = embedded_credentials(state_paths(cfg), create=True)  # the key pair SeaweedFS will serve

    # infra/'s basic_auth.ini: the user store in the tracking database itself; the admin comes from the env.
    server_dir = base / "mlflow-server"
    server_dir.mkdir()
    auth_ini = base / "basic_auth.ini"
    ini = configparser.ConfigParser(interpolation=None)
    ini["mlflow"] = {"default_permission": MLFLOW_AUTH_DEFAULT_PERMISSION, "database_uri": postgres.uri()}
    with open(auth_ini, "w") as f:
        ini.write(f)
    auth_ini.chmod(0o600)
    admin = services.Credentials("admin", secrets.token_urlsafe(24))

    argv = [sys.executable, "-m", "mlflow", "server", *mlflow_server_flags(
        backend_store_uri=postgres.uri(), artifacts_destination=bucket_uri(cfg.bucket, "mlflow"),
        host="127.0.0.1", port=mlflow_port, workers=2, auth=True)]
    assert postgres.password not in " ".join(argv)
    env = environment_without(("AWS_", "MLFLOW_", "PG"))
    env.update({**MLFLOW_SERVER_ENV, "MLFLOW_S3_ENDPOINT_URL": ep.s3, "AWS_REGION": ep.region,
                "AWS_DEFAULT_REGION": ep.region, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_ACCESS_KEY_ID": s3_keys.access_key, "AWS_SECRET_ACCESS_KEY": s3_keys.secret_key,
                "PGPASSWORD": postgres.password, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
                "MLFLOW_AUTH_ADMIN_USERNAME": admin.access_key, "MLFLOW_AUTH_ADMIN_PASSWORD": admin.secret_key,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)})
    log = base / "mlflow.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        server = subprocess.Popen(argv, cwd=server_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # First start: MLflow migrates an empty database (the tracking schema, then the auth schema).
        deadline = time.monotonic() + 300
        while not mlflow_healthy(ep.mlflow)[0]:
            assert server.poll() is None, f"the MLflow server exited ({server.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"the MLflow server is not healthy after 300 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        print(f"MLflow server on PostgreSQL healthy in {time.monotonic() - t0:.1f} s")
        services.up(cfg, quiet=True)  # SeaweedFS and the bucket; the named MLflow server is only health-checked
        member = services.Credentials(f"member-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(18))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", admin.access_key)
            mp.setenv("MLFLOW_TRACKING_PASSWORD", admin.secret_key)
            AuthServiceClient(ep.mlflow).create_user(member.access_key, member.secret_key)
        yield {"cfg": cfg, "ep": ep, "admin": admin, "member": member, "s3_keys": s3_keys,
               "server_dir": server_dir, "log": log}
    finally:
        _stop_group(server)
        services.down(cfg, quiet=True)


# ---------------------------------------------------------------- the test


def _frontalab(*args: str, env: dict[str, str], timeout: float = 900) -> dict:
    out = subprocess.run([sys.executable, "-m", "frontalab", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **env})
    assert out.returncode == 0, f"frontalab {args[0]} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])


@pytest.mark.slow  # PostgreSQL, an MLflow server migrating it, a 2-trial sweep, a promotion, a frontalization
def test_sweep_promote_frontalize_with_mlflow_on_postgresql(postgres, pg_stack, small_dataset, faces_root, tmp_path,
                                                           monkeypatch):
    import requests
    from mlflow import MlflowClient

    from frontalab.naming import SELECTION_METRIC

    cfg, ep, admin, member = pg_stack["cfg"], pg_stack["ep"], pg_stack["admin"], pg_stack["member"]
    face = sorted((faces_root / "lfw-gray").rglob("*.jpg"))[0]
    home = tmp_path / "home"
    env = {"FRONTALAB_HOME": str(home), "MLFLOW_TRACKING_URI": ep.mlflow,
           "MLFLOW_TRACKING_USERNAME": member.access_key, "MLFLOW_TRACKING_PASSWORD": member.secret_key,
           "MLFLOW_S3_ENDPOINT_URL": ep.s3, "AWS_ACCESS_KEY_ID": pg_stack["s3_keys"].access_key,
           "AWS_SECRET_ACCESS_KEY": pg_stack["s3_keys"].secret_key}
    # The basic-auth app answers: no login, no data.
    assert requests.get(f"{ep.mlflow}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30).status_code == 401

    name = f"pg-{uuid.uuid4().hex[:6]}"
    summary = _frontalab("sweep", QUICK, "--name", name, f"base.data.path={small_dataset}", "base.model.out_size=64",
                         "base.train.init_from=''", "base.train.steps=10", "base.train.batch_size=4",
                         "base.train.val_faces=8", "base.train.val_every=10", "base.train.checkpoint_every=10",
                         "base.train.log_every=5", "scheduler.name=fifo", "search.loss.texture={grid:[10,20]}",
                         "search.train.g_steps_per_d={grid:[1]}", "max_concurrent=2", "resources.cpu=1", env=env)
    assert summary["errors"] == 0, summary
    champion = _frontalab("promote", name, "promote.min_face_share=0", env=env, timeout=600)
    assert champion["uri"] == "models:/frontalizer@champion"
    out = tmp_path / "frontal"
    done = _frontalab("frontalize", "--model", "models:/frontalizer@champion", str(face), str(out), env=env,
                      timeout=600)
    assert done["written"] == 1 and len(list(out.glob("*.png"))) == 1

    # Through MLflow, as the member: the champion is the promoted trial.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member.access_key)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", member.secret_key)
    version = MlflowClient(ep.mlflow).get_model_version_by_alias("frontalizer", "champion")
    assert (version.version, version.run_id) == (str(champion["version"]), champion["run_id"])

    # In PostgreSQL itself: both schemas migrated, side by side in one database.
    tables = {t for (t,) in postgres.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"alembic_version", "alembic_version_auth", "experiments", "runs", "metrics", "registered_models",
            "model_versions", "registered_model_aliases", "users", "roles", "role_permissions"} <= tables, tables
    assert postgres.query("SELECT version_num FROM alembic_version") and \
        postgres.query("SELECT version_num FROM alembic_version_auth")
    # The sweep's runs: its parent and two trials, finished, the champion among them, with metrics.
    (exp_id,), = postgres.query("SELECT experiment_id FROM experiments WHERE name = %s", f"sweep-{name}")
    runs = dict(postgres.query("SELECT run_uuid, status FROM runs WHERE experiment_id = %s AND lifecycle_stage = "
                               "'active'", exp_id))
    assert len(runs) == 3 and set(runs.values()) == {"FINISHED"}, runs
    assert champion["run_id"] in runs
    children = postgres.query("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId' AND run_uuid = ANY(%s)",
                              list(runs))
    assert children == [(2,)]
    assert postgres.query("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = %s",
                          champion["run_id"], SELECTION_METRIC)[0][0] >= 1
    # The registry: the model, its version from the champion's run, the alias on it.
    assert ("frontalizer",) in postgres.query("SELECT name FROM registered_models")  # beside landmarks68
    assert postgres.query("SELECT run_id FROM model_versions WHERE name = 'frontalizer' AND version = %s",
                          int(champion["version"])) == [(champion["run_id"],)]
    assert postgres.query("SELECT version FROM registered_model_aliases WHERE name = 'frontalizer' AND "
                          "alias = 'champion'") == [(int(champion["version"]),)]
    # The user store: the admin (from MLFLOW_AUTH_ADMIN_*) and the member, hashed; the member owns what it made.
    users = dict(postgres.query("SELECT username, is_admin FROM users"))
    assert users == {admin.access_key: True, member.access_key: False}, users
    hashes = [h for (h,) in postgres.query("SELECT password_hash FROM users")]
    assert not any(pw in h for h in hashes for pw in (admin.secret_key, member.secret_key))
    grants = set(postgres.query(
        "SELECT p.resource_type, p.resource_pattern, p.permission FROM users u "
        "JOIN user_role_assignments a ON a.user_id = u.id JOIN role_permissions p ON p.role_id = a.role_id "
        "WHERE u.username = %s", member.access_key))
    assert {("experiment", str(exp_id), "MANAGE"), ("registered_model", "frontalizer", "MANAGE")} <= grants, grants

    # Nothing went to SQLite: not in the server's folder, not in the services' state dir, not in the commands' home.
    for root in (pg_stack["server_dir"], Path(cfg.state_dir), home):
        stray = [p for p in root.rglob("*") if p.suffix in (".db", ".sqlite") or p.name.startswith("mlruns")]
        assert not stray, f"a local store was written: {stray}"
