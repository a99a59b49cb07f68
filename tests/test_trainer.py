"""One tracked trial, end to end against real services: tracking content, exact resume,
a tracking-server outage, NaN failure, secrets, the G:D ratio and the ablations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import torch

from conftest import SMALL_DATASET_SETTINGS, free_port, run_cli, service_overrides
from frontalab.training.checkpoints import newest_readable_checkpoint
from frontalab.training.step import NAN_AT_ENV

STEPS = 200
ALL_CHECKPOINTS = [f"step-{s:06d}.pt" for s in range(50, STEPS + 1, 50)]  # train_args checkpoints every 50


def train_args(dataset: Path, cfg, ckpt: Path, *extra: str) -> list[str]:
    return ["model.out_size=64", f"data.path={dataset}", f"train.steps={STEPS}", "train.batch_size=4",
            "train.val_faces=8", "train.log_every=10", "train.val_every=50", "train.checkpoint_every=50",
            f"train.checkpoint_dir={ckpt}", "tracking.experiment=test-trainer", *service_overrides(cfg), *extra]


def rest(endpoints, endpoint: str, **params) -> dict:
    r = requests.get(f"{endpoints.mlflow}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    r.raise_for_status()
    return r.json()


def history(endpoints, run_id: str, key: str) -> list[int]:
    return sorted(m["step"] for m in rest(endpoints, "metrics/get-history", run_id=run_id, metric_key=key,
                                          max_results=100000).get("metrics", []))


def run_of(stdout: str) -> str:
    return json.loads(stdout)["run_id"]


@pytest.fixture(scope="module")
def reference_run(small_dataset, embedded_services, tmp_path_factory):
    """An uninterrupted 200-step trial: the reference for resume, and the tracking check."""
    cfg, endpoints = embedded_services
    ckpt = tmp_path_factory.mktemp("ckpt_reference")
    out = run_cli("train", *train_args(small_dataset, cfg, ckpt))
    return run_of(out.stdout), ckpt, out


def test_run_has_every_loss_term_identity_metrics_images_and_checkpoint(reference_run, embedded_services):
    run_id, ckpt, out = reference_run
    # Its progress: the run's address first, then a line per logged step and per validation.
    lines = [line for line in out.stderr.splitlines() if line.startswith("frontalab train: ")]
    assert lines[0].startswith(f"frontalab train: MLflow run {run_id}: http") and f"/runs/{run_id}" in lines[0]
    assert any(f"step {STEPS}/{STEPS}  G " in line and "steps/s" in line for line in lines)
    assert any(line.startswith(f"frontalab train: validation at step {STEPS}: a face in ") for line in lines)
    cfg, endpoints = embedded_services
    run = rest(endpoints, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    keys = {m["key"] for m in run["data"]["metrics"]}
    for term in ("texture", "alpha_geo", "sym", "tilt", "expr", "mask", "identity", "adversarial", "total"):
        assert f"train/g/{term}" in keys, term
    assert {"train/d/adversarial", "train/steps_per_s", "train/lr_g", "val/mean_abs_yaw", "val/mask_mean"} <= keys
    assert {"val/identity_distance_mean", "val/identity_distance_median",
            "val/identity_distance_p95", "val/identity_within_threshold"} <= keys
    assert any(k.startswith("system/") for k in keys), "system metrics are on"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert {"git_commit", "config_hash", "dataset_hash", "encoder", "host"} <= set(tags)
    assert tags["mlflow.source.name"].startswith("frontalab train") and tags["mlflow.user"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["loss.alpha_geo"] == "160.0" and params["train.g_steps_per_d"] == "4"
    assert not [k for k in params if k.startswith(("tracking.", "evaluate.", "landmarks.", "services."))]
    dataset = run["inputs"]["dataset_inputs"][0]["dataset"]
    assert dataset["digest"] == tags["dataset_hash"] and dataset["source_type"] == "local"

    images = rest(endpoints, "artifacts/list", run_id=run_id, path="images").get("files", [])
    from frontalab.tracking.uploads import image_key_step

    found = [image_key_step(Path(f["path"]).name) for f in images]
    steps = {step for key_step in found if key_step for key, step in [key_step] if key == "samples"}
    assert len(steps) >= 3, steps
    # Every checkpoint lands in the bucket; the disk keeps the newest two (train.keep_checkpoints).
    assert checkpoints_in_run(cfg, run_id) == ALL_CHECKPOINTS
    assert sorted(p.name for p in ckpt.glob("step-*.pt")) == ["step-000150.pt", f"step-{STEPS:06d}.pt"]
    assert any("/images/samples" in k for k in objects_of_run(cfg, run_id))


@pytest.mark.slow  # a killed 300-step run resumed and compared with the reference: ~2 min
def test_killed_run_resumes_exactly(reference_run, small_dataset, embedded_services, tmp_path):
    ref_id, ref_ckpt, _ = reference_run
    cfg, endpoints = embedded_services
    ckpt = tmp_path / "ckpt"
    args = train_args(small_dataset, cfg, ckpt)
    proc = subprocess.Popen([sys.executable, "-m", "frontalab", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (ckpt / "step-000100.pt").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "trial ended before step 100"
        time.sleep(0.1)
    sender = sender_of(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ckpt / f"step-{STEPS:06d}.pt").exists()
    # The sender (a session of its own) stops at once: a late send could duplicate a resumed step.
    sender.wait(timeout=10)
    killed_run_id = torch.load(ckpt / "step-000100.pt", weights_only=True)["run_id"]
    assert not list(Path(tempfile.gettempdir()).glob(f"mlflow-{killed_run_id[:8]}-*")), "the sender left its spool"

    out = run_cli("train", *args, "--resume")
    run_id = run_of(out.stdout)
    ref = torch.load(ref_ckpt / f"step-{STEPS:06d}.pt", weights_only=True)
    got = torch.load(ckpt / f"step-{STEPS:06d}.pt", weights_only=True)
    assert got["run_id"] == killed_run_id == run_id
    for part in ("G", "D"):
        worst = max((ref[part][k].float() - got[part][k].float()).abs().max().item() for k in ref[part])
        assert worst <= 1e-6, (part, worst)
    assert history(endpoints, run_id, "train/g/total") == list(range(10, STEPS + 1, 10))
    assert history(endpoints, run_id, "val/mean_abs_yaw") == list(range(0, STEPS + 1, 50))
    assert rest(endpoints, "runs/get", run_id=run_id)["run"]["info"]["status"] == "FINISHED"
    # Every checkpoint is in the run's artifacts; only the newest two stay on disk (beside the journal and the
    # folder's lock file), nothing held.
    assert checkpoints_in_run(cfg, run_id) == ALL_CHECKPOINTS
    assert sorted(p.name for p in ckpt.iterdir()) == [".lock", "metrics.jsonl", "step-000150.pt",
                                                      f"step-{STEPS:06d}.pt"]


@pytest.mark.slow  # two short trainings into a tmpfs: ~2 min
def test_a_full_disk_fails_the_run_in_one_line_and_resume_completes_it(small_dataset, embedded_services, tmp_path):
    """Checkpoints into a 40 MB tmpfs: the first (~25 MB) fits, the second cannot. The run ends FAILED with one
    line and exit 8, no partial file is left, and `--resume` after the disk is grown finishes the same run."""
    cfg, endpoints = embedded_services
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(ckpt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        args = train_args(small_dataset, cfg, ckpt, "train.steps=30", "train.checkpoint_every=10",
                          "train.val_every=30")
        out = run_cli("train", *args, check=False)
        assert out.returncode == 8, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("frontalab train: could not write checkpoint") and "--resume" in last, last
        assert "Traceback" not in out.stderr
        assert sorted(p.name for p in ckpt.glob("step-*.pt")) == ["step-000010.pt"] and not list(ckpt.glob(".*.tmp"))
        run_id = torch.load(ckpt / "step-000010.pt", weights_only=True)["run_id"]
        run = rest(endpoints, "runs/get", run_id=run_id)["run"]
        assert run["info"]["status"] == "FAILED"
        assert "could not write checkpoint" in {t["key"]: t["value"] for t in run["data"]["tags"]}["frontalab.status_reason"]

        subprocess.run(["mount", "-o", "remount,size=200m", str(ckpt)], check=True)  # room made
        resumed = run_cli("train", *args, "--resume")
        assert run_of(resumed.stdout) == run_id
        assert rest(endpoints, "runs/get", run_id=run_id)["run"]["info"]["status"] == "FINISHED"
        assert history(endpoints, run_id, "train/g/total") == [10, 20, 30]
    finally:
        subprocess.run(["umount", "-l", str(ckpt)], capture_output=True)


def objects_of_run(cfg, run_id: str) -> list[str]:
    """The keys of the run's artifacts in the bucket."""
    from frontalab import services

    s3 = services.s3_client(cfg)
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.bucket, Prefix="mlflow/")
            for o in page.get("Contents", []) if f"/{run_id}/artifacts/" in o["Key"]]


def checkpoints_in_run(cfg, run_id: str) -> list[str]:
    return sorted(Path(k).name for k in objects_of_run(cfg, run_id) if "/artifacts/checkpoints/" in k)


def test_files_a_killed_run_never_sent_are_sent_when_it_resumes(services_env, tmp_path):
    """A checkpoint logged just before the trial was killed is still held beside the checkpoints,
    though the trainer pruned its own copy; the resumed run uploads it, and lets it go."""
    from mlflow import MlflowClient

    from frontalab.tracking.tracker import Tracker
    from frontalab.tracking.uploads import UPLOADING, hold_for_upload

    cfg, endpoints = services_env
    folder = tmp_path / "ckpt"
    folder.mkdir()
    never_sent = folder / "step-000050.pt"
    never_sent.write_bytes(b"weights at step 50")
    hold_for_upload(never_sent, "checkpoints")  # what `log_artifact` did before the kill
    never_sent.unlink()  # pruned
    client = MlflowClient(endpoints.mlflow)
    run_id = client.create_run(client.create_experiment(f"test-held-{time.time_ns()}")).info.run_id

    tracker = Tracker.open(experiment="unused", resume_run_id=run_id, journal=folder / "metrics.jsonl",
                           resume_step=50, system_metrics=False)
    assert tracker.finish(timeout=60)
    assert checkpoints_in_run(cfg, run_id) == ["step-000050.pt"]
    assert not (folder / UPLOADING).exists()
    assert client.download_artifacts(run_id, "checkpoints/step-000050.pt", str(tmp_path)) and \
        (tmp_path / "step-000050.pt").read_bytes() == b"weights at step 50"


@pytest.mark.parametrize("bucket_reachable", [True, False])
def test_large_files_go_straight_to_the_bucket_or_else_through_the_server(services_env, tmp_path, monkeypatch,
                                                                          capfd, bucket_reachable):
    """From 5 MB a file is uploaded in parts to URLs the server presigns. Where this node cannot
    reach the bucket (here: a dead proxy for all but the tracking server), the server proxies it."""
    from mlflow import MlflowClient

    from frontalab import services
    from frontalab.tracking.tracker import Tracker

    cfg, endpoints = services_env
    if not bucket_reachable:  # the server by name, the bucket's URLs by address: only those use the proxy
        monkeypatch.setenv("MLFLOW_TRACKING_URI", endpoints.mlflow.replace("127.0.0.1", "localhost"))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("NO_PROXY", "localhost")
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"test-upload-{time.time_ns()}")).info.run_id
    body = os.urandom(6 * 2**20)  # one 10 MB part, yet under boto3's 8 MB multipart threshold
    (tmp_path / "weights.pt").write_bytes(body)

    tracker = Tracker.open(experiment="unused", resume_run_id=run_id, system_metrics=False)
    tracker.log_artifact(tmp_path / "weights.pt", "checkpoints")
    assert tracker.finish(timeout=120)
    monkeypatch.delenv("HTTP_PROXY", raising=False)  # the test itself reads the bucket
    key = next(k for k in objects_of_run(cfg, run_id) if k.endswith("checkpoints/weights.pt"))
    stored = services.s3_client(cfg).get_object(Bucket=cfg.bucket, Key=key)
    assert stored["Body"].read() == body
    # S3 tags a multipart object's ETag with its part count; the server's own upload is one PUT.
    assert stored["ETag"].strip('"').endswith("-1") == bucket_reachable
    assert ("direct upload to the bucket failed" in capfd.readouterr().err) != bucket_reachable


def test_the_sender_forgets_points_only_once_its_spool_file_holds_them(tmp_path):
    """Spilling to a full disk (/dev/full: every write fails with ENOSPC) keeps every point in memory."""
    from collections import deque

    from mlflow.entities import Metric

    from frontalab.tracking.sender import spill_oldest

    points = deque(Metric("train/g/total", float(step), 1000 + step, step) for step in range(10))
    with pytest.raises(OSError):
        spill_oldest(points, 6, Path("/dev/full"))
    assert [m.step for m in points] == list(range(10))
    spool = tmp_path / "metrics.jsonl"
    spill_oldest(points, 6, spool)
    assert [m.step for m in points] == list(range(6, 10))
    assert [json.loads(line)[3] for line in spool.read_text().splitlines()] == list(range(6))


def test_held_files_outlive_their_originals_until_released(tmp_path):
    from frontalab.tracking.uploads import UPLOADING, hold_for_upload, held_uploads, release_upload

    a, b = tmp_path / "a.pt", tmp_path / "b.txt"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    held_a, held_b = hold_for_upload(a, "checkpoints/deep"), hold_for_upload(b, None)
    a.unlink()  # pruned
    (tmp_path / "new").write_bytes(b"B2")
    os.replace(tmp_path / "new", b)  # replaced, as `save_atomic` replaces a file
    assert held_a.read_bytes() == b"A" and held_b.read_bytes() == b"B"
    assert sorted((p.name, ap) for p, ap in held_uploads(tmp_path)) == [("a.pt", "checkpoints/deep"), ("b.txt", None)]
    release_upload(held_a)
    assert [p for p, _ in held_uploads(tmp_path)] == [held_b]
    release_upload(held_b)
    assert not (tmp_path / UPLOADING).exists() and b.exists()


def sender_of(pid: int):
    """The MLflow sender process of the trial process ``pid``."""
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"])
             if "frontalab.tracking.sender" in (p.info["cmdline"] or []) and f"--trial={pid}" in p.info["cmdline"]]
    assert len(found) == 1, found
    return found[0]


def start_training(args: list[str], ckpt: Path, until_step: int) -> subprocess.Popen:
    """`frontalab train ARGS` in its own process group, once it has checkpointed ``until_step``.
    SIGINT is reset to its default, as in a terminal: a test runner started in the background
    by a shell ignores it, and its children would inherit that."""
    proc = subprocess.Popen([sys.executable, "-m", "frontalab", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not (ckpt / f"step-{until_step:06d}.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    return proc


@pytest.mark.slow  # two interrupted and resumed runs: ~90 s each
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupted_run_ends_killed_with_every_logged_step_and_resumes_once(stop, small_dataset, embedded_services,
                                                                             tmp_path):
    """Ctrl-C reaches the terminal's whole process group; SIGTERM (a scheduler, `kill`) the trial alone. The
    trial ends its run KILLED, every metric point it logged (its journal says which) is in MLflow once, and
    `--resume` completes the same run with every step once."""
    cfg, endpoints = embedded_services
    ckpt = tmp_path / "ckpt"
    args = train_args(small_dataset, cfg, ckpt, "train.steps=120", "train.checkpoint_every=20")
    proc = start_training(args, ckpt, 20)
    if stop == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a runaway trial behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    journal = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    logged = sorted(step for key, _, _, step in journal if key == "train/g/total")
    assert logged[0] == 10 and logged[-1] >= 20
    run_id = torch.load(newest_readable_checkpoint(ckpt), weights_only=True)["run_id"]
    assert history(endpoints, run_id, "train/g/total") == logged
    run = rest(endpoints, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "KILLED"
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["frontalab.status_reason"] == "interrupted"
    assert logged[-1] < 120, "stopped before its last step"

    resumed = json.loads(run_cli("train", *args, "--resume").stdout)
    assert resumed["run_id"] == run_id and resumed["status"] == "FINISHED" and resumed["step"] == 120
    assert history(endpoints, run_id, "train/g/total") == list(range(10, 121, 10))
    assert rest(endpoints, "runs/get", run_id=run_id)["run"]["info"]["status"] == "FINISHED"


@pytest.mark.slow  # ~45 s
def test_a_dead_senders_run_is_delivered_by_the_trial(small_dataset, embedded_services, tmp_path):
    """The sender killed mid-run: the trial sends the rest itself and, at the end, its journal and held files
    again (MLflow drops the duplicates). Nothing is missing, so the run carries no tracking_incomplete tag."""
    cfg, endpoints = embedded_services
    ckpt = tmp_path / "ckpt"
    proc = start_training(train_args(small_dataset, cfg, ckpt, "train.steps=60", "train.checkpoint_every=20"), ckpt, 20)
    sender_of(proc.pid).kill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "the MLflow sender process died" in stderr
    run_id = run_of(stdout)
    run = rest(endpoints, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert "frontalab.tracking_incomplete" not in {t["key"] for t in run["data"]["tags"]}
    assert history(endpoints, run_id, "train/g/total") == list(range(10, 61, 10))
    assert {"step-000020.pt", "step-000040.pt", "step-000060.pt"} <= set(checkpoints_in_run(cfg, run_id))


@pytest.mark.slow  # 30 s of outage plus 300 steps: `make test-slow`
def test_tracking_outage_loses_nothing(small_dataset, embedded_services, tmp_path):
    from frontalab import services

    cfg, endpoints = embedded_services
    ckpt = tmp_path / "ckpt"
    steps = 300
    proc = subprocess.Popen([sys.executable, "-m", "frontalab", "train",
                             *train_args(small_dataset, cfg, ckpt, f"train.steps={steps}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while not (ckpt / "step-000050.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    from frontalab.tracking.tracker import read_journal

    def last_logged_step() -> int:  # the journal beside the checkpoints holds every point the loop logged
        return max(step for _, _, _, step in read_journal(ckpt / "metrics.jsonl"))

    pid = services.status(cfg)["mlflow_pid"]
    os.killpg(os.getpgid(pid), signal.SIGTERM)
    down_at = time.monotonic()
    step_before = last_logged_step()
    time.sleep(30)
    step_during = last_logged_step()
    services.up(cfg, quiet=True)
    outage = time.monotonic() - down_at
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert step_during > step_before, "the trial kept training while the server was down"
    run_id = run_of(stdout)
    assert history(endpoints, run_id, "train/g/total") == list(range(10, steps + 1, 10))
    assert history(endpoints, run_id, "val/identity_distance_mean") == list(range(0, steps + 1, 50))
    print(f"\ntracking server down for {outage:.0f} s; the trial went from step {step_before} to {step_during} meanwhile")


def test_nan_loss_fails_the_run_with_the_reason(small_dataset, embedded_services, tmp_path):
    cfg, endpoints = embedded_services
    out = run_cli("train", *train_args(small_dataset, cfg, tmp_path, "train.steps=20"), check=False,
                  env={NAN_AT_ENV: "7"})
    assert out.returncode == 1 and "non-finite generator loss at step 7" in out.stderr
    runs = requests.post(f"{endpoints.mlflow}/api/2.0/mlflow/runs/search", timeout=30,
                         json={"experiment_ids": [experiment_id(endpoints, "test-trainer")], "max_results": 50}).json()
    failed = [r for r in runs.get("runs", []) if r["info"]["status"] == "FAILED"]
    assert failed, "the run is marked FAILED"
    tags = {t["key"]: t["value"] for t in failed[0]["data"]["tags"]}
    assert "non-finite generator loss at step 7" in tags["frontalab.status_reason"]


def experiment_id(endpoints, name: str) -> str:
    return rest(endpoints, "experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]


def test_secret_key_appears_nowhere(reference_run, embedded_services, tmp_path):
    cfg, endpoints = embedded_services
    run_id, _, out = reference_run
    from frontalab import services

    secret = services.credentials(cfg).secret_key.encode()
    state = Path(cfg.state_dir)
    leaks = [str(p) for p in state.rglob("*") if p.is_file() and p.name != "credentials.json"
             and secret in p.read_bytes()]
    assert not leaks
    assert secret.decode() not in out.stdout + out.stderr
    run = rest(endpoints, "runs/get", run_id=run_id)["run"]
    assert secret.decode() not in str(run["data"])
    import mlflow

    mlflow.set_tracking_uri(endpoints.mlflow)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path))
    assert not [p for p in Path(local).rglob("*") if p.is_file() and secret in p.read_bytes()]


# ---------------------------------------------------------------- in-process: ratio and ablations


def make_trial(dataset: Path, *overrides: str):
    from frontalab.config import load_config
    from frontalab.training.trial import Trial, mlflow_tracker_factory

    cfg = load_config(None, ["model.out_size=64", f"data.path={dataset}", "train.batch_size=2", "train.val_faces=2",
                             "tracking.enabled=false", *overrides])
    return Trial(cfg, mlflow_tracker_factory())


def training_rows(trial, count: int = 10**6) -> dict:
    """The first ``count`` training faces of ``trial``'s dataset as one batch (all of them by default)."""
    from frontalab.data.stream import first_rows

    cfg = trial.cfg
    return first_rows(cfg.data.path, "train", cfg.encoder.name, cfg.model.out_size, count).to_batch(trial.device)


@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
def test_generator_steps_per_discriminator_step(small_dataset, ratio):
    trial = make_trial(small_dataset, f"train.g_steps_per_d={ratio}")
    d_steps = []
    real_step = trial.learner.opt_d.step
    trial.learner.opt_d.step = lambda *a, **k: (d_steps.append(trial.state.step + 1), real_step(*a, **k))[1]
    for _ in range(8):
        trial.train_step()
    assert d_steps == list(range(ratio, 9, ratio))  # the D updates come with G steps ratio, 2 ratio, ...


def test_generator_phase_leaves_the_discriminator_alone(small_dataset):
    """G steps backpropagate through D to its input only: no D weight gradient, no D update."""
    trial = make_trial(small_dataset, "train.g_steps_per_d=2")
    before = [p.detach().clone() for p in trial.D.parameters()]
    trial.train_step()
    assert all(p.grad is None for p in trial.D.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, trial.D.parameters()))
    assert any(p.grad is not None for p in trial.G.parameters())
    trial.train_step()  # the D phase
    assert all(p.requires_grad and p.grad is not None for p in trial.D.parameters())
    assert not all(torch.equal(a, p) for a, p in zip(before, trial.D.parameters()))


def test_a_run_in_pieces_is_the_run_in_one_piece(small_dataset, tmp_path):
    """`run(until=)` stops at that step and goes on from there: same parameters, same validation points."""
    steps = ["train.steps=6", "train.val_every=2", "train.checkpoint_every=6", "train.g_steps_per_d=2"]
    trials, reported = {}, {"whole": [], "pieces": []}
    for name, seen in reported.items():
        trials[name] = make_trial(small_dataset, *steps, f"train.checkpoint_dir={tmp_path / name}")
        trials[name].report = lambda metrics, checkpoint, seen=seen: seen.append((metrics["step"], checkpoint))
    whole, pieces = trials["whole"], trials["pieces"]
    whole.run()
    assert pieces.run(until=3).step == 3 and pieces.state.status == "RUNNING"
    assert pieces.run(until=99).status == "FINISHED" and pieces.state.step == 6
    assert [s for s, _ in reported["pieces"]] == [s for s, _ in reported["whole"]] == [0, 2, 4, 6]
    assert [c is not None for _, c in reported["pieces"]] == [False, False, False, True]
    for a, b in zip([*whole.G.parameters(), *whole.D.parameters()], [*pieces.G.parameters(), *pieces.D.parameters()]):
        assert torch.equal(a, b)


def test_no_adversarial_builds_no_discriminator(small_dataset):
    trial = make_trial(small_dataset, "loss.adversarial=0")
    assert trial.D is None and trial.learner.opt_d is None
    metrics = trial.train_step()
    assert "train/g/adversarial" not in metrics and not any(k.startswith("train/d/") for k in metrics)


def test_no_adversarial_no_mask_turns_the_mask_branch_off(small_dataset):
    trial = make_trial(small_dataset, "loss.adversarial=0", "loss.mask=0", "model.mask=false")
    assert trial.D is None and trial.G.mask_stages is None
    metrics = trial.train_step()
    assert "train/g/mask" not in metrics and "train/g/texture" in metrics


def test_cole_decoder_trains_with_its_own_losses(small_dataset):
    trial = make_trial(small_dataset, "model.decoder=cole", "model.cole_hidden=32", "loss.cole.perceptual=30")
    assert trial.D is None
    metrics = trial.train_step()
    assert {"train/g/cole.texture", "train/g/cole.landmark", "train/g/cole.identity",
            "train/g/cole.perceptual"} <= set(metrics)
    # Our perceptual term compares with the (frontal) input itself: zero for the input, positive for a blur of it.
    from frontalab.losses.objectives import input_perceptual

    batch = training_rows(trial, 4)
    assert input_perceptual(trial.encoder, batch["image"], batch, 0.0).item() == pytest.approx(0, abs=1e-6)
    assert input_perceptual(trial.encoder, batch["image"].mean((2, 3), keepdim=True).expand_as(batch["image"]),
                            batch, 0.0).item() > 0.1


def test_recomputed_input_features_agree_with_the_cached_ones(small_dataset):
    """data.cached_features=false re-encodes each batch from its 64 px images: each face stays the
    same person (within the encoder's threshold) as its cached embedding, and closer to it than to
    other faces' cached embeddings on average."""
    trial = make_trial(small_dataset, "data.cached_features=false")
    batch = training_rows(trial)
    cached = batch["embedding"].clone()
    trial.learner.encode_inputs(batch)
    same = trial.encoder.distance(cached, batch["embedding"])
    others = trial.encoder.distance(cached, batch["embedding"].roll(1, 0))
    assert not torch.equal(cached, batch["embedding"])
    assert (same < trial.encoder.same_identity_threshold).all(), same
    assert same.mean() < others.mean()
    assert 0 < trial.train_step()["train/g/identity"] < 2  # 1 - cos: an untrained decoder's faces are not its inputs'


@pytest.mark.slow  # a FaceNet prepare and trial: ~35 s
def test_facenet_trial_feeds_its_encoder_as_prepare_did(small_source, tmp_path):
    """FaceNet sees the whole loose crop (not dlib's aligned chip), in training as in `prepare`: at
    the stored crop size, re-encoding a batch reproduces the cached features. Random weights saved
    to a file stand in for the offline release (same network, same code path). Measured: max abs
    difference 4e-4 (the crop's storage); dlib's 5-point chip gives 3.5e-3, another face 1.8e-2."""
    from facenet_pytorch import InceptionResnetV1

    from frontalab.config import load_config
    from frontalab.training.trial import Trial, mlflow_tracker_factory

    torch.manual_seed(0)
    weights = tmp_path / "facenet-random.pt"
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), weights)
    data = tmp_path / "faces"
    run_cli("prepare", "--source", str(small_source), "--out", str(data), "--limit", "16",
            "--encoders", "facenet-vggface2", *SMALL_DATASET_SETTINGS, env={"FRONTALAB_FACENET_WEIGHTS": str(weights)})
    cfg = load_config(None, ["model.out_size=160", f"data.path={data}", "train.batch_size=2", "train.val_faces=2",
                             "tracking.enabled=false", "data.cached_features=false",
                             "encoder.name=facenet-vggface2", f"encoder.weights={weights}"])
    trial = Trial(cfg, mlflow_tracker_factory())
    batch = training_rows(trial)
    cached = batch["features"].clone()
    trial.learner.encode_inputs(batch)
    assert (batch["features"] - cached).abs().max() < 1.5e-3
    assert 0 < trial.train_step()["train/g/identity"] < 2


def test_init_from_starts_the_decoder_from_another_models_weights_and_refuses_another_architecture(
        small_dataset, tmp_path):
    from frontalab.sections import ConfigError

    source = make_trial(small_dataset, "loss.adversarial=0", "train.steps=2", "train.val_every=2",
                        f"train.checkpoint_dir={tmp_path / 'source'}")
    source.run()
    checkpoint = source.state.checkpoint
    tuned = make_trial(small_dataset, "loss.adversarial=0", f"train.init_from={checkpoint}", "train.seed=1")
    for name, value in source.G.state_dict().items():
        assert torch.equal(tuned.G.state_dict()[name], value), name  # weights and feature statistics
    assert tuned.state.step == 0  # a fresh run: its own steps, optimisers and discriminator
    fresh = make_trial(small_dataset, "loss.adversarial=0", "train.seed=1")
    assert not torch.equal(fresh.G.fc[0].weight, tuned.G.fc[0].weight)
    with pytest.raises(ConfigError, match=r"model\.width: 1 there, 2 here"):
        make_trial(small_dataset, "loss.adversarial=0", "model.width=2", f"train.init_from={checkpoint}")
    with pytest.raises(ConfigError, match="pretrained:nobody"):
        make_trial(small_dataset, "train.init_from=pretrained:nobody")


def test_cosine_schedule_reaches_zero_at_the_last_step_and_survives_a_resume(small_dataset, tmp_path):
    from frontalab.training.trial import Trial, mlflow_tracker_factory

    settings = ("loss.adversarial=0", "train.lr_schedule=cosine", "train.steps=4", "train.lr_g=0.001",
                f"train.checkpoint_dir={tmp_path}")
    trial = make_trial(small_dataset, *settings)
    rates = [trial.train_step()["train/lr_g"] for _ in range(4)]
    assert rates[0] == pytest.approx(0.001) and rates[2] == pytest.approx(0.0005)
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0] / 5
    # Stopped after two steps and resumed from that checkpoint, the schedule goes on where it was.
    first = make_trial(small_dataset, *settings)
    first.train_step(), first.train_step()
    resumed = Trial(first.cfg, mlflow_tracker_factory(), checkpoint_dir=tmp_path, resume_from=first.checkpoint())
    assert [resumed.train_step()["train/lr_g"] for _ in range(2)] == rates[2:]
