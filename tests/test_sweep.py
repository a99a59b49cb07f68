"""Sweeps on real Ray against real services. In the default suite, the champion path: a small sweep on
embedded Ray, its runs read back as a user of the MLflow UI meets them, no credential in Tune's S3 state,
then promote, frontalize and `mlflow models serve`. Slow: a multi-node cluster, a killed worker node, a
killed driver and `--resume`, SIGTERM, and SeaweedFS or the MLflow server killed mid-sweep.

Everything runs for real: `ray start` processes for the head and worker node (LocalCluster),
the embedded SeaweedFS + MLflow servers, `frontalab` commands as subprocesses, and
`mlflow models serve`. Trials are tiny (batch 4, a few steps; 64 px but for the champion's) so the file stays
within minutes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from unittest import mock
from pathlib import Path

import pytest
import requests

from conftest import free_port, pid_alive, png_header, process_tree, run_cli, service_overrides, wait_gone

REPO = Path(__file__).resolve().parent.parent
QUICK = str(REPO / "sweeps" / "quick.yaml")
VENV_BIN = Path(sys.executable).parent
PREFIX = f"t{uuid.uuid4().hex[:6]}"  # sweep names unique per test session
SWEEPS = {"champion": f"{PREFIX}-champion", "multi": f"{PREFIX}-multi", "worker": f"{PREFIX}-wkill",
          "driver": f"{PREFIX}-dkill", "term": f"{PREFIX}-term", "weed": f"{PREFIX}-s3down",
          "mlflow": f"{PREFIX}-mlflowdown", "tpe": f"{PREFIX}-tpe"}
DRIVER_MARK = "FRONTALAB_TEST_DRIVER"
# Multi-node clusters, killed nodes and drivers take minutes each on 2 cores: marked slow (`make test-slow`).


# ---------------------------------------------------------------- helpers


def sweep_args(name: str, dataset: Path, cfg, *, steps: int, trials: int, ckpt_every: int, val_every: int,
               log_every: int = 5, champion: bool = False, search: tuple[str, ...] = (), **extra: str) -> list[str]:
    """quick.yaml cut small: ``champion`` fine-tunes `pretrained:thesis` as the demo does (128 px); the others
    train a 64-px decoder from scratch, three times cheaper a step, for the checks of sweeps themselves."""
    size = [] if champion else ["base.model.out_size=64", "base.train.init_from=''"]
    args = ["sweep", QUICK, "--name", name, f"base.data.path={dataset}", *size,
            f"base.train.steps={steps}", "base.train.batch_size=4", "base.train.val_faces=8",
            f"base.train.log_every={log_every}", f"base.train.val_every={val_every}",
            f"base.train.checkpoint_every={ckpt_every}", "scheduler.name=fifo", "num_samples=1",
            # quick.yaml's grid, cut to ``trials`` points (one trial per texture weight), unless ``search`` replaces it.
            *(search or (f"search.loss.texture={{grid:[{','.join(str(10 * (i + 1)) for i in range(trials))}]}}",
                         "search.train.g_steps_per_d={grid:[1]}")),
            "max_concurrent=2", "resources.cpu=1", *service_overrides(cfg)]
    return args + [f"{k}={v}" for k, v in extra.items()]


def rest(endpoints, endpoint: str, **params) -> dict:
    r = requests.get(f"{endpoints.mlflow}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    r.raise_for_status()
    return r.json()


def rest_post(endpoints, endpoint: str, body: dict) -> dict:
    r = requests.post(f"{endpoints.mlflow}/api/2.0/mlflow/{endpoint}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def sweep_runs(endpoints, sweep: str) -> tuple[list[dict], list[dict]]:
    """(parent runs, child runs) of the sweep's experiment, from MLflow's REST API."""
    exp = rest(endpoints, "experiments/get-by-name", experiment_name=f"sweep-{sweep}")["experiment"]
    runs = rest_post(endpoints, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}) \
        .get("runs", [])
    parents = [r for r in runs if tags(r).get("frontalab.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in tags(r)]
    return parents, children


def history(endpoints, run_id: str, key: str) -> list[int]:
    return sorted(m["step"] for m in rest(endpoints, "metrics/get-history", run_id=run_id, metric_key=key,
                                          max_results=100000).get("metrics", []))


def sample_steps(endpoints, run_id: str) -> set[int]:
    from frontalab.tracking.uploads import image_key_step

    files = rest(endpoints, "artifacts/list", run_id=run_id, path="images").get("files", [])
    found = [image_key_step(Path(f["path"]).name) for f in files]
    return {ks[1] for ks in found if ks and ks[0] == "samples"}


def results_table(endpoints, parent_id: str):
    """The sweep's results table (Tune's dataframe) that the parent run holds as an artifact."""
    import pandas as pd

    r = requests.get(f"{endpoints.mlflow}/get-artifact", params={"path": "results/results.csv", "run_uuid": parent_id},
                     timeout=30)
    r.raise_for_status()
    return pd.read_csv(io.StringIO(r.text))


def assert_every_step_once(endpoints, run: dict, steps: int, log_every: int) -> None:
    got = history(endpoints, run["info"]["run_id"], "train/g/total")
    assert got == list(range(log_every, steps + 1, log_every)), f"train/g/total steps of {run['info']['run_name']}: {got}"


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_sweep(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """`frontalab ARGS` in its own session (its process group can be killed as a whole);
    stderr (Tune's progress) to ``log``, stdout (the JSON summary) to ``log`` + ``.out``."""
    return subprocess.Popen([sys.executable, "-m", "frontalab", *args], stdout=open(f"{log}.out", "wb"),
                            stderr=open(log, "wb"), stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                            start_new_session=True, cwd=str(REPO))


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> dict:
    """Wait for the sweep; its JSON summary."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"sweep did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{log.read_text()[-4000:]}"
    return summary_of(Path(f"{log}.out").read_text())


def summary_of(stdout: str) -> dict:
    """The JSON summary `frontalab sweep` prints on stdout (Ray may print a stray line around it)."""
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


def s3_keys(cfg, prefix: str) -> list[str]:
    from frontalab import services

    s3 = services.s3_client(cfg)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def wait_for_a_checkpoint(proc: subprocess.Popen, log: Path, cfg, name: str, before: str) -> None:
    """Until a trial of sweep ``name`` has a checkpoint in S3; the sweep must not end first (``before`` what)."""
    def checkpointed():
        assert proc.poll() is None, f"the sweep ended before {before}:\n{log.read_text()[-3000:]}"
        return any("/checkpoint_" in k for k in s3_keys(cfg, f"sweeps/{name}/"))

    wait_for("a trial checkpoint in S3", checkpointed, 300)


def kill_driver(args: list[str], log: Path, until) -> None:
    """Start the sweep ``args``, wait ``until(proc)``, then SIGKILL its driver's process group and every orphan of its
    embedded Ray (workers, raylet, GCS), found by PID and by a marker they inherited."""
    from frontalab.services.processes import kill_pids, pids_with_env

    mark = uuid.uuid4().hex
    proc = start_sweep(args, log, env={DRIVER_MARK: mark})
    try:
        until(proc)
        tree = process_tree(proc.pid) | set(pids_with_env(DRIVER_MARK, mark))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(2)
    orphans = {p for p in tree if pid_alive(p)} | set(pids_with_env(DRIVER_MARK, mark))
    left = kill_pids(orphans, signal.SIGKILL, timeout=15)
    assert not left, f"orphans survived SIGKILL: {left}"
    print(f"\ndriver killed; {len(orphans)} orphan processes cleaned up by PID")


def assert_no_credentials(cfg, prefix: str) -> list[str]:
    """Download every object under ``prefix`` (Tune's experiment state, trial state, checkpoints)
    and check that neither S3 key is in its bytes; returns the keys."""
    from frontalab import services

    creds = services.credentials(cfg)
    s3 = services.s3_client(cfg)
    keys = s3_keys(cfg, prefix)
    assert any(k.endswith("tuner.pkl") for k in keys) and any("experiment_state" in k for k in keys), \
        f"Tune's experiment state is under {prefix}: {keys[:20]}"
    for key in keys:
        data = s3.get_object(Bucket=cfg.bucket, Key=key)["Body"].read()
        for secret in (creds.secret_key, creds.access_key):
            assert secret.encode() not in data, f"a credential is in s3://{cfg.bucket}/{key}"
    return keys


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(embedded_services, tmp_path_factory):
    """A Ray head (1 CPU) and one worker node (1 CPU): separate `ray start` processes on 127.0.0.1."""
    from frontalab import services
    from frontalab.testing import LocalCluster

    cfg, _ = embedded_services
    t0 = time.monotonic()
    c = LocalCluster(workers=1, cpus_per_node=1, env=services.client_env(cfg),
                     state_dir=tmp_path_factory.mktemp("ray-cluster"))
    c.start()
    print(f"\nlocal Ray cluster up in {time.monotonic() - t0:.1f} s at {c.address}: {c.node_ids()}")
    try:
        yield c
    finally:
        c.stop()
        assert not c.pids(), "every process of the local cluster is gone"


@pytest.fixture(scope="module")
def champion_sweep(embedded_services, small_dataset):
    """Two trials of a grid (different texture weights) on embedded Ray, 4 steps each from `pretrained:thesis`."""
    cfg, endpoints = embedded_services
    out = run_cli(*sweep_args(SWEEPS["champion"], small_dataset, cfg, steps=4, trials=2, ckpt_every=4, val_every=4,
                              log_every=2, champion=True), timeout=600)
    return summary_of(out.stdout)


@pytest.fixture(scope="module")
def multi_node_sweep(cluster, embedded_services, small_dataset):
    cfg, endpoints = embedded_services
    out = run_cli(*sweep_args(SWEEPS["multi"], small_dataset, cfg, steps=20, trials=2, ckpt_every=10, val_every=10),
                  "--address", cluster.address, timeout=600, env=cluster.driver_env())
    return summary_of(out.stdout)


# ---------------------------------------------------------------- tests


@pytest.mark.slow
def test_local_cluster_nodes_and_processes(cluster):
    ids = cluster.node_ids()
    assert set(ids) == {"head", "w1"} and all(ids.values()) and ids["head"] != ids["w1"]
    by_node = cluster.pids()
    assert {"head", "w1"} <= set(by_node.values())
    status = cluster.status()
    assert status["running"] and all(n["alive"] for n in status["nodes"])
    assert cluster.address.startswith("127.0.0.1:")


@pytest.mark.slow
def test_multi_node_sweep_runs_trials_on_both_nodes(multi_node_sweep, cluster, embedded_services):
    cfg, endpoints = embedded_services
    assert multi_node_sweep["trials"] == 2 and multi_node_sweep["errors"] == 0
    parents, children = sweep_runs(endpoints, SWEEPS["multi"])
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    assert len(children) == 2
    assert {tags(c)["mlflow.parentRunId"] for c in children} == {parents[0]["info"]["run_id"]}
    assert {tags(c)["ray.node_id"] for c in children} == set(cluster.node_ids().values()), "trials ran on both nodes"
    assert len({tags(c)["frontalab.trial_id"] for c in children}) == 2
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        keys = {m["key"] for m in child["data"]["metrics"]}
        assert {"train/g/total", "val/identity_distance_mean"} <= keys
        assert sample_steps(endpoints, child["info"]["run_id"]) >= {0, 10, 20}
        assert_every_step_once(endpoints, child, 20, 5)
        # Its checkpoints are in Tune's storage and MLflow: none stays on the node's disk.
        assert not list(Path(tempfile.gettempdir()).glob(f"trial-{tags(child)['frontalab.trial_id']}-*"))


@pytest.mark.slow  # ~100 s
def test_killed_worker_node_trial_resumes_from_checkpoint_on_a_live_node(cluster, embedded_services, small_dataset,
                                                                        tmp_path):
    cfg, endpoints = embedded_services
    name, steps = SWEEPS["worker"], 40
    log = tmp_path / "sweep.log"
    proc = start_sweep(sweep_args(name, small_dataset, cfg, steps=steps, trials=2, ckpt_every=10, val_every=20,
                                  max_failures=2) + ["--address", cluster.address], log, env=cluster.driver_env())
    worker_id = cluster.node_ids()["w1"]
    victim_step: list[int] = []
    try:
        def worker_trial_past_checkpoint():
            try:
                _, children = sweep_runs(endpoints, name)
            except requests.HTTPError:
                return None
            for c in children:
                if tags(c).get("ray.node_id") == worker_id:
                    got = history(endpoints, c["info"]["run_id"], "train/g/total")
                    # Tune's report blocks until the driver took the result: at step 15 the driver
                    # holds the checkpoint of step 10.
                    if got and got[-1] >= 15:
                        victim_step.append(got[-1])
                        return c
            assert proc.poll() is None, log.read_text()[-3000:]
            return None

        victim = wait_for("a trial on the worker node past its first checkpoint", worker_trial_past_checkpoint, 300)
        from frontalab.services.processes import cmdline as _cmdline

        names = sorted(Path(_cmdline(p)[0]).name if _cmdline(p) else "?" for p in cluster.pids("w1"))
        killed = cluster.kill_node("w1")
        assert killed and not cluster.pids("w1")
        t_kill = time.monotonic()
        summary = finish(proc, log, timeout=600)
        assert summary["trials"] == 2 and summary["errors"] == 0, summary
        print(f"\nworker node killed at step {victim_step[0]}: {len(killed)} processes {names}; "
              f"sweep finished {time.monotonic() - t_kill:.0f} s later")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    parents, children = sweep_runs(endpoints, name)
    assert len(children) == 2, "a restarted trial continues its own run: no new child run"
    again = [c for c in children if c["info"]["run_id"] == victim["info"]["run_id"]]
    assert len(again) == 1
    run = again[0]
    assert run["info"]["status"] == "FINISHED"
    assert tags(run)["ray.node_id"] == cluster.node_ids()["head"], "resumed on the live node"
    assert_every_step_once(endpoints, run, steps, 5)
    for c in children:
        assert c["info"]["status"] == "FINISHED"
    # Resumed from its checkpoint, not from scratch: fewer reports since the restore than in total.
    table = results_table(endpoints, parents[0]["info"]["run_id"])
    row = table[table["trial_id"] == tags(run)["frontalab.trial_id"]].iloc[0]
    assert row["iterations_since_restore"] < row["training_iteration"], row.to_dict()
    assert parents[0]["info"]["status"] == "FINISHED"


@pytest.mark.slow  # ~170 s
def test_killed_driver_then_resume_finishes_every_trial_once(embedded_services, small_dataset, tmp_path):
    cfg, endpoints = embedded_services
    name, steps, trials = SWEEPS["driver"], 30, 3
    args = sweep_args(name, small_dataset, cfg, steps=steps, trials=trials, ckpt_every=10, val_every=30)
    log = tmp_path / "first.log"
    kill_driver(args, log, lambda proc: wait_for_a_checkpoint(proc, log, cfg, name, "it was killed"))
    _, before = sweep_runs(endpoints, name)
    assert any(c["info"]["status"] == "RUNNING" for c in before), "killed mid-trial"

    from frontalab.services.processes import kill_pids, pids_with_env

    log2 = tmp_path / "resume.log"
    mark2 = uuid.uuid4().hex
    proc2 = start_sweep(args + ["--resume"], log2, env={DRIVER_MARK: mark2})
    try:
        summary = finish(proc2, log2, timeout=600)
    finally:
        if proc2.poll() is None:
            os.killpg(proc2.pid, signal.SIGKILL)
        kill_pids(set(pids_with_env(DRIVER_MARK, mark2)), signal.SIGKILL)
    assert summary["trials"] == trials and summary["errors"] == 0, summary

    parents, children = sweep_runs(endpoints, name)
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    trial_ids = [tags(c)["frontalab.trial_id"] for c in children]
    assert len(children) == trials and len(set(trial_ids)) == trials, trial_ids
    for c in children:
        assert c["info"]["status"] == "FINISHED", (c["info"]["run_name"], c["info"]["status"])
        assert_every_step_once(endpoints, c, steps, 5)
    # Tuner.restore rewrote Tune's state in S3: still no credential in it.
    assert_no_credentials(cfg, f"sweeps/{name}/")


def searcher_trials(cfg, tune_experiment: str) -> list:
    """The Optuna trials in the searcher state Tune keeps for ``tune_experiment`` in S3 (the test's own files)."""
    from ray.tune.search.optuna import OptunaSearch

    from frontalab import services, storage

    # Only while reading: a client environment left behind would make later tests' own services look remote.
    with mock.patch.dict(os.environ, services.client_env(cfg)):
        folder = f"s3://frontalab/sweeps/{tune_experiment}"
        state = [f for f in storage.list_files(folder) if Path(f).name.startswith("searcher-state")]
        assert state, f"no searcher state under {folder}"
        searcher = OptunaSearch()
        searcher.restore(str(storage.cached(sorted(state)[-1])))
    return searcher._ot_study.trials


@pytest.mark.slow  # ~5 min
def test_a_tpe_sweep_killed_resumes_its_search_and_grows_warm_started(embedded_services, small_dataset, tmp_path):
    """search_alg=optuna: the driver killed once a trial has finished, `--resume` ends with exactly the trials asked
    for, none run twice, its searcher told every finished result; `--more 4` then adds four trials under the same
    parent run, its searcher told every earlier trial first; the report and importance are on the parent run."""
    cfg, endpoints = embedded_services
    name, trials = SWEEPS["tpe"], 4
    search = ("search_alg=optuna", "search.loss.texture={uniform:[5,100]}", "search.train.g_steps_per_d={choice:[1,2]}")
    args = sweep_args(name, small_dataset, cfg, steps=10, trials=trials, ckpt_every=5, val_every=5, search=search,
                      num_samples=str(trials))
    def a_trial_finished(proc) -> bool:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        try:
            return any(c["info"]["status"] == "FINISHED" for c in sweep_runs(endpoints, name)[1])
        except requests.HTTPError:  # the sweep's experiment is not made yet
            return False

    kill_driver(args, tmp_path / "first.log",
                lambda proc: wait_for("a finished trial", lambda: a_trial_finished(proc), 600, every=2))
    summary = finish(start_sweep(args + ["--resume"], tmp_path / "resume.log"), tmp_path / "resume.log", 900)
    assert summary["trials"] == trials and summary["errors"] == 0, summary
    parents, children = sweep_runs(endpoints, name)
    values = [(c["data"]["params"], tags(c)["frontalab.trial_id"]) for c in children]
    configs = {tuple(sorted((p["key"], p["value"]) for p in params if p["key"] in ("loss.texture",
                                                                              "train.g_steps_per_d")))
               for params, _ in values}
    assert len(parents) == 1 and len(children) == trials and len(configs) == trials, values
    told = searcher_trials(cfg, name)
    assert sum(t.state.name == "COMPLETE" for t in told) == trials, [t.state for t in told]

    grown = finish(start_sweep(args + ["--more", "4"], tmp_path / "more.log"), tmp_path / "more.log", 900)
    assert grown["trials"] == 4 and grown["errors"] == 0, grown
    parents, children = sweep_runs(endpoints, name)
    assert len(parents) == 1 and len(children) == trials + 4
    assert parents[0]["info"]["status"] == "FINISHED"
    assert all(c["info"]["status"] == "FINISHED" for c in children)
    warm = searcher_trials(cfg, f"{name}-more{trials}")
    assert sum(t.state.name == "COMPLETE" for t in warm) == trials + 4  # the 4 told first, then the 4 it ran
    parent = parents[0]["info"]["run_id"]
    files = {f["path"] for f in rest(endpoints, "artifacts/list", run_id=parent, path="report").get("files", [])}
    assert {"report/best_so_far.png", "report/parallel_coordinates.png", "report/importance.json",
            "report/trials.csv"} <= files
    metrics = {m["key"] for m in parents[0]["data"].get("metrics", [])}
    assert {"importance/loss.texture", "importance/train.g_steps_per_d"} <= metrics, metrics
    out = run_cli("report", name, *service_overrides(cfg))
    assert out.stdout.count("\n") >= trials + 4 and "importance (fANOVA" in out.stdout, out.stdout


@pytest.mark.slow  # ~150 s
def test_sigterm_stops_the_sweep_killed_and_resume_finishes_every_trial_once(embedded_services, small_dataset,
                                                                             tmp_path):
    """SIGTERM (a scheduler, `kill`) to the driver alone, as to `train`: trials stopped and their runs KILLED, the
    parent KILLED, exit 130; `--resume` then finishes every trial exactly once."""
    cfg, endpoints = embedded_services
    name, steps, trials = SWEEPS["term"], 30, 2
    args = sweep_args(name, small_dataset, cfg, steps=steps, trials=trials, ckpt_every=10, val_every=30)
    log = tmp_path / "first.log"
    proc = start_sweep(args, log)
    try:
        wait_for_a_checkpoint(proc, log, cfg, name, "SIGTERM")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, f"exit {proc.returncode}:\n{log.read_text()[-3000:]}"
    parents, children = sweep_runs(endpoints, name)
    assert [p["info"]["status"] for p in parents] == ["KILLED"]
    assert children and all(c["info"]["status"] == "KILLED" for c in children), \
        [(c["info"]["run_name"], c["info"]["status"]) for c in children]

    log2 = tmp_path / "resume.log"
    summary = finish(start_sweep(args + ["--resume"], log2), log2, timeout=600)
    assert summary["trials"] == trials and summary["errors"] == 0, summary
    parents, children = sweep_runs(endpoints, name)
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    assert len(children) == trials and len({tags(c)["frontalab.trial_id"] for c in children}) == trials
    for c in children:
        assert c["info"]["status"] == "FINISHED", (c["info"]["run_name"], c["info"]["status"])
        assert_every_step_once(endpoints, c, steps, 5)


@pytest.fixture
def breakable_services(tmp_path):
    """Embedded S3 + MLflow of this test alone (the session's stack must survive it): (cfg, endpoints)."""
    from frontalab import services
    from conftest import services_config

    cfg = services_config(tmp_path / "state")
    try:
        yield cfg, services.up(cfg, quiet=True)
    finally:
        services.down(cfg, quiet=True)


@pytest.mark.slow  # ~4 min each
@pytest.mark.parametrize("victim", ["weed", "mlflow"])
def test_a_service_killed_mid_sweep_and_restarted_finishes_every_trial_once(victim, breakable_services, small_dataset, tmp_path):
    """SIGKILL to SeaweedFS (Tune's storage, every artifact) or to the MLflow server while two trials train, and
    `frontalab up` 5 s later: the sweep completes, every trial exactly once with every logged step once, and
    every checkpoint is in the trial's MLflow run and Tune's storage."""
    from frontalab import services
    from frontalab.services.state import recorded_group, state_paths

    cfg, endpoints = breakable_services
    name, steps, trials, ckpt_every = SWEEPS[victim], 40, 2, 10
    args = sweep_args(name, small_dataset, cfg, steps=steps, trials=trials, ckpt_every=ckpt_every, val_every=20)
    log = tmp_path / "sweep.log"
    proc = start_sweep(args, log)
    try:
        wait_for_a_checkpoint(proc, log, cfg, name, "the outage")
        info, members = recorded_group(state_paths(cfg), victim)
        assert info is not None and members, f"{victim} runs"
        killed = time.monotonic()
        os.killpg(int(info.get("pgid", info["pid"])), signal.SIGKILL)
        assert not wait_gone(set(members), 10), f"{victim} survived SIGKILL"
        time.sleep(5)
        assert proc.poll() is None, f"the sweep died with {victim}:\n{log.read_text()[-3000:]}"
        services.up(cfg, quiet=True)  # restarts what is dead; MLflow's start-up takes 10-20 s here
        print(f"\n{victim} killed mid-sweep, back after {time.monotonic() - killed:.1f} s")
        summary = finish(proc, log, timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert summary["trials"] == trials and summary["errors"] == 0, summary
    parents, children = sweep_runs(endpoints, name)
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    assert len(children) == trials and len({tags(c)["frontalab.trial_id"] for c in children}) == trials
    expected = {f"step-{s:06d}.pt" for s in range(ckpt_every, steps + 1, ckpt_every)}
    for c in children:
        run_id = c["info"]["run_id"]
        assert c["info"]["status"] == "FINISHED", (c["info"]["run_name"], c["info"]["status"])
        assert "frontalab.tracking_incomplete" not in tags(c), tags(c)["frontalab.tracking_incomplete"]
        assert_every_step_once(endpoints, c, steps, 5)
        held = {Path(f["path"]).name for f in rest(endpoints, "artifacts/list", run_id=run_id,
                                                   path="checkpoints").get("files", [])}
        assert held == expected, (c["info"]["run_name"], sorted(held))
        in_tune = {Path(k).name for k in s3_keys(cfg, f"sweeps/{name}/") if tags(c)["frontalab.trial_id"] in k
                   and k.endswith(".pt")}
        # Tune keeps the last two (`num_to_keep`); one written while S3 was down is lost in Ray's silence
        # (pyarrow ignores the failed upload), so these must come from after the outage.
        assert {f"step-{s:06d}.pt" for s in (steps - ckpt_every, steps)} <= in_tune, sorted(in_tune)


def test_a_doomed_sweep_ends_before_it_starts(embedded_services, small_dataset):
    """What every trial needs is checked before any trial or run exists: a missing dataset exits 5, a
    `train.init_from` of another architecture or missing weights exit 2, each in one line, with no trial, Ray or
    MLflow run."""
    cfg, endpoints = embedded_services
    name = f"{PREFIX}-doomed"
    nowhere = "s3://frontalab/datasets/nowhere"
    out = run_cli("sweep", QUICK, "--name", name, f"base.data.path={nowhere}", *service_overrides(cfg), check=False)
    said = [line for line in out.stderr.splitlines() if line.startswith("frontalab sweep:")]
    assert out.returncode == 5 and len(said) == 1 and f"dataset {nowhere} not found" in said[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Ray" not in out.stderr and not out.stdout
    # quick.yaml fine-tunes pretrained:thesis, a 128-px model: 64-px trials cannot start from it.
    out = run_cli("sweep", QUICK, "--name", name, f"base.data.path={small_dataset}", "base.model.out_size=64",
                  *service_overrides(cfg), check=False)
    assert out.returncode == 2 and "model.out_size: 128 there, 64 here" in out.stderr, out.stderr[-2000:]
    out = run_cli("sweep", QUICK, "--name", name, f"base.data.path={small_dataset}", "base.landmarks.weights=/nowhere.pt",
                  *service_overrides(cfg), check=False)
    assert out.returncode == 2 and "no landmark-student weights at /nowhere.pt" in out.stderr, out.stderr[-2000:]
    r = requests.get(f"{endpoints.mlflow}/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": f"sweep-{name}"}, timeout=30)
    assert r.status_code == 404, r.text  # no experiment, so no parent run and no trial run


def test_trial_runs_read_as_an_mlflow_user_expects(champion_sweep, embedded_services):
    """Read back through MLflow's REST API: names that say what each trial tried, only the keys that shape
    training as params (the rest in config.yaml), the dataset as the run's input, MLflow's User/Source/git tags,
    and a parent run with a description and no metric of its own."""
    cfg, endpoints = embedded_services
    assert champion_sweep["trials"] == 2 and champion_sweep["errors"] == 0
    parents, children = sweep_runs(endpoints, SWEEPS["champion"])
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED" and not parent["data"].get("metrics")
    note = tags(parent)["mlflow.note.content"]
    assert note.startswith("quick: the CPU demo") and champion_sweep["best_run_id"] in note
    configs = set()
    for child in children:
        t = tags(child)
        assert t["mlflow.user"] and t["mlflow.source.name"].startswith("frontalab sweep")
        assert t["mlflow.source.git.commit"] == t["git_commit"]
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert not [k for k in params if not k.startswith(("model.", "encoder.", "loss.", "data.", "train."))]
        assert "train.log_every" not in params and params["train.init_from"] == "pretrained:thesis"
        texture = float(params["loss.texture"])
        assert child["info"]["run_name"].startswith(f"loss.texture={texture:g} train.g_steps_per_d=1 #")
        configs.add((params["loss.texture"], params["train.g_steps_per_d"]))
        inputs = child["inputs"]["dataset_inputs"]
        assert len(inputs) == 1 and inputs[0]["dataset"]["digest"] == t["dataset_hash"]
        assert json.loads(inputs[0]["dataset"]["source"])["uri"] == params["data.path"]
        r = requests.get(f"{endpoints.mlflow}/get-artifact", params={"path": "config.yaml",
                                                                    "run_uuid": child["info"]["run_id"]}, timeout=30)
        assert r.status_code == 200 and "log_every: 2" in r.text and "services" not in r.text
    assert len(configs) == 2, "no two trials of a grid share a config"
    # The printed link opens the runs table sorted by the sweep's metric, best first: the UI lists trials flat.
    assert champion_sweep["mlflow_ui"].endswith(
        f"/#/experiments/{parent['info']['experiment_id']}/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val%2Ffrontalization_score%60&orderByAsc=false"), champion_sweep["mlflow_ui"]


def test_tune_state_in_s3_holds_no_credential(embedded_services, champion_sweep):
    cfg, _ = embedded_services
    keys = assert_no_credentials(cfg, "sweeps/")  # every sweep of this session that ran so far
    assert SWEEPS["champion"] in {k.split("/")[1] for k in keys}


def test_promote_frontalize_serve_and_champion_moves(champion_sweep, embedded_services, tmp_path, monkeypatch):
    from frontalab.paths import faces_dir

    cfg, endpoints = embedded_services
    faces = sorted((faces_dir() / "lfw-gray").rglob("*.jpg"))[:5]
    if len(faces) < 5:
        pytest.skip(f"no faces at {faces_dir() / 'lfw-gray'}")

    # A sweep whose only trial did not finish: nothing to promote, exit 2 with the reason.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=endpoints.mlflow)
    exp = client.create_experiment(f"sweep-{PREFIX}-unfinished")
    parent = client.create_run(exp, tags={"frontalab.role": "sweep", "frontalab.sweep": f"{PREFIX}-unfinished"})
    child = client.create_run(exp, tags={"frontalab.trial_id": "abc_00000", "mlflow.parentRunId": parent.info.run_id})
    client.log_metric(child.info.run_id, "val/identity_distance_mean", 0.5)
    client.set_terminated(child.info.run_id, "KILLED")
    client.set_terminated(parent.info.run_id, "KILLED")
    out = run_cli("promote", f"{PREFIX}-unfinished", *service_overrides(cfg), check=False)
    assert out.returncode == 2 and "no finished trial" in out.stderr, out.stderr[-2000:]

    first = json.loads(run_cli("promote", SWEEPS["champion"], *service_overrides(cfg), "promote.serve_max_batch=3",
                               "promote.serve_max_request_mb=1").stdout)
    assert first["uri"] == "models:/frontalizer@champion" and first["sweep"] == SWEEPS["champion"]
    winner = first["run_id"]
    assert winner == champion_sweep["best_run_id"]
    assert client.get_run(winner).data.tags["frontalab.sweep"] == SWEEPS["champion"]
    # The version is logged in the trial's own run (its curves are a click away), with a signature.
    version = client.get_model_version("frontalizer", first["version"])
    assert version.run_id == winner and client.get_run(winner).info.status == "FINISHED"
    assert winner in version.description and first["trial"] in version.description
    from mlflow.models import get_model_info

    monkeypatch.setenv("MLFLOW_TRACKING_URI", endpoints.mlflow)
    info = get_model_info(f"models:/frontalizer/{first['version']}")
    assert info.signature.inputs.input_names() == ["image"] and info.saved_input_example_info

    out_dir = tmp_path / "frontal"
    sets = [a for o in service_overrides(cfg) for a in ("--set", o)]
    done = json.loads(run_cli("frontalize", "--model", "models:/frontalizer@champion", *map(str, faces),
                              str(out_dir), *sets).stdout)
    assert done["written"] == 5 and not done["no_face"]
    assert len(list(out_dir.glob("*.png"))) == 5

    # `mlflow models serve` on the same URI answers one face with one image.
    from frontalab import services
    from PIL import Image

    port = free_port()
    env = {**os.environ, **services.client_env(cfg), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    server = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/frontalizer@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def ready():
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for("mlflow models serve", ready, 180)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(faces[0].read_bytes()).decode()]]}}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        predictions = r.json()["predictions"]
        assert len(predictions) == 1 and predictions[0]["face_found"]
        img = Image.open(io.BytesIO(base64.b64decode(predictions[0]["image"])))
        assert img.size == (128, 128)

        # Hostile requests: each answered 4xx with a one-line JSON error, or in its row; the server stays up.
        def ask(cells):
            body = {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}
            return requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)

        small = base64.b64encode(faces[0].read_bytes()).decode()
        refused = {"an integer cell": ask([4_000_000_000]), "a non-base64 string": ask(["not base64 at all!"]),
                   "a 4-channel array": ask([[[[0, 0, 0, 0]] * 16] * 16]),
                   "an oversized batch": ask([small] * 4),
                   "an oversized body": ask([base64.b64encode(os.urandom(3 << 19)).decode()])}
        for what, r in refused.items():
            assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:500])
            assert r.json()["message"] and "Traceback" not in r.text, (what, r.text[:2000])
        assert "limit of 3" in refused["an oversized batch"].json()["message"]
        assert "limit of 1 MB" in refused["an oversized body"].json()["message"]
        bomb = ask([base64.b64encode(png_header(20000, 20000)).decode()])
        assert bomb.status_code == 200 and bomb.json()["predictions"][0]["error"].startswith("too_large"), bomb.text
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200
    finally:
        pids = process_tree(server.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if wait_gone(pids, 15):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        server.wait(timeout=15)
        assert not wait_gone(pids, 10)

    # A second promotion moves `champion`; the version that held it becomes `previous`.
    second = json.loads(run_cli("promote", SWEEPS["champion"], *service_overrides(cfg)).stdout)
    assert int(second["version"]) == int(first["version"]) + 1 and second["previous"] == first["version"]
    assert client.get_model_version_by_alias("frontalizer", "champion").version == second["version"]
    assert client.get_model_version_by_alias("frontalizer", "previous").version == first["version"]
    lineage = client.get_model_version("frontalizer", second["version"]).tags
    assert lineage["run_id"] == winner and lineage["sweep"] == SWEEPS["champion"]
